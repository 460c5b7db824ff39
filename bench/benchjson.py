"""The `--json FILE` output every benchmark writes, read by bench/run_all.py to write RESULTS.md.

One JSON object per benchmark run: which bench, the command line, one or more tables (columns and
rows of printable cells) and free-text notes. Kept to the standard library so that every bench can
import it from its own directory (a script's directory is on sys.path).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SCHEMA = 1


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A table: every cell is turned into text here, so the writer never guesses at formats."""
    return {"title": title, "columns": list(columns), "rows": [[_cell(c) for c in row] for row in rows]}


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write(path: str | Path | None, bench: str, tables: list[dict[str, Any]], notes: list[str] | None = None,
          figures: dict[str, Any] | None = None) -> None:
    """Write the bench's result to `path` (nothing when None). `figures`: raw numbers, for machines."""
    if path is None:
        return
    argv = sys.argv[1:]
    if "--json" in argv:  # where the result went is no part of how it was measured
        i = argv.index("--json")
        argv = argv[:i] + argv[i + 2:]
    data = {"schema": SCHEMA, "bench": bench, "argv": argv,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tables": tables, "notes": list(notes or []), "figures": figures or {}}
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
