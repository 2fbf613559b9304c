"""Configs load from TOML with overrides, and every bad value fails at start naming the key."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.config import SECTIONS, Config, ConfigError, field_docs, load_config, parse_override

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_cpu_tiny_config_loads():
    cfg = load_config(ROOT / "configs" / "cpu-tiny.toml")
    assert cfg.model.layers == "LLLS"
    assert cfg.data.tokens_per_step == 16384


def test_overrides_apply_and_parse_as_toml():
    cfg = load_config(
        None, ["model.dim=64", "model.layers=LLSS", "optim.lr=1e-3", "train.progress=false"]
    )
    assert (cfg.model.dim, cfg.model.layers, cfg.optim.lr, cfg.train.progress) == (
        64,
        "LLSS",
        1e-3,
        False,
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "model.dimm=64",
            r"model\.dimm: unknown key; allowed keys in \[model\]: vocab_size, dim, layers",
        ),
        ("model.layers=LLXS", r"model\.layers: 'LLXS' has \['X'\]; each letter must be L .* or S"),
        ("model.layers=''", r"model\.layers: needs at least one layer letter"),
        ("model.dim=-8", r"model\.dim: must be positive, got -8"),
        ("model.num_kv_heads=3", r"model\.num_kv_heads: must divide num_heads=4, got 3"),
        ("data.tokens_per_step=0", r"data\.tokens_per_step: must be positive"),
        ("train.zero_stage=4", r"train\.zero_stage: got '4'; allowed values: 0, 1, 2, 3"),
        ("train.precision=fp16", r"train\.precision: got 'fp16'; allowed values: fp32, bf16"),
        (
            "train.peak_tflops=-1.5",
            r"train\.peak_tflops: must be >= 0 \(0: datasheet or measured\)",
        ),
        ("model.dim=12.5", r"model\.dim: expected an integer, got 12\.5"),
        ("train.progress=3", r"train\.progress: expected true or false, got 3"),
        ("optimizer.lr=1", r"\[optimizer\]: unknown section; allowed sections: model, parallel"),
        ("lr=1", r"override 'lr=1': write it as section\.key=value"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\ndim = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_parse_override_keeps_plain_strings():
    assert parse_override("model.layers=LLS") == ("model", "layers", "LLS")
    assert parse_override("optim.lr=3e-4") == ("optim", "lr", 3e-4)


def test_every_field_has_a_docstring():
    for name, cls in SECTIONS.items():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f"[{name}] fields without a docstring: {missing}"
    assert set(SECTIONS) == {f.name for f in dataclasses.fields(Config)}


def test_train_cli_rejects_bad_config_before_starting():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hetero_sp.train",
            "--config",
            str(ROOT / "configs" / "cpu-tiny.toml"),
            "model.layers=LQ",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model.layers: 'LQ' has ['Q']" in proc.stderr
