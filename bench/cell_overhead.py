"""Wall time of one `testbed run` cell against the bare-script floor (shared/bench/bare_netns_cell.sh).

Both do the same work: two namespaces joined by two paths, upstream MPTCP with one extra subflow
endpoint, a 20 MB transfer checked end to end, join counters read, teardown. Runs alternate, five of
each; medians are printed with their ratio (target: at most 2x). Needs root.

    sudo .venv/bin/python bench/cell_overhead.py [--runs 5] [--bare PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchjson

HERE = Path(__file__).resolve().parent


def find_bare() -> Path | None:
    for base in (HERE.parent, *HERE.parents):
        candidate = base / "shared" / "bench" / "bare_netns_cell.sh"
        if candidate.exists():
            return candidate
    return None


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    return elapsed, r.stdout


def timed_bare(argv: list[str], failures: list[str]) -> float:
    """The bare script's own end-to-end check sometimes fails (its client reads the 64-byte digest
    with one recv, which can return short); such a run is retried, and counted in the report."""
    for _ in range(3):
        start = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            return time.perf_counter() - start
        failures.append((r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1])
    raise SystemExit(f"bare script failed 3 times in a row: {failures[-3:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bare", type=Path, default=find_bare())
    ap.add_argument("--json", default=None, help="also write the figures to this file (bench/run_all.py)")
    args = ap.parse_args()
    if args.bare is None or not args.bare.exists():
        print("bare_netns_cell.sh not found; pass --bare PATH", file=sys.stderr)
        return 2
    testbed = Path(sys.executable).with_name("testbed")
    results = Path(tempfile.mkdtemp(prefix="testbed-bench-"))
    bare_times, cell_times, phases = [], [], []
    bare_failures: list[str] = []
    try:
        for _ in range(args.runs):
            bare_times.append(timed_bare(["bash", str(args.bare), "20"], bare_failures))
            t, _ = timed([str(testbed), "run", str(HERE / "cell.yaml"), "--results", str(results)])
            cell_times.append(t)
            run_dir = sorted(p for p in results.iterdir() if p.is_dir())[-1]
            phases.append(json.loads((run_dir / "manifest.json").read_text())["timing"])
    finally:
        shutil.rmtree(results, ignore_errors=True)
    bare, cell = statistics.median(bare_times), statistics.median(cell_times)
    print(f"bare script   median {bare:.3f} s  runs {' '.join(f'{t:.3f}' for t in bare_times)}")
    print(f"testbed run   median {cell:.3f} s  runs {' '.join(f'{t:.3f}' for t in cell_times)}")
    print(f"ratio         {cell / bare:.2f}x  (target <= 2x)")
    if bare_failures:
        print(f"bare script   {len(bare_failures)} run(s) failed its own check and were rerun: {bare_failures[0]}")
    keys = phases[0].keys()
    medians = {k: statistics.median(p[k] for p in phases) for k in keys}
    print("testbed phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    benchjson.write(args.json, "cell_overhead", [
        benchjson.table("One cell: testbed run against the bare script", ["", "median s", "runs s"],
                        [["bare script", f"{bare:.3f}", " ".join(f"{t:.3f}" for t in bare_times)],
                         ["testbed run", f"{cell:.3f}", " ".join(f"{t:.3f}" for t in cell_times)]]),
        benchjson.table("testbed run phases (median s)", list(medians), [[f"{v:.3f}" for v in medians.values()]])],
        notes=[f"ratio {cell / bare:.2f}x (target <= 2x)"]
        + ([f"bare script: {len(bare_failures)} run(s) failed its own check and were rerun"] if bare_failures else []),
        figures={"bare_s": bare_times, "testbed_s": cell_times, "ratio": cell / bare, "phases": medians})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
