"""Per-cell cost of a reused QEMU guest in the matrix, against the same cells on this machine's kernel.

Runs one `testbed matrix` (jobs 1) with clients `host` and a guest implementation (default
linux-6.1) against server `host` over a few short scenarios. The matrix boots the guest once and
lends it to every guest cell. Prints, per scenario, the host cell's and the guest cell's wall time
(the `testbed run` subprocess, reset and give-back included), the first guest cell (which waited
for the boot) apart, and the medians; and the boot itself. Then where the guest's extra time goes:
the median of each run phase (the cells' own `timing`; teardown includes the guest's reset), host
cells against reused guest cells, and the load average (TCG guests slow down a lot on a busy machine).

    sudo .venv/bin/python bench/guest_reuse.py [--guest linux-6.1] [--scenarios a,b,c] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchjson

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = "basic-handshake,tcp-client,tcp-server,subflow-join,signal-address,signal-port,c-flag,checksum-one-side"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest", default="linux-6.1")
    parser.add_argument("--scenarios", default=SCENARIOS)
    parser.add_argument("--results", type=Path, default=None, help="where the matrix archive goes (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this file (bench/run_all.py)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("guest_reuse: needs root (namespaces, TAP devices)", file=sys.stderr)
        return 3
    results = args.results or Path(tempfile.mkdtemp(prefix="bench-guest-reuse-"))
    argv = [sys.executable, "-m", "testbed", "matrix", str(ROOT / "experiments" / "suites" / "hackathon.yaml"),
            "--clients", f"host,{args.guest}", "--servers", "host", "--scenarios", args.scenarios,
            "--jobs", "1", "--results", str(results)]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    m = re.search(r"^archive: (.+)$", r.stdout, re.M)
    if m is None:
        print(r.stdout + r.stderr, file=sys.stderr)
        return 1
    run_dir = Path(m.group(1))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cells = json.loads((run_dir / "matrix.json").read_text())["cells"]
    ran = sorted((c for c in cells.values() if c["attempts"]), key=lambda c: c["attempts"][0].get("dir") or "")
    seconds = {(c["scenario"], c["client"]): sum(a["seconds"] for a in c["attempts"]) for c in ran}
    guest_cells = [c for c in ran if c["client"] == args.guest]
    if not guest_cells:
        print(f"no {args.guest} cell ran: {r.stdout[-2000:]}", file=sys.stderr)
        return 1
    first = guest_cells[0]["scenario"]
    print(f"{'scenario':<20} {'host s':>7} {args.guest + ' s':>13} {'extra s':>8}  verdicts")
    extra = []
    table = []
    for scenario in dict.fromkeys(c["scenario"] for c in ran):
        host, guest = seconds.get((scenario, "host")), seconds.get((scenario, args.guest))
        verdicts = "/".join(cells[f"{scenario}/{client}/host"]["verdict"] for client in ("host", args.guest)
                            if f"{scenario}/{client}/host" in cells)
        note = "  (first guest cell: waited for the boot)" if scenario == first else ""
        if host is not None and guest is not None and scenario != first:
            extra.append(guest - host)
        print(f"{scenario:<20} {host or float('nan'):7.2f} {guest or float('nan'):13.2f} "
              f"{(guest or 0) - (host or 0):8.2f}  {verdicts}{note}")
        table.append([scenario, f"{host or float('nan'):.2f}", f"{guest or float('nan'):.2f}",
                      f"{(guest or 0) - (host or 0):.2f}", verdicts + note])
    reused = [seconds[(c["scenario"], args.guest)] for c in guest_cells[1:]]
    hosts = [s for (_, client), s in seconds.items() if client == "host"]
    stats = manifest.get("guests", {})
    print(f"guests: booted {stats.get('booted')}, lent {stats.get('lent')}, reused {stats.get('reused')}, "
          f"discarded {stats.get('discarded')}, boot {stats.get('boot_seconds')} s")
    if stats.get("reset_seconds"):
        print(f"reset by the cells: median {statistics.median(stats['reset_seconds']):.2f} s; per step "
              + ", ".join(f"{k} {v:.2f} s" for k, v in stats.get("reset_step_median_seconds", {}).items()))
    if reused and hosts:
        print(f"median cell: host {statistics.median(hosts):.2f} s, reused {args.guest} guest "
              f"{statistics.median(reused):.2f} s; the guest adds a median {statistics.median(extra):.2f} s per cell "
              f"({len(extra)} scenarios)" if extra else "")
    phase_rows: list[list[object]] = []
    phases: dict[str, dict[str, list[float]]] = {}
    for c in ran:
        if c["client"] == args.guest and c["scenario"] == first:
            continue
        timing = (c.get("measured") or {}).get("timing") or {}
        for phase, s in timing.items():
            phases.setdefault(phase, {}).setdefault(c["client"], []).append(s)
    if phases:
        print(f"{'phase (median s)':<20} {'host':>7} {args.guest:>13} {'extra':>8}")
        for phase, by in phases.items():
            h, g = (statistics.median(by[k]) if by.get(k) else float("nan") for k in ("host", args.guest))
            print(f"{phase:<20} {h:7.2f} {g:13.2f} {g - h:8.2f}")
            phase_rows.append([phase, round(h, 2), round(g, 2), round(g - h, 2)])
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"archive: {run_dir}")
    notes = [f"guests: booted {stats.get('booted')}, lent {stats.get('lent')}, reused {stats.get('reused')}, "
             f"boot {stats.get('boot_seconds')} s"]
    if reused and hosts and extra:
        notes.append(f"median cell: host {statistics.median(hosts):.2f} s, reused {args.guest} guest "
                     f"{statistics.median(reused):.2f} s; the guest adds a median {statistics.median(extra):.2f} s "
                     f"per cell (target <= 1.5 s)")
    if stats.get("reset_seconds"):
        notes.append(f"reset by the cells: median {statistics.median(stats['reset_seconds']):.2f} s; per step "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in stats.get("reset_step_median_seconds", {}).items()))
    notes.append(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    tables = [benchjson.table(f"matrix cells, host and a reused {args.guest} guest client",
                              ["scenario", "host s", f"{args.guest} s", "extra s", "verdicts"], table)]
    if phase_rows:
        tables.append(benchjson.table("median seconds per run phase (teardown includes the guest's reset)",
                                      ["phase", "host", args.guest, "extra"], phase_rows))
    benchjson.write(args.json, "guest_reuse", tables,
        notes=notes, figures={"extra_s": extra, "reused_s": reused, "host_s": hosts, "guests": stats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
