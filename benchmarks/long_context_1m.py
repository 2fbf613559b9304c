"""1M-token sequences on CPU: peak memory per rank with ZeCO and LASP-2 over 4 ranks against
the same model on one rank at 262,144 tokens.

Runs ``configs/cpu-1m-linear.toml`` (a tiny all-linear-attention model, single sequences of
1,048,576 tokens, static groups of 4) under torchrun once per strategy, and once on one rank
with 262,144-token sequences: every rank then holds the same 262,144 tokens, so its memory
should match the single rank's, plus what sequence parallelism adds (one K x V state per head
and layer in flight). Prints a table and writes benchmarks/results/long_context_1m.json.

    python benchmarks/long_context_1m.py [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import ROOT, torchrun_train
from records import machine_record

RUNS = {
    "zeco, 4 ranks x 262,144 (1M sequence)": (4, ["parallel.linear_sp=zeco"]),
    "lasp2, 4 ranks x 262,144 (1M sequence)": (4, ["parallel.linear_sp=lasp2"]),
    "1 rank, 262,144 sequence": (
        1,
        [
            "parallel.sp_mode=dp",
            "parallel.sp_degree=1",
            "data.tokens_per_step=262144",
            "data.max_seq_len=262144",
        ],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (nproc, overrides)) in enumerate(RUNS.items()):
            records = torchrun_train(
                "configs/cpu-1m-linear.toml",
                nproc,
                [*overrides, f"train.steps={args.steps}"],
                Path(tmp) / f"run{i}",
                29850 + i,
            )
            last = records[-1]
            rows.append(
                {
                    "run": name,
                    "ranks": nproc,
                    "sequence_tokens": last["batch/max_len"],
                    "tokens_per_rank": last["batch/max_len"] // nproc,
                    "peak_rss_gib_max_rank": last["memory/peak_bytes_max_rank"] / 2**30,
                    "step_s": last["time/step_s"],
                    "tokens_per_s": last["throughput/tokens_per_s"],
                    "comm_bytes_per_step": last["comm/bytes"],
                    "loss_last": last["loss/train"],
                }
            )
    base = rows[-1]["peak_rss_gib_max_rank"]
    print(
        f"{'run':42} {'seq':>9} {'per rank':>9} {'peak GiB':>9} {'vs 1 rank':>9} {'step s':>8} {'tok/s':>8}"
    )
    for r in rows:
        r["peak_vs_single_rank"] = r["peak_rss_gib_max_rank"] / base
        print(
            f"{r['run']:42} {r['sequence_tokens']:9d} {r['tokens_per_rank']:9d} "
            f"{r['peak_rss_gib_max_rank']:9.2f} {r['peak_vs_single_rank']:9.2f} "
            f"{r['step_s']:8.1f} {r['tokens_per_s']:8.0f}"
        )
    out = {
        "machine": machine_record("gloo ranks; load average at the end"),
        "steps": args.steps,
        "rows": rows,
        "note": "peak_rss is the process's peak resident set (torch, DeepSpeed and data included), "
        "max over ranks, from the run's metrics",
    }
    path = ROOT / "benchmarks" / "results" / "long_context_1m.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
