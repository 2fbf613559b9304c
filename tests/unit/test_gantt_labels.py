"""Gantt charts of plans: a tick per rank at the middle of its row (integer labels, never 0.5),
and boxes labelled with the indices of the sequences they run, where a label fits."""

import matplotlib.pyplot as plt
import pytest

from hetero_sp.planner import PlannerConfig, plan_batch
from hetero_sp.planner.gantt import draw_gantt
from tests.planner_common import synthetic_cost

LENGTHS = [1692, 507, 754, 209, 397]


@pytest.fixture
def figures(monkeypatch):
    """The figures draw_gantt makes, kept open instead of closed after saving."""
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        fig.clf()


def _plan(world: int):
    cost = synthetic_cost(world, 1000, fit=dict(a2=0.0, intra_bw=1e7, inter_bw=1e6))
    return plan_batch(LENGTHS, cost, PlannerConfig()), cost


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_rank_ticks_are_whole_ranks_at_the_middle_of_their_rows(tmp_path, figures):
    plan, cost = _plan(4)
    draw_gantt(plan, cost, tmp_path / "plan.png")
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
    assert list(ax.get_yticks()) == [0.5, 1.5, 2.5, 3.5]


def test_many_ranks_get_a_tick_every_few_ranks(tmp_path, figures):
    plan, cost = _plan(64)
    draw_gantt(plan, cost, tmp_path / "plan.png")
    labels = [t.get_text() for t in figures[-1].axes[0].get_yticklabels()]
    assert labels == [str(r) for r in range(0, 64, 2)]


def test_predicted_boxes_label_each_sequence_and_measured_boxes_their_sequences(tmp_path, figures):
    plan, cost = _plan(4)
    draw_gantt(plan, cost, tmp_path / "predicted.png")
    # With the cost model every sequence's own stretch of its box is labelled (all fit here).
    assert sorted(_texts(figures[-1]), key=int) == [str(i) for i in range(len(LENGTHS))]

    times = [[g.predicted_s for g in mb.groups] for mb in plan.micro_batches]
    draw_gantt(plan, None, tmp_path / "measured.png", times=times)
    boxes = [
        ",".join(map(str, g.sequences))
        for mb in plan.micro_batches
        for g in mb.groups
        if g.sequences
    ]
    assert sorted(_texts(figures[-1])) == sorted(boxes)


def test_a_label_that_does_not_fit_is_left_out(tmp_path, figures):
    plan, cost = _plan(4)
    group = next(g for mb in plan.micro_batches for g in mb.groups if g.sequences)
    times = [
        [1e-9 if g is group else g.predicted_s for g in mb.groups] for mb in plan.micro_batches
    ]
    draw_gantt(plan, None, tmp_path / "measured.png", times=times)
    assert ",".join(map(str, group.sequences)) not in _texts(figures[-1])
