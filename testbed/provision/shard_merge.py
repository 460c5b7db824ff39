"""The hosts' matrix archives merged into one matrix run laid out as a local one.

Every host's archive has the local layout (matrix.json, cells/<cell run>/, inputs/cells/,
logs/cells/), with every path in matrix.json relative to the archive, so its cell directories are
copied over as they are and the cell entries keep their links. What is the whole run's is made
again from the merged cells: the summary, the history comparison, report.md, junit.xml,
report.html and the manifest, which says which host ran each cell (`cells[].host`, `shards`).
A cell no host reported is an `error` cell that names the host and why.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.archive.store import SCHEMA_VERSION, RunDir

COPIED = ("cells", "inputs/cells", "logs/cells", "inputs/scenarios", "logs/guests")
COPIED_ONCE = ("inputs/suite.yaml", "inputs/implementations.yaml")  # the same on every host


@dataclass
class Fetched:
    """One host's part: its archive as it came back (None if nothing did), or why not."""

    host: str
    keys: list[str]  # the cells it was given
    archive: Path | None = None
    status: str = "ok"  # ok | failed | unreachable | interrupted
    error: str = ""
    matrix: dict[str, Any] | None = None
    retry_of: str | None = None  # the host whose cells these are, on a retry

    def load(self) -> None:
        if self.archive is not None:
            try:
                self.matrix = json.loads((self.archive / "matrix.json").read_text())
            except (OSError, ValueError) as exc:
                self.matrix, self.error = None, self.error or f"its archive has no readable matrix.json: {exc}"

    def cells(self) -> dict[str, Any]:
        return dict((self.matrix or {}).get("cells") or {})


@dataclass
class Merge:
    suite: str
    planned: list[Any]  # testbed.matrix.runner.Cell, in the order a local run lists them
    axes: dict[str, list[str]]
    options: dict[str, Any]
    parts: list[Fetched] = field(default_factory=list)
    interrupted: bool = False


def _error_cell(cell: Any, reason: str) -> dict[str, Any]:
    return {"scenario": cell.scenario, "client": cell.client, "server": cell.server, "verdict": "error",
            "reason": reason, "expected_outcome": cell.expectation.expected_outcome,
            "expectations": cell.expectation.mode, "outcome": None, "name": cell.name, "timeout": cell.timeout,
            "experiment": None, "attempts": [], "dir": None, "files": {}, "measured": {}, "deviation": None,
            "evidence": "", "not_reproduced": []}


def _copy_part(src: Path, dst: Path) -> None:
    for rel in COPIED:
        if (src / rel).is_dir():
            shutil.copytree(src / rel, dst / rel, dirs_exist_ok=True, symlinks=True)
    for rel in COPIED_ONCE:
        if (src / rel).is_file() and not (dst / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)


