"""The layout's import rules (DESIGN.md): finished runs never reach into the training flow; tasks and hooks
import neither; only hftl/recipe.py reads YAML. Checked on every import statement, function-level ones too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HFTL = Path(__file__).resolve().parents[1] / "hftl"
TRAINING = {"hftl.pipeline", "hftl.trainer", "hftl.strategy", "hftl.cache", "hftl.preflight", "hftl.faults", "hftl.run"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def modules(folder: str) -> list[Path]:
    return sorted((HFTL / folder).rglob("*.py"))


@pytest.mark.parametrize("folder, forbidden", [
    ("runs", TRAINING),
    ("tasks", TRAINING | {"hftl.runs"}),
    ("hooks", TRAINING | {"hftl.runs", "hftl.tasks", "hftl.recipe"}),
])
def test_import_rules(folder, forbidden):
    for path in modules(folder):
        bad = {m for m in imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden)}
        assert not bad, f"{path.relative_to(HFTL.parent)} imports {sorted(bad)}"


def test_only_the_recipe_reads_yaml():
    readers = [p.relative_to(HFTL.parent) for p in HFTL.rglob("*.py") if "yaml" in imports(p)]
    assert [str(p) for p in readers] == ["hftl/recipe.py"]
