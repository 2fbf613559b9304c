"""DeepSpeed's compiled op gets a build folder per Python environment (two checkouts, each with
its own venv, starting together rebuilt each other's when they shared one), and a build about
to happen is announced instead of 2-3.5 silent minutes."""

import os
from pathlib import Path

import torch

from hetero_sp.config import load_config
from hetero_sp.engine import deepspeed_engine, deepspeed_ops
from hetero_sp.engine.deepspeed_ops import (
    announce_build,
    environment_key,
    extensions_dir,
    pending_build,
    use_environment_dir,
)

VERSIONS = {"torch": "2.13.0+cpu", "deepspeed": "0.19.8"}


class FakeBuilder:
    NAME = "deepspeed_shm_comm"

    def absolute_name(self) -> str:
        return "deepspeed.ops.comm.deepspeed_shm_comm_op"


def test_each_environment_has_its_own_folder_and_keeps_it(tmp_path):
    one, two = str(tmp_path / "checkout1" / ".venv"), str(tmp_path / "checkout2" / ".venv")
    assert extensions_dir(one, VERSIONS) == extensions_dir(one, dict(VERSIONS))
    assert extensions_dir(one, VERSIONS) != extensions_dir(two, VERSIONS)
    upgraded = {**VERSIONS, "deepspeed": "0.20.0"}
    assert extensions_dir(one, VERSIONS) != extensions_dir(one, upgraded)
    assert extensions_dir(one, VERSIONS).parent == deepspeed_ops.CACHE_ROOT
    key = environment_key(one, VERSIONS)
    assert "torch2.13.0_cpu" in key and "deepspeed0.19.8" in key and "/" not in key
    assert extensions_dir() == extensions_dir()  # this interpreter's, as the scripts print it


def test_a_folder_already_set_is_kept():
    assert use_environment_dir({"TORCH_EXTENSIONS_DIR": "/opt/ext"}) == "/opt/ext"
    for environ in ({}, {"TORCH_EXTENSIONS_DIR": ""}):
        assert use_environment_dir(environ) == str(extensions_dir())
        assert environ["TORCH_EXTENSIONS_DIR"] == str(extensions_dir())


def test_a_build_is_announced_and_a_built_op_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said = []
    announce_build(said.append, FakeBuilder())
    assert said == [pending_build(FakeBuilder(), tmp_path)]
    assert said[0].startswith(
        f"building DeepSpeed's deepspeed.ops.comm.deepspeed_shm_comm_op into {tmp_path} "
    )
    built = tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built.parent.mkdir()
    built.write_bytes(b"")
    said.clear()
    announce_build(said.append, FakeBuilder())
    assert said == []


def test_the_op_deepspeed_builds_on_this_cpu_machine_is_the_shm_one():
    builder = deepspeed_ops._builder()
    if builder is not None:  # None where DeepSpeed compiles nothing (a GPU, a prebuilt op)
        assert builder.NAME == FakeBuilder.NAME
        assert builder.absolute_name() == FakeBuilder().absolute_name()


def test_starting_deepspeed_says_so_before_it_builds(tmp_path, monkeypatch):
    import deepspeed

    events = []
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(deepspeed_ops, "CACHE_ROOT", tmp_path)  # an environment never built
    monkeypatch.setattr(deepspeed_ops, "_builder", FakeBuilder)
    monkeypatch.setattr(
        deepspeed, "initialize", lambda **kwargs: events.append("initialize") or (None,) * 4
    )
    model = torch.nn.Linear(2, 2)
    deepspeed_engine.initialize(model, load_config(None, []), say_build=events.append)
    assert events[1] == "initialize", events
    assert events[0].startswith(f"building DeepSpeed's {FakeBuilder().absolute_name()} into")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(extensions_dir())
    assert Path(os.environ["TORCH_EXTENSIONS_DIR"]).parent == tmp_path
