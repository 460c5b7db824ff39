"""Modules use each other through public names only: a private name (`_start`) is free to change
without a look outside its module, so no other testbed module may import or reach into it."""

from __future__ import annotations

import ast

from tests.conftest import ROOT


def private_uses(path) -> list[str]:
    tree = ast.parse(path.read_text())
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("testbed"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("testbed"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = [use for path in sorted((ROOT / "testbed").rglob("*.py")) for use in private_uses(path)]
    assert not found, "\n".join(found)


def test_the_check_sees_both_spellings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from testbed.workloads import process\nfrom testbed.x import _hidden\nprocess._lock\n")
    assert private_uses(sample) == ["sample.py:2: from testbed.x import _hidden", "sample.py:3: process._lock"]


def test_only_the_entry_point_imports_the_cli():
    """The CLI is the top of the import direction (spec <- emulation/stacks/workloads <- runner <- cli)."""
    users = []
    for path in sorted((ROOT / "testbed").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py") and path.parent.name == "testbed":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "testbed":
                names += [f"testbed.{a.name}" for a in node.names]
            users += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n == "testbed.cli"]
    assert not users, users
