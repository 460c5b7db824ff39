"""The converter and socks node kinds end to end: both shipped experiments through the CLI, judged
from their archives (kernel counters on every leg, the relays' own logs and configuration), and
invalid combinations refused before anything is built."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from testbed.archive.store import verify
from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]


def relay_processes() -> list[str]:
    """danted or convertd.py still running anywhere (the no_leaks fixture does not know them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "danted" in cmd or "convertd.py" in cmd:
                found.append(f"{entry}: {cmd[:100]}")
    return found


def run_experiment(name: str, results: Path) -> tuple[int, dict, Path, str]:
    before = relay_processes()
    r = run_cli("run", str(ROOT / "experiments" / f"{name}.yaml"), "--results", str(results), timeout=120)
    runs = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, r.stdout + r.stderr
    assert relay_processes() == before, "a relay process outlived the run"
    return r.returncode, json.loads((runs[0] / "manifest.json").read_text()), runs[0], r.stdout + r.stderr


def deltas(run_dir: Path) -> dict[str, dict[str, int]]:
    return json.loads((run_dir / "counters.json").read_text())["delta"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_converter_experiment(tmp_path):
    code, m, run_dir, output = run_experiment("converter", tmp_path)
    assert code == 0, output + json.dumps(m.get("checks"), indent=1)
    assert m["status"] == "complete" and m["outcome"] == "mptcp"
    assert all(c["verdict"] in ("pass", "info") for c in m["checks"])
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    d = deltas(run_dir)
    # Client-converter leg: MPTCP on every connection (20 rr + 2 bulk), Connect TLVs in TFO SYNs.
    assert d["client"]["MPTcpExtMPCapableSYNACKRX"] == 22
    assert d["conv"]["MPTcpExtMPCapableSYNRX"] == 22
    assert d["conv"]["TcpExtTCPFastOpenPassive"] >= 20
    # Converter-server leg: plain TCP.
    assert d["conv"].get("MPTcpExtMPCapableSYNTX", 0) == 0
    assert not {k for k in d.get("server", {}) if k.startswith("MPTcpExt")}
    conv_address = m["functions"]["conv"]["addresses"][0]
    for name in ("rr-conv", "bulk-up", "bulk-down"):
        w = m["workloads"][name]
        assert w["via"] == "conv" and w["client"]["via"]["host"] == conv_address
        assert w["is_mptcp"] is True and w["server"]["is_mptcp"] is False
    for name in ("bulk-up", "bulk-down"):
        w = m["workloads"][name]
        assert w["intact"] is True and w["bytes"] == 10_000_000
        assert w["server"]["peer"]["host"].removeprefix("::ffff:") == conv_address  # the server saw the converter
    # Set-up time, in seconds and in round trips of the configured 40 ms path.
    rr = m["workloads"]["rr-conv"]
    assert rr["path_rtt_seconds"] == pytest.approx(0.04)
    assert 0.9 <= rr["setup_rtts"] <= 1.4 and 1.4 <= rr["first_byte_rtts"] <= 2.0
    assert rr["client"]["syn_data_connections"] >= 19  # all but the cookie-fetching first
    assert 0.035 <= m["workloads"]["ping"]["rtt"]["p50"] <= 0.06  # the path RTT, measured
    # The converter's own configuration, log and counters are in the archive.
    fdir = run_dir / "functions" / "conv"
    config = json.loads((fdir / "config.json").read_text())
    assert config["port"] == 5124 and config["client_side"] == "mptcp" and config["tfo"] is True
    assert "--tfo-qlen" in config["argv"] and config["sysctls"] == {"net.ipv4.tcp_fastopen": "3"}
    records = jsonl(fdir / "connections.jsonl")
    assert len(records) == 22 and all(r["error"] is None and r["mptcp"] for r in records)
    assert {r["destination"] for r in records} == {"10.0.99.10:5201", "10.0.99.10:5202", "10.0.99.10:5203"}
    stats = json.loads((fdir / "stats.json").read_text())
    assert stats["converted"] == 22 and stats["errors"] == 0 and stats["bytes_to_server"] >= 10_000_000
    assert (fdir / "convertd.log").read_text().startswith("ready ")


def test_socks_vs_converter_experiment(tmp_path):
    code, m, run_dir, output = run_experiment("socks-vs-converter", tmp_path)
    assert code == 0, output + json.dumps(m.get("checks"), indent=1)
    assert all(c["verdict"] in ("pass", "info") for c in m["checks"])
    w = m["workloads"]
    # Same path, same server: converter set-up in one round trip, SOCKS in two; TTFB 1.5 against 3.
    assert w["rr-conv"]["path_rtt_seconds"] == w["rr-socks"]["path_rtt_seconds"] == pytest.approx(0.04)
    assert w["rr-conv"]["setup_rtts"] <= 1.4 and 1.8 <= w["rr-socks"]["setup_rtts"] <= 2.6
    assert w["rr-conv"]["first_byte_rtts"] < w["rr-direct"]["first_byte_rtts"] < w["rr-socks"]["first_byte_rtts"]
    assert w["rr-socks"]["is_mptcp"] is True and w["rr-direct"]["is_mptcp"] is False
    # Happy Eyeballs towards an address nobody answers: SOCKS counted as connected, then error 4;
    # the converter's answer is the error itself.
    socks_err, conv_err = w["he-socks"]["via_error"], w["he-conv"]["via_error"]
    assert (socks_err["kind"], socks_err["code"]) == ("socks5", 4)
    assert socks_err["established_seconds"] < 0.1 < 2.0 < socks_err["seconds"]
    assert (conv_err["kind"], conv_err["code"], conv_err["established_seconds"]) == ("converter", 97, None)
    assert conv_err["seconds"] <= socks_err["seconds"] + 0.5
    d = deltas(run_dir)
    assert d["proxy"]["MPTcpExtMPCapableSYNRX"] == 21 and d["conv"]["MPTcpExtMPCapableSYNRX"] == 21
    assert d["proxy"]["MPTcpExtMPCapableFallbackSYNACK"] == 20  # danted's own MPTCP towards the TCP server
    assert d["conv"].get("MPTcpExtMPCapableSYNTX", 0) == 0
    # Dante ran with the generated configuration, under mptcpize, listening with MPTCP, and logged.
    proxy = m["functions"]["proxy"]
    assert proxy["argv"][:2] == ["mptcpize", "run"] and proxy["listening"].startswith("mptcp LISTEN")
    pdir = run_dir / "functions" / "proxy"
    conf = (pdir / "danted.conf").read_text()
    assert "internal: 0.0.0.0 port = 1080" in conf and "command: connect" in conf
    log = (pdir / "danted.log").read_text()
    assert "10.0.99.10.5201" in log and "10.0.99.99.5204" in log and "No route to host" in log
    assert "exiting on signal 15" in log  # stopped cleanly by the testbed
    records = jsonl(run_dir / "functions" / "conv" / "connections.jsonl")
    failed = [r for r in records if r["error"]]
    assert [(r["error"], r["destination"]) for r in failed] == [("destination-unreachable", "10.0.99.99:5205")]


INVALID = [
    ("via a host", "  - {type: rr, via: server, requests: 1}\n", "via takes a converter or socks node"),
    ("iperf3 via a converter", "  - {type: iperf3, via: conv}\n", "only bulk and rr workloads"),
    ("a SOCKS error from a converter", "  - {type: rr, via: conv, expect_error: host-unreachable}\n",
     "did you mean 'destination-unreachable'"),
]


@pytest.mark.parametrize("what,workload,message", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_workloads_are_refused(tmp_path, what, workload, message):
    exp = tmp_path / "bad.yaml"
    exp.write_text(f"name: bad\ntopology: {{file: {ROOT / 'topologies' / 'converter.yaml.j2'}}}\n"
                   f"workloads:\n{workload}")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "results"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(rf"bad\.yaml:4:\d+: workloads\[0\]\.(via|expect_error): .*{re.escape(message)}", r.stderr), r.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_converter_without_a_server_or_without_mptcp_is_refused(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\nnodes:\n  client: {kind: host}\n  conv: {kind: converter}\n"
                                     "  server: {kind: host}\nlinks:\n  - [client, conv]\n")
    (tmp_path / "e.yaml").write_text("name: e\ntopology: {file: t.yaml}\nworkloads:\n"
                                     "  - {type: bulk, via: conv, size: 1MB}\nstacks:\n  conv: {stack: tcp}\n")
    r = run_cli("run", str(tmp_path / "e.yaml"), "--results", str(tmp_path / "results"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(r"e\.yaml:4:\d+: workloads\[0\]\.via: the server 'server' and the converter 'conv' are not "
                     r"connected", r.stderr), r.stderr
    assert re.search(r"e\.yaml:6:\d+: stacks\.conv\.stack: 'conv' takes MPTCP clients", r.stderr), r.stderr
    (tmp_path / "t.yaml").write_text("name: t\nnodes:\n  client: {kind: host}\n  conv: {kind: converter}\n"
                                     "  server: {kind: host}\n  lone: {kind: socks}\nlinks:\n  - [client, conv]\n"
                                     "  - [conv, server]\n")
    r = run_cli("run", str(tmp_path / "e.yaml"), "--results", str(tmp_path / "results"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(r"t\.yaml:6:\d+: nodes\.lone\.kind: the socks proxy 'lone' has no IPv4 link", r.stderr), r.stderr
    assert relay_processes() == []
