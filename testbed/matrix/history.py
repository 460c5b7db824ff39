"""The matrix history index: one sqlite file beside the archives (`<results>/history.sqlite`), one
row per matrix run and one per cell per run. `testbed history` reads it: per cell, the change
since the previous run of the same suite (regression: was as-expected, now unexpected; fix: the
reverse) and the flake rate over the last N runs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from testbed.matrix.verdicts import change

DB_NAME = "history.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite TEXT NOT NULL, started TEXT, finished TEXT, status TEXT,
    dir TEXT, git_sha TEXT, kernel TEXT, options TEXT, summary TEXT);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT NOT NULL REFERENCES runs(run_id), cell TEXT NOT NULL, scenario TEXT, client TEXT,
    server TEXT, verdict TEXT, outcome TEXT, expected_outcome TEXT, attempts INTEGER, attempt_verdicts TEXT,
    reason TEXT, dir TEXT, PRIMARY KEY (run_id, cell));
CREATE INDEX IF NOT EXISTS runs_by_suite ON runs (suite, started);
"""


def db_path(results: Path) -> Path:
    return results / DB_NAME


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        db.executescript(SCHEMA)
        with db:
            yield db


def record(path: Path, matrix: dict[str, Any], run_dir: Path) -> None:
    """Index a finished matrix run (its final directory) and its cells."""
    with connect(path) as db:
        db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (matrix["run_id"], matrix["suite"]["name"], matrix["started"], matrix["finished"],
                    matrix["status"], str(run_dir), matrix.get("git_sha"), (matrix.get("host") or {}).get("kernel"),
                    json.dumps(matrix["options"]), json.dumps(matrix["summary"])))
        db.executemany("INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [
            (matrix["run_id"], key, c["scenario"], c["client"], c["server"], c["verdict"], c["outcome"],
             c["expected_outcome"], len(c["attempts"]), json.dumps([a["verdict"] for a in c["attempts"]]),
             c["reason"], c["dir"]) for key, c in matrix["cells"].items()])


def runs(path: Path, suite: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
    """Matrix runs, newest first."""
    if not path.exists():
        return []
    with connect(path) as db:
        q = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "") + " ORDER BY started DESC, run_id DESC"
        rows = db.execute(q + (f" LIMIT {int(last)}" if last else ""), (suite,) if suite else ()).fetchall()
        return [dict(r) for r in rows]


def cells(path: Path, run_id: str) -> dict[str, dict[str, Any]]:
    with connect(path) as db:
        return {r["cell"]: dict(r) for r in db.execute("SELECT * FROM cells WHERE run_id = ?", (run_id,))}


def previous_cells(path: Path, suite: str) -> dict[str, dict[str, Any]] | None:
    """The cells of the latest complete run of `suite` (the one a new run is compared with)."""
    for run in runs(path, suite):
        if run["status"] == "complete":
            return cells(path, run["run_id"])
    return None


def verdicts(path: Path, suite: str, last: int = 10) -> dict[str, list[str]]:
    """Per cell, its verdicts in the last `last` complete runs of `suite`, newest first."""
    series: dict[str, list[str]] = {}
    for run in runs(path, suite, last):
        if run["status"] == "complete":
            for key, c in cells(path, run["run_id"]).items():
                series.setdefault(key, []).append(c["verdict"])
    return series


def report(path: Path, suite: str | None = None, last: int = 10) -> list[dict[str, Any]]:
    """Per suite: the latest run, and per cell of it the change since the previous complete run and
    the flake rate (share of runs, of the last `last`, in which the cell was flaky)."""
    out = []
    suites = [suite] if suite else sorted({r["suite"] for r in runs(path)})
    for name in suites:
        recent = runs(path, name, last)
        if not recent:
            continue
        latest = recent[0]
        now = cells(path, latest["run_id"])
        before_run = next((r for r in recent[1:] if r["status"] == "complete"), None)
        before = cells(path, before_run["run_id"]) if before_run else {}
        series: dict[str, list[str]] = {}
        for run in reversed(recent):
            for key, c in cells(path, run["run_id"]).items():
                series.setdefault(key, []).append(c["verdict"])
        rows = []
        for key, c in sorted(now.items()):
            seen = series.get(key, [])
            rows.append({"cell": key, "verdict": c["verdict"], "previous": (before.get(key) or {}).get("verdict"),
                         "change": change((before.get(key) or {}).get("verdict"), c["verdict"]) if before_run else "new",
                         "flake_rate": round(seen.count("flaky") / len(seen), 3) if seen else 0.0,
                         "runs": len(seen), "series": seen, "reason": c["reason"]})
        out.append({"suite": name, "latest": latest, "previous": before_run, "runs": len(recent), "cells": rows})
    return out
