"""The ``hetero-sp`` command: tools around training runs.

    hetero-sp config [--config FILE] [section.key=value ...]   print the resolved config
    hetero-sp config --reference                                 every key with its meaning
    hetero-sp prepare INPUT... --out DIR                         tokenize a corpus for training
    hetero-sp profile --out FILE [--config FILE]                 measure the planner's costs

Training itself is launched with torchrun: ``torchrun ... -m hetero_sp.train --config FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from hetero_sp.config import SECTIONS, ConfigError, field_docs, load_config
from hetero_sp.data.cli import add_prepare_parser
from hetero_sp.planner.cli import add_profile_parser


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def config_reference() -> str:
    """Markdown reference of every config key, generated from the dataclasses."""
    lines = ["# Configuration reference", ""]
    for name, cls in SECTIONS.items():
        lines += [
            f"## [{name}]",
            "",
            (cls.__doc__ or "").strip(),
            "",
            "| key | default | meaning |",
            "|---|---|---|",
        ]
        docs = field_docs(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            lines.append(
                f"| `{f.name}` | `{_toml_value(getattr(defaults, f.name))}` | {docs.get(f.name, '')} |"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hetero-sp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print the resolved config, or the reference of every key")
    p.add_argument("--config", help="TOML config file")
    p.add_argument(
        "--reference", action="store_true", help="print the reference of every key (markdown)"
    )
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=_cmd_config)
    add_prepare_parser(sub)
    add_profile_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
