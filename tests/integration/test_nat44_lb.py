"""NAT44, the stateless load balancer and the shared bottleneck, run as a user runs them
(`testbed run`), judged from the archives' counters; invalid combinations refused; and each
function's stop() removing what its start() added."""

from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path

import pytest

from testbed.archive.store import verify
from testbed.emulation.functions.base import FunctionContext
from testbed.emulation.functions.lb import LoadBalancer
from testbed.emulation.functions.nat44 import Nat44
from testbed.emulation.nodeexec import run
from testbed.spec.load import load_topology
from testbed.state import RunState, sweep
from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]


def run_experiment(name: str, results: Path) -> tuple[dict, Path]:
    r = run_cli("run", str(ROOT / "experiments" / f"{name}.yaml"), "--results", str(results), timeout=120)
    run_dir = next(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("."))
    m = json.loads((run_dir / "manifest.json").read_text())
    assert r.returncode == 0, r.stdout + r.stderr + json.dumps(m.get("checks"), indent=1)
    assert m["status"] == "complete" and m["outcome"] == "mptcp" and "teardown_errors" not in m
    assert all(c["verdict"] in ("pass", "info") for c in m["checks"])
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    return m, run_dir


def mptcp(m: dict, node: str, name: str) -> int:
    return m["counters"].get(node, {}).get(f"MPTcpExt{name}", 0)


def check(m: dict, name: str) -> dict:
    return next(c for c in m["checks"] if c["name"] == name)


def test_nat44_join(tmp_path):
    m, run_dir = run_experiment("nat44-join", tmp_path)
    assert mptcp(m, "client", "MPJoinSynAckRx") == 1 and mptcp(m, "server", "MPJoinAckRx") == 1
    nat = m["functions"]["nat"]
    assert nat["outside_address"] == "10.0.3.1" and nat["randomize_ports"] is True
    # The server saw the join from the NAT's address, never from the client's cellular one.
    peers = check(m, "peers of server")
    assert "10.0.3.1" in peers["measured"] and "10.0.2.1" not in peers["measured"]
    # The NAT's own record: the masquerade rule counted the join's packets out, the forward filter let
    # the answers in, and conntrack holds the translation (client's cellular address → the NAT's).
    final = (run_dir / "functions/nat/nat44-final.nft").read_text()
    assert "masquerade fully-random" in final
    answers = next(line for line in final.splitlines() if 'comment "answers"' in line)
    assert int(answers.split("packets ")[1].split()[0]) > 100
    entry = next(line for line in (run_dir / "functions/nat/conntrack.txt").read_text().splitlines()
                 if "dport=5201" in line)
    assert "src=10.0.2.1" in entry and "dst=10.0.3.1" in entry


def test_lb_naive_join_is_refused(tmp_path):
    m, run_dir = run_experiment("lb-naive", tmp_path)
    served = m["workloads"]["bulk"]["served_by"]
    assert len(served) == 1
    other = ({"server0", "server1"} - set(served)).pop()
    # The join went out, hashed to the other server, which had no such token.
    assert mptcp(m, "client", "MPJoinSynTx") == 1 and mptcp(m, "client", "MPJoinSynAckRx") == 0
    assert mptcp(m, other, "MPJoinNoTokenFound") == 1 and mptcp(m, served[0], "MPJoinSynRx") == 0
    assert m["workloads"]["bulk"]["servers"][other]["errors"] == ["terminated by SIGTERM"]  # idle, stopped
    final = (run_dir / "functions/lb/lb-final.nft").read_text()
    counts = {line.split('comment "to ')[1].rstrip('"'): int(line.split("packets ")[1].split()[0])
              for line in final.splitlines() if 'comment "to ' in line}
    assert counts[other] == 1 and counts[served[0]] > 1000  # one SYN to the wrong one; the transfer


def test_lb_cflag_join_bypasses_the_balancer(tmp_path):
    m, run_dir = run_experiment("lb-cflag", tmp_path)
    served = m["workloads"]["bulk"]["served_by"][0]
    assert m["stacks"][served]["sysctls"]["net.mptcp.allow_join_initial_addr_port"] == "0"
    assert mptcp(m, served, "AddAddrTx") >= 1 and mptcp(m, "client", "AddAddr") >= 1
    assert mptcp(m, "client", "MPJoinSynAckRx") == 1 and mptcp(m, served, "MPJoinAckRx") == 1
    assert mptcp(m, "server0", "MPJoinNoTokenFound") + mptcp(m, "server1", "MPJoinNoTokenFound") == 0
    # The join carried data over cellular, and none of it through the balancer: the balancer's
    # counter for the serving server saw about the Wi-Fi subflow's half only.
    cell = check(m, "client:cell0")["measured"]
    assert cell > 2_000_000
    final = (run_dir / "functions/lb/lb-final.nft").read_text()
    line = next(x for x in final.splitlines() if f'comment "to {served}"' in x)
    assert int(line.split("bytes ")[1].split()[0]) < 10_000_000 - cell + 1_000_000


