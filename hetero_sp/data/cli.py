"""``hetero-sp prepare`` and ``hetero-sp verify``: the command lines of
:func:`hetero_sp.data.prepare.prepare` and :func:`hetero_sp.data.verify.verify_dataset`."""

from __future__ import annotations

import argparse
import sys

from hetero_sp.core.errors import UserError
from hetero_sp.data.dataset import DatasetError
from hetero_sp.data.discover import FORMATS, discover_sources
from hetero_sp.data.prepare import DEFAULT_SHARD_TOKENS, prepare
from hetero_sp.data.tokenizer import load_tokenizer
from hetero_sp.data.verify import verify_dataset

DESCRIPTION = """Tokenize documents into a dataset folder that training reads with
data.dataset=FOLDER. Inputs: jsonl files (one JSON object per line, the text in --text-field),
parquet files (a string column --text-field), folders of text files (--glob, one document per
file), and Hugging Face datasets saved with save_to_disk (--split). An interrupted run resumes
when started again with the same arguments; the same inputs always give the same bytes.

Bad input (a file that cannot be read, a record that is not valid JSON or UTF-8, a record
without the text field, an empty document) stops the run with its file and record number, or
with --on-error skip is skipped, counted by reason and listed in manifest.json. Empty files are
skipped and counted (reason empty_file) either way.

Check a dataset folder's files later with `hetero-sp verify FOLDER`."""

VERIFY_DESCRIPTION = """Check every shard of a dataset folder written by `hetero-sp prepare`
against its manifest.json: each token file's size, sha256 and token ids (below the vocabulary),
each index's offsets. Prints one line per problem and exits with status 2 when there is any, 0
when every shard matches. Reads the whole dataset (about 0.7 GB/s); training checks each shard
the same way when it first reads from it."""


def add_prepare_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize jsonl/parquet/text/Hugging Face inputs into a training dataset folder",
        description=DESCRIPTION,
    )
    p.add_argument("inputs", nargs="+", help="input files, folders or globs, in this order")
    p.add_argument("--out", required=True, help="dataset folder to write (or resume)")
    p.add_argument(
        "--format", choices=FORMATS, default="auto", help="input format (default: by suffix)"
    )
    p.add_argument("--text-field", default="text", help="jsonl field or column holding the text")
    p.add_argument("--glob", default="**/*.txt", help="files taken from an input folder")
    p.add_argument("--split", help="split of a Hugging Face dataset folder with several")
    p.add_argument("--tokenizer", default="byte", help="byte, or the path of a tokenizer.json")
    p.add_argument(
        "--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file"
    )
    p.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="on a bad record or file: stop with its location, or skip it and count it",
    )
    p.add_argument("--overwrite", action="store_true", help="start over in a used --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        sources = discover_sources(args.inputs, args.format, args.text_field, args.glob, args.split)
        result = prepare(
            sources,
            args.out,
            tokenizer,
            shard_tokens=args.shard_tokens,
            on_error=args.on_error,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (UserError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    resumed = " (resumed an unfinished run)" if result["resumed"] else ""
    print(
        f"prepared {result['documents']:,} documents, {result['tokens']:,} tokens in "
        f"{result['shards']} shard(s) from {result['records']:,} records{resumed} -> {result['out_dir']}"
    )
    skipped = result["skipped"]
    if skipped:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(skipped.items()))
        print(
            f"skipped {sum(skipped.values()):,} records ({reasons}); the first of each reason "
            f"are listed in {result['out_dir']}/manifest.json"
        )
    else:
        print("skipped 0 records")
    return 0


def add_verify_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a prepared dataset's shards against its manifest",
        description=VERIFY_DESCRIPTION,
    )
    p.add_argument("dataset", help="dataset folder written by hetero-sp prepare")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        manifest, problems = verify_dataset(args.dataset, progress=not args.no_progress)
    except DatasetError as err:  # no usable manifest
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if problems:
        print(
            f"error: {args.dataset} has {len(problems)} problem{'s' * (len(problems) > 1)}; "
            f"prepare it again (`hetero-sp prepare INPUT... --out {args.dataset} --overwrite`; "
            "manifest.json lists its inputs)",
            file=sys.stderr,
        )
        return 2
    print(
        f"{args.dataset}: {len(manifest['shards'])} shard(s), {manifest['num_docs']:,} documents, "
        f"{manifest['num_tokens']:,} tokens; every file matches manifest.json"
    )
    return 0
