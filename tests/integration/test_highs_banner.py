"""HiGHS's licence banner, printed by its C++ code to the process's stdout when the first
solver object is made, no longer lands in a run's output (it split the progress bar)."""

import subprocess
import sys

from tests.launch_common import ROOT

SOLVE = """
import pulp
from hetero_sp.planner.milp import make_solver

name, solver = make_solver("highs", 5.0, 0.0, 1)
x = pulp.LpVariable("x", 0, 3, cat="Integer")
prob = pulp.LpProblem("tiny", pulp.LpMinimize)
prob += -x
prob.solve(solver)
print("solved", name, x.varValue)
"""


def test_a_highs_solve_prints_nothing_of_its_own():
    # A process of its own: HiGHS prints the banner once per process, which this one may have
    # done already.
    proc = subprocess.run(
        [sys.executable, "-c", SOLVE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "solved highs 3.0\n", proc.stdout
    assert "HiGHS" not in proc.stderr, proc.stderr
