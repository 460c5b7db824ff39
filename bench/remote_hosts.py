"""Set-up and teardown of hosts on a remote machine (the ssh node backend) against the same topology
all in namespaces: N hosts around one router, each pinging it; with `--remote`, every host runs on
one SSH machine (an sshd in a namespace of this machine, tests/sshhosts.py), each in a namespace of
its own there with a VXLAN tunnel to the router. Prints the run's phase times from its manifest.
Needs root.

    sudo .venv/bin/python bench/remote_hosts.py [--hosts 10]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def topology(n: int, inventory: Path | None) -> dict:
    remote = {"remote": {"inventory": str(inventory), "host": "lab1"}} if inventory else {}
    nodes = {"r": {"kind": "router"}, **{f"h{i}": {"kind": "host", **remote} for i in range(n)}}
    links = [[f"h{i}:eth0", f"r:eth{i}"] for i in range(n)]
    return {"name": "remote-star", "nodes": nodes, "links": links}


def run(work: Path, n: int, inventory: Path | None) -> dict:
    topo = work / f"topo-{bool(inventory)}.yaml"
    topo.write_text(json.dumps(topology(n, inventory)))
    exp = work / f"exp-{bool(inventory)}.yaml"
    exp.write_text(json.dumps({"name": "remote-star", "topology": {"file": str(topo)},
                               "workloads": [{"type": "ping", "client": "h0", "server": "r", "count": 5,
                                              "interval": "0.1s"}]}))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "testbed", "run", str(exp), "--results", str(work / "results")],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    found = re.findall(r"archive: (.+)", r.stdout)
    if not found:
        raise SystemExit(f"testbed run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    m = json.loads((Path(found[-1].strip()) / "manifest.json").read_text())
    return {"wall": wall, "timing": m.get("timing", {}), "status": m["status"], "rc": r.returncode,
            "error": m.get("error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10)
    args = ap.parse_args()
    from tests.sshhosts import SshHosts, missing_capability

    why = missing_capability()
    if why:
        raise SystemExit(f"cannot run: {why}")
    with tempfile.TemporaryDirectory(prefix="tb-remote-bench-") as tmp:
        work = Path(tmp)
        with SshHosts(1, work / "ssh") as hosts:
            inv = work / "hosts.yml"
            inv.write_text(json.dumps({"all": {"hosts": {"lab1": hosts[0].inventory_vars()}}}))
            rows = [("namespaces", run(work, args.hosts, None)), ("remote", run(work, args.hosts, inv))]
            left = subprocess.run(hosts[0].ssh_argv("ip", "netns", "list"), capture_output=True, text=True).stdout
    print(f"{args.hosts} hosts around one router, ping h0 → r")
    print(f"{'where':<12}{'wall s':>8}{'network s':>11}{'stacks s':>10}{'teardown s':>12}  status")
    for name, row in rows:
        t = row["timing"]
        print(f"{name:<12}{row['wall']:>8.1f}{t.get('network', 0):>11.2f}{t.get('stacks', 0):>10.2f}"
              f"{t.get('teardown', 0):>12.2f}  {row['status']} (exit {row['rc']})")
        if row["error"]:
            print(f"  error: {row['error']}")
    ours = [n for n in left.split() if re.match(r"tb[0-9a-f]+-", n)]
    print(f"namespaces of ours left on the machine: {len(ours)}")


if __name__ == "__main__":
    main()
