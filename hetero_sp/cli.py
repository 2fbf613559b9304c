"""The ``hetero-sp`` command: tools around training runs.

    hetero-sp config [--config FILE] [section.key=value ...]   print the resolved config
    hetero-sp config --reference                                 every key with its meaning
    hetero-sp prepare INPUT... --out DIR                         tokenize a corpus for training
    hetero-sp verify DIR                                         check a prepared dataset's files
    hetero-sp profile --out FILE [--config FILE]                 measure the planner's costs
    hetero-sp plot RUN_DIR [--steps N,M]                          curves and plan Gantt charts
    hetero-sp simulate CORPUS --gpus N --tokens-per-step T      HeteroSP vs baselines on it

Training itself is launched with torchrun: ``torchrun ... -m hetero_sp.train --config FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from hetero_sp.config import SECTIONS, field_docs, load_config
from hetero_sp.core.errors import EXIT_USER_ERROR, UserError
from hetero_sp.data.cli import add_prepare_parser, add_verify_parser
from hetero_sp.data.lengths import corpus_lengths
from hetero_sp.engine.plots import add_plot_parser
from hetero_sp.planner.cli import add_simulate_parser
from hetero_sp.profiling.cli import add_profile_parser


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


REFERENCE_INTRO = """\
Generated from the config dataclasses in `hetero_sp/config.py` by
`hetero-sp config --reference > docs/config.md`: edit the field docstrings there, then
regenerate (`tests/unit/test_docs.py` fails while this page is out of date).

A config file has one TOML table per section; keys it leaves out keep their defaults. Any key
can be overridden after the config file as `section.key=value`, parsed as TOML (a value that is
not valid TOML is taken as a string, so `model.layers=LLSS` needs no quotes; lists are written
`data.curriculum_odds=[1,1,4]`). `hetero-sp config --config FILE [overrides]` prints the
resolved values; a bad value stops with a message naming the key."""

_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "string"}


def _type_name(typ) -> str:
    if typing.get_origin(typ) is tuple:
        return f"list of {_type_name(typing.get_args(typ)[0])}"
    return _TYPE_NAMES.get(typ, str(typ))


def _cell(text: str) -> str:
    """One markdown table cell: a single line, with characters markdown would eat escaped."""
    text = " ".join(text.split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def config_reference() -> str:
    """Markdown reference of every config key, generated from the dataclasses."""
    lines = ["# Configuration reference", "", REFERENCE_INTRO, ""]
    for name, cls in SECTIONS.items():
        lines += [
            f"## [{name}]",
            "",
            _cell(cls.__doc__ or ""),
            "",
            "| key | default | type | meaning |",
            "|---|---|---|---|",
        ]
        docs = field_docs(cls)
        defaults = cls()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = _toml_value(getattr(defaults, f.name))
            lines.append(
                f"| `{f.name}` | `{default}` | {_type_name(hints[f.name])} | "
                f"{_cell(docs.get(f.name, ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print(config_reference())
        return 0
    cfg = load_config(args.config, args.overrides)
    for name in SECTIONS:
        print(f"[{name}]")
        for key, value in dataclasses.asdict(getattr(cfg, name)).items():
            print(f"{key} = {_toml_value(value)}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hetero-sp`` parser with every subcommand (the docs test reads it)."""
    parser = argparse.ArgumentParser(
        prog="hetero-sp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("config", help="print the resolved config, or the reference of every key")
    p.add_argument("--config", help="TOML config file")
    p.add_argument(
        "--reference", action="store_true", help="print the reference of every key (markdown)"
    )
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=_cmd_config)
    add_prepare_parser(sub)
    add_verify_parser(sub)
    add_profile_parser(sub)
    add_plot_parser(sub)
    add_simulate_parser(sub, corpus_lengths)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # A missing command is bad usage (argparse's status 2), answered with the whole help.
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe fails here, where it is caught, not at exit
        return status
    except BrokenPipeError:
        # The reader stopped early (`| head -1`) and had what it wanted. Output still buffered
        # would fail again when Python flushes stdout at exit: send it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UserError, OSError) as err:
        # Bad input (config, files, plans): the message says what to change, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
