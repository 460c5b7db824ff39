"""NAT64: an IPv6-only MPTCP client through tayga + NAT44 to an IPv4 server; invalid prefixes refused."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]


def test_nat64_experiment(tmp_path):
    r = run_cli("run", str(ROOT / "experiments/nat64.yaml"), "--results", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["outcome"] == "mptcp"
    # MP_CAPABLE end to end through the translator, and the IPv6 cellular join through it too.
    assert m["counters"]["client"]["MPTcpExtMPCapableSYNACKRX"] == 1
    assert m["counters"]["server"]["MPTcpExtMPJoinAckRx"] >= 1
    # The server saw IPv4 only: the client's connection arrived from the NAT's outside address.
    server = m["workloads"]["bulk"]["server"]
    assert server["peer"]["host"].endswith("10.64.0.1"), server["peer"]
    nat = m["functions"]["nat64"]
    assert nat["implementation"] == "tayga" and nat["prefix"] == "2001:db8:64::/96"
    assert (run_dir / "functions/nat64/tayga.conf").read_text().startswith("tun-device nat64")
    assert "masquerade" in (run_dir / "functions/nat64/nat44.nft").read_text()
    assert "TAYGA" in (run_dir / "functions/nat64/tayga.log").read_text()
    # Whether the server's IPv4 ADD_ADDR was usable is recorded as a finding.
    findings = {c["name"]: c["measured"] for c in m["checks"] if c["verdict"] == "info"}
    assert findings["server:eth1"] == 0 and m["counters"]["client"]["MPTcpExtAddAddr"] >= 1


@pytest.mark.parametrize(("value", "message"), [
    ("64:ff9b::/96", "must not translate non-global IPv4"),
    ("2001:db8:64::/80", "a NAT64 prefix is /32, /40, /48, /56, /64 or /96"),
    ("64:ff9b::/961", "prefix"),
])
def test_invalid_prefix_is_refused_before_anything_runs(tmp_path, value, message):
    r = run_cli("run", str(ROOT / "experiments/nat64.yaml"), "--set", f"prefix={value}",
                "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "nodes.nat64.prefix" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_nat64_without_an_ipv6_side_is_refused(tmp_path):
    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nnodes: {a: {}, n: {kind: nat64}, b: {}}\nlinks: [[a, n], [n, b]]\n")
    r = run_cli("render", str(topo))
    assert r.returncode == 2 and "needs an IPv6 link" in r.stderr and f"{topo}:2:" in r.stderr
