"""The middlebox experiments, run as a user would (`testbed run`), judged from their archives: the
kernels' MPTCP counters show the effect, the middlebox's own rule and mangler counters show the cause."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from testbed.archive.store import verify
from testbed.spec.load import load_experiment
from testbed.state import STATE_DIR
from tests.conftest import ROOT, links, namespaces, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

LINE = re.compile(r"^[^:\n]+:\d+:\d+: [^:\n]*: .+$")


def manglers_of(path: Path) -> list[str]:
    """Mangler processes whose command line points into `path` (ours, not other runs')."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "mangler.py" in cmdline and str(path) in cmdline:
            found.append(cmdline)
    return found


def run_experiment(name: str, results: Path) -> tuple[int, dict, Path, str]:
    r = run_cli("run", str(ROOT / "experiments" / f"{name}.yaml"), "--results", str(results), timeout=120)
    runs = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, (r.stdout, r.stderr)
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert not manglers_of(results), "a mangler outlived its run"
    assert not (STATE_DIR / f"{manifest['run_id']}.json").exists(), "the run's state file was left behind"
    return r.returncode, manifest, runs[0], r.stdout + r.stderr


def counter(m: dict, node: str, name: str) -> int:
    return m["counters"].get(node, {}).get(f"MPTcpExt{name}", 0)


def middlebox(run_dir: Path, node: str = "mb_wifi") -> dict:
    """What the middlebox did: kernel rule counters and mangler counts, by behaviour."""
    return json.loads((run_dir / "functions" / node / "counters.json").read_text())


def flags_by_peer(snapshots: list[dict], node: str, peer: str) -> list[tuple[float, str]]:
    """(time, tcp-ulp-mptcp flags) of `node`'s subflow to `peer` in each `ss -ti` snapshot."""
    out = []
    for snap in snapshots:
        if snap["node"] != node or not snap.get("tcp"):
            continue
        current = None
        for line in snap["tcp"].splitlines():
            if line and not line[0].isspace():
                current = line.split()[-1]
            elif current and re.search(rf"[\[:]{re.escape(peer)}\]?:\d+$", current):
                m = re.search(r"tcp-ulp-mptcp flags:(\S+)", line)
                if m:
                    out.append((snap["t"], m.group(1)))
    return out


EXPERIMENTS = ["middlebox-strip-syn", "middlebox-strip-after-handshake", "middlebox-syn-blackhole",
               "middlebox-drop-add-addr", "middlebox-payload-corruption", "mp-prio-attack"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_middlebox_experiment(name, tmp_path):
    code, m, run_dir, output = run_experiment(name, tmp_path)
    assert code == 0, output + json.dumps(m.get("checks"), indent=1)
    assert m["status"] == "complete" and all(c["verdict"] in ("pass", "info") for c in m["checks"])
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    fn = m["functions"]["mb_wifi"]
    assert fn["kind"] == "middlebox"
    for f in ("config.json", "ruleset.txt", "counters.json"):
        assert f"functions/mb_wifi/{f}" in m["files"], f
    mb = middlebox(run_dir)
    rules, mangled = mb["kernel_rules"], mb["mangler"]
    bulk = m["workloads"]["bulk"]
    assert bulk["intact"] is True

    if name == "middlebox-strip-syn":
        assert m["outcome"] == "fallback" and bulk["is_mptcp"] is False
        assert rules["iptables [0] strip_mptcp syn"]["packets"] == 1  # the client's one SYN
        assert "TCPOPTSTRIP --strip-options 30" in (run_dir / "functions/mb_wifi/ruleset.txt").read_text()
        assert counter(m, "client", "MPCapableFallbackSYNACK") == 1 and counter(m, "server", "MPCapableSYNRX") == 0
    elif name == "middlebox-strip-after-handshake":
        assert m["outcome"] == "fallback"
        assert counter(m, "client", "MPCapableSYNACKRX") == 1 and counter(m, "server", "MPCapableACKRX") == 1
        assert counter(m, "server", "DssFallback") == 1 and counter(m, "client", "MPCapableDataFallback") == 1
        strip = mangled["[0] strip_mptcp"]
        assert strip["segments"] >= 1 and strip["DSS"] >= 1 and "MP_CAPABLE" not in strip
        assert rules["iptables mangler to_server"]["packets"] > 0  # segments went through the queue
    elif name == "middlebox-syn-blackhole":
        assert m["outcome"] == "fallback" and bulk["is_mptcp"] is False
        # the MP_CAPABLE SYN and its syn_retrans_before_tcp_fallback (2) retransmissions, then plain TCP
        assert rules["nft [0] blackhole_mp_capable_syn"]["packets"] == 3
        assert counter(m, "client", "MPCapableSYNTXDrop") == 1 and counter(m, "client", "Blackhole") == 1
        assert 2.5 <= bulk["client"]["connect_seconds"] < 8
        assert m["stacks"]["client"]["sysctls"]["net.mptcp.syn_retrans_before_tcp_fallback"] == "2"
    elif name == "middlebox-drop-add-addr":
        assert m["outcome"] == "mptcp"
        assert rules["nft [0] drop_add_addr"]["packets"] == 1
        assert counter(m, "server", "AddAddrTx") == 2 and counter(m, "client", "AddAddr") == 1
        assert counter(m, "client", "MPJoinSynAckRx") == 1 and counter(m, "server", "EchoAdd") == 1
    elif name == "middlebox-payload-corruption":
        assert m["outcome"] == "mptcp"
        assert mangled["[0] corrupt_payload"] == {"segments": 1}
        events = json.loads((run_dir / "functions/mb_wifi/mangler-counts.json").read_text())["events"]
        assert [e["what"] for e in events] == ["payload byte changed"] and events[0]["stream_bytes_before"] >= 1e6
        assert counter(m, "server", "DataCsumErr") == 1 and counter(m, "server", "MPFailTx") == 1
        assert counter(m, "server", "MPRstTx") == 1 and counter(m, "client", "MPRstRx") == 1
    elif name == "mp-prio-attack":
        assert m["outcome"] == "mptcp"
        assert mangled["[0] inject_mp_prio"] == {"flows": 1, "packets_to_server": 1}
        assert mangled["[1] inject_mp_prio"] == {"flows": 1, "packets_to_server": 1}
        events = json.loads((run_dir / "functions/mb_wifi/mangler-counts.json").read_text())["events"]
        forms = [(e["form"], e["address_id"]) for e in events if e["what"] == "MP_PRIO injected"]
        assert forms == [("RFC 6824 (length 4)", 2), ("RFC 8684 (length 3)", None)]
        assert counter(m, "server", "MPPrioRx") == 1  # only the RFC 8684 form was taken
        res = load_experiment(ROOT / "experiments/mp-prio-attack.yaml").topo.resolved
        snapshots = json.loads((run_dir / "sockets.json").read_text())
        cell = flags_by_peer(snapshots, "server", str(res.interface("client", "cell0").address.ip))
        wifi = flags_by_peer(snapshots, "server", str(res.interface("client", "wlan0").address.ip))
        assert cell and wifi, snapshots[:2]
        assert not any("B" in f for _, f in cell), cell  # the attack did not make cellular a backup
        assert not any("B" in f for t, f in wifi if t < 2.4), wifi
        assert any("B" in f for t, f in wifi if t > 3), wifi  # the control did make Wi-Fi one


def test_invalid_middlebox_is_refused_before_anything_is_built(tmp_path):
    topo = tmp_path / "bad.yaml"
    topo.write_text("name: bad\nnodes:\n  client: {}\n  mb:\n    kind: middlebox\n    behaviours:\n"
                    "      - {action: blackhole_mp_capable_syn}\n"
                    "      - {action: inject_mp_prio, after: {seconds: 1}, adress_id: 2}\n"
                    "      - {action: drop_add_adr}\n"
                    "  server: {}\nlinks:\n  - [client, mb]\n  - [mb, server]\n")
    exp = tmp_path / "bad-exp.yaml"
    exp.write_text("name: bad-exp\ntopology: bad.yaml\nworkloads: [{type: bulk, size: 1MB}]\n")
    before_links, before_ns = links(), namespaces()
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert any(":8:" in x and "behaviours[1].adress_id: unknown field 'adress_id' (did you mean 'address_id'?)" in x
               for x in lines), lines
    assert any(":9:" in x and "unknown action 'drop_add_adr' (did you mean 'drop_add_addr'?)" in x for x in lines)
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())
    assert links() == before_links and namespaces() == before_ns
    assert not manglers_of(tmp_path)
