"""``train.out_dir`` must name a folder (issue 16): an empty value used to write the run into the
current directory and print ``/metrics.jsonl``."""

import pytest

from hetero_sp.config import ConfigError, TrainConfig, load_config
from hetero_sp.train import main as train_main

MESSAGE = "train.out_dir: must name the run folder, e.g. train.out_dir=runs/my-run"


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_out_dir_is_a_config_error(value):
    with pytest.raises(ConfigError, match=MESSAGE):
        TrainConfig(out_dir=value)


@pytest.mark.parametrize("override", ["train.out_dir=", 'train.out_dir=""'])
def test_training_cli_refuses_an_empty_out_dir(override, capsys):
    with pytest.raises(ConfigError, match=MESSAGE):
        load_config(None, [override])
    assert train_main([override]) == 2  # before any process group or file is touched
    err = capsys.readouterr().err
    assert err.startswith(f"error: {MESSAGE}") and err.count("\n") == 1
