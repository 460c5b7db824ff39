"""Set-up, shaping and teardown cost of large topologies, against Mininet's own bring-up.

For each topology (chain: client, N routers, server, every inner link shaped; star: N dual-homed
clients in pods of switches, two planes, a core router) and each N, one `testbed run` with a 1 MB
transfer end to end, then plain Mininet (LinuxBridge, controller=None) building and stopping the
same nodes and links in a fresh process, as the reference. Prints per run: the testbed's phases
(network = namespaces, links, addresses and routes; shaping; teardown), set-up + teardown, the cost
per node, the peak RSS of the testbed process, and Mininet's bring-up and stop. Needs root.

    sudo .venv/bin/python bench/scale.py [--sizes 10,100,1000] [--topologies chain,star]
                                         [--max-delay-lines 100] [--no-mininet] [--testbed PATH]

The fallback shaping backend (kernels without sch_netem) runs one delay-line process (~16 MB) per
delayed link direction: the chain delays every k-th inner link so that at most --max-delay-lines
run (k is printed); rates are on every inner link. An IPv4 packet crosses at most 255 routers, so
past 250 routers the chain's transfer ends at router 249.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TTL_REACH = 250

MININET_REFERENCE = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from testbed.emulation.mininet_import import mininet_modules
from testbed.spec.load import load_topology
from testbed.errors import Problem

mn_net, mn_node, mn_nodelib = mininet_modules()
spec = json.loads(sys.argv[1])
overrides = {k: (v, Problem("<bench>", None, None, k, "")) for k, v in spec["set"].items()}
topo = load_topology(Path(spec["file"]), overrides).topology
start = time.perf_counter()
net = mn_net.Mininet(topo=None, controller=None, switch=mn_nodelib.LinuxBridge, build=False)
names = {}
for name, node in topo.nodes.items():
    if node.kind == "switch":  # root-namespace names: short (ports add "-eth1000") and this process's own
        names[name] = net.addSwitch(f"s{os.getpid() % 1000}x{len(net.switches)}")
    else:
        names[name] = net.addHost(name)
for link in topo.links:
    a, b = link.endpoints
    net.addLink(names[a.node], names[b.node])
net.build()
net.start()
up = time.perf_counter() - start
start = time.perf_counter()
net.stop()
print(json.dumps({"up": up, "stop": time.perf_counter() - start}))
"""


