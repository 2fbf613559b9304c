"""The user docs stay true to the code: the generated config reference is current, every
relative link (and anchor) resolves, every page is reachable from the index, and every
``hetero-sp`` subcommand, flag and ``section.key`` the pages tell the reader to use exists.

What the reader is told to use: prose, inline code and fenced blocks with a language tag
(``bash``, ``python``, ``toml``). Untagged fenced blocks show what a program printed, which may
quote a wrong key the user typed, and are not checked for commands and keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from hetero_sp.cli import build_parser, config_reference
from hetero_sp.config import SECTIONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
REGENERATE = "hetero-sp config --reference > docs/config.md"


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_COMMAND = re.compile(
    r"^\s*(?:\$\s*)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:\S*/)?hetero-sp\s+([a-z][\w-]*)(.*)"
    r"|-m hetero_sp\.cli\s+([a-z][\w-]*)(.*)"
)
_SEPARATOR = re.compile(r"&&|\|\||;|\||\s2?>\s")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
_KEY = re.compile(r"(?<![\w./-])(" + "|".join(SECTIONS) + r")\.([a-z_][a-z0-9_]*)(?![\w/-])")
_FILE_SUFFIXES = {"md", "py", "pt", "json", "jsonl", "toml", "png", "sh", "txt", "bin", "npy"}


def _code(text: str) -> list[str]:
    """Tagged fenced blocks (shell continuation lines joined) and inline code spans."""
    blocks = [body.replace("\\\n", " ") for tag, body in _FENCE.findall(text) if tag]
    return blocks + _INLINE.findall(_FENCE.sub("", text))


def _prose(text: str) -> str:
    return _INLINE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in _HEADING.findall(_FENCE.sub("", page.read_text()))}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_there_are_pages():
    names = {p.name for p in PAGES}
    assert {"index.md", "quickstart.md", "config.md", "troubleshooting.md"} <= names, names


def test_config_reference_is_current():
    page = DOCS / "config.md"
    assert page.is_file(), f"docs/config.md is missing; generate it with `{REGENERATE}`"
    want = config_reference() + "\n"
    have = page.read_text()
    if have != want:
        diff = next(
            (
                f"line {i + 1}: page has {a!r}, generator prints {b!r}"
                for i, (a, b) in enumerate(zip(have.splitlines(), want.splitlines()))
                if a != b
            ),
            f"the page has {len(have.splitlines())} lines, the generator prints "
            f"{len(want.splitlines())}",
        )
        pytest.fail(f"docs/config.md is out of date ({diff}); regenerate it with `{REGENERATE}`")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: {dest.relative_to(ROOT)} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.name} has broken links:\n" + "\n".join(broken)


def test_every_page_is_linked_from_the_index():
    index = (DOCS / "index.md").read_text()
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in _LINK.findall(index)}
    missing = [p.name for p in PAGES if p.name != "index.md" and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not link to {missing}"


def _command_problems(text: str) -> list[str]:
    commands = _subcommands()
    wrong = []
    for code in _code(text):
        for line in code.splitlines():
            for part in _SEPARATOR.split(line):
                for match in _COMMAND.finditer(part):
                    name, rest = match.group(1, 2) if match.group(1) else match.group(3, 4)
                    if name not in commands:
                        wrong.append(
                            f"`hetero-sp {name}`: no such subcommand ({', '.join(commands)})"
                        )
                        continue
                    options = commands[name]._option_string_actions
                    wrong += [
                        f"`hetero-sp {name} {flag}`: no such option"
                        for flag in _FLAG.findall(rest)
                        if flag not in options
                    ]
    return wrong


def _key_problems(text: str) -> list[str]:
    keys = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
    return sorted(
        {
            f"{section}.{key}"
            for part in [_prose(text), *_code(text)]
            for section, key in _KEY.findall(part)
            if key not in _FILE_SUFFIXES and key not in keys[section]
        }
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_and_flags_exist(page: Path):
    wrong = _command_problems(page.read_text())
    assert not wrong, f"{page.name}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_config_keys_exist(page: Path):
    wrong = _key_problems(page.read_text())
    assert not wrong, f"{page.name} mentions config keys that do not exist: {wrong}"


def test_checks_catch_what_they_are_for():
    """The parsers see commands and keys in tagged code blocks, inline code and prose, skip file
    names, image names and printed output, so a wrong one in the docs cannot pass unnoticed."""
    text = (
        "Run `hetero-sp prepare in.jsonl --out d --nope` or\n\n```bash\n"
        "torchrun -m hetero_sp.cli profil --out p.json && .venv/bin/hetero-sp plot \\\n"
        "  runs/x --steps 1 --bad\n"
        "docker run --rm -it hetero-sp torchrun -m hetero_sp.train\n"
        "PYTHONPATH=. hetero-sp confg\n```\n\n"
        "```\nerror: model.dims: unknown key; hetero-sp nosuch\n```\n\n"
        "Set train.stepz=20 and `data.max_seq_len=512`; see data.md, hetero_sp.train and model.pt."
    )
    names = ", ".join(_subcommands())
    assert _command_problems(text) == [
        f"`hetero-sp profil`: no such subcommand ({names})",
        "`hetero-sp plot --bad`: no such option",
        f"`hetero-sp confg`: no such subcommand ({names})",
        "`hetero-sp prepare --nope`: no such option",
    ]
    assert _key_problems(text) == ["train.stepz"]
