"""The training loop: sampler -> this rank's share -> DeepSpeed forward/backward/step -> metrics,
checkpoints and a progress bar."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from hetero_sp.config import Config, ConfigError
from hetero_sp.data.batch import GlobalBatch, balance_over_ranks
from hetero_sp.data.dataset import open_corpus
from hetero_sp.data.samplers import build_sampler
from hetero_sp.distributed import DistInfo
from hetero_sp.engine import checkpoint as ckpt_io
from hetero_sp.engine import deepspeed_engine
from hetero_sp.engine.loss import backward_scale, token_loss_sum
from hetero_sp.engine.metrics import MetricsWriter, peak_memory_bytes
from hetero_sp.log import get_logger
from hetero_sp.model import HybridLM, PackedSeqs

logger = get_logger(__name__)


def _pack(
    sequences: list[np.ndarray], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    inputs = torch.from_numpy(np.concatenate([s[:-1] for s in sequences])).to(device)
    labels = torch.from_numpy(np.concatenate([s[1:] for s in sequences])).to(device)
    return inputs, labels, [len(s) - 1 for s in sequences]


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.out_dir = Path(cfg.train.out_dir)
        self.is_main = info.rank == 0
        torch.manual_seed(cfg.train.seed)

        self.corpus = self._open_corpus()
        self.sampler = build_sampler(cfg.data, self.corpus)
        if self.is_main:
            logger.info("data: %s", json.dumps(self.sampler.describe()))
        model = HybridLM(cfg.model, cfg.parallel.linear_backend, cfg.parallel.softmax_backend)
        self.num_params = sum(p.numel() for p in model.parameters())

        self.start_step = 0
        resume = self._find_checkpoint() if cfg.train.resume else None
        if resume is not None:
            self._check_compatible(resume)
            ckpt_io.load_model_weights(model, resume)
        self.engine = deepspeed_engine.initialize(model.to(info.device), cfg)
        if resume is not None:
            ckpt_io.load_optimizer_state(self.engine, resume)
            ckpt_io.restore_rng(resume)
            self.sampler.load_state_dict(resume.meta["sampler"])
            if self.sampler.step != resume.step:
                raise ckpt_io.CheckpointError(
                    f"{resume.path}: sampler state is at step {self.sampler.step}, the checkpoint "
                    f"at step {resume.step}"
                )
            self.start_step = resume.step
            logger.info("resumed from %s at step %d", resume.path, resume.step)
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
            except Exception as err:  # re-raised below, once the other ranks know
                failure = err
        flag = [None if failure is None else f"{type(failure).__name__}: {failure}"]
        dist.broadcast_object_list(flag, src=0)  # so no rank waits for a rank 0 that failed
        if failure is not None:
            raise failure
        if flag[0] is not None:
            raise RuntimeError(f"rank 0 could not open the dataset: {flag[0]}")
        if corpus is None:
            corpus = open_corpus(self.cfg.data)
        vocab = corpus.vocab_size
        if vocab is not None and vocab > self.cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size: {self.cfg.model.vocab_size} is smaller than the dataset's "
                f"vocabulary of {vocab} tokens; set model.vocab_size={vocab} or more"
            )
        return corpus

    def _find_checkpoint(self) -> ckpt_io.LoadedCheckpoint | None:
        """Rank 0 picks the newest good checkpoint; every rank then loads that one."""
        found = ckpt_io.load_latest(self.out_dir, self.info.rank) if self.is_main else None
        choice = [str(found.path) if found is not None else None]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return None
        return found if self.is_main else ckpt_io.load_checkpoint(Path(choice[0]), self.info.rank)

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

    def _batch_share(self, batch: GlobalBatch) -> list[np.ndarray]:
        """This rank's sequences; only their tokens are read."""
        assignment = balance_over_ranks(batch.lengths, self.info.world_size)
        return batch.materialize(assignment[self.info.rank])

    def train_step(self, step: int) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        batch = self.sampler.next_batch()
        assert batch.step == step, f"sampler at step {batch.step}, training step {step}"
        inputs, labels, lengths = _pack(self._batch_share(batch), info.device)
        seqs = PackedSeqs.from_lengths(lengths, info.device)

        logits = self.engine(inputs, seqs)
        loss_sum = token_loss_sum(logits, labels)
        self.engine.backward(loss_sum * backward_scale(batch.num_tokens, info.world_size))
        lr = deepspeed_engine.lr_at(step, cfg.optim, cfg.train.steps)
        deepspeed_engine.set_lr(self.engine.optimizer, lr)
        self.engine.step()

        totals = torch.tensor([loss_sum.item(), float(labels.numel())], dtype=torch.float64)
        dist.all_reduce(totals)
        peak = torch.tensor([peak_memory_bytes(info.device)], dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        seconds = time.perf_counter() - t0
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "loss/train": totals[0].item() / totals[1].item(),
            "optim/lr": lr,
            "optim/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "throughput/tokens_per_s": batch.num_tokens / seconds,
            "throughput/step_s": seconds,
            "batch/tokens": batch.num_tokens,
            "batch/sequences": len(batch),
            "batch/max_len": max(batch.lengths),
            "memory/peak_bytes_max_rank": int(peak.item()),
        }

    def save(self, step: int) -> Path:
        meta = {
            "config": self.cfg.to_dict(),
            "sampler": self.sampler.state_dict(),
            "corpus_fingerprint": self.corpus.fingerprint,
        }
        return ckpt_io.save_checkpoint(
            self.engine, self.out_dir, step, meta, self.cfg.train.keep_checkpoints
        )

    def run(self) -> Path:
        cfg = self.cfg
        steps = range(self.start_step, cfg.train.steps)
        bar = tqdm(
            steps,
            desc="train",
            unit="step",
            disable=not (self.is_main and cfg.train.progress),
            dynamic_ncols=True,
        )
        last_ckpt = None
        for step in bar:
            m = self.train_step(step)
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                self.metrics.write(step + 1, m)
            bar.set_postfix(
                loss=f"{m['loss/train']:.3f}", tok_s=f"{m['throughput/tokens_per_s']:.0f}"
            )
            if cfg.train.ckpt_every and (step + 1) % cfg.train.ckpt_every == 0:
                last_ckpt = self.save(step + 1)
        bar.close()
        if last_ckpt is None or not last_ckpt.name.endswith(f"{cfg.train.steps:08d}"):
            last_ckpt = self.save(cfg.train.steps)
        self.metrics.close()
        return last_ckpt
