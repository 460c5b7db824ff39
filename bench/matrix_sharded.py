"""Cells per minute of the same cells run locally and sharded over SSH hosts (`testbed matrix
--inventory`). The hosts are sshd servers in network namespaces on this machine
(tests/sshhosts.py), so they share its cores: the figure shows what sharding costs (planning,
ansible, fetching and merging archives) more than what separate machines would gain. Wall time is
the whole `testbed matrix` command. Needs root and ansible-runner.

    sudo .venv/bin/python bench/matrix_sharded.py [--hosts 2] [--scenarios a,b] [--jobs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITE = ROOT / "experiments" / "suites" / "hackathon.yaml"
SCENARIOS = "basic-handshake,tcp-client,tcp-server,subflow-join"
sys.path.insert(0, str(ROOT))


def matrix(argv: list[str], results: Path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "testbed", "matrix", str(SUITE), *argv, "--results", str(results)],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    found = re.findall(r"^archive: (.+)$", r.stdout, re.M)
    if not found:
        raise SystemExit(f"testbed matrix failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    mx = json.loads((Path(found[-1]) / "matrix.json").read_text())
    ran = [c for c in mx["cells"].values() if c["attempts"]]
    return {"wall": wall, "cells": len(ran), "per_minute": 60 * len(ran) / wall if wall else 0.0,
            "verdicts": {k: c["verdict"] for k, c in mx["cells"].items()}, "summary": mx["summary"]}


def main() -> int:
    from tests.sshhosts import SshHosts, missing_capability

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--scenarios", default=SCENARIOS)
    ap.add_argument("--clients", default="host,tcp")
    ap.add_argument("--servers", default="host")
    ap.add_argument("--jobs", type=int, default=1, help="--jobs locally and on each host")
    args = ap.parse_args()
    why = missing_capability()
    if why:
        raise SystemExit(f"cannot run: {why}")
    work = Path(tempfile.mkdtemp(prefix="testbed-sharded-bench-"))
    try:
        cells = [{"client": c, "server": s, "scenario": x} for x in args.scenarios.split(",")
                 for c in args.clients.split(",") for s in args.servers.split(",")]
        (work / "cells.json").write_text(json.dumps(cells))
        common = ["--cells", str(work / "cells.json"), "--jobs", str(args.jobs)]
        local = matrix(common, work / "local")
        with SshHosts(args.hosts, work / "ssh") as hosts:
            inv = hosts.inventory()
            for h in inv["all"]["children"]["testbed_hosts"]["hosts"].values():
                h.update({"testbed_dir": str(ROOT), "testbed_python": sys.executable, "remote_results": "/srv/results"})
            (work / "hosts.yml").write_text(json.dumps(inv))
            sharded = matrix([*common, "--inventory", str(work / "hosts.yml")], work / "sharded")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(cells)} cells of {SUITE.name} ({args.scenarios}; clients {args.clients}; servers {args.servers}), "
          f"--jobs {args.jobs}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'where':>14} {'cells run':>9} {'wall s':>8} {'cells/min':>9}")
    for name, r in (("local", local), (f"{args.hosts} ssh hosts", sharded)):
        print(f"{name:>14} {r['cells']:>9} {r['wall']:>8.1f} {r['per_minute']:>9.1f}")
    same = local["verdicts"] == sharded["verdicts"]
    print(f"verdicts identical: {'yes' if same else 'NO'}; sharded/local wall: {sharded['wall'] / local['wall']:.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
