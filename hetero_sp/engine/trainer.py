"""The training loop: sampler -> this rank's share -> DeepSpeed forward/backward/step -> metrics,
checkpoints and a progress bar."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from hetero_sp.config import Config, ConfigError
from hetero_sp.core.flops import training_flops
from hetero_sp.data.open_corpus import open_corpus
from hetero_sp.data.samplers import build_sampler
from hetero_sp.distributed import DistInfo
from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine import deepspeed_engine
from hetero_sp.engine.errors import agree
from hetero_sp.engine.faults import maybe_fail
from hetero_sp.engine.interrupt import Interrupted, StopSignals
from hetero_sp.engine.metrics import MetricsWriter, append_plan, peak_memory_bytes, run_peak_flops
from hetero_sp.engine.plan_modes import build_cost_model, make_plan_fn
from hetero_sp.engine.run_dir import set_aside_earlier_run
from hetero_sp.engine.step import group_times, imbalance, run_step
from hetero_sp.engine.topology_report import (
    describe_topology,
    node_size_for,
    torchrun_nodes,
)
from hetero_sp.log import get_logger
from hetero_sp.model import HybridLM
from hetero_sp.ops.backends import resolve_linear_backend, resolve_softmax_backend
from hetero_sp.parallel import SPContext
from hetero_sp.parallel.groups import GroupPool, plan_blocks
from hetero_sp.parallel.traffic_counter import COMM
from hetero_sp.planner.ahead import PlanAhead, broadcast_share

logger = get_logger(__name__)


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.out_dir = Path(cfg.train.out_dir)
        self.is_main = info.rank == 0
        torch.manual_seed(cfg.train.seed)

        # The parallel setup first: it checks the config against the world (group sizes, the
        # profile) in seconds, before the data, the model and DeepSpeed take minutes.
        # Resolved at the first forward otherwise, long after DeepSpeed started.
        resolve_softmax_backend(cfg.parallel.softmax_backend, info.device)
        resolve_linear_backend(cfg.parallel.linear_backend, info.device)
        self._cpu_group = dist.new_group(backend="gloo") if info.backend != "gloo" else None
        self._setup_parallel()
        self.corpus = self._open_corpus()
        self.sampler = self._build_sampler()
        if self.is_main:
            logger.info("data: %s", json.dumps(self.sampler.describe()))
        model = HybridLM(
            cfg.model,
            cfg.parallel.linear_backend,
            cfg.parallel.softmax_backend,
            checkpoint_blocks=cfg.train.activation_checkpointing,
        )
        self.num_params = sum(p.numel() for p in model.parameters())

        self.start_step = 0
        self.resumed_from: Path | None = None
        if cfg.train.resume:
            resume = self._find_checkpoint()
        else:
            resume = None
            self._start_over()
        if resume is not None:  # everything that can refuse the checkpoint, before DeepSpeed
            self._check_compatible(resume)
            if resume.step > cfg.train.steps:
                raise ConfigError(
                    f"train.steps: {cfg.train.steps} is below step {resume.step} of "
                    f"{resume.path}, the checkpoint this run resumes from; set train.steps "
                    f"above {resume.step} to train on, or start over with train.resume=false or "
                    "a new train.out_dir"
                )
            ckpt_io.load_model_weights(model, resume)
            self.sampler.load_state_dict(resume.meta["sampler"])
            if self.sampler.step != resume.step:
                raise ckpt_io.CheckpointError(
                    f"{resume.path}: sampler state is at step {self.sampler.step}, the checkpoint "
                    f"at step {resume.step}"
                )
        say_build = logger.info if info.local_rank == 0 else None  # each node builds it once
        self.engine = deepspeed_engine.initialize(model.to(info.device), cfg, say_build)
        if resume is not None:
            ckpt_io.load_optimizer_state(self.engine, resume)
            ckpt_io.restore_rng(resume)
            self.start_step, self.resumed_from = resume.step, resume.path
            logger.info("resumed from %s at step %d", resume.path, resume.step)
        self.peak_flops = run_peak_flops(cfg.train, info.device)
        self.metrics = MetricsWriter(self.out_dir, enabled=self.is_main)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    def _open_corpus(self):
        """Rank 0 opens (and on first use prepares) the dataset before the other ranks do."""
        corpus, failure = None, None
        if self.is_main:
            try:
                corpus = open_corpus(self.cfg.data)
            except Exception as err:  # re-raised by agree(), once the other ranks know
                failure = err
        agree(failure)  # so no rank waits for a rank 0 that failed
        if corpus is None:
            corpus = open_corpus(self.cfg.data)
        vocab = corpus.vocab_size
        if vocab is not None and vocab > self.cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size: {self.cfg.model.vocab_size} is smaller than the dataset's "
                f"vocabulary of {vocab} tokens; set model.vocab_size={vocab} or more"
            )
        return corpus

    def _build_sampler(self):
        return build_sampler(self.cfg.data, self.corpus)  # ConfigError: [data] vs the dataset

    def _find_checkpoint(self) -> ckpt_io.LoadedCheckpoint | None:
        """Rank 0 picks the newest good checkpoint; every rank then loads that one."""
        found, failure = None, None
        if self.is_main:
            try:
                found = ckpt_io.load_latest(self.out_dir, self.info.rank)
            except ckpt_io.CheckpointError as err:  # every checkpoint broken: stop every rank
                failure = err
        agree(failure)
        choice = [str(found.path) if found is not None else None]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return None
        failure = None
        if not self.is_main:
            try:
                found = ckpt_io.load_checkpoint(Path(choice[0]), self.info.rank)
            except ckpt_io.CheckpointError as err:
                failure = err
        agree(failure)  # a rank whose files are broken stops every rank, not only itself
        return found

    def _start_over(self) -> None:
        """``train.resume=false``: rank 0 moves an earlier run's files aside (see
        :mod:`hetero_sp.engine.run_dir`) before any rank writes into the folder."""
        moved, failure = None, None
        if self.is_main:
            try:
                moved = set_aside_earlier_run(self.out_dir)
            except OSError as err:
                failure = err
        agree(failure)
        if moved is not None:
            folder, names = moved
            logger.info(
                "train.resume=false: moved the earlier run's %s into %s", ", ".join(names), folder
            )

    def _check_compatible(self, ckpt: ckpt_io.LoadedCheckpoint) -> None:
        saved = ckpt.meta.get("config", {})
        for section in ("model", "data"):
            # Through JSON, as meta.json stored it (tuples become lists).
            current = json.loads(json.dumps(dataclasses.asdict(getattr(self.cfg, section))))
            if saved.get(section) != current:
                raise ckpt_io.CheckpointError(
                    f"{ckpt.path} was written with another [{section}] config; use a new "
                    f"train.out_dir or train.resume=false to start over"
                )

    def _setup_parallel(self) -> None:
        """Group pool (groups made as plans need them), cost model, plan function and the
        run-ahead worker."""
        cfg, info = self.cfg, self.info
        node_size = node_size_for(cfg, info.world_size)
        self.pool = GroupPool(info.world_size, cfg.parallel.max_process_groups)
        self.cost = build_cost_model(cfg, info.world_size, node_size, log=self.is_main)
        plan_fn = make_plan_fn(cfg, self.cost)
        self.ahead = PlanAhead(
            plan_fn,
            is_solver=self.is_main,
            share=broadcast_share(group=self._cpu_group, src=0),
            worker=cfg.planner.ahead_worker,
        )
        if self.is_main:
            nodes, per_node = torchrun_nodes(info.world_size)
            device = (
                torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "CPU"
            )
            topology = describe_topology(
                info.world_size,
                nodes=nodes,
                per_node=per_node,
                node_size=node_size,
                backend=info.backend,
                device=device,
                sp_mode=cfg.parallel.sp_mode,
                group_shapes=cfg.planner.group_shapes,
                max_groups=cfg.parallel.max_process_groups,
            )
            logger.info("topology: %s", topology)

    def _context_for(self, group, layout) -> SPContext:
        return self.pool.get(group.ranks[0], len(group.ranks)).context(
            self.info.rank, layout, group.softmax_strategy, group.linear_strategy
        )

    def _submit(self, step: int) -> None:
        if step < self.cfg.train.steps:
            self.ahead.submit(step, self.sampler.batch(step).lengths)

    def train_step(self, step: int) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        batch = self.sampler.next_batch()
        if batch.step != step:
            raise RuntimeError(f"sampler at step {batch.step}, training step {step}")
        if cfg.planner.run_ahead:
            self._submit(step + 1)  # solved on a background thread while this step trains
        plan = self.ahead.get(step)
        self.pool.prepare(plan_blocks(plan))  # collective: new groups of this plan
        t_plan = time.perf_counter()
        COMM.reset()
        out = run_step(
            self.engine,
            batch,
            plan,
            info.rank,
            info.world_size,
            self._context_for,
            cfg.model.layers,
            info.device,
            pad_passes=cfg.train.zero_stage >= 2,
        )
        lr = deepspeed_engine.lr_at(step, cfg.optim, cfg.train.steps)
        deepspeed_engine.set_lr(self.engine.optimizer, lr)
        self.engine.step()
        if not cfg.planner.run_ahead:
            self._submit(step + 1)
        seconds = time.perf_counter() - t0

        sums = torch.tensor(
            [out.loss_sum, out.labels, out.padding_tokens, COMM.total()], dtype=torch.float64
        )
        dist.all_reduce(sums)
        peak = torch.tensor([peak_memory_bytes(info.device)], dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        per_rank = torch.zeros(info.world_size, len(plan.micro_batches), dtype=torch.float64)
        per_rank[info.rank] = torch.tensor(out.micro_batch_s, dtype=torch.float64)
        dist.all_reduce(per_rank)
        measured = group_times(plan, per_rank)
        if self.is_main:
            append_plan(self.out_dir, step + 1, plan, measured)
        grad_norm = self.engine.get_global_grad_norm()
        timing = self.ahead.timings.get(step)
        flops = training_flops(cfg.model, batch.lengths)
        metrics = {
            "loss/train": sums[0].item() / sums[1].item(),
            "optim/lr": lr,
            "optim/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "throughput/tokens_per_s": batch.num_tokens / seconds,
            "throughput/mfu": flops / seconds / self.peak_flops,
            "time/step_s": seconds,
            "time/plan_wait_s": t_plan - t0,
            "time/measured_makespan_s": sum(max(row) for row in measured),
            "plan/predicted_step_s": plan.predicted_step_s,
            "plan/solve_ms": plan.solve_s * 1e3,
            "plan/micro_batches": len(plan.micro_batches),
            "plan/max_group_size": max(
                g.size for mb in plan.micro_batches for g in mb.groups if g.sequences
            ),
            "plan/imbalance": imbalance(plan, measured),
            "comm/bytes": int(sums[3].item()),
            "padding/tokens": int(sums[2].item()),
            "padding/fraction": sums[2].item() / batch.num_tokens,
            "batch/tokens": batch.num_tokens,
            "batch/sequences": len(batch),
            "batch/max_len": max(batch.lengths),
            "memory/peak_bytes_max_rank": int(peak.item()),
        }
        if timing is not None:
            metrics["plan/wait_ms"] = timing.wait_s * 1e3
        return metrics

    def save(self, step: int) -> Path:
        meta = {
            "config": self.cfg.to_dict(),
            "sampler": self.sampler.state_dict(),
            "corpus_fingerprint": self.corpus.fingerprint,
        }
        return ckpt_io.save_checkpoint(
            self.engine, self.out_dir, step, meta, self.cfg.train.keep_checkpoints
        )

    def _stop(self, signum: int, step: int, last_ckpt: Path | None) -> None:
        """Every rank, after the same step: save it (``train.ckpt_on_signal``), then raise."""
        if self.cfg.train.ckpt_on_signal and (
            last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}")
        ):
            last_ckpt = self.save(step)
        self.ahead.close()
        self.metrics.close()
        raise Interrupted(signum, step, last_ckpt or self.resumed_from)

    def run(self, stop: StopSignals | None = None) -> Path:
        """Train up to ``train.steps``; returns the last checkpoint. With ``stop``, SIGINT and
        SIGTERM end the run after a step, on every rank (:mod:`hetero_sp.engine.interrupt`)."""
        cfg = self.cfg
        if self.start_step == cfg.train.steps:  # resumed at it (past it: refused in __init__)
            if self.is_main:
                logger.info(
                    "nothing to train: %s is at step %d = train.steps; raise train.steps to "
                    "train on",
                    self.resumed_from,
                    self.start_step,
                )
            self.ahead.close()
            self.metrics.close()
            return self.resumed_from
        steps = range(self.start_step, cfg.train.steps)
        bar = tqdm(
            steps,
            desc="train",
            unit="step",
            disable=not (self.is_main and cfg.train.progress),
            dynamic_ncols=True,
        )
        last_ckpt = None
        if self.start_step < cfg.train.steps:
            self._submit(self.start_step)
        if stop is not None:
            stop.defer()
        for step in bar:
            maybe_fail(step + 1, self.info.rank, self.out_dir)
            m = self.train_step(step)
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                self.metrics.write(step + 1, m)
            bar.set_postfix(
                loss=f"{m['loss/train']:.3f}", tok_s=f"{m['throughput/tokens_per_s']:.0f}"
            )
            if cfg.train.ckpt_every and (step + 1) % cfg.train.ckpt_every == 0:
                last_ckpt = self.save(step + 1)
            if stop is not None and step + 1 < cfg.train.steps:
                signum = stop.agreed(self._cpu_group)
                if signum is not None:
                    bar.update()  # the bar counts a step when the loop asks for the next one
                    bar.close()
                    self._stop(signum, step + 1, last_ckpt)
        bar.close()
        self.ahead.close()
        if last_ckpt is None or not last_ckpt.name.endswith(f"{cfg.train.steps:08d}"):
            last_ckpt = self.save(cfg.train.steps)
        self.metrics.close()
        return last_ckpt
