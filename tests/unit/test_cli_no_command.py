"""``hetero-sp`` with no command prints the whole help (every command and what it does) to
stderr and exits with argparse's status for bad usage, 2."""

from hetero_sp.cli import build_parser
from hetero_sp.cli import main as cli_main


def test_no_command_prints_the_help(capsys):
    assert cli_main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == build_parser().format_help()
    for command in ("config", "prepare", "verify", "profile", "plot"):
        assert f"hetero-sp {command}" in captured.err
    assert "error:" not in captured.err
