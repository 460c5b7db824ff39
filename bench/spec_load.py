"""What loading a large topology costs: rendering, YAML parsing, validation and resolution
(addresses and routes), each in wall and CPU seconds, and the peak RSS, per topology and size.

    .venv/bin/python bench/spec_load.py [--sizes 100,1000,3000] [--topologies chain,star]
                                        [--root OTHER_CHECKOUT]

No root needed: nothing is built. Each size runs in a fresh process (peak RSS is per run). CPU
seconds are the figure to compare on a shared machine; wall includes waiting for the CPU.
`--root` measures another checkout's testbed (e.g. before a change) with the same code here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import benchjson  # bench/ is on sys.path: this script's own directory

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from testbed.errors import Problem
from testbed.spec import source, template
from testbed.spec.resolve import resolve
from testbed.spec.topology import Topology

kind, n = sys.argv[2], int(sys.argv[3])
out = {}
def cpu():  # this process and its children: the template renders in a forked child
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime

clock = (time.perf_counter(), cpu())

def lap(name):
    global clock
    now = (time.perf_counter(), cpu())
    out[name] = (now[0] - clock[0], now[1] - clock[1])
    clock = now

tpl = template.Template(Path(sys.argv[4]) / f"{kind}.yaml.j2")
text = tpl.render(tpl.values({"n": (n, Problem("<bench>", None, None, "n", ""))}))
lap("render")
doc = source.parse_yaml(text, "bench")
lap("parse")
topo = source.validate(Topology, doc)
lap("validate")
res = resolve(topo, doc)
lap("resolve")
out["nodes"] = len(topo.nodes)
out["routes"] = sum(len(r) for r in res.routes.values())
out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,3000")
    ap.add_argument("--topologies", default="chain,star")
    ap.add_argument("--root", default=str(ROOT), help="checkout whose testbed is measured")
    ap.add_argument("--json", help="also write the figures here (bench/benchjson.py), for bench/run_all.py")
    args = ap.parse_args()
    rows: list[list[object]] = []
    phases = ("render", "parse", "validate", "resolve")
    print(f"{'topology':8} {'N':>5} {'nodes':>5} " + " ".join(f"{p:>13}" for p in phases)
          + f" {'total':>13} {'routes':>8} {'RSS MB':>7}")
    for kind in args.topologies.split(","):
        for n in [int(x) for x in args.sizes.split(",") if x]:
            r = subprocess.run([sys.executable, "-c", CHILD, args.root, kind, str(n), str(ROOT / "topologies")],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{kind:8} {n:>5} failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]}")
                continue
            m = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append([kind, n, m["nodes"], *(f"{m[p][1]:.2f} ({m[p][0]:.2f})" for p in phases),
                         f"{sum(m[p][1] for p in phases):.2f}", m["routes"], round(m["rss"])])
            cells = [f"{m[p][1]:>5.2f} ({m[p][0]:>5.2f})" for p in phases]
            total = (sum(m[p][0] for p in phases), sum(m[p][1] for p in phases))
            print(f"{kind:8} {n:>5} {m['nodes']:>5} " + " ".join(cells)
                  + f" {total[1]:>5.2f} ({total[0]:>5.2f}) {m['routes']:>8} {m['rss']:>7.0f}", flush=True)
    note = ("CPU seconds, the rendering child's included, wall in brackets; routes: resolved, all nodes "
            "and tables; RSS: peak of the process")
    print(f"({note})")
    benchjson.write(args.json, "spec_load", [benchjson.table(
        "Loading a topology: render, parse, validate, resolve",
        ["topology", "N", "nodes", *phases, "total CPU s", "routes", "RSS MB"], rows)], [note])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
