"""Data flows one way in the matrix: the runner uses results/history/html/verdicts, none of them
imports the runner back (at module level or inside a function)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

MATRIX = ROOT / "testbed" / "matrix"
DOWNSTREAM = ("results", "history", "html", "verdicts", "known")


def imports(module: str) -> set[str]:
    tree = ast.parse((MATRIX / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_nothing_downstream_imports_the_runner():
    for module in DOWNSTREAM:
        if (MATRIX / f"{module}.py").exists():
            assert not {i for i in imports(module) if i.startswith("testbed.matrix.runner")}, module
    assert not {i for i in imports("verdicts") if i.startswith("testbed.")}  # a leaf


def test_the_runner_still_uses_them():
    assert {"testbed.matrix.history", "testbed.matrix.results", "testbed.matrix.known"} <= imports("runner")
