"""``hetero-sp`` as a process: output piped into a reader that stops early (``| head -1``) ends
quietly with status 0, and no command prints the help with status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hetero_sp.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("args", [["config", "--reference"], ["config"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(args):
    proc = _start(*args)
    proc.stdout.close()  # the reader is gone before the first line: every write fails
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert stderr == ""


def test_no_command_prints_the_help_with_status_2():
    proc = _start()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and stdout == b""
    assert (
        stderr.decode().startswith("usage: hetero-sp") and "hetero-sp verify DIR" in stderr.decode()
    )