def merge(m: Merge, results: Path, head: dict[str, Any], logs: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """Write the merged run into `results`; (its final directory, its matrix.json)."""
    from testbed.matrix import history, html
    from testbed.matrix import results as mresults
    from testbed.matrix.verdicts import change, summary

    run_dir = RunDir(results, f"matrix-{m.suite}")
    found: dict[str, tuple[dict[str, Any], str]] = {}
    first: dict[str, Any] | None = None
    impls: dict[str, Any] = {}
    scenarios: dict[str, Any] = {}
    host_info: dict[str, Any] = {}
    for part in m.parts:
        part.load()
        if part.matrix is None:
            continue
        first = first or part.matrix
        impls = {**part.matrix.get("implementations", {}), **impls}  # the first host's word wins
        scenarios = {**part.matrix.get("scenarios", {}), **scenarios}
        host_info[part.host] = part.matrix.get("host")
        assert part.archive is not None
        _copy_part(part.archive, run_dir.tmp)
        for key, entry in part.cells().items():
            if key in part.keys and key not in found:
                found[key] = (entry, part.host)
    why_missing: dict[str, str] = {}
    for part in m.parts:  # the first host's failure, then its retry's
        for key in part.keys:
            if key not in found:
                why = part.error or ("interrupted before it ran" if m.interrupted else "not in its archive")
                said = f"host {part.host} {part.status}: {why}"
                why_missing[key] = f"{why_missing[key]}; retried on {said}" if key in why_missing else said
    cells: dict[str, Any] = {}
    ran_on: dict[str, str | None] = {}
    for cell in m.planned:
        if cell.key in found:
            cells[cell.key], ran_on[cell.key] = found[cell.key]
        else:
            reason = why_missing.get(cell.key, "no host was given it")
            cells[cell.key], ran_on[cell.key] = _error_cell(cell, reason), None
    db = history.db_path(results)
    previous = history.previous_cells(db, m.suite)
    changes = {}
    for key, entry in cells.items():
        if previous is None:
            entry.pop("previous_verdict", None)
            entry.pop("change", None)
            continue
        entry["previous_verdict"] = before = previous.get(key, {}).get("verdict")
        entry["change"] = change(before, entry["verdict"])
        if entry["change"] in ("regression", "fix"):
            changes[key] = entry["change"]
    statuses = [p.matrix.get("status") for p in m.parts if p.matrix is not None]
    status = "interrupted" if m.interrupted or "interrupted" in statuses else "complete"
    finished = _now()
    known = _known(m.parts)
    base = first or {}
    matrix = {
        "schema": base.get("schema", mresults.MATRIX_SCHEMA), "schema_version": mresults.MATRIX_SCHEMA_VERSION,
        "suite": base.get("suite") or {"name": m.suite, "description": "", "file": head["inputs"]["suite"]["file"]},
        "run_id": run_dir.name, "status": status, "started": head["started"], "finished": finished,
        "testbed_version": head["testbed_version"], "git_sha": head["git_sha"], "host": head["host"],
        "options": m.options, "verdicts": base.get("verdicts"), "axes": m.axes, "summary": summary(c["verdict"] for c in cells.values()),
        "known_deviations": known, "implementations": impls, "scenarios": scenarios, "cells": cells,
        "history": {"previous_run": (next(iter(previous.values()), {}).get("run_id") if previous else None),
                    "regressions": sorted(k for k, v in changes.items() if v == "regression"),
                    "fixes": sorted(k for k, v in changes.items() if v == "fix")},
    }
    if not matrix.get("verdicts"):
        from testbed.matrix.verdicts import MEANING

        matrix["verdicts"] = dict(MEANING)
    run_dir.write_json("matrix.json", matrix)
    run_dir.write_text("report.md", mresults.report_md(matrix))
    run_dir.write_text("junit.xml", mresults.junit_xml(matrix))
    run_dir.write_text("report.html", html.render(matrix, run_dir.tmp))
    for name, text in logs.items():
        run_dir.write_text(f"logs/ansible/{name}", text)
    manifest = {**head, "schema_version": SCHEMA_VERSION, "run_id": run_dir.name, "finished": finished,
                "status": status, "summary": matrix["summary"], "hosts": host_info,
                "shards": [{"host": p.host, "cells": len(p.keys), "status": p.status, "error": p.error or None,
                            "retry_of": p.retry_of, "archive": p.archive.name if p.archive else None}
                           for p in m.parts],
                "cells": [{"client": c["client"], "server": c["server"], "scenario": c["scenario"],
                           "outcome": c["outcome"], "expected_outcome": c["expected_outcome"],
                           "verdict": c["verdict"], "attempts": len(c["attempts"]), "dir": c["dir"],
                           "reason": c["reason"], "host": ran_on[key]} for key, c in cells.items()]}
    final = run_dir.finalize(manifest)
    matrix["run_dir"] = str(final)
    try:
        history.record(db, matrix, final)
    except sqlite3.Error as exc:
        print(f"testbed: warning: the run was not added to the history index {db}: {exc}", file=sys.stderr)
    return final, matrix


def _known(parts: list[Fetched]) -> dict[str, Any] | None:
    listed = [p.matrix["known_deviations"] for p in parts if p.matrix and p.matrix.get("known_deviations")]
    if not listed:
        return None
    return {"file": listed[0].get("file"), "listed": listed[0].get("listed"),
            "reproduced": sorted({d for k in listed for d in k.get("reproduced", [])}),
            "not_reproduced": [n for k in listed for n in k.get("not_reproduced", [])]}


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
