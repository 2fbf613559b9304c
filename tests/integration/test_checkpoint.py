"""Checkpoints: full state under every ZeRO stage, bit-exact continuation after resume, atomic
writes (a re-save of a step included), and fallback to the previous checkpoint when the newest
is truncated or corrupt."""

import json
import logging
import os
import shutil

import pytest
import torch

from hetero_sp.config import Config, TrainConfig
from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine import checkpoint_files as files
from hetero_sp.engine import deepspeed_engine
from hetero_sp.engine.loss import token_loss_sum
from hetero_sp.model import PackedSeqs
from hetero_sp.reference import pack_documents
from tests.common import random_docs, tiny_model
from tests.rank_pool import run_ranks


def _step(engine, rank, i):
    inputs, labels, lengths = pack_documents(random_docs([20, 30 + 7 * rank], seed=100 * i + rank))
    loss = token_loss_sum(engine(inputs, PackedSeqs.from_lengths(lengths)), labels) / 100
    engine.backward(loss)
    engine.step()
    return loss.item()


def _params(engine):
    model, optim = ckpt_io.gather_state(engine)
    return model, optim


def _save_then_resume(rank, world_size, stage, out_dir):
    cfg = Config(train=TrainConfig(zero_stage=stage, out_dir=out_dir))
    engine = deepspeed_engine.initialize(tiny_model("LS"), cfg)
    for i in range(2):
        _step(engine, rank, i)
    saved_model, saved_optim = _params(engine)
    ckpt_io.save_checkpoint(engine, out_dir, 2, {"note": "test"})
    continued = [_step(engine, rank, i) for i in range(2, 4)]
    final_model, _ = _params(engine)

    loaded = ckpt_io.load_latest(out_dir, rank)
    fresh = tiny_model("LS", seed=123)  # other weights: everything must come from the checkpoint
    ckpt_io.load_model_weights(fresh, loaded)
    engine2 = deepspeed_engine.initialize(fresh, cfg)
    ckpt_io.load_optimizer_state(engine2, loaded)
    restored_model, restored_optim = _params(engine2)
    resumed = [_step(engine2, rank, i) for i in range(2, 4)]
    resumed_model, _ = _params(engine2)
    return {
        "state_equal": all(torch.equal(saved_model[k], restored_model[k]) for k in saved_model)
        and all(torch.equal(saved_optim[k], restored_optim[k]) for k in saved_optim),
        "moments_nonzero": all(
            v.abs().sum() > 0 for k, v in saved_optim.items() if k.endswith("exp_avg_sq")
        ),
        "continued": continued,
        "resumed": resumed,
        "final_equal": all(torch.equal(final_model[k], resumed_model[k]) for k in final_model),
    }


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_resume_continues_bit_exactly(stage, tmp_path):
    for r in run_ranks(_save_then_resume, 2, stage, str(tmp_path), timeout=300):
        assert r["state_equal"], "restored parameters or moments differ from the saved ones"
        assert r["moments_nonzero"], "saved AdamW moments are empty"
        assert r["resumed"] == r["continued"]
        assert r["final_equal"], "parameters after resuming differ from an uninterrupted run"


def _write_two(rank, world_size, out_dir):
    cfg = Config(train=TrainConfig(zero_stage=1, out_dir=out_dir))
    engine = deepspeed_engine.initialize(tiny_model("LS"), cfg)
    _step(engine, rank, 0)
    ckpt_io.save_checkpoint(engine, out_dir, 1, {})
    _step(engine, rank, 1)
    ckpt_io.save_checkpoint(engine, out_dir, 2, {})
    return True


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest"])
def test_broken_newest_checkpoint_falls_back_with_warning(damage, tmp_path, caplog):
    run_ranks(_write_two, 2, str(tmp_path), timeout=300)
    newest = tmp_path / "checkpoints" / "step_00000002"
    target = newest / "model.pt"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="hetero_sp"):
        logging.getLogger("hetero_sp").propagate = True
        loaded = ckpt_io.load_latest(tmp_path, 0)
    assert loaded is not None and loaded.step == 1
    assert "skipping checkpoint" in caplog.text and "step_00000002" in caplog.text
    with pytest.raises(ckpt_io.CheckpointError):
        ckpt_io.load_checkpoint(newest, 0)


def test_partial_checkpoint_is_never_picked(tmp_path):
    (tmp_path / "checkpoints" / "step_00000009.partial").mkdir(parents=True)
    assert ckpt_io.load_latest(tmp_path, 0) is None


def _publish_fake(out_dir, step, tag):
    """A checkpoint folder with the files save_checkpoint writes (tiny tensors, no DeepSpeed),
    published the way save_checkpoint publishes it."""
    final = files.step_dir(out_dir, step)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # as save_checkpoint does with a crashed one
    partial.mkdir(parents=True)
    files.torch_save_synced({"w": torch.full((2,), float(tag))}, partial / "model.pt")
    files.torch_save_synced({}, partial / "optim.pt")
    meta = json.dumps({"step": step, "tag": tag}).encode()
    files.write_bytes_synced(partial / "meta.json", meta)
    files.publish(partial, final)


def _names(out_dir):
    return sorted(p.name for p in files.checkpoint_root(out_dir).iterdir())


def test_resave_of_a_step_replaces_it(tmp_path):
    _publish_fake(tmp_path, 2, tag=1)
    _publish_fake(tmp_path, 2, tag=2)
    assert _names(tmp_path) == ["step_00000002"]
    assert ckpt_io.load_latest(tmp_path).meta["tag"] == 2


def test_crash_between_the_renames_of_a_resave_keeps_the_step(tmp_path, monkeypatch):
    _publish_fake(tmp_path, 1, tag=0)
    _publish_fake(tmp_path, 2, tag=1)
    real_replace = os.replace

    def crash_on_publish(src, dst):
        if str(src).endswith(".partial"):
            raise OSError("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_publish)
    with pytest.raises(OSError, match="killed"):
        _publish_fake(tmp_path, 2, tag=2)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert _names(tmp_path) == ["step_00000001", "step_00000002.old", "step_00000002.partial"]
    loaded = ckpt_io.load_latest(tmp_path)  # the step is not lost: its previous save loads
    assert (loaded.step, loaded.meta["tag"], loaded.path.name) == (2, 1, "step_00000002.old")

    _publish_fake(tmp_path, 2, tag=3)  # the save is repeated after the restart
    assert _names(tmp_path) == ["step_00000001", "step_00000002"]
    assert ckpt_io.load_latest(tmp_path).meta["tag"] == 3


def test_leftover_old_folder_never_shadows_a_published_step(tmp_path):
    """A crash after the new folder is in place but before the .old one is deleted."""
    _publish_fake(tmp_path, 1, tag=0)
    _publish_fake(tmp_path, 2, tag=1)
    aside = tmp_path / "aside"
    shutil.copytree(files.step_dir(tmp_path, 2), aside)
    _publish_fake(tmp_path, 2, tag=2)
    shutil.copytree(aside, files.step_dir(tmp_path, 2).with_name("step_00000002.old"))
    assert ckpt_io.load_latest(tmp_path).meta["tag"] == 2
    files.prune(tmp_path, keep=2)
    assert _names(tmp_path) == ["step_00000001", "step_00000002"]
    files.prune(tmp_path, keep=1)
    assert _names(tmp_path) == ["step_00000002"]
