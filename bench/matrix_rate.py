"""Cells per minute of `testbed matrix` over the `host` × `host` cells of the hackathon suite, at
--jobs 1 and --jobs 2. Cells that do not run here (unavailable, unsupported) are not counted.
Wall time is the whole `testbed matrix` command (planning, every cell's `testbed run`, archive).
Needs root.

    sudo .venv/bin/python bench/matrix_rate.py [--jobs 1,2] [--scenarios a,b] [--suite PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchjson

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "experiments" / "suites" / "hackathon.yaml"


def run(jobs: int, suite: Path, scenarios: str | None, results: Path) -> dict:
    argv = [sys.executable, "-m", "testbed", "matrix", str(suite), "--clients", "host", "--servers", "host",
            "--jobs", str(jobs), "--results", str(results)]
    if scenarios:
        argv += ["--scenarios", scenarios]
    start = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent)
    wall = time.perf_counter() - start
    m = re.search(r"^archive: (.+)$", r.stdout, re.M)
    if m is None:
        raise SystemExit(f"testbed matrix failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    matrix = json.loads((Path(m.group(1)) / "matrix.json").read_text())
    ran = [c for c in matrix["cells"].values() if c["attempts"]]
    cell_seconds = sorted(sum(a["seconds"] for a in c["attempts"]) for c in ran)
    return {"jobs": jobs, "wall": wall, "cells": len(ran), "summary": matrix["summary"],
            "per_minute": 60 * len(ran) / wall if wall else 0.0,
            "median_cell": cell_seconds[len(cell_seconds) // 2] if cell_seconds else 0.0,
            "slowest": max(((sum(a["seconds"] for a in c["attempts"]), k) for k, c in matrix["cells"].items()
                            if c["attempts"]), default=(0.0, "-"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (default 1,2)")
    ap.add_argument("--scenarios", help="a subset of the suite's scenarios (default: all)")
    ap.add_argument("--suite", type=Path, default=SUITE)
    ap.add_argument("--json", default=None, help="also write the figures to this file (bench/run_all.py)")
    args = ap.parse_args()
    results = Path(tempfile.mkdtemp(prefix="testbed-matrix-bench-"))
    try:
        rows = [run(int(j), args.suite, args.scenarios, results) for j in args.jobs.split(",")]
    finally:
        shutil.rmtree(results, ignore_errors=True)
    print(f"host × host cells of {args.suite.name}" + (f" ({args.scenarios})" if args.scenarios else ""))
    print(f"{'jobs':>4} {'cells':>5} {'wall s':>8} {'cells/min':>9} {'median cell s':>13}  slowest cell    verdicts")
    for r in rows:
        verdicts = ", ".join(f"{n} {v}" for v, n in r["summary"].items() if n)
        print(f"{r['jobs']:>4} {r['cells']:>5} {r['wall']:>8.1f} {r['per_minute']:>9.1f} {r['median_cell']:>13.1f}  "
              f"{r['slowest'][1]} ({r['slowest'][0]:.1f} s)    {verdicts}")
    notes = []
    if len(rows) > 1 and rows[0]["wall"]:
        notes.append(f"speed-up --jobs {rows[-1]['jobs']} over --jobs {rows[0]['jobs']}: "
                     f"{rows[0]['wall'] / rows[-1]['wall']:.2f}x")
        print(notes[-1])
    benchjson.write(args.json, "matrix_rate", [benchjson.table(
        f"host × host cells of {args.suite.name}" + (f" ({args.scenarios})" if args.scenarios else ""),
        ["jobs", "cells", "wall s", "cells/min", "median cell s", "slowest cell", "verdicts"],
        [[r["jobs"], r["cells"], f"{r['wall']:.1f}", f"{r['per_minute']:.1f}", f"{r['median_cell']:.1f}",
          f"{r['slowest'][1]} ({r['slowest'][0]:.1f} s)", ", ".join(f"{n} {v}" for v, n in r["summary"].items() if n)]
         for r in rows])], notes=notes, figures={"runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
