"""``hetero-sp simulate``: would HeteroSP help on my data? The comparison of
:mod:`hetero_sp.planner.compare` (HeteroSP, FlexSP, Megatron-core, static and per-batch
homogeneous SP, the lower bound) on steps drawn from the user's corpus, for a cluster that need
not exist: every step time is predicted by the cost model, nothing runs on a GPU.

The planner does not read datasets, so the command line that registers this command passes the
function that reads a corpus's lengths (``hetero_sp.data.lengths.corpus_lengths``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

DESCRIPTION = """Predict, for your corpus on a cluster of --gpus GPUs, the step time of
HeteroSP's plans and of the baselines on the same steps and the same cost model: FlexSP's
formulation (Ulysses groups of 2, 4, 8, ... GPUs, 10 s planning limit), Megatron-core's hybrid
context-parallel scheduler (when megatron-core is installed), the best single SP degree per
step (homog) and for the whole run (static), and the lower bound no plan beats. Each step draws
documents from the corpus at random (with replacement), cut to the longest one every method can
schedule. Ratios are a baseline's time over HeteroSP's (above 1: HeteroSP is faster), on the
steps the baseline could run.

The corpus: a dataset folder written by `hetero-sp prepare`, or a text file with one document
length (tokens) per line. Times come from --profile (default: the shipped H100 estimate,
configs/profiles/h100x8-estimate.json, a 7B-class hybrid model; a measured profile from
`hetero-sp profile` gives your model and cluster)."""


def add_simulate_parser(subparsers, read_lengths: Callable[[str], np.ndarray]) -> None:
    """Register ``simulate``; ``read_lengths(path)`` gives a corpus's document lengths."""
    p = subparsers.add_parser(
        "simulate",
        help="predict whether HeteroSP's plans beat the baselines on your corpus",
        description=DESCRIPTION,
    )
    p.add_argument("corpus", help="dataset folder, or a text file of lengths (one per line)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="planner.key=value, right after CORPUS: planner options of HeteroSP and FlexSP",
    )
    p.add_argument("--gpus", type=int, required=True, help="GPUs of the simulated cluster")
    p.add_argument(
        "--profile", help="profile JSON (default: the shipped H100 estimate of a 7B-class model)"
    )
    step = p.add_mutually_exclusive_group(required=True)
    step.add_argument("--sequences-per-step", type=int, help="documents per step")
    step.add_argument("--tokens-per-step", type=int, help="tokens per step (documents fill it)")
    p.add_argument("--steps", type=int, default=8, help="steps to simulate")
    p.add_argument(
        "--time-limit",
        type=float,
        help="HeteroSP's planning time per step, seconds (default: planner.time_limit_s, 0.5)",
    )
    p.add_argument(
        "--flexsp-time-limit", type=float, default=10.0, help="FlexSP's planning time per step"
    )
    p.add_argument("--zero-stage", type=int, default=3, choices=(0, 1, 2, 3))
    p.add_argument("--seed", type=int, default=0, help="seed of the documents drawn")
    p.add_argument("--no-flexsp", action="store_true", help="leave the FlexSP baseline out")
    p.add_argument("--no-megatron", action="store_true", help="leave the Megatron baseline out")
    p.add_argument("--json", metavar="OUT", help="also write the steps and the summary as JSON")
    p.set_defaults(func=functools.partial(_cmd_simulate, read_lengths=read_lengths))


def _cmd_simulate(args: argparse.Namespace, read_lengths: Callable[[str], np.ndarray]) -> int:
    from hetero_sp.config import ConfigError, load_config
    from hetero_sp.planner import compare
    from hetero_sp.planner.cost import CostModel
    from hetero_sp.planner.errors import ClusterError, PlanError
    from hetero_sp.planner.estimate import h100_estimate
    from hetero_sp.planner.profile import load_profile

    if args.gpus < 1:
        raise ClusterError(f"--gpus must be at least 1, got {args.gpus}")
    if args.steps < 1:
        raise PlanError(f"--steps must be at least 1, got {args.steps}")
    batch = compare.StepBatch(
        sequences=args.sequences_per_step or 0, tokens=args.tokens_per_step or 0
    )
    if args.flexsp_time_limit <= 0:
        raise PlanError(f"--flexsp-time-limit must be positive, got {args.flexsp_time_limit}")
    other = [o for o in args.overrides if not o.startswith("planner.")]
    if other:
        raise ConfigError(f"{other[0]}: simulate takes planner.key=value overrides only")
    options = load_config(None, args.overrides).planner
    if args.time_limit is not None:
        options = dataclasses.replace(options, time_limit_s=args.time_limit)
    lengths = read_lengths(args.corpus)
    profile = h100_estimate() if args.profile is None else load_profile(args.profile)
    cost = CostModel(profile, profile.topology(args.gpus), zero_stage=args.zero_stage)
    comparison = compare.Comparison(
        cost,
        options,
        flexsp_time_limit_s=args.flexsp_time_limit,
        flexsp=not args.no_flexsp,
        megatron=not args.no_megatron,
    )
    max_len = comparison.max_len
    cut = int(np.sum(lengths > max_len))
    print(
        f"corpus {args.corpus}: {len(lengths)} documents, {int(lengths.sum())} tokens, median "
        f"{int(np.median(lengths))}, p99 {int(np.percentile(lengths, 99))}, max {int(lengths.max())}"
    )
    print(f"cluster: {args.gpus} GPUs, ZeRO-{args.zero_stage}; profile: {profile.label}")
    print(
        f"{args.steps} steps of {batch.label}, documents drawn at random and cut to {max_len} "
        f"tokens, the longest every method can schedule ({cut} of {len(lengths)} documents "
        "are longer)"
    )
    rng = np.random.default_rng(args.seed)
    source = compare.corpus_source(lengths)
    batches = [compare.draw_batch(source, batch, rng, max_len) for _ in range(args.steps)]
    summary, _ = comparison.run(batches)
    name = Path(args.corpus).name[:12] or "corpus"
    print(compare.HEADER)
    print(compare.format_row(args.gpus, name, batch.label, summary))
    for line in compare.format_notes(summary):
        print(line)
    print(
        "x: the baseline's predicted time over HeteroSP's (above 1: HeteroSP faster), on the "
        "steps it could run (ok/steps); /LB, /MILPb: HeteroSP over the lower bound and over the "
        "MILP's bound; p50 s, p95 s, Flex p95, Mcore p95: planning wall time per step; cpu95: "
        "HeteroSP's planning CPU time per step, p95"
    )
    if args.json:
        out = dict(
            corpus=str(args.corpus),
            documents=len(lengths),
            gpus=args.gpus,
            zero_stage=args.zero_stage,
            profile=profile.label,
            batch=batch.label,
            max_len=max_len,
            summary=summary,
        )
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
