"""Draw a plan as a Gantt chart: ranks down, time across, one box per group.

Each micro-batch starts when the previous one's slowest group ends. Box widths are the plan's
predicted group times, or measured ones when given (``times[m][g]`` seconds, as the engine logs
them). With the cost model, thin lines inside a box mark where one sequence of its stream ends
and the next begins (at predicted times). Boxes are coloured by group size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.plan import Plan


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
                for i in group.sequences[:-1]:
                    t += spec.seq_time(plan.lengths[i])
                    ax.plot([t, t], [y0, y0 + height], color="white", linewidth=0.3)
        start += mb.makespan_s if times is None else max(widths)
        ax.axvline(start, color="red", linewidth=0.6, linestyle="--")
    ax.set_xlim(0, start * 1.01)
    ax.set_ylim(plan.world_size, 0)
    kind = "predicted" if times is None else "measured"
    ax.set_xlabel(f"{kind} time (s); dashed: end of a micro-batch")
    ax.set_ylabel("rank")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[d]) for d in sizes]
    ax.legend(handles, [f"group of {d}" for d in sizes], loc="upper right", fontsize=7)
    ax.set_title(title or f"plan of {len(plan.lengths)} sequences on {plan.world_size} GPUs")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
