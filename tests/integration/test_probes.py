"""Conformance probes against this machine's kernel: `testbed run experiments/probes.yaml` (an upstream
server) and the probe cells of the matrix (upstream and plain-TCP servers), with the segments and
counters each probe measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

SUITE = str(ROOT / "experiments" / "suites" / "hackathon.yaml")


def archive(out: str) -> Path:
    m = re.search(r"^archive: (.+)$", out, re.M)
    assert m, out
    return Path(m.group(1))


def segments(result: dict, direction: str) -> list[dict]:
    return [s for s in result["measured"]["segments"] if s["dir"] == direction]


def deltas(result: dict, counter: str) -> list[int]:
    """The server counter's change between consecutive snapshots the probe took."""
    snaps = result["measured"]["server_counters"]
    labels = result["counter_snapshots"]
    return [snaps[b][counter] - snaps[a][counter] for a, b in zip(labels, labels[1:], strict=False)]


def test_every_probe_against_an_upstream_server(tmp_path):
    r = run_cli("run", str(ROOT / "experiments" / "probes.yaml"), "--results", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = archive(r.stdout)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    checks = {c["name"]: c for c in manifest["checks"]}
    for name in ("v0-capable", "unknown-version", "join-bad-hmac", "mp-prio-address-id", "add-addr-bad-hmac"):
        assert checks[f"probe {name}"]["verdict"] == "pass", checks[f"probe {name}"]
    res = {n: json.loads((run_dir / "workloads" / n / "result.json").read_text()) for n in manifest["workloads"]}
    for name, result in res.items():
        assert result["speaks"] == "v1" and result["speaks_source"] == "server kernel", name
        assert result["verdict"] == "as-expected", (name, result.get("observed_text"))
        # the node's kernel answered the server's segments to our crafted ports with RSTs: all dropped
        assert re.search(r"counter packets [1-9]", result["measured"]["firewall"]["dropped_kernel_rsts"]), name

    # RFC 6824 MP_CAPABLE SYN (12 bytes, version 0): a plain SYN/ACK, MP_CAPABLE not even counted
    v0 = res["v0-capable"]
    (syn,) = [s for s in segments(v0, "tx") if s["flags"] == "S"]
    assert syn["mptcp"][0]["version"] == 0 and syn["mptcp"][0]["length"] == 12
    (synack,) = [s for s in segments(v0, "rx") if s["flags"] == "SA"]
    assert synack["mptcp"] == [] and v0["observed"] == "plain"
    assert deltas(v0, "MPTcpExtMPCapableSYNRX") == [0]

    # version 15 in the RFC 8684 SYN form: the server answers with version 1
    uv = res["unknown-version"]
    (synack,) = [s for s in segments(uv, "rx") if s["flags"] == "SA"]
    assert synack["mptcp"][0]["subtype"] == "MP_CAPABLE" and synack["mptcp"][0]["version"] == 1
    assert deltas(uv, "MPTcpExtMPCapableSYNRX") == [1]

    # MP_JOIN with a wrong HMAC in the third ACK: the server's own HMAC checks out, then a RST
    jb = res["join-bad-hmac"]
    m = jb["measured"]
    assert m["server_hmac_valid"] and m["token_matches_server"] and m["sent_hmac"] != m["correct_hmac"]
    rx = segments(jb, "rx")
    join_synack = next(s for s in rx if s["flags"] == "SA" and s["mptcp"][0]["subtype"] == "MP_JOIN")
    assert join_synack["mptcp"][0]["form"] == "SYN/ACK"
    rst = next(s for s in rx if "R" in s["flags"])
    assert rst["dst"] == join_synack["dst"]  # the new subflow, not the initial one
    assert not m["initial_subflow_reset"]
    assert deltas(jb, "MPTcpExtMPJoinAckHMacFailure") == [1] and deltas(jb, "MPTcpExtMPJoinAckRx") == [0]

    # RFC 6824 MP_PRIO (length 4) ignored, RFC 8684 MP_PRIO (length 3) taken
    mp = res["mp-prio-address-id"]
    prio = [s["mptcp"][0] for s in segments(mp, "tx") if s["mptcp"] and s["mptcp"][0]["subtype"] == "MP_PRIO"]
    assert [p["length"] for p in prio] == [4, 3] and prio[0]["address_id"] == 0
    assert deltas(mp, "MPTcpExtMPPrioRx")[-2:] == [0, 1] and mp["observed"] == "ignored"

    # ADD_ADDR with a wrong HMAC: not counted, not echoed; the right one counted and echoed
    aa = res["add-addr-bad-hmac"]
    assert deltas(aa, "MPTcpExtAddAddr")[-2:] == [0, 1]
    assert not aa["measured"]["echo_of_bad"] and aa["measured"]["echo_of_good"]
    assert not aa["measured"]["server_syns_after_bad"]
    # the run's own counters agree
    server = manifest["counters"]["server"]
    assert server["MPTcpExtMPJoinAckHMacFailure"] == 1 and server["MPTcpExtMPPrioRx"] == 1
    assert server["MPTcpExtAddAddr"] == 1
    assert any(p.name.startswith("client") for p in (run_dir / "pcaps").iterdir())


def test_probe_cells_in_the_matrix(tmp_path):
    r = run_cli("matrix", SUITE, "--scenarios", "probes", "--servers", "host,tcp", "--jobs", "2",
                "--results", str(tmp_path), timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = archive(r.stdout)
    mx = json.loads((run_dir / "matrix.json").read_text())
    assert mx["summary"]["as-expected"] == 10 and len(mx["cells"]) == 10
    assert mx["scenarios"]["probes"]["kind"] == "probes" and len(mx["axes"]["probes"]) == 5
    for key, c in mx["cells"].items():
        assert c["scenario"] == "probes" and c["client"].startswith("probe:"), key
        assert c["verdict"] == "as-expected" and c["expectations"] == "probe", (key, c["reason"])
        assert c["outcome"] == c["expected_outcome"], key
        if c["server"] == "tcp":
            assert c["expected_outcome"] == "plain", key
        probe = c["client"].removeprefix("probe:")
        result = json.loads((run_dir / c["files"]["workloads"][probe]).read_text())
        assert result["speaks"] == ("tcp" if c["server"] == "tcp" else "v1") and result["speaks_source"] == "workload"
        if c["server"] == "tcp":  # no MPTCP option in anything the server sent
            assert all(not s["mptcp"] for s in segments(result, "rx")), key
            assert result["listener"]["protocol"].startswith("tcp")
    expected = {"v0-capable": "plain", "unknown-version": "mp-capable-v1", "join-bad-hmac": "rst",
                "mp-prio-address-id": "ignored", "add-addr-bad-hmac": "ignored"}
    for probe, outcome in expected.items():
        assert mx["cells"][f"probes/probe:{probe}/host"]["outcome"] == outcome
    report = (run_dir / "report.md").read_text()
    assert "## probes" in report and "| **probe:join-bad-hmac** |" in report and "(rst)" in report
    html = (run_dir / "report.html").read_text()
    assert 'data-scenario="probes"' in html and "probe:mp-prio-address-id" in html
