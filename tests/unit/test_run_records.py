"""metrics.jsonl and plans.jsonl after a crash mid-write (issue 16): the writers repair a cut
last line before appending, so a resumed run never merges two records into one line, and the
readers (``read_metrics``, ``hetero-sp plot``) skip such a line and name the file and line of
any other bad record."""

import json
import logging
from types import SimpleNamespace

import pytest

from hetero_sp.cli import main as cli_main
from hetero_sp.engine.metrics import MetricsWriter, append_plan, read_metrics
from hetero_sp.engine.records import RunFileError

CUT = '{"step": 3, "loss/train": 5.1, "throughput/tok'  # record 3 as a crash left it


def _metrics(step):
    return {"loss/train": 6.0 - 0.1 * step, "throughput/tokens_per_s": 100.0 + step}


def _line(step):
    return json.dumps({"step": step, **_metrics(step)}) + "\n"


@pytest.fixture
def warnings(caplog):
    logging.getLogger("hetero_sp").propagate = True  # the package logger keeps its own handler
    with caplog.at_level(logging.WARNING, logger="hetero_sp"):
        yield caplog
    logging.getLogger("hetero_sp").propagate = False


def test_metrics_writer_cuts_a_partial_last_line_before_appending(tmp_path, warnings):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_line(1) + _line(2) + CUT)
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    writer.write(3, _metrics(3))  # the resumed run writes step 3 again
    writer.close()
    assert path.read_text() == _line(1) + _line(2) + _line(3)
    assert f"{path}: cut off a partial last line of {len(CUT)} bytes" in warnings.text


def test_metrics_writer_keeps_a_whole_last_record_without_newline(tmp_path, warnings):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_line(1) + _line(2).rstrip("\n"))
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    writer.write(3, _metrics(3))
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert f"{path}: added the newline its last record lacked" in warnings.text


def test_plans_writer_cuts_a_partial_last_line_before_appending(tmp_path):
    path = tmp_path / "plans.jsonl"
    path.write_text('{"step": 1, "plan": {}, "measured_group_s": []}\n{"step": 2, "pla')
    plan = SimpleNamespace(to_dict=lambda: {"micro_batches": []})
    append_plan(tmp_path, 2, plan, [[0.5]])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["measured_group_s"] == [[0.5]]


def test_reader_skips_a_partial_last_line_with_a_warning(tmp_path, warnings):
    """A crashed run, not resumed yet: plot still draws what was written."""
    (tmp_path / "metrics.jsonl").write_text(_line(1) + _line(2) + CUT)
    (tmp_path / "plans.jsonl").write_text('{"step": 1, "pla')
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert cli_main(["plot", str(tmp_path)]) == 0
    assert f"{tmp_path}/metrics.jsonl, line 3: skipping a partial last line" in warnings.text
    assert f"{tmp_path}/plans.jsonl, line 1: skipping a partial last line" in warnings.text


@pytest.mark.parametrize("name", ["metrics.jsonl", "plans.jsonl"])
def test_plot_names_the_file_and_line_of_a_bad_record(name, tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(_line(1) + _line(2))
    (tmp_path / name).write_text(_line(1) + CUT + "\n" + _line(2))
    assert cli_main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/{name}, line 2: ")
    assert err.endswith("the file was damaged or edited: delete or fix that line\n")
    assert err.count("\n") == 1


def test_a_record_without_a_step_is_named_too(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(_line(1) + '{"loss/train": 5.0}\n')
    with pytest.raises(
        RunFileError, match=r'metrics.jsonl, line 2: not a JSON object with an integer "step"'
    ):
        read_metrics(tmp_path / "metrics.jsonl")
