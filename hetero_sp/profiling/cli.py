"""``hetero-sp profile``: measure the planner's cost profile on this machine or cluster.

    hetero-sp profile --config configs/cpu-tiny.toml --out profile.json          # compute only
    torchrun --nproc_per_node 4 -m hetero_sp.cli profile --config ... --out ...   # + collectives

Rank 0 times the model blocks (the other ranks wait), then every rank takes part in the
collectives over each aligned group size; rank 0 fits, prints the fits with their errors and
writes the profile JSON that :func:`hetero_sp.planner.load_profile` reads.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from hetero_sp.config import load_config
from hetero_sp.core.errors import UserError
from hetero_sp.planner.profile import PRECISIONS, Profile, save_profile


def add_profile_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure the planner's cost profile (run under torchrun to include collectives)",
    )
    p.add_argument("--config", help="TOML config whose [model] is profiled (default: defaults)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--lengths", default="512,1024,2048,4096", help="document lengths to time")
    p.add_argument(
        "--message-bytes", default="65536,262144,1048576,4194304", help="collective sizes"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per sample (median)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--gpus-per-node", type=int, default=0, help="default: the local world size")
    p.add_argument("--memory-gib", type=float, default=0.0, help="default: the device's memory")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per rank (default: cores / ranks)"
    )
    p.add_argument("--label", default="", help="what and where (default: derived)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.layers=LLSS")
    p.set_defaults(func=_cmd_profile)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError as err:
        raise UserError(f"{what}: write comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise UserError(f"{what}: need positive integers, got {text!r}")
    return sorted(set(values))


def _device_memory(device, local_ranks: int) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / local_ranks


def _report(profile: Profile) -> str:
    lines = [f"profile: {profile.label}", "compute (forward + backward, seconds):"]
    for kind, fit in profile.compute.items():
        lines.append(
            f"  {kind:>4}: a2={fit.a2:.3e}/tok^2 a1={fit.a1:.3e}/tok fixed={fit.fixed:.3e} "
            f"max rel err {fit.max_rel_err:.1%}"
        )
        for s, t in fit.samples:
            lines.append(f"        s={s:>7}: measured {t:.4e}  fit {fit.time(s):.4e}")
    for kind, by_size in profile.collectives.items():
        for d, link in sorted(by_size.items()):
            err = profile.collective_fit_err[kind][d]
            lines.append(
                f"  {kind:>10} d={d:<3}: latency {link.latency_s * 1e6:8.1f} us, "
                f"bandwidth {link.bandwidth_Bps / 1e9:7.3f} GB/s, max rel err {err:.1%}"
            )
    return "\n".join(lines)


def _cmd_profile(args: argparse.Namespace) -> int:
    try:
        return _profile(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _profile(args: argparse.Namespace) -> int:
    import torch  # here, not at the top: `hetero-sp config` must not pay for importing torch

    from hetero_sp.distributed import init_distributed, shutdown_distributed
    from hetero_sp.profiling.profiler import (
        fit_compute,
        fit_link,
        fit_warnings,
        time_collectives,
        time_compute,
    )

    cfg = load_config(args.config, args.overrides).model
    lengths = _ints(args.lengths, "--lengths")
    message_bytes = _ints(args.message_bytes, "--message-bytes")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, device = 0, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if world > 1:
        info = init_distributed()
        rank, device = info.rank, info.device
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cpu":  # ranks sharing the cores must not oversubscribe them
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    samples = None
    if rank == 0:
        samples = time_compute(cfg, lengths, repeats=args.repeats, device=device, dtype=dtype)
    collectives, errors = {}, {}
    if world > 1:
        torch.distributed.barrier()
        raw = time_collectives(rank, world, message_bytes, repeats=args.repeats, device=device)
        for kind, by_size in raw.items():
            for d, points in by_size.items():
                link, err = fit_link(points)
                collectives.setdefault(kind, {})[d] = link
                errors.setdefault(kind, {})[d] = err
    if rank == 0:
        machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        label = args.label or (
            f"measured: {machine} ({platform.node()}), {world} rank(s), "
            f"{'nccl' if device.type == 'cuda' else 'gloo'}, {args.precision}, model {cfg.layers} "
            f"dim {cfg.dim}"
        )
        memory = args.memory_gib * 2**30 if args.memory_gib else _device_memory(device, local)
        profile = Profile(
            label=label,
            source="measured",
            precision=args.precision,
            model=cfg,
            compute={k: fit_compute(v, quadratic=k == "S") for k, v in samples.items()},
            collectives=collectives,
            collective_fit_err=errors,
            gpus_per_node=args.gpus_per_node or local,
            gpu_memory_bytes=memory,
            notes={
                "command": f"{world} rank(s): hetero-sp " + " ".join(sys.argv[1:]),
                "threads": str(torch.get_num_threads()),
                "load_average_1_5_15_min": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                "torch": torch.__version__,
            },
        )
        save_profile(profile, args.out)
        print(_report(profile))
        for warning in fit_warnings(profile):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"wrote {args.out}")
    if world > 1:
        shutdown_distributed()
    return 0
