"""End to end on gloo ranks: static SP at each degree vs per-batch homogeneous vs HeteroSP.

Trains the cpu-tiny hybrid model on mixed-length batches of the embedded corpus (16,384 tokens
per step, documents up to 8,192 tokens) once per plan mode, under torchrun, with the same seed
and data, and reports measured tokens/s (steps after the warm-up) side by side, and the planner's
predicted step time against the measured one. Prints a table and writes
benchmarks/results/end_to_end.json.

    python benchmarks/end_to_end.py [--nproc 4] [--steps 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from harness import ROOT, torchrun_train
from records import machine_record

COMMON = [
    "data.tokens_per_step=16384",
    "data.max_seq_len=8192",
    "train.ckpt_every=0",
]


def modes(nproc: int) -> dict[str, list[str]]:
    out = {}
    d = 1
    while d <= nproc:
        out[f"static {d}"] = (
            ["parallel.sp_mode=static", f"parallel.sp_degree={d}"]
            if d > 1
            else ["parallel.sp_mode=dp"]
        )
        d *= 2
    out["homogeneous"] = ["parallel.sp_mode=homogeneous"]
    out["hetero"] = ["parallel.sp_mode=hetero"]
    return out


def summarise(records: list[dict], warmup: int) -> dict:
    timed = records[warmup:]
    tokens = sum(r["batch/tokens"] for r in timed)
    seconds = sum(r["time/step_s"] for r in timed)
    return {
        "tokens_per_s": tokens / seconds,
        "step_s_mean": seconds / len(timed),
        "predicted_step_s_mean": statistics.mean(r["plan/predicted_step_s"] for r in timed),
        "measured_makespan_s_mean": statistics.mean(r["time/measured_makespan_s"] for r in timed),
        "max_group_size": max(r["plan/max_group_size"] for r in timed),
        "micro_batches_mean": statistics.mean(r["plan/micro_batches"] for r in timed),
        "mfu_mean": statistics.mean(r["throughput/mfu"] for r in timed),
        "losses": [r["loss/train"] for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(modes(args.nproc).items()):
            records = torchrun_train(
                "configs/cpu-tiny.toml",
                args.nproc,
                [*COMMON, *overrides, f"train.steps={args.steps}"],
                Path(tmp) / f"run{i}",
                29870 + i,
            )
            rows[name] = summarise(records, args.warmup)
            print(f"{name}: {rows[name]['tokens_per_s']:.0f} tokens/s", flush=True)
    best_static = max((v["tokens_per_s"], k) for k, v in rows.items() if k.startswith("static"))
    print(
        f"\n{'mode':12} {'tokens/s':>9} {'vs best static':>15} {'max group':>9} {'predicted s':>12} {'measured s':>11} {'pred/meas':>9}"
    )
    for name, r in rows.items():
        r["vs_best_static"] = r["tokens_per_s"] / best_static[0]
        r["predicted_over_measured"] = r["predicted_step_s_mean"] / r["measured_makespan_s_mean"]
        print(
            f"{name:12} {r['tokens_per_s']:9.0f} {r['vs_best_static']:15.2f} {r['max_group_size']:9d} "
            f"{r['predicted_step_s_mean']:12.2f} {r['measured_makespan_s_mean']:11.2f} {r['predicted_over_measured']:9.2f}"
        )
    out = {
        "machine": machine_record(f"{args.nproc} gloo ranks; load average at the end"),
        "config": ["configs/cpu-tiny.toml", *COMMON],
        "steps": args.steps,
        "warmup": args.warmup,
        "best_static": best_static[1],
        "modes": rows,
    }
    path = ROOT / "benchmarks" / "results" / "end_to_end.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
