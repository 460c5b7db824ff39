"""Which host runs which cells: longest expected cost first, each to the least loaded host.

A cell's expected cost is what it took last time (the seconds of its attempts in the previous run
of the suite recorded in the history index), else an estimate: a cell that boots guests costs
more, one that will not run costs almost nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_SECONDS = 20.0  # a namespace cell of the shipped suites takes 10-30 s
GUEST_SECONDS = 40.0  # per guest the cell needs (boot, slower data path)
NOT_RUN_SECONDS = 0.1


def previous_seconds(db: Path, suite: str) -> dict[str, float]:
    """Cell key → seconds its attempts took in the latest complete run of `suite` ({} if none)."""
    from testbed.matrix import history

    for run in history.runs(db, suite):
        if run["status"] != "complete" or not run["dir"]:
            continue
        try:
            matrix = json.loads((Path(run["dir"]) / "matrix.json").read_text())
        except (OSError, ValueError):
            return {}
        return {key: float(sum(a.get("seconds") or 0 for a in c.get("attempts") or []))
                for key, c in (matrix.get("cells") or {}).items() if c.get("attempts")}
    return {}


def estimate(cell: Any, known: Mapping[str, float]) -> float:
    if cell.key in known:
        return max(known[cell.key], NOT_RUN_SECONDS)
    if cell.expectation.status != "run":
        return NOT_RUN_SECONDS
    return DEFAULT_SECONDS + GUEST_SECONDS * len(cell.guests)


def assign(costs: Mapping[str, float], hosts: Iterable[str]) -> dict[str, list[str]]:
    """Cell keys over hosts, balanced by cost (LPT greedy); each host's list keeps the given order."""
    names = list(hosts)
    if not names:
        raise ValueError("no hosts to assign cells to")
    order = {key: i for i, key in enumerate(costs)}
    load = {h: 0.0 for h in names}
    out: dict[str, list[str]] = {h: [] for h in names}
    for key in sorted(costs, key=lambda k: (-costs[k], order[k])):
        host = min(names, key=lambda h: (load[h], names.index(h)))
        out[host].append(key)
        load[host] += costs[key]
    return {h: sorted(keys, key=order.__getitem__) for h, keys in out.items()}
