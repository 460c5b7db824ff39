"""`testbed matrix SUITE --cells FILE`: exactly the cells a file lists, no cartesian product.

The file is a JSON (or YAML) list of {client, server, scenario}; it is what a sharded matrix hands
each host (playbooks/run-cells.yml), and what a person writes to rerun a few cells. Names are
checked against the suite and its registry with the file position of each bad entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from testbed.errors import Problem, SpecError
from testbed.matrix import probes as probe_cells
from testbed.spec.matrix import PROBE_SCENARIO, LoadedSuite
from testbed.spec.source import Document, parse_yaml, read_text, suggest

FIELDS = ("client", "server", "scenario")


@dataclass(frozen=True)
class CellRef:
    client: str
    server: str
    scenario: str


@dataclass(frozen=True)
class CellsFile:
    path: Path
    cells: list[CellRef]

    @property
    def keys(self) -> list[str]:
        return [f"{c.scenario}/{c.client}/{c.server}" for c in self.cells]

    def axes(self) -> tuple[list[str], list[str], list[str]]:
        """Clients, servers and scenarios the cells use, in the order they first appear."""
        pick = lambda attr: list(dict.fromkeys(getattr(c, attr) for c in self.cells))  # noqa: E731
        return pick("client"), pick("server"), pick("scenario")


def load_cells(path: Path, loaded: LoadedSuite, display: str | None = None) -> CellsFile:
    shown = display or str(path)
    doc = parse_yaml(read_text(path, shown), shown)
    if not isinstance(doc.data, list) or not doc.data:
        raise SpecError([doc.problem((), "expected a non-empty list of {client, server, scenario}")])
    problems: list[Problem] = []
    cells: list[CellRef | None] = []
    for i, item in enumerate(doc.data):
        if not isinstance(item, dict):
            problems.append(doc.problem((i,), "expected a mapping {client, server, scenario}"))
            cells.append(None)
            continue
        for key in item:
            if key not in FIELDS:
                problems.append(doc.problem((i, key), f"unknown field '{key}'{suggest(str(key), FIELDS)} "
                                                      f"(allowed: {', '.join(FIELDS)})"))
        bad = [f for f in FIELDS if not isinstance(item.get(f), str)]
        for f in bad:
            problems.append(doc.problem((i, f), "missing" if f not in item else "expected a name (a string)"))
        cells.append(None if bad else CellRef(item["client"], item["server"], item["scenario"]))
    problems += check(doc, cells, loaded)
    if problems:
        raise SpecError(problems)
    return CellsFile(path, [c for c in cells if c is not None])


def check(doc: Document, cells: list[CellRef | None], loaded: LoadedSuite) -> list[Problem]:
    suite = loaded.suite
    impls = list(loaded.registry.registry.implementations)
    scenarios = [s.name for s in suite.scenarios] + ([PROBE_SCENARIO] if suite.probes else [])
    probes = [probe_cells.client_name(p) for p in suite.probes]
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, c in enumerate(cells):
        if c is None:
            continue
        if c.scenario not in scenarios:
            problems.append(doc.problem((i, "scenario"), f"no scenario '{c.scenario}' in suite {suite.name}"
                                                         f"{suggest(c.scenario, scenarios)}"))
            continue
        clients = probes if c.scenario == PROBE_SCENARIO else impls
        if c.client not in clients:
            what = "probe client" if c.scenario == PROBE_SCENARIO else "implementation"
            problems.append(doc.problem((i, "client"), f"no {what} '{c.client}'{suggest(c.client, clients)}"))
        if c.server not in impls:
            problems.append(doc.problem((i, "server"), f"no implementation '{c.server}'{suggest(c.server, impls)}"))
        key = f"{c.scenario}/{c.client}/{c.server}"
        if key in seen:
            problems.append(doc.problem((i,), f"cell {key} is listed twice"))
        seen.add(key)
    return problems