def timed_child(argv: list[str], timeout: float) -> tuple[float, int, int, str, str]:
    """(wall seconds, exit code, peak RSS in KiB, stdout, stderr) of a child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.send_signal(2)  # SIGINT: the testbed tears down and archives "interrupted"
                deadline = time.monotonic() + 60
                timeout = float("inf")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return wall, proc.returncode, usage.ru_maxrss, out.read().decode(errors="replace"), \
            err.read().decode(errors="replace")


def experiment(kind: str, n: int, max_lines: int, workdir: Path) -> tuple[Path, dict, int, int]:
    """The experiment file for one run, the topology's parameters, its node count and delay lines."""
    if kind == "chain":
        links = max(n - 1, 1)
        every = max(1, -(-2 * links // max_lines))  # two directions per delayed link
        params = {"n": n, "delay_every": every}
        nodes, lines = n + 2, 2 * len(range(0, n - 1, every))
        server = f"r{TTL_REACH - 1}" if n > TTL_REACH else "server"
        text = (HERE / "scale-chain.yaml").read_text().replace(
            "{type: bulk, size: 1MB}", f"{{type: bulk, size: 1MB, server: {server}}}")
    else:
        params = {"n": n}
        pods = -(-n // 100)
        nodes, lines = n + 2 * pods + 4, 4
        text = (HERE / "scale-star.yaml").read_text()
    text = text.replace("file: ../topologies/", f"file: {ROOT / 'topologies'}/")
    text = text.replace("set: {n: 10}", "set: " + json.dumps(params))
    path = workdir / f"{kind}-{n}.yaml"
    path.write_text(text + "timeout: 600s\n")
    return path, params, nodes, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="comma-separated N")
    ap.add_argument("--topologies", default="chain,star")
    ap.add_argument("--max-delay-lines", type=int, default=100)
    ap.add_argument("--no-mininet", action="store_true", help="skip the plain-Mininet reference")
    ap.add_argument("--testbed", default=str(Path(sys.executable).with_name("testbed")),
                    help="the testbed executable to measure (e.g. another checkout's, for before/after)")
    ap.add_argument("--json", default=None, help="also write the figures to this file (bench/run_all.py)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/scale.py needs root (network namespaces)", file=sys.stderr)
        return 3
    sizes = [int(x) for x in args.sizes.split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="testbed-scale-"))
    print(f"{'topology':8} {'N':>5} {'nodes':>5} {'dl':>3} {'network':>8} {'stacks':>7} {'shaping':>8} "
          f"{'teardown':>8} {'set+tear':>8} {'per node':>9} {'wall':>7} {'RSS MB':>7} {'result':>9} | "
          f"{'mininet up':>10} {'stop':>6} {'RSS MB':>7}")
    table = []
    for kind in args.topologies.split(","):
        for n in sizes:
            exp, params, nodes, lines = experiment(kind, n, args.max_delay_lines, work)
            results = work / f"res-{kind}-{n}"
            wall, code, rss, _, err = timed_child([args.testbed, "run", str(exp), "--results", str(results)], 900)
            runs = sorted(p for p in results.glob("*") if p.is_dir() and not p.name.startswith("."))
            t: dict = {}
            result = f"exit {code}"
            if runs:
                m = json.loads((runs[-1] / "manifest.json").read_text())
                t = m.get("timing", {})
                bulk = next(iter(m.get("workloads", {}).values()), {})
                result = "intact" if bulk.get("intact") else (m.get("status") if m.get("status") != "complete"
                                                              else "failed")
            elif err.strip():
                result = err.strip().splitlines()[-1][:40]
            setup = sum(t.get(k, 0.0) for k in ("network", "stacks", "shaping", "teardown"))
            row = (f"{kind:8} {n:>5} {nodes:>5} {lines:>3} {t.get('network', 0):>8.2f} {t.get('stacks', 0):>7.2f} "
                   f"{t.get('shaping', 0):>8.2f} {t.get('teardown', 0):>8.2f} {setup:>8.2f} "
                   f"{1000 * setup / nodes:>7.1f}ms {wall:>7.1f} {rss / 1024:>7.0f} {result:>9} |")
            if not args.no_mininet:
                spec = {"file": str(ROOT / "topologies" / f"{kind}.yaml.j2"), "set": params}
                _, mcode, mrss, mout, merr = timed_child(
                    [sys.executable, "-c", MININET_REFERENCE, json.dumps(spec), str(ROOT)], 900)
                try:
                    ref = json.loads(mout.strip().splitlines()[-1])
                    row += f" {ref['up']:>9.2f}s {ref['stop']:>5.2f}s {mrss / 1024:>7.0f}"
                except (ValueError, IndexError):
                    row += f" mininet failed ({mcode}): {merr.strip()[-80:]}"
            print(row, flush=True)
            table.append([kind, n, nodes, lines, *(f"{t.get(k, 0):.2f}" for k in ("network", "stacks", "shaping",
                                                                                 "teardown")),
                          f"{setup:.2f}", f"{1000 * setup / nodes:.1f} ms", f"{wall:.1f}", f"{rss / 1024:.0f}",
                          result, row.split("|", 1)[1].strip() or "—"])
    legend = ("dl: delay-line processes; set+tear: network + stacks + shaping + teardown; per node: that / nodes; "
              "wall: the whole `testbed run`, loading and archiving included; RSS: peak of the process")
    print(f"({legend})")
    benchjson.write(args.json, "scale", [benchjson.table(
        "testbed run set-up and teardown (s), and plain Mininet's bring-up of the same nodes",
        ["topology", "N", "nodes", "dl", "network", "stacks", "shaping", "teardown", "set+tear", "per node",
         "wall", "RSS MB", "result", "Mininet up, stop, RSS MB"], table)], notes=[legend])
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
