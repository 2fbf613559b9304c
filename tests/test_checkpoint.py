"""Checkpoints: full state under every ZeRO stage, bit-exact continuation after resume, atomic
writes, and fallback to the previous checkpoint when the newest is truncated or corrupt."""

import logging

import pytest
import torch

from hetero_sp.config import Config, TrainConfig
from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine import deepspeed_engine
from hetero_sp.engine.loss import token_loss_sum
from hetero_sp.model import PackedSeqs
from hetero_sp.reference import pack_documents
from tests.common import random_docs, tiny_model
from tests.distributed import run_ranks


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