def test_shared_bottleneck_records_each_flows_share(tmp_path):
    m, _ = run_experiment("shared-bottleneck", tmp_path)
    found = {c["name"]: c["measured"] for c in m["checks"] if c["verdict"] == "info"}
    assert found["mptcp.share"] + found["tcp.share"] == pytest.approx(100, abs=0.02)
    assert 0 < found["tcp.share"] < 100 and 0 < found["mptcp.share"] < 100
    total = found["mptcp.goodput"] + found["tcp.goodput"]
    assert 0.8 * 30e6 < total <= 30e6  # both flows filled the 30 Mbit bottleneck together, no more
    assert found["mptcp.share"] == pytest.approx(100 * found["mptcp.goodput"] / total, abs=0.01)
    assert mptcp(m, "client", "MPJoinSynAckRx") >= 1  # two subflows
    assert mptcp(m, "other", "MPCapableSYNTX") == 0  # a plain TCP flow


def test_invalid_combination_is_refused_before_anything_runs(tmp_path):
    topo = tmp_path / "t.yaml"
    topo.write_text(textwrap.dedent("""
        name: t
        nodes:
          client: {}
          nat: {kind: nat44, outside: wan}
          lb: {kind: lb, backends: [s1, client]}
          s1: {}
        links:
          - [client, "nat:lan"]
          - ["nat:wan0", lb]
          - [lb, s1]
        """).lstrip())
    exp = tmp_path / "e.yaml"
    exp.write_text("name: e\ntopology: t.yaml\nworkloads: [{type: bulk, servers: [s1, s2]}]\n")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith(f"{topo}:4:") and "nodes.nat.outside: 'nat' has no interface 'wan'" in line
               for line in lines), lines
    assert any(line.startswith(f"{topo}:5:") and "nodes.lb.backends[1]: 'client' shares no link" in line
               for line in lines), lines
    assert not (tmp_path / "res").exists()


def test_functions_stop_removes_what_they_added(tmp_path):
    from testbed.emulation.network import Network

    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nnodes: {client: {}, nat: {kind: nat44, outside: eth1}, lb: {kind: lb, backends: "
                    "[s1, s2], virtual_address: 192.0.2.7}, lan: {kind: switch}, s1: {}, s2: {}}\n"
                    "links: [[client, nat], [nat, lb], [lb, lan], [s1, lan], [s2, lan]]\n")
    res = load_topology(topo).resolved
    state = RunState(f"test-functions-{secrets.token_hex(3)}")
    network = Network(res, state, tag=secrets.token_hex(3))
    try:
        network.start()
        node = network.node

        def snapshot() -> dict:
            return {"nat_tables": run(node("nat"), ["nft", "list", "tables"])[1],
                    "lb_tables": run(node("lb"), ["nft", "list", "tables"])[1],
                    "rules": run(node("lb"), ["ip", "rule", "show"])[1],
                    "lb_lo": run(node("lb"), ["ip", "-4", "addr", "show", "dev", "lo"])[1],
                    "s1_lo": run(node("s1"), ["ip", "-4", "addr", "show", "dev", "lo"])[1],
                    "s1_arp": run(node("s1"), ["sysctl", "net.ipv4.conf.all.arp_ignore",
                                               "net.ipv4.conf.all.arp_announce"])[1],
                    "accept_local": run(node("lb"), ["sysctl", "-n", "net.ipv4.conf.all.accept_local"])[1]}

        before = snapshot()
        functions = [cls(res.topology.nodes[n], FunctionContext(n, node(n), res.interfaces[n], res, tmp_path / n,
                                                                state))
                     for n, cls in (("nat", Nat44), ("lb", LoadBalancer))]
        for f in functions:
            f.start()
        during = snapshot()
        assert "nat44_nat" in during["nat_tables"] and "lb_lb" in during["lb_tables"]
        rules = [line.split(":\t") for line in during["rules"].splitlines()]
        assert ["102", "from all fwmark 0x2 lookup 202"] in rules
        assert ["0", "from all lookup local"] not in rules and ["200", "from all lookup local"] in rules
        assert "192.0.2.7/32" in during["lb_lo"] and "192.0.2.7/32" in during["s1_lo"]
        assert "arp_ignore = 1" in during["s1_arp"] and "arp_announce = 2" in during["s1_arp"]
        assert during["accept_local"].strip() == "1"
        for f in reversed(functions):
            f.stop()
            f.stop()  # idempotent
        assert snapshot() == before
        assert "packets" in (tmp_path / "lb/lb-final.nft").read_text()
        assert (tmp_path / "nat/conntrack.txt").exists()
    finally:
        network.stop()
        sweep(state)
        state.remove()
