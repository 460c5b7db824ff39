"""Timeline events and the iperf3/ping workloads, judged from counters and measured RTTs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]


def run(tmp_path, text: str) -> tuple[int, dict, str]:
    exp = tmp_path / "e.yaml"
    exp.write_text(text)
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=180)
    run_dir = next(p for p in (tmp_path / "res").iterdir() if not p.name.startswith("."))
    return r.returncode, json.loads((run_dir / "manifest.json").read_text()), r.stdout + r.stderr


def test_endpoint_backup_and_impairment_events(tmp_path):
    code, m, out = run(tmp_path, f"""
name: events
topology: {{file: {ROOT}/topologies/dual-homed.yaml.j2, set: {{paths: 3, wifi_delay: 5ms, cell_delay: 5ms}}}}
stacks:
  client:
    limits: {{subflows: 4, add_addr_accepted: 2}}
    endpoints: [{{interface: cell0, flags: [subflow]}}]
  server:
    limits: {{subflows: 4, add_addr_accepted: 2}}
workloads:
  - {{type: iperf3, duration: 4s}}
  - {{type: ping, count: 150, interval: 20ms, concurrent: true}}
events:
  - {{at: 0.5s, action: endpoint_add, node: client, endpoint: {{interface: cell1, flags: [subflow]}}}}
  - {{at: 1.5s, action: set_backup, node: client, interface: cell0}}
  - {{at: 2.0s, action: set_impairment, link: "client:wlan0", impairment: {{delay: 40ms}}}}
  - {{at: 2.5s, action: endpoint_remove, node: client, interface: cell1}}
expect:
  outcome: mptcp
  counters:
    client.MPTcpExtMPJoinSynAckRx: {{min: 2}}
    client.MPTcpExtMPPrioTx: {{min: 1}}
    client.MPTcpExtRmAddrTx: {{min: 1}}
""")
    assert code == 0, out
    assert [e["action"] for e in m["events"]] == ["endpoint_add", "set_backup", "set_impairment", "endpoint_remove"]
    assert all(e["executed"] for e in m["events"])
    assert m["workloads"]["iperf3"]["goodput_bps"] > 1e6
    rtt = m["workloads"]["ping"]["rtt"]
    assert rtt["min"] < 0.03, rtt  # 5 ms each way before the change
    assert rtt["max"] >= 0.08, rtt  # 40 ms each way after it
    assert m["counters"]["server"].get("MPTcpExtMPPrioRx", 0) >= 1


def test_switch_segment_and_plain_hosts(tmp_path):
    topo = tmp_path / "lan.yaml"
    topo.write_text("""
name: lan
nodes:
  a: {}
  b: {}
  c: {}
  sw: {kind: switch}
links: [[a, sw], [b, sw], [c, sw]]
""")
    code, m, out = run(tmp_path, f"""
name: lan-ping
topology: {topo}
workloads:
  - {{type: ping, client: a, server: c, count: 10, interval: 20ms}}
  - {{type: bulk, client: b, server: c, size: 2MB}}
expect: {{outcome: mptcp, transfer_intact: true}}
""")
    assert code == 0, out
    assert m["workloads"]["ping"]["received"] == 10
    assert m["workloads"]["bulk"]["intact"] is True
