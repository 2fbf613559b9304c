"""Draw a plan as a Gantt chart: ranks down, time across, one box per group.

Each micro-batch starts when the previous one's slowest group ends. Box widths are the plan's
predicted group times, or measured ones when given (``times[m][g]`` seconds, as the engine logs
them). With the cost model, thin lines inside a box mark where one sequence of its stream ends
and the next begins (at predicted times), and each sequence is labelled with its index in the
batch; without it, a box is labelled with the indices of all its sequences. A label is drawn
only where it fits. Boxes are coloured by group size; rank ticks sit at the middle of each
rank's row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.plan import Plan

LABEL_PT = 6.0
"""Font size of the sequence labels, points."""

MAX_RANK_TICKS = 32
"""More ranks than this get a tick every 2, 4, 8, ... ranks."""


def _rank_ticks(world_size: int) -> tuple[list[float], list[str]]:
    """Tick positions (the middle of a rank's row, which spans [r, r + 1)) and their labels."""
    step = 1 << max(0, math.ceil(math.log2(world_size / MAX_RANK_TICKS)))
    ranks = range(0, world_size, step)
    return [r + 0.5 for r in ranks], [str(r) for r in ranks]


def _fits(ax, text: str, x0: float, width: float, y0: float, height: float) -> bool:
    """Whether ``text`` at ``LABEL_PT`` fits inside the box as the axes draw it."""
    (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x0 + width, y0 + height)])
    points = 72 / ax.figure.dpi
    wide = abs(px1 - px0) * points >= 0.6 * LABEL_PT * len(text) + 2  # 0.6 em per digit
    tall = abs(py1 - py0) * points >= LABEL_PT + 1
    return wide and tall


def draw_gantt(
    plan: Plan,
    cost: CostModel | None,
    path: str | Path,
    title: str = "",
    times: Sequence[Sequence[float]] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({g.size for mb in plan.micro_batches for g in mb.groups if g.sequences})
    palette = plt.get_cmap("viridis", max(len(sizes), 2))
    colour = {d: palette(i) for i, d in enumerate(sizes)}
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.12 * plan.world_size + 1.5)))
    labels = []  # (text, x0, width, y0, height, size), placed once the axes have their final size
    start = 0.0
    for m, mb in enumerate(plan.micro_batches):
        widths = [g.predicted_s for g in mb.groups] if times is None else list(times[m])
        for group, width in zip(mb.groups, widths):
            if not group.sequences:
                continue
            y0, height = group.ranks[0], group.size
            ax.add_patch(
                plt.Rectangle(
                    (start, y0),
                    width,
                    height,
                    facecolor=colour[group.size],
                    edgecolor="black",
                    linewidth=0.4,
                )
            )
            if cost is not None and times is None:
                spec = cost.groups[group.size]
                t = start + spec.fixed_s
                for n, i in enumerate(group.sequences):
                    span = spec.seq_time(plan.lengths[i])
                    labels.append((str(i), t, span, y0, height, group.size))
                    t += span
                    if n < len(group.sequences) - 1:
                        ax.plot([t, t], [y0, y0 + height], color="white", linewidth=0.3)
            else:
                text = ",".join(str(i) for i in group.sequences)
                labels.append((text, start, width, y0, height, group.size))
        start += mb.makespan_s if times is None else max(widths)
        ax.axvline(start, color="red", linewidth=0.6, linestyle="--")
    ax.set_xlim(0, start * 1.01)
    ax.set_ylim(plan.world_size, 0)
    ax.set_yticks(*_rank_ticks(plan.world_size))
    kind = "predicted" if times is None else "measured"
    ax.set_xlabel(f"{kind} time (s); dashed: end of a micro-batch; labels: sequence indices")
    ax.set_ylabel("rank")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[d]) for d in sizes]
    ax.legend(handles, [f"group of {d}" for d in sizes], loc="upper right", fontsize=7)
    ax.set_title(title or f"plan of {len(plan.lengths)} sequences on {plan.world_size} GPUs")
    fig.tight_layout()
    for text, x0, width, y0, height, size in labels:
        if _fits(ax, text, x0, width, y0, height):
            r, g, b, _ = colour[size]
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(
                x0 + width / 2,
                y0 + height / 2,
                text,
                ha="center",
                va="center",
                fontsize=LABEL_PT,
                color=ink,
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
