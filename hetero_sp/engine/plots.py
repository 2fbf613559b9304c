"""``hetero-sp plot RUN_DIR``: loss and throughput curves and Gantt charts of chosen steps' plans.

Reads what a run wrote (``metrics.jsonl``, ``plans.jsonl``) and writes PNG files next to them:
``loss.png``, ``throughput.png`` and, for each chosen step, ``plan_step_<N>.png`` with the
predicted schedule above the measured one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hetero_sp.core.errors import UserError
from hetero_sp.engine.records import read_records


def _plans(run_dir: Path) -> dict[int, dict]:
    path = run_dir / "plans.jsonl"
    return read_records(path) if path.is_file() else {}


def _curves(records: list[dict], run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss/train"] for r in records], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(run_dir / "loss.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["throughput/tokens_per_s"] for r in records], linewidth=1, label="tokens/s")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens/s")
    if all("throughput/mfu" in r for r in records):
        twin = ax.twinx()
        twin.plot(
            steps, [100 * r["throughput/mfu"] for r in records], color="tab:orange", linewidth=1
        )
        twin.set_ylabel("MFU (%)", color="tab:orange")
    ax.set_title(f"{run_dir.name}: throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(run_dir / "throughput.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


def plot_run(run_dir: str | Path, steps: list[int] | None = None) -> list[Path]:
    """Write the run's plots; returns their paths. ``steps`` defaults to the first and last
    planned steps."""
    from hetero_sp.engine.metrics import read_metrics
    from hetero_sp.planner.gantt import draw_gantt
    from hetero_sp.planner.plan import Plan

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl: is it a training run's out_dir?")
    written = _curves(read_metrics(metrics), run_dir)
    plans = _plans(run_dir)
    if steps is None:
        steps = sorted({min(plans), max(plans)}) if plans else []
    elif steps and not plans:
        raise UserError(
            f"{run_dir} has no plans.jsonl (or an empty one), so there are no plans to draw; "
            "leave out --steps to draw the curves only"
        )
    for step in steps:
        if step not in plans:
            raise UserError(
                f"step {step} has no plan in {run_dir}/plans.jsonl (planned steps "
                f"{min(plans)}..{max(plans)}); pick steps in that range with --steps"
            )
        record = plans[step]
        plan = Plan.from_dict(record["plan"])
        stem = run_dir / f"plan_step_{step}"
        written.append(
            draw_gantt(
                plan, None, stem.with_name(stem.name + "_predicted.png"), f"step {step}: predicted"
            )
        )
        written.append(
            draw_gantt(
                plan,
                None,
                stem.with_name(stem.name + "_measured.png"),
                f"step {step}: measured",
                times=record["measured_group_s"],
            )
        )
    return written


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw loss/throughput curves and plan Gantt charts of a run")
    p.add_argument("run_dir", help="a training run's out_dir")
    p.add_argument(
        "--steps",
        type=_step_list,
        default=None,
        help="comma-separated steps whose plans to draw, e.g. 1,60 (default: first and last)",
    )
    p.set_defaults(func=_cmd_plot)


def _step_list(text: str) -> list[int]:
    """``--steps 1,60`` -> [1, 60]; argparse reports the error (status 2) for anything else."""
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of step numbers (>= 1), e.g. --steps 1,60"
        )
    return steps


def _cmd_plot(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir, args.steps):
        print(path)
    return 0
