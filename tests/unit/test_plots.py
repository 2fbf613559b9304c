"""``hetero-sp plot`` on a small run folder written by the engine's own writers (MetricsWriter,
append_plan) with real plans of the shipped CPU profile: the PNG files it promises, and one-line
errors for steps it cannot draw."""

import pytest
import torch

from hetero_sp.cli import main as cli_main
from hetero_sp.config import load_config
from hetero_sp.engine.metrics import MetricsWriter, append_plan
from hetero_sp.engine.plan_modes import build_cost_model, make_plan_fn
from hetero_sp.engine.step import group_times

PNG = b"\x89PNG\r\n\x1a\n"
BATCHES = [[900, 300, 200, 100], [512, 512, 256, 64], [1000, 24, 500, 300]]


def _run_folder(path, with_plans=True):
    cfg = load_config(None, ["parallel.sp_mode=homogeneous"])
    plan_fn = make_plan_fn(cfg, build_cost_model(cfg, 4, 4, log=False))
    writer = MetricsWriter(path, enabled=True, tensorboard=False)
    for step, lengths in enumerate(BATCHES, start=1):
        writer.write(
            step,
            {"loss/train": 5.5 - 0.1 * step, "throughput/tokens_per_s": 900.0 + step,
             "throughput/mfu": 0.01 * step},
        )  # fmt: skip
        if with_plans:
            plan = plan_fn(lengths)
            per_rank_s = torch.rand(4, len(plan.micro_batches), dtype=torch.float64)
            append_plan(path, step, plan, group_times(plan, per_rank_s))
    writer.close()
    return path


def _assert_pngs(run, names):
    for name in names:
        data = (run / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, f"{name}: {len(data)} bytes"


def test_plot_draws_curves_and_first_and_last_plan(tmp_path, capsys):
    run = _run_folder(tmp_path / "run")
    assert cli_main(["plot", str(run)]) == 0
    names = [
        "loss.png",
        "throughput.png",
        "plan_step_1_predicted.png",
        "plan_step_1_measured.png",
        "plan_step_3_predicted.png",
        "plan_step_3_measured.png",
    ]
    assert capsys.readouterr().out.split() == [str(run / n) for n in names]
    _assert_pngs(run, names)
    assert not (run / "plan_step_2_predicted.png").exists()


def test_plot_chosen_steps(tmp_path, capsys):
    run = _run_folder(tmp_path / "run")
    assert cli_main(["plot", str(run), "--steps", "2"]) == 0
    _assert_pngs(run, ["plan_step_2_predicted.png", "plan_step_2_measured.png"])
    assert not (run / "plan_step_1_predicted.png").exists()


def test_plot_step_without_plan_is_one_line_error(tmp_path, capsys):
    run = _run_folder(tmp_path / "run")
    assert cli_main(["plot", str(run), "--steps", "1,999"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: step 999 has no plan in {run}/plans.jsonl (planned steps 1..3); pick steps in "
        "that range with --steps\n"
    )


@pytest.mark.parametrize("steps", ["x", "1,,2", "0", ""])
def test_plot_bad_steps_value_is_refused_by_the_parser(steps, tmp_path, capsys):
    run = _run_folder(tmp_path / "run", with_plans=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["plot", str(run), "--steps", steps])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --steps: {steps!r} is not a comma-separated list of step numbers" in err
    assert "invalid literal" not in err


def test_plot_run_without_plans(tmp_path, capsys):
    run = _run_folder(tmp_path / "run", with_plans=False)
    assert cli_main(["plot", str(run), "--steps", "1"]) == 2
    assert capsys.readouterr().err == (
        f"error: {run} has no plans.jsonl (or an empty one), so there are no plans to draw; "
        "leave out --steps to draw the curves only\n"
    )
    assert cli_main(["plot", str(run)]) == 0  # the curves alone
    _assert_pngs(run, ["loss.png", "throughput.png"])


def test_plot_folder_without_metrics(tmp_path, capsys):
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert f"error: {tmp_path} has no metrics.jsonl" in capsys.readouterr().err
