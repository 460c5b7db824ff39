"""The fastclose scenario end to end: the client aborts a download with data unread; the kernel's
counters, the workload's account and the capture must all show the MP_FASTCLOSE and the reset; in the
matrix, cells with a plain-TCP side fall back and see a plain RST instead."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from testbed.archive.store import verify
from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

SCENARIO = ROOT / "experiments" / "scenarios" / "fastclose.yaml"
SUITE = ROOT / "experiments" / "suites" / "hackathon.yaml"
MP_FASTCLOSE = 7  # MPTCP option subtype (RFC 8684 §3.5)


def mptcp_subtypes_of_resets(pcap: Path) -> list[set[int]]:
    """For every TCP segment with RST in the capture, the MPTCP option subtypes it carries."""
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    out = []
    with PcapReader(str(pcap)) as packets:
        for pkt in packets:
            if TCP not in pkt or not int(pkt[TCP].flags) & 0x04:
                continue
            raw = bytes(pkt[TCP])
            options, i, subtypes = raw[20:(raw[12] >> 4) * 4], 0, set()
            while i < len(options):
                kind = options[i]
                if kind in (0, 1):
                    i += 1
                    continue
                if i + 1 >= len(options) or options[i + 1] < 2:
                    break
                if kind == 30 and i + 2 < len(options):
                    subtypes.add(options[i + 2] >> 4)
                i += options[i + 1]
            out.append(subtypes)
    return out


def test_fastclose_scenario_sends_and_receives_mp_fastclose(tmp_path):
    r = run_cli("run", str(SCENARIO), "--results", str(tmp_path), timeout=180)
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, r.stdout + r.stderr
    run_dir = runs[0]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert r.returncode == 0, r.stdout + r.stderr + json.dumps(m.get("checks"), indent=1)
    assert m["status"] == "complete" and m["outcome"] == "mptcp"
    assert all(c["verdict"] == "pass" for c in m["checks"]), m["checks"]
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}

    # the kernels' account: the client sent MP_FASTCLOSE, the server received it and its subflows were reset
    client, server = m["counters"]["client"], m["counters"]["server"]
    assert client["MPTcpExtMPCapableSYNACKRX"] == 1 and server["MPTcpExtMPCapableSYNRX"] == 1
    assert client.get("MPTcpExtMPFastcloseTx", 0) >= 1 and server.get("MPTcpExtMPFastcloseRx", 0) >= 1
    assert "MPTcpExtMPFastcloseTx" not in server  # only the aborting side sends it
    deltas = json.loads((run_dir / "counters.json").read_text())["delta"]
    assert deltas["server"].get("TcpEstabResets", 0) >= 1
    assert not any(k.startswith("MPTcpExtMPCapableFallback") for k in client)

    # the workload's account: an abort on purpose, the peer reset, the 2 MB before it intact
    w = m["workloads"]["bulk"]
    assert w["ok"] is True and w["aborted"] is True and w["peer_reset"] is True and w["intact"] is True
    assert w["bytes"] == 2_000_000 and w["is_mptcp"] is True
    a = w["abort"]
    assert (a["side"], a["how"], a["abort_bytes"], a["linger_zero"]) == ("client", "unread", 2_000_000, False)
    assert a["unread_at_close"] is True and a["unread_bytes"] > 0
    assert "ECONNRESET" in a["reset_error"] and a["reset_bytes"] >= 2_000_000
    assert w["client"]["errors"] == [] and w["server"]["errors"] == []
    assert w["server"]["bytes"] < 20_000_000  # the server never got to send the whole 20 MB

    # the wire: the client's RSTs carry MP_FASTCLOSE (captured on its interfaces)
    client_caps = [cap["file"] for ref, cap in m["captures"].items() if ref.startswith("client:")]
    resets = [s for f in client_caps for s in mptcp_subtypes_of_resets(run_dir / "pcaps" / f)]
    assert any(MP_FASTCLOSE in s for s in resets), resets


def test_fastclose_matrix_cells_with_plain_tcp_fall_back_to_a_reset(tmp_path):
    r = run_cli("matrix", str(SUITE), "--scenarios", "fastclose", "--clients", "host,tcp", "--servers", "host,tcp",
                "--results", str(tmp_path), timeout=240)
    found = re.search(r"^archive: (.+)$", r.stdout, re.M)
    assert found, r.stdout + r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    cells = json.loads((Path(found.group(1)) / "matrix.json").read_text())["cells"]
    assert len(cells) == 4
    for key, c in cells.items():
        assert c["verdict"] == "as-expected", (key, c["reason"])
        w, counters = c["measured"]["workloads"]["bulk"], c["measured"]["counters"]
        assert w["ok"] is True and w["aborted"] is True and w["peer_reset"] is True and w["intact"] is True, key
        if c["client"] == c["server"] == "host":
            assert c["expected_outcome"] == c["outcome"] == "mptcp"
            assert counters["client"]["MPTcpExtMPFastcloseTx"] >= 1
            assert counters["server"]["MPTcpExtMPFastcloseRx"] >= 1
        else:  # plain TCP on a side: the abort is a RST, no MP_FASTCLOSE goes anywhere
            assert c["expected_outcome"] == c["outcome"] == "fallback", key
            assert w["is_mptcp"] is False
            assert not any("MPFastclose" in k for node in counters.values() for k in node), (key, counters)
