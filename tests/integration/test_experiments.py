"""Every shipped experiment, run as a user would (`testbed run`), judged from its archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.archive.store import verify
from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

REQUIRED = ("schema_version", "testbed_version", "git_sha", "host", "started", "finished", "seed", "inputs",
            "status", "files", "outcome", "checks")


def run_experiment(name: str, results: Path, *extra: str) -> tuple[int, dict, Path, str]:
    r = run_cli("run", str(ROOT / "experiments" / f"{name}.yaml"), "--results", str(results), *extra, timeout=180)
    runs = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, (r.stdout, r.stderr)
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    return r.returncode, manifest, runs[0], r.stdout + r.stderr


def counter(manifest: dict, node: str, name: str) -> int:
    return manifest["counters"].get(node, {}).get(f"MPTcpExt{name}", 0)


def check(manifest: dict, prefix: str) -> dict:
    return next(c for c in manifest["checks"] if c["name"].startswith(prefix))


@pytest.mark.parametrize("name", ["basic-handshake", "dual-homed-join", "signal-address", "backup-path",
                                  "link-failure-handover", "lossy-dual-homed", "aggregate"])
def test_shipped_experiment(name, tmp_path):
    code, m, run_dir, output = run_experiment(name, tmp_path)
    assert code == 0, output + json.dumps(m.get("checks"), indent=1)
    for key in REQUIRED:
        assert key in m, key
    assert m["status"] == "complete" and m["outcome"] == "mptcp"
    assert m["host"]["shaping_backend"] in ("netem", "fallback")
    assert all(c["verdict"] in ("pass", "info") for c in m["checks"])
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    assert str(run_dir) in output
    # The counters in the archive must show what the experiment claims.
    assert counter(m, "client", "MPCapableSYNACKRX") >= 1
    assert counter(m, "server", "MPCapableSYNRX") >= 1
    if name in ("dual-homed-join", "link-failure-handover", "aggregate", "backup-path"):
        assert counter(m, "client", "MPJoinSynAckRx") == 1 and counter(m, "server", "MPJoinAckRx") == 1
    if name == "signal-address":
        assert counter(m, "server", "AddAddrTx") >= 1 and counter(m, "client", "AddAddr") >= 1
    if name == "backup-path":
        assert counter(m, "server", "MPJoinSynBackupRx") == 1
        assert check(m, "bytes on client:cell0")["measured"] <= 300_000
    if name == "link-failure-handover":
        assert m["events"][0]["executed"] and m["events"][0]["action"] == "link_down"
    if name == "aggregate":
        assert m["workloads"]["bulk"]["goodput_bps"] >= 18e6
    if name == "lossy-dual-homed":
        ttfb = {w: m["workloads"][w]["ttfb"]["p95"] for w in ("rr-mptcp", "rr-tcp")}
        assert all(0 < v < 0.5 for v in ttfb.values())
        assert m["workloads"]["rr-tcp"]["is_mptcp"] is False and m["workloads"]["rr-mptcp"]["is_mptcp"] is True
    if name == "aggregate":
        assert "captures" not in m  # capture: off
    else:
        assert {"client:wlan0", "server:eth0"} <= set(m["captures"]), m["captures"]  # every host interface
        assert not any(ref.startswith(("ap", "gw")) for ref in m["captures"])  # hosts only
        for ref, cap in m["captures"].items():
            assert (run_dir / "pcaps" / cap["file"]).stat().st_size > 24, ref
            assert cap["packets"] > 0


def test_set_overrides_a_template_parameter_and_is_recorded(tmp_path):
    code, m, run_dir, output = run_experiment("basic-handshake", tmp_path, "--set", "wifi_delay=15ms", "--seed", "7")
    assert code == 0, output
    assert m["seed"] == 7 and m["inputs"]["set"] == ["wifi_delay=15ms"]
    assert m["inputs"]["topology"]["parameters"]["wifi_delay"] == "15ms"
    link = next(x for x in m["shaping"]["links"] if x["name"] == "wifi" and x["direction"] == "forward")
    assert link["impairment"]["delay"] == "15ms"
    assert (run_dir / "inputs" / "topology.yaml").read_text().count("15ms") >= 1


def test_unmet_expectation_exits_1(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"""
name: too-demanding
topology: {{file: {ROOT}/topologies/dual-homed.yaml.j2, set: {{paths: 1, wifi_rate: 10Mbit}}}}
workloads: [{{type: bulk, size: 1MB}}]
capture: off
expect:
  outcome: mptcp
  goodput: {{min: 100Mbit}}
""")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    run_dir = next((tmp_path / "res").iterdir())
    m = json.loads((run_dir / "manifest.json").read_text())
    goodput = check(m, "goodput")
    assert goodput["verdict"] == "fail" and goodput["expected"] == ">= 100Mbit"
    assert m["status"] == "complete" and m["outcome"] == "mptcp"


def test_plain_tcp_node_falls_back(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"""
name: tcp-server
topology: {{file: {ROOT}/topologies/dual-homed.yaml.j2, set: {{paths: 1}}}}
stacks:
  server: {{stack: tcp}}
workloads: [{{type: bulk, size: 2MB}}]
expect:
  outcome: fallback
  transfer_intact: true
  counters:
    client.MPTcpExtMPCapableSYNTX: 1
    client.MPTcpExtMPCapableSYNACKRX: 0
""")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(next((tmp_path / "res").iterdir()).joinpath("manifest.json").read_text())
    assert m["outcome"] == "fallback"
    assert m["stacks"]["server"]["sysctls"]["net.mptcp.enabled"] == "0"
    assert m["workloads"]["bulk"]["is_mptcp"] is False


def test_a_rate_on_a_switch_link_shapes_both_ways(tmp_path, no_leaks):
    # The switch's side sends through its port in the root namespace: its shell must be there too
    # (it once had a namespace of its own, where tc found no such device).
    (tmp_path / "t.yaml").write_text("""
name: lan
nodes: {a: {kind: host}, s1: {kind: switch}, b: {kind: host}}
links:
  - {endpoints: [a, s1], impairment: {rate: 20Mbit}}
  - [s1, b]
""")
    exp = tmp_path / "e.yaml"
    exp.write_text("""
name: switch-rate
topology: t.yaml
workloads:
  - {name: up, type: bulk, client: a, server: b, size: 2MB, direction: upload}
  - {name: down, type: bulk, client: a, server: b, size: 2MB, direction: download}
capture: off
""")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((next((tmp_path / "res").iterdir()) / "manifest.json").read_text())
    assert m["status"] == "complete"
    for name in ("up", "down"):
        w = m["workloads"][name]
        assert w["intact"] and 0 < w["goodput_bps"] <= 20e6 * 1.05, (name, w["goodput_bps"])
