"""Training entry point, launched by torchrun (or launch/torchrun_*.sh, launch/slurm.sbatch):

torchrun --nproc_per_node 4 -m hetero_sp.train --config configs/cpu-tiny.toml [section.key=value ...]

Plan without training (no torchrun needed; --world-size plans for a cluster you do not have):

python -m hetero_sp.train --dry-run --world-size 64 --config ... parallel.node_size=8

Ctrl-C (SIGINT) or SIGTERM stops every rank after the same step, with a checkpoint of it
(train.ckpt_on_signal), and rank 0 prints how to resume (hetero_sp.engine.interrupt).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from hetero_sp.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hetero_sp.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="TOML config file (defaults apply to whatever it leaves out)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the topology, the plans of the first steps and the memory estimate, then "
        "exit without starting DeepSpeed or training",
    )
    parser.add_argument(
        "--dry-run-steps", type=int, default=3, help="steps the dry run plans (default 3)"
    )
    parser.add_argument(
        "--world-size",
        type=int,
        help="with --dry-run: plan for this many ranks (default: torchrun's WORLD_SIZE, else 1)",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=20")
    args = parser.parse_args(argv)
    if not args.dry_run and args.world_size is not None:
        parser.error("--world-size only applies to --dry-run (training takes torchrun's world)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        from hetero_sp.engine.dry_run import dry_run

        return dry_run(cfg, args.world_size, args.dry_run_steps)
    from hetero_sp.engine.interrupt import StopSignals

    stop = StopSignals().install()  # from here on SIGINT and SIGTERM end the run quietly
    try:
        return _train(cfg, stop)
    except BaseException as err:
        if not stop.ends_quietly(err):
            raise
        return _report_interrupted(err, stop.signum, cfg, sys.argv[1:] if argv is None else argv)


def _report_interrupted(err: BaseException, signum: int, cfg, train_args: list[str]) -> int:
    """Rank 0's one line on the signal that stopped the run; status 128 + the signal number."""
    from hetero_sp.engine.interrupt import Interrupted, interrupted_line

    step, checkpoint = (err.step, err.checkpoint) if isinstance(err, Interrupted) else (None, None)
    if int(os.environ.get("RANK", "0")) == 0:
        line = interrupted_line(
            signum,
            step,
            checkpoint,
            steps=cfg.train.steps,
            resume=cfg.train.resume,
            out_dir=cfg.train.out_dir,
            train_args=train_args,
        )
        print(line, file=sys.stderr, flush=True)
    if step is not None:  # every rank stopped after this step: they leave together
        from hetero_sp.distributed import shutdown_distributed

        shutdown_distributed()
    return 128 + signum


def _train(cfg, stop) -> int:
    """Join the ranks, train, report; returns the exit status."""
    # DeepSpeed calls collectives that torch has renamed; the warnings say nothing about this run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

    from hetero_sp.distributed import init_distributed, shutdown_distributed
    from hetero_sp.engine.errors import INPUT_ERRORS
    from hetero_sp.engine.trainer import Trainer
    from hetero_sp.log import get_logger

    logger = get_logger("hetero_sp.train")  # not __name__: that is "__main__" under -m
    info = init_distributed(cfg.train.dist_timeout_s)
    try:
        trainer = Trainer(cfg, info)
        if info.rank == 0:
            logger.info(
                "%d ranks (%s), model %.2fM parameters, layers %s, ZeRO-%d",
                info.world_size,
                info.backend,
                trainer.num_params / 1e6,
                cfg.model.layers,
                cfg.train.zero_stage,
            )
        last = trainer.run(stop)
    except INPUT_ERRORS as err:
        # Raised on every rank at the same point (see hetero_sp.engine.errors): rank 0 says what
        # to change, and all ranks leave the process group together.
        if info.rank == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        shutdown_distributed()
        return 2
    if info.rank == 0:
        out = cfg.train.out_dir
        print(
            f"metrics: {out}/metrics.jsonl  tensorboard: {out}/tensorboard  checkpoint: {last}",
            flush=True,
        )
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without running interpreter teardown: gloo's background threads can abort the
    # process ("terminate called without an active exception") during it.
    os._exit(code)
