"""Draw a plan as a Gantt chart: ranks down, predicted time across, one box per group.

Each micro-batch starts when the previous one's slowest group ends; inside a group's box, thin
lines mark where one sequence of its stream ends and the next begins (at predicted times).
Boxes are coloured by group size.
"""

from __future__ import annotations

from pathlib import Path

from hetero_sp.planner.cost import CostModel
from hetero_sp.planner.plan import Plan


def draw_gantt(plan: Plan, cost: CostModel, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({g.size for mb in plan.micro_batches for g in mb.groups if g.sequences})
    palette = plt.get_cmap("viridis", max(len(sizes), 2))
    colour = {d: palette(i) for i, d in enumerate(sizes)}
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.12 * plan.world_size + 1.5)))
    start = 0.0
    for mb in plan.micro_batches:
        for group in mb.groups:
            if not group.sequences:
                continue
            y0, height = group.ranks[0], group.size
            ax.add_patch(
                plt.Rectangle(
                    (start, y0),
                    group.predicted_s,
                    height,
                    facecolor=colour[group.size],
                    edgecolor="black",
                    linewidth=0.4,
                )
            )
            spec = cost.groups[group.size]
            t = start + spec.fixed_s
            for i in group.sequences[:-1]:
                t += spec.seq_time(plan.lengths[i])
                ax.plot([t, t], [y0, y0 + height], color="white", linewidth=0.3)
        start += mb.makespan_s
        ax.axvline(start, color="red", linewidth=0.6, linestyle="--")
    ax.set_xlim(0, start * 1.01)
    ax.set_ylim(plan.world_size, 0)
    ax.set_xlabel("predicted time (s); dashed: end of a micro-batch")
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
