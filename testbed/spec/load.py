"""Entry points of the spec layer: files in, validated and resolved models out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import Problem
from testbed.spec.resolve import Resolved, resolve
from testbed.spec.source import validate
from testbed.spec.template import load_document
from testbed.spec.topology import Topology


@dataclass
class LoadedTopology:
    path: Path
    parameters: dict[str, Any]
    rendered: str
    topology: Topology
    resolved: Resolved


def load_topology(path: Path, overrides: dict[str, tuple[Any, Problem]] | None = None,
                  display: str | None = None) -> LoadedTopology:
    doc, values, text = load_document(path, overrides or {}, display)
    topo = validate(Topology, doc)
    return LoadedTopology(path, values, text, topo, resolve(topo, doc))
