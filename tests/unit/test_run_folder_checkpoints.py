"""Checkpoints of a run folder that holds an earlier run's (issue 16): rotation never deletes
the checkpoint just written, starting over moves the earlier run's files aside instead of
mixing or deleting them, and a folder whose every checkpoint is broken is an error that names
the folder and what was wrong, not a silent start from step 0."""

import json

import pytest
import torch

from hetero_sp.core.errors import UserError
from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine import checkpoint_files as files
from hetero_sp.engine.run_dir import set_aside_earlier_run


def _publish(out_dir, step):
    """A checkpoint folder with the files save_checkpoint writes (tiny tensors, no DeepSpeed),
    published the way save_checkpoint publishes it."""
    final = files.step_dir(out_dir, step)
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True)
    files.torch_save_synced({"w": torch.full((2,), float(step))}, partial / "model.pt")
    files.torch_save_synced({}, partial / "optim.pt")
    files.write_bytes_synced(partial / "meta.json", json.dumps({"step": step}).encode())
    files.publish(partial, final)
    return final


def _names(out_dir):
    return sorted(p.name for p in files.checkpoint_root(out_dir).iterdir())


def test_rotation_keeps_the_checkpoint_just_written(tmp_path):
    """The issue's case: steps 11 and 12 of an earlier run, then step 3 of a new one."""
    _publish(tmp_path, 11)
    _publish(tmp_path, 12)
    written = _publish(tmp_path, 3)
    files.prune(tmp_path, keep=2, written=written)
    assert _names(tmp_path) == ["step_00000003", "step_00000011", "step_00000012"]

    _publish(tmp_path, 1)  # older than the one written: rotated as before
    written = _publish(tmp_path, 4)
    files.prune(tmp_path, keep=2, written=written)
    assert _names(tmp_path) == ["step_00000003", "step_00000004", "step_00000011", "step_00000012"]


def test_starting_over_moves_the_earlier_run_aside(tmp_path):
    _publish(tmp_path, 11)
    _publish(tmp_path, 12)
    (tmp_path / "metrics.jsonl").write_text('{"step": 12}\n')
    (tmp_path / "plans.jsonl").write_text('{"step": 12}\n')
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "notes.txt").write_text("the user's own file stays")

    folder, names = set_aside_earlier_run(tmp_path)
    assert folder == tmp_path / "earlier_run_1"
    assert names == ["checkpoints", "metrics.jsonl", "plans.jsonl", "tensorboard", "config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier_run_1", "notes.txt"]
    assert _names(folder) == ["step_00000011", "step_00000012"]  # nothing deleted
    assert ckpt_io.load_latest(folder).step == 12
    assert ckpt_io.load_latest(tmp_path) is None  # the new run starts from step 0

    _publish(tmp_path, 3)
    assert set_aside_earlier_run(tmp_path)[0] == tmp_path / "earlier_run_2"
    assert _names(tmp_path / "earlier_run_2") == ["step_00000003"]
    assert set_aside_earlier_run(tmp_path) is None  # nothing left to move


def test_no_usable_checkpoint_is_an_error_naming_each_problem(tmp_path):
    _publish(tmp_path, 2)
    newest = _publish(tmp_path, 4)
    (files.step_dir(tmp_path, 2) / "manifest.json").unlink()
    model = newest / "model.pt"
    model.write_bytes(model.read_bytes()[:100])

    with pytest.raises(ckpt_io.CheckpointError) as raised:
        ckpt_io.load_latest(tmp_path)
    message = str(raised.value)
    assert isinstance(raised.value, UserError)  # printed as one error: line, status 2
    assert message.startswith(f"no usable checkpoint in {tmp_path}/checkpoints: ")
    assert f"{newest}: model.pt has 100 bytes, expected" in message
    assert f"{files.step_dir(tmp_path, 2)}: no manifest.json" in message
    assert "train.resume=false" in message and "\n" not in message
    assert _names(tmp_path) == ["step_00000002", "step_00000004"]  # still there to inspect
