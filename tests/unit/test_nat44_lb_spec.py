"""nat44 and lb nodes, several servers per workload, peers, counter patterns and shares: what is
refused (file:line), what the functions would configure, and how the new measurements are judged."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testbed.emulation.functions.base import FunctionContext
from testbed.emulation.functions.lb import LoadBalancer
from testbed.emulation.functions.nat44 import Nat44
from testbed.errors import SpecError
from testbed.spec.experiment import Experiment
from testbed.spec.load import load_experiment, load_topology
from testbed.verdict import Measurements, judge, metric, peers_seen
from testbed.workloads.process import servers_result
from tests.conftest import ROOT

LB_TOPOLOGY = """
    name: t
    nodes:
      client: {}
      lb:
        kind: lb
        backends: [s1, s2]
      s1: {}
      s2: {}
      lan: {kind: switch}
    links:
      - [client, lb]
      - [lb, lan]
      - [s1, lan]
      - [s2, lan]
    """


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def lines_of(exc: pytest.ExceptionInfo) -> list[str]:
    """'file:line: field: message' (columns dropped: they point at the key or the item)."""
    out = []
    for p in exc.value.problems:
        assert p.line is not None and p.col is not None, p
        out.append(re.sub(r"^([^:]+:\d+):\d+:", r"\1:", str(p)))
    return out


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_topology(write(tmp_path, "t.yaml", text))
    return lines_of(exc)


def test_lb_without_backends_is_refused_at_its_line(tmp_path):
    lines = problems(tmp_path, LB_TOPOLOGY.replace("backends: [s1, s2]", "backends: []"))
    assert lines == [f"{tmp_path}/t.yaml:6: nodes.lb.backends: needs at least one entry"]


def test_lb_backend_that_is_not_a_node_or_not_a_host(tmp_path):
    lines = problems(tmp_path, LB_TOPOLOGY.replace("backends: [s1, s2]", "backends: [s1, s3, lan, s1]"))
    assert lines == [f"{tmp_path}/t.yaml:6: nodes.lb.backends: listed twice: s1"]
    lines = problems(tmp_path, LB_TOPOLOGY.replace("backends: [s1, s2]", "backends: [s1, s11, lan]"))
    assert f"{tmp_path}/t.yaml:6: nodes.lb.backends[1]: no node named 's11' (did you mean 's1'?)" in lines
    assert f"{tmp_path}/t.yaml:6: nodes.lb.backends[2]: 'lan' is a switch; backends are hosts" in lines
    assert len(lines) == 2


def test_lb_backend_must_share_a_segment_with_the_balancer(tmp_path):
    text = LB_TOPOLOGY.replace("      - [s2, lan]\n", "      - [s2, r]\n      - [r, lan]\n").replace(
        "      s2: {}\n", "      s2: {}\n      r: {kind: router}\n")
    lines = problems(tmp_path, text)
    assert len(lines) == 1 and ":6:" in lines[0] and "nodes.lb.backends[1]" in lines[0]
    assert "'s2' shares no link or switch with 'lb'" in lines[0]


def test_lb_needs_a_client_facing_side_or_a_virtual_address(tmp_path):
    text = LB_TOPOLOGY.replace("      - [client, lb]\n", "      - [client, lan]\n")
    lines = problems(tmp_path, text)
    assert len(lines) == 1 and "faces away from the backends" in lines[0] and ":6:" in lines[0]
    res = load_topology(write(tmp_path, "ok.yaml", text.replace("kind: lb\n", "kind: lb\n        "
                                                                  "virtual_address: 192.0.2.1\n"))).resolved
    # A given virtual address is routed to the balancer from everywhere.
    assert any(str(r.destination) == "192.0.2.1/32" and str(r.via) == "10.0.0.2" for r in res.routes["client"])


@pytest.mark.parametrize(("vip", "message"), [
    ("10.0.1.3", "10.0.1.3 is inside 10.0.1.0/24, a subnet facing the backends"),
    ("10.0.0.1", "10.0.0.1 is already the address of client:eth0"),
    ("10.0.0.0", "10.0.0.0 is the network or broadcast address of 10.0.0.0/24"),
    ("10.0.0.300", "valid IPv4 address"),
])
def test_lb_virtual_address_conflicts(tmp_path, vip, message):
    lines = problems(tmp_path, LB_TOPOLOGY.replace("kind: lb\n", f"kind: lb\n        virtual_address: {vip}\n"))
    assert any(message in line and "nodes.lb.virtual_address" in line and ":6:" in line for line in lines), lines


def test_lb_hash_fields_are_checked(tmp_path):
    lines = problems(tmp_path, LB_TOPOLOGY.replace("kind: lb\n", "kind: lb\n        hash: [saddr, proto]\n"))
    assert lines == [f"{tmp_path}/t.yaml:6: nodes.lb.hash[1]: 'proto' is not one of 'saddr', 'sport', "
                     f"'daddr' or 'dport' (did you mean 'sport'?)"]


NAT_TOPOLOGY = """
    name: t
    nodes:
      client: {}
      nat: {kind: nat44, outside: eth1}
      server: {}
    links:
      - [client, nat]
      - [nat, server]
    """


def test_nat44_outside_interface_must_exist(tmp_path):
    lines = problems(tmp_path, NAT_TOPOLOGY.replace("outside: eth1", "outside: eht1"))
    assert lines == [f"{tmp_path}/t.yaml:4: nodes.nat.outside: 'nat' has no interface 'eht1' "
                     f"(did you mean 'eth1'?) (it has: eth0, eth1)"]
    lines = problems(tmp_path, NAT_TOPOLOGY.replace("{kind: nat44, outside: eth1}", "{kind: nat44}"))
    assert lines == [f"{tmp_path}/t.yaml:4: nodes.nat.outside: required field is missing"]
    lines = problems(tmp_path, NAT_TOPOLOGY.replace("outside: eth1", "outside: eth0, randomise_ports: true"))
    assert lines == [f"{tmp_path}/t.yaml:4: nodes.nat.randomise_ports: unknown field 'randomise_ports' "
                     f"(did you mean 'randomize_ports'?)"]


def test_nat44_needs_an_inside(tmp_path):
    text = NAT_TOPOLOGY.replace("      - [client, nat]\n", "      - [client, server]\n").replace("eth1", "eth0")
    lines = problems(tmp_path, text)
    assert lines == [f"{tmp_path}/t.yaml:4: nodes.nat.outside: 'nat' has only its outside interface: a NAT "
                     f"needs an inside one too"]


def context(res, name: str, tmp_path: Path) -> FunctionContext:
    return FunctionContext(name, None, res.interfaces[name], res, tmp_path / name)


def test_lb_build_hashes_into_marks_and_routes_each_mark_to_a_backend(tmp_path):
    res = load_topology(write(tmp_path, "t.yaml", LB_TOPOLOGY.replace(
        "kind: lb\n", "kind: lb\n        seed: 7\n        hash: [saddr, dport]\n"))).resolved
    cfg = LoadBalancer(res.topology.nodes["lb"], context(res, "lb", tmp_path)).build()
    assert cfg["virtual_address"] == "10.0.0.2"  # the lb's interface towards the client
    assert [(b["node"], b["mark"], b["address"], b["interface"]) for b in cfg["backends"]] == [
        ("s1", 1, "10.0.1.2", "eth1"), ("s2", 2, "10.0.1.3", "eth1")]
    hash_rule = next(r for r in cfg["nft"] if "jhash" in r)
    assert hash_rule.startswith("add rule ip lb_lb prerouting ip daddr 10.0.0.2 tcp dport 5201 notrack ")
    assert "jhash ip saddr . tcp dport mod 2 seed 0x7 offset 1" in hash_rule
    assert ["ip", "route", "add", "10.0.0.2/32", "via", "10.0.1.3", "dev", "eth1", "table", "202"] in cfg["routing"]
    assert ["ip", "rule", "add", "fwmark", "2", "table", "202", "pref", "102"] in cfg["routing"]
    # The local table moves behind the mark rules; the backends get the virtual address on lo.
    assert cfg["routing"][-2:] == [["ip", "rule", "add", "table", "local", "pref", "200"],
                                   ["ip", "rule", "del", "pref", "0", "table", "local"]]
    assert ["ip", "addr", "add", "10.0.0.2/32", "dev", "lo"] in cfg["on_backends"]
    assert not any(argv[:3] == ["ip", "addr", "add"] for argv in cfg["routing"])  # its own address already


def test_nat44_build(tmp_path):
    res = load_topology(write(tmp_path, "t.yaml", NAT_TOPOLOGY)).resolved
    cfg = Nat44(res.topology.nodes["nat"], context(res, "nat", tmp_path)).build()
    assert cfg["outside_address"] == "10.0.1.1" and cfg["inside"] == ["eth0"]
    assert 'add rule ip nat44_nat postrouting oifname "eth1" counter masquerade comment "translate"' in cfg["nft"]
    assert any('iifname "eth1" counter drop' in r for r in cfg["nft"])
    res = load_topology(write(tmp_path, "t2.yaml", NAT_TOPOLOGY.replace(
        "outside: eth1", "outside: eth1, randomize_ports: true, block_inbound: false"))).resolved
    cfg = Nat44(res.topology.nodes["nat"], context(res, "nat", tmp_path)).build()
    assert any(r.endswith('masquerade fully-random comment "translate"') for r in cfg["nft"])
    assert not any("forward" in r for r in cfg["nft"])


def experiment_problems(tmp_path: Path, body: str) -> list[str]:
    p = write(tmp_path, "e.yaml", f"name: e\ntopology: {{file: {ROOT}/topologies/lb.yaml.j2}}\n"
              + textwrap.dedent(body).lstrip())
    with pytest.raises(SpecError) as exc:
        load_experiment(p)
    return lines_of(exc)


def test_several_servers_are_checked(tmp_path):
    lines = experiment_problems(tmp_path, """
        workloads:
          - {type: bulk, servers: [server0, server3]}
          - {type: iperf3, servers: [server0], target: "lb:eth0"}
        """)
    assert any(":4: workloads[0].servers[1]: no host or router named 'server3'" in x for x in lines), lines
    assert any(":4: workloads[0].servers: several servers need a target" in x for x in lines), lines
    assert any(":5: workloads[1].servers: only bulk and rr workloads run on several servers, not iperf3" in x
               for x in lines), lines
    assert len(lines) == 3


def test_peers_counter_patterns_and_share_are_checked(tmp_path):
    lines = experiment_problems(tmp_path, """
        workloads: [{type: bulk, target: "lb:eth0", servers: [server0, server1]}]
        expect:
          counters: {"server*.MPTcpExtMPJoinAckRx": 1, "srv*.MPTcpExtMPJoinAckRx": 1}
          peers:
            server0: {includes: ["client:wlan0", "10.0.0.9", "client:wlan9"], excludes: [client]}
          report: [bulk.share, bulk.shares]
        """)
    assert len(lines) == 4, lines
    assert any(":5: expect.counters.srv*.MPTcpExtMPJoinAckRx: 'srv*' matches no host or router" in x
               for x in lines)
    assert any(":7: expect.peers.server0.includes[2]: 'client' has no interface 'wlan9'" in x for x in lines)
    assert any(":7: expect.peers.server0.excludes[0]: expected 'node:interface', got 'client'" in x
               for x in lines)
    assert any(":8: expect.report[1]: unknown metric 'shares' (did you mean 'share'?)" in x for x in lines)


SS_SERVER = (
    "0      0      [::ffff:10.0.5.4]:5201 [::ffff:10.0.0.1]:40000\n"
    "\t cubic wscale:7,7 rto:204 rtt:5.1/2.5 mss:1448 tcp-ulp-mptcp flags:Mec token:0000(id:0)/6f4d(id:0)\n"
    "0      0      10.0.5.4:5201 10.0.3.1:1460 \n"
    "\t cubic wscale:7,7 rto:204\n"
)


def measurements(**kw) -> Measurements:
    base = dict(workloads={}, workload_specs={}, counters={}, path_bytes=lambda ref, s, e: 0, node_interfaces={})
    return Measurements(**{**base, **kw})


def test_peers_seen_reads_the_ss_snapshots():
    snaps = [{"t": 1.0, "node": "server", "tcp": SS_SERVER}, {"t": 1.0, "node": "client", "tcp": "0 0 a:1 9.9.9.9:2"}]
    assert peers_seen(snaps, "server") == {"10.0.0.1", "10.0.3.1"}
    exp = Experiment.model_validate({
        "name": "e", "topology": "t.yaml", "workloads": [{"type": "bulk"}],
        "expect": {"peers": {"server": {"includes": ["nat:eth1"], "excludes": ["client:cell0", "10.0.0.1"]}}}})
    m = measurements(sockets=snaps, addresses={"nat:eth1": ["10.0.3.1"], "client:cell0": ["10.0.2.1"]})
    check = next(c for c in judge(exp, m, "mptcp") if c.name == "peers of server")
    assert check.verdict == "fail" and check.measured == ["10.0.0.1", "10.0.3.1"]
    assert "seen: 10.0.0.1" in check.detail


def test_counter_patterns_sum_the_matching_nodes():
    exp = Experiment.model_validate({
        "name": "e", "topology": "t.yaml", "workloads": [{"type": "bulk"}],
        "expect": {"counters": {"server*.MPTcpExtMPJoinNoTokenFound": {"min": 2}, "server1.MPTcpExtX": 0}}})
    m = measurements(counters={"server0": {"MPTcpExtMPJoinNoTokenFound": 1}, "server1": {"MPTcpExtMPJoinNoTokenFound": 1},
                               "client": {"MPTcpExtMPJoinNoTokenFound": 5}})
    checks = {c.name: c for c in judge(exp, m, "mptcp")}
    assert checks["counter server*.MPTcpExtMPJoinNoTokenFound"].measured == 2
    assert checks["counter server*.MPTcpExtMPJoinNoTokenFound"].verdict == "pass"
    assert checks["counter server*.MPTcpExtMPJoinNoTokenFound"].detail == "sum over server0, server1"
    assert checks["counter server1.MPTcpExtX"].verdict == "pass"


def test_share_is_of_the_concurrent_group_only():
    exp = Experiment.model_validate({"name": "e", "topology": "t.yaml", "workloads": [
        {"type": "iperf3", "name": "a"}, {"type": "iperf3", "name": "b", "concurrent": True},
        {"type": "iperf3", "name": "c"}]})
    specs = dict(zip(exp.workload_names(), exp.workloads, strict=True))
    m = measurements(workload_specs=specs, workloads={"a": {"goodput_bps": 30e6}, "b": {"goodput_bps": 10e6},
                                                      "c": {"goodput_bps": 5e6}})
    assert metric(m, "a.share") == 75.0 and metric(m, "b.share") == 25.0 and metric(m, "c.share") == 100.0
    m.workloads["b"] = {"ok": False}
    assert metric(m, "a.share") == 100.0 and metric(m, "b.share") is None


AGENT_LIKE = """
import json, signal, sys, time
def done(*_):
    print(json.dumps({"peer": None, "errors": ["terminated by SIGTERM"]}), flush=True)
    sys.exit(1)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
if sys.argv[1] == "serves":
    time.sleep(0.3)
    print(json.dumps({"peer": {"host": "10.0.0.1", "port": 40000}, "errors": []}))
else:
    time.sleep(60)
"""


def test_idle_servers_are_stopped_without_failing_the_one_that_served():
    procs = {name: subprocess.Popen([sys.executable, "-c", AGENT_LIKE, role], stdout=subprocess.PIPE)
             for name, role in (("s0", "idle"), ("s1", "serves"), ("s2", "idle"))}
    started = time.monotonic()
    result = servers_result(procs, 5, lambda out: out.get("peer") is not None)
    assert time.monotonic() - started < 3  # the idle ones are not waited for
    assert result["served_by"] == ["s1"] and result["server"]["peer"]["port"] == 40000
    assert result["servers"]["s0"]["errors"] == ["terminated by SIGTERM"]
    assert all(p.poll() is not None for p in procs.values())
    assert procs["s2"].returncode in (1, -signal.SIGTERM)
