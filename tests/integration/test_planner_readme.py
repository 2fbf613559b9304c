"""The README's planner commands, run as written (the interpreter and output path aside)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hetero_sp.planner import load_profile

ROOT = Path(__file__).resolve().parents[2]
SECTION = (ROOT / "README.md").read_text().split("## Planning a step")[1].split("\n## ")[0]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S)


def test_readme_python_example_plans():
    (code,) = _blocks("python")
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    step_s, sizes = out.getvalue().split(" ", 1)
    assert float(step_s) > 0 and "[" in sizes


@pytest.mark.slow
def test_readme_profile_command(tmp_path):
    (command,) = [c.strip() for c in _blocks("bash") if "hetero_sp.cli profile" in c]
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/torchrun"
    argv[0] = str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "profile.json"
    argv[argv.index("--out") + 1] = str(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    profile = load_profile(out)
    assert sorted(profile.collectives["all_to_all"]) == [2]
    assert "max rel err" in done.stdout
