"""The package graph: imports go one way, down the layers of docs/architecture.md, with no
cycle between modules, and the planner (with the torch-free leaves it stands on) never loads
torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hetero_sp"

LEAVES = {"core", "config", "log"}
ALLOWED: dict[str, set[str]] = {
    "core": {"config"},
    "config": {"core"},
    "log": set(),
    "ops": set(),
    "parallel": {"ops"},
    "model": {"parallel", "ops"},
    "planner": set(),
    "data": set(),
    "distributed": set(),
    "profiling": {"planner", "model", "parallel", "ops", "distributed"},
    "engine": {"planner", "data", "model", "parallel", "ops", "distributed"},
    "integrations": {"planner", "data", "model", "parallel", "ops", "distributed"},
    "reference": {"engine", "model", "parallel", "ops"},
    "train": {"engine", "distributed", "planner", "data"},
    "cli": {"engine", "data", "planner", "profiling"},
    "__init__": set(),
}
"""What each part may import besides itself and the leaves (core, config, log)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every ``hetero_sp`` module a file imports, at module level or inside functions."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hetero_sp"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hetero_sp":
                continue
            found.add(target)
            for alias in node.names:  # ``from hetero_sp.planner import solve`` is a module too
                candidate = f"{target}.{alias.name}"
                if (PACKAGE / Path(*candidate.split(".")[1:])).with_suffix(".py").exists():
                    found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_goes_down_the_layers():
    bad = []
    for module, targets in graph().items():
        part = part_of(module)
        assert part in ALLOWED, f"{module}: part {part!r} has no rule in docs/architecture.md"
        for target in targets:
            other = part_of(target)
            if other in (part, "__init__") or other in LEAVES or other in ALLOWED[part]:
                continue
            bad.append(f"{module} -> {target} ({part} may not import {other})")
    assert not bad, "forbidden imports:\n" + "\n".join(sorted(bad))


def test_no_module_imports_itself_back():
    edges = {}
    for module, targets in graph().items():
        # Importing a.b.c runs a/__init__ and a/b/__init__ first (unless the importer is inside
        # them already): a cycle through a package's __init__ is a cycle too.
        mine = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        edges[module] = {
            ".".join(t.split(".")[:i])
            for t in targets
            for i in range(2, t.count(".") + 2)
            if ".".join(t.split(".")[:i]) not in mine
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if t not in edges or t == m:
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_rules_catch_a_forbidden_edge(tmp_path):
    # The walker itself must see ``from`` imports, relative ones and function-local ones.
    src = tmp_path / "mod.py"
    src.write_text(
        "from hetero_sp.engine import trainer\n"
        "def f():\n    import hetero_sp.model.transformer\n"
        "from . import cost\n"
    )
    fake = PACKAGE / "planner" / "_architecture_probe.py"
    fake.write_text(src.read_text())
    try:
        found = imports_of(fake)
    finally:
        fake.unlink()
    assert {"hetero_sp.engine", "hetero_sp.model.transformer", "hetero_sp.planner.cost"} <= found
    assert "hetero_sp.engine.trainer" in found


@pytest.mark.parametrize(
    "statement",
    [
        "import hetero_sp.planner; hetero_sp.planner.Planner; hetero_sp.planner.PlanAhead",
        "from hetero_sp.planner import CostModel, Plan, load_profile, plan_batch",
        "import hetero_sp.config, hetero_sp.core.traffic, hetero_sp.core.flops, hetero_sp.core.names",
        "import hetero_sp.data.samplers",
    ],
)
def test_planner_and_leaves_import_no_torch(statement):
    code = f"{statement}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"{statement!r} loaded torch: {out[:200]}"
