"""Data pipeline benchmark on the embedded corpus (Python standard library sources, byte tokens).

1. ``prepare`` throughput: the stdlib files -> token shards, tokens/s (best of 3 fresh runs).
2. Sampling throughput per sampler: batches derived from (seed, step) without reading tokens,
   and the same batches with every sequence read (``materialize``), in tokens/s.
3. Attention cost and padding of ``dd`` and ``mixed`` against ``concat_chunk`` at 8K and 64K
   longest sequences, averaged over one whole epoch of each sampler. Causal attention within a
   sequence costs in proportion to L^2, so a step's attention FLOPs are taken as sum(L^2)
   (the model treats each concat_chunk sequence as one sequence; the ``masked`` row counts what
   a document-masking baseline would pay, sum over documents inside each sequence). Packed
   varlen input (what HeteroSP feeds the model) needs no padding at all; the ``pad to step max``
   column says what a fixed-shape [sequences, longest] batch would add instead.

    python benchmarks/data.py [--quick]

Prints a table and writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from records import machine_record

from hetero_sp.config import DataConfig
from hetero_sp.data.embedded import embedded_dataset, stdlib_source_files
from hetero_sp.data.prepare import prepare
from hetero_sp.data.samplers import build_sampler
from hetero_sp.data.sources import TextSource
from hetero_sp.data.tokenizer import ByteTokenizer

OUT = Path(__file__).resolve().parent / "results" / "data.json"


def bench_prepare(repeats: int) -> dict:
    sources = [TextSource(p) for p in stdlib_source_files()]
    best, result = float("inf"), None
    for _ in range(repeats):
        tmp = Path(tempfile.mkdtemp(prefix="hsp-bench-"))
        try:
            t0 = time.perf_counter()
            result = prepare(sources, tmp / "ds", ByteTokenizer(), on_error="skip", progress=False)
            best = min(best, time.perf_counter() - t0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "documents": result["documents"],
        "tokens": result["tokens"],
        "seconds": best,
        "tokens_per_s": result["tokens"] / best,
    }


SAMPLERS = {
    "concat_chunk": dict(sampler="concat_chunk"),
    "dd uniform": dict(sampler="dd"),
    "dd grow_p2 x8": dict(sampler="dd", curriculum="grow_p2", curriculum_cycles=8),
    "mixed documents": dict(sampler="mixed", mixed_source="documents"),
    "mixed chunks": dict(sampler="mixed", mixed_source="chunks"),
}


def bench_sampling(corpus, steps: int) -> dict:
    out = {}
    for name, opts in SAMPLERS.items():
        cfg = DataConfig(tokens_per_step=8192, max_seq_len=2048, min_seq_len=64, **opts)
        t0 = time.perf_counter()
        sampler = build_sampler(cfg, corpus)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        batches = [sampler.next_batch() for _ in range(steps)]
        derive_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        read = sum(sum(len(t) - 1 for t in b.materialize(range(len(b)))) for b in batches)
        read_s = time.perf_counter() - t0
        tokens = sum(b.num_tokens for b in batches)
        assert read == tokens
        out[name] = {
            "build_s": build_s,
            "derive_tokens_per_s": tokens / derive_s,
            "read_tokens_per_s": tokens / read_s,
        }
    return out


def _masked_cost(batch) -> int:
    """sum over the documents inside each sequence of (its input tokens)^2."""
    cost = 0
    for segs in batch.refs:
        sizes = [stop - start for _, start, stop in segs]
        sizes[-1] -= 1  # the last token id of a sequence is only a target
        cost += sum(s * s for s in sizes)
    return cost


def bench_attention(corpus, max_len: int, tokens_per_step: int, min_len: int) -> dict:
    rows = {}
    for name, opts in SAMPLERS.items():
        cfg = DataConfig(
            tokens_per_step=tokens_per_step, max_seq_len=max_len, min_seq_len=min_len, **opts
        )
        sampler = build_sampler(cfg, corpus)
        flops = masked = pad_step = tokens = seqs = 0
        for step in range(sampler.steps_per_epoch):
            b = sampler.batch(step)
            lengths = np.array(b.lengths, dtype=np.int64)
            flops += int((lengths * lengths).sum())
            masked += _masked_cost(b) if name == "concat_chunk" else int((lengths**2).sum())
            pad_step += len(lengths) * int(lengths.max()) - int(lengths.sum())
            tokens += int(lengths.sum())
            seqs += len(lengths)
        rows[name] = {
            "steps_per_epoch": sampler.steps_per_epoch,
            "tokens": tokens,
            "sequences_per_step": seqs / sampler.steps_per_epoch,
            "attn_flops_per_token": flops / tokens,
            "attn_flops_per_token_doc_masked": masked / tokens,
            "padding_varlen": 0.0,
            "padding_to_step_max": pad_step / tokens,
        }
    base = rows["concat_chunk"]["attn_flops_per_token"]
    for row in rows.values():
        row["attn_flops_vs_concat_chunk"] = row["attn_flops_per_token"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    args = parser.parse_args()

    prep = bench_prepare(1 if args.quick else 3)
    corpus = embedded_dataset()
    sampling = bench_sampling(corpus, 200 if args.quick else 1000)
    attention = {
        "8K": bench_attention(corpus, 8192, 65536, 64),
        "64K": bench_attention(corpus, 65536, 262144, 64),
    }
    print(
        f"prepare (embedded corpus, {prep['documents']} documents, {prep['tokens']:,} tokens): "
        f"{prep['seconds']:.2f} s, {prep['tokens_per_s'] / 1e6:.1f} M tokens/s"
    )
    print("\nsampling, 8192 tokens/step, max 2048 | build s | derive M tok/s | read M tok/s")
    for name, r in sampling.items():
        print(
            f"  {name:16s} | {r['build_s']:7.3f} | {r['derive_tokens_per_s'] / 1e6:14.1f} | "
            f"{r['read_tokens_per_s'] / 1e6:12.1f}"
        )
    for label, rows in attention.items():
        print(
            f"\nmax length {label}, one epoch | attn FLOPs/token | vs concat_chunk | "
            "doc-masked FLOPs/token | seqs/step | pad varlen | pad to step max"
        )
        for name, r in rows.items():
            print(
                f"  {name:16s} | {r['attn_flops_per_token']:16.0f} | "
                f"{r['attn_flops_vs_concat_chunk']:15.3f} | {r['attn_flops_per_token_doc_masked']:21.0f} | "
                f"{r['sequences_per_step']:9.1f} | {r['padding_varlen']:10.0%} | "
                f"{r['padding_to_step_max']:15.0%}"
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_record("one process")
    OUT.write_text(
        json.dumps(
            {"machine": machine, "prepare": prep, "sampling": sampling, "attention": attention},
            indent=1,
        )
    )
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
