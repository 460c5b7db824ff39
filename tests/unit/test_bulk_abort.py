"""The bulk workload's `abort` option: the model and its errors, the agent's abort (real sockets, in a
fresh network namespace so that the kernel's counters are this test's own), the driver's judgement,
and the matrix facts of the fastclose scenario."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
from pydantic import ValidationError

from testbed.errors import SpecError
from testbed.matrix.expect import Side, capability, expect_cell, fallback_expect, scenario_facts
from testbed.matrix.features import tcp_features, upstream_for_version
from testbed.spec.experiment import Bulk
from testbed.spec.load import load_experiment
from testbed.spec.matrix import load_suite
from testbed.workloads.drivers import aborted_bulk
from tests.conftest import ROOT
from tests.unit.test_agent import AGENT, PY, _load

agent = _load()
LINE = re.compile(r"^[^:\n]+:\d+:\d+: [^:\n]*: .+$")
SCENARIO = ROOT / "experiments" / "scenarios" / "fastclose.yaml"
SUITE = ROOT / "experiments" / "suites" / "hackathon.yaml"


# ------------------------------------------------------------------------------------------ model


def bulk(**kw) -> Bulk:
    return Bulk.model_validate({"type": "bulk", **kw})


def test_abort_defaults_and_how_resolution():
    w = bulk(size="20MB", direction="download", abort={"after": "2MB"})
    assert w.abort is not None and (w.abort.after, w.abort.side, w.abort.how) == (2_000_000, "client", "auto")
    assert w.abort_how() == "unread"  # the client receives a download: it can leave payload unread
    assert bulk(size="20MB", direction="upload", abort={"after": "2MB"}).abort_how() == "linger0"  # it sends
    assert bulk(size="20MB", direction="upload", abort={"after": "2MB", "side": "server"}).abort_how() == "unread"
    assert bulk(size="20MB", direction="download", abort={"after": 1, "how": "both"}).abort_how() == "both"
    assert bulk(size="1MB").abort is None and bulk(size="1MB").abort_how() is None


@pytest.mark.parametrize(("kw", "message"), [
    ({"size": "2MB", "abort": {"after": "2MB"}}, "after (2MB) must be less than the workload's size (2MB)"),
    ({"size": "2MB", "direction": "upload", "abort": {"after": "1MB", "how": "unread"}},
     "'unread' leaves payload unread, but the client sends it (direction: upload)"),
    ({"size": "2MB", "direction": "download", "abort": {"after": "1MB", "side": "server", "how": "both"}},
     "abort on the client"),
    ({"size": "2MB", "via": "conv", "abort": {"after": "1MB"}}, "does not combine with via"),
    ({"size": "2MB", "servers": ["a", "b"], "abort": {"after": "1MB"}}, "does not combine with servers"),
    ({"size": "2MB", "abort": {"after": 0}}, "greater than 0"),
    ({"size": "2MB", "abort": {"after": "1MB", "how": "rst"}}, "'rst'"),
])
def test_abort_validation(kw, message):
    with pytest.raises(ValidationError) as exc:
        bulk(**kw)
    assert message in str(exc.value)


def test_abort_errors_are_one_line_with_file_positions(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: x
        topology: {{file: {ROOT / "topologies" / "dual-homed.yaml.j2"}}}
        workloads:
          - type: bulk
            size: 2MB
            direction: download
            abort: {{after: 3MB}}
          - {{type: bulk, size: 2MB, direction: upload, abort: {{after: 1MB, how: unread}}}}
          - {{type: bulk, size: 2MB, abort: {{after: 1MB, sid: server}}}}
        """))
    with pytest.raises(SpecError) as exc:
        load_experiment(p)
    lines = [str(problem) for problem in exc.value.problems]
    assert len(lines) == 3, lines
    assert all(LINE.match(line) and "\n" not in line for line in lines), lines
    assert lines[0].startswith(f"{p}:7:5: workloads[0].abort: after (3MB) must be less than")
    assert lines[1].startswith(f"{p}:8:") and "workloads[1].abort: how: 'unread'" in lines[1]
    assert lines[2].startswith(f"{p}:9:") and "workloads[2].abort.sid: unknown field 'sid' (did you mean 'side'?)" \
        in lines[2]


def test_shipped_fastclose_scenario_aborts_a_download_on_the_client():
    exp = load_experiment(SCENARIO).experiment
    (w,) = exp.workloads
    assert isinstance(w, Bulk) and w.direction == "download" and w.abort is not None
    assert (w.abort.side, w.abort_how()) == ("client", "unread") and w.abort.after < w.size
    assert exp.expect.counters["client.MPTcpExtMPFastcloseTx"].min == 1
    assert exp.expect.counters["server.MPTcpExtMPFastcloseRx"].min == 1
    assert "no workload" not in exp.description and "none exists" not in exp.description


# ------------------------------------------------------------------------------------ agent: pure


def test_agent_abort_plan_resolves_auto_like_the_model():
    parser = agent.build_parser()
    base = ["--connect", "x", "--port", "1", "--size", "20MB"]
    for direction, side, want in (("download", "client", "unread"), ("download", "server", "linger0"),
                                  ("upload", "client", "linger0"), ("upload", "server", "unread")):
        args = parser.parse_args(["bulk-client", *base, "--direction", direction, "--abort-after", "2MB",
                                  "--abort-side", side])
        assert agent.abort_plan(args) == {"side": side, "after": 2_000_000, "how": want}
        assert bulk(size="20MB", direction=direction, abort={"after": "2MB", "side": side}).abort_how() == want
    assert agent.abort_plan(parser.parse_args(["bulk-client", *base])) is None


@pytest.mark.parametrize("extra", [["--abort-after", "20MB"], ["--abort-after", "0"],
                                   ["--abort-after", "1MB", "--abort-how", "unread", "--direction", "upload"]])
def test_agent_rejects_impossible_aborts(extra):
    proc = subprocess.run([PY, "-S", str(AGENT), "bulk-client", "--connect", "127.0.0.1", "--port", "9",
                           "--size", "20MB", *extra], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == "" and "--abort-" in proc.stderr


def test_receiving_with_a_limit_reads_no_byte_beyond_it():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"x" * 5000)
        progress = agent.Progress()
        got = bytearray()
        agent.recv_hash_until_eof(a, got.extend, agent.Deadline(5), progress, limit=3000)
        assert progress.bytes == len(got) == 3000
        assert agent.unread_bytes(a) == 2000  # the rest is still queued: what makes close() an abort


def test_wait_unread_tells_data_from_nothing_and_from_eof():
    a, b = socket.socketpair()
    with a, b:
        assert agent.wait_unread(a, agent.Deadline(5), wait=0.05) == (False, 0)
        threading.Timer(0.05, b.sendall, args=(b"abc",)).start()
        assert agent.wait_unread(a, agent.Deadline(5), wait=5) == (True, 3)  # waits for it to arrive
        a.recv(3)
        b.shutdown(socket.SHUT_WR)
        assert agent.wait_unread(a, agent.Deadline(5), wait=5) == (False, 0)  # EOF: returns at once


# --------------------------------------------------------------------------- agent: real transfers

_SCRIPT = r"""
import json, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
py, agent, proto, direction, side, how = sys.argv[1:7]
def counters():
    out = {}
    for name in ("netstat", "snmp"):
        lines = open(f"/proc/net/{name}").read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix = head.split(":")[0]
            for k, v in zip(head.split()[1:], vals.split()[1:]):
                out[prefix + k] = int(v)
    return out
common = ["--port", "5301", "--protocol", proto, "--direction", direction, "--size", "20MB", "--seed", "5",
          "--timeout", "20", "--abort-after", "2MB", "--abort-side", side, "--abort-how", how]
before = counters()
server = subprocess.Popen([py, "-S", agent, "bulk-server", "--bind", "127.0.0.1", *common], stdout=subprocess.PIPE,
                          text=True)
assert server.stdout.readline() == "ready\n"
client = subprocess.run([py, "-S", agent, "bulk-client", "--connect", "127.0.0.1", *common], capture_output=True,
                        text=True, timeout=40)
sout, _ = server.communicate(timeout=40)
time.sleep(0.2)
after = counters()
print(json.dumps({"client": json.loads(client.stdout.splitlines()[-1]), "client_rc": client.returncode,
                  "server": json.loads(sout), "server_rc": server.returncode,
                  "delta": {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}}))
"""


def _mptcp_sockets() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
    except OSError:
        return False
    return True


def _abort_in_netns(proto: str, direction: str, side: str, how: str) -> dict:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip")
    if proto == "mptcp" and not _mptcp_sockets():
        pytest.skip("MPTCP sockets unavailable here")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", _SCRIPT, PY, str(AGENT), proto, direction, side,
                           how], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.root
@pytest.mark.parametrize(("direction", "side"), [("download", "client"), ("upload", "server")])
def test_mptcp_receiver_closing_with_unread_data_sends_mp_fastclose(direction, side):
    r = _abort_in_netns("mptcp", direction, side, "auto")
    sides = {"client": r["client"], "server": r["server"]}
    aborter, peer = sides[side], sides["server" if side == "client" else "client"]
    assert r["client_rc"] == r["server_rc"] == 0, (r["client"]["errors"], r["server"]["errors"])
    assert aborter["abort"] == {"side": side, "after": 2_000_000, "how": "unread"}
    assert aborter["aborted"] is True and aborter["abort_bytes"] == aborter["bytes"] == 2_000_000
    assert aborter["unread_at_close"] is True and aborter["unread_bytes"] > 0 and aborter["linger_zero"] is False
    assert aborter["intact"] is True and aborter["is_mptcp"] is True  # the receiver checked the 2 MB prefix
    assert peer["peer_reset"] is True and "ECONNRESET" in peer["reset_error"]
    assert peer["reset_bytes"] >= 2_000_000 and peer["errors"] == []
    d = r["delta"]  # the kernel's own account, in this namespace only
    assert d.get("MPTcpExtMPFastcloseTx", 0) >= 1 and d.get("MPTcpExtMPFastcloseRx", 0) >= 1, d
    assert d.get("TcpEstabResets", 0) >= 1


@pytest.mark.root
def test_tcp_receiver_closing_with_unread_data_resets_the_connection():
    r = _abort_in_netns("tcp", "download", "client", "auto")
    c, s = r["client"], r["server"]
    assert r["client_rc"] == r["server_rc"] == 0, (c["errors"], s["errors"])
    assert c["aborted"] is True and c["unread_bytes"] > 0 and c["is_mptcp"] is False and c["intact"] is True
    assert s["peer_reset"] is True and "ECONNRESET" in s["reset_error"]
    d = r["delta"]
    assert d.get("TcpExtTCPAbortOnClose", 0) == 1 and d.get("MPTcpExtMPFastcloseTx", 0) == 0, d


@pytest.mark.root
def test_mptcp_sender_linger0_abort_is_a_fastclose_or_an_orderly_close_never_both():
    """SO_LINGER {1, 0} makes MPTCP send MP_FASTCLOSE only with f14d6e9c3678 (7.1, stable backports):
    whichever this kernel does, the agent's account must match the kernel's counters."""
    r = _abort_in_netns("mptcp", "upload", "client", "auto")
    c, s = r["client"], r["server"]
    assert c["aborted"] is True and c["linger_zero"] is True and c["unread_at_close"] is None
    assert c["abort_bytes"] == 2_000_000 and c["intact"] is None  # the sender cannot judge what arrived
    assert s["intact"] is True and s["bytes"] <= 2_000_000  # unsent data is discarded by the abort
    sent = r["delta"].get("MPTcpExtMPFastcloseTx", 0)
    if s["peer_reset"]:
        assert sent >= 1 and r["delta"].get("MPTcpExtMPFastcloseRx", 0) >= 1 and s["errors"] == []
    else:
        assert sent == 0 and any("EOF" in e for e in s["errors"]) and r["server_rc"] == 1


# ------------------------------------------------------------------------------------------ driver


def _sides(peer_reset: bool = True, intact: bool = True) -> tuple[dict, dict]:
    client = {"aborted": True, "abort_bytes": 2_000_000, "unread_bytes": 5000, "unread_at_close": True,
              "linger_zero": False, "bytes": 2_000_000, "intact": intact, "errors": [], "is_mptcp": True,
              "seconds": 0.3, "goodput_bps": 5e7}
    server = {"peer_reset": peer_reset, "reset_error": "ConnectionResetError: ECONNRESET" if peer_reset else None,
              "reset_bytes": 3_000_000, "bytes": 3_000_000, "intact": None,
              "errors": [] if peer_reset else ["the connection ended in order (EOF): the peer's abort did not reset it"]}
    return client, server


def test_driver_counts_a_purposeful_abort_as_complete_only_with_the_peer_reset():
    w = bulk(size="20MB", direction="download", abort={"after": "2MB"})
    r = aborted_bulk(w, *_sides())
    assert r["ok"] is True and r["error"] is None and r["intact"] is True and r["bytes"] == 2_000_000
    assert r["abort"]["how"] == "unread" and r["abort"]["peer_reset"] is True and r["aborted"] is True
    r = aborted_bulk(w, *_sides(peer_reset=False))
    assert r["ok"] is False and "the server saw no reset" in r["error"] and "EOF" in r["error"]
    r = aborted_bulk(w, *_sides(intact=False))
    assert r["ok"] is False and r["intact"] is False
    r = aborted_bulk(w, _sides()[0], None)
    assert r["ok"] is False and "the server gave no result" in r["error"]


# ------------------------------------------------------------------------------------------ matrix


def test_the_abort_capability_exists_and_the_fastclose_facts_follow_from_the_experiment():
    assert capability("abort-workload") == (True, "")
    suite = load_suite(SUITE)
    scenario = suite.scenario("fastclose")
    f = scenario_facts(scenario, load_experiment(SCENARIO))
    assert f.capabilities == ["abort-workload"] and f.aborts and f.outcome == "mptcp"
    assert {"fastclose", "mib:MPFastcloseTx"} <= set(f.requires["client"])
    assert "mib:MPFastcloseRx" in f.requires["server"] and "fastclose" not in f.requires["server"]

    def side(version: tuple[int, int]) -> Side:
        return Side(f"linux-{version[0]}.{version[1]}", upstream_for_version("k", version, f"{version[0]}.{version[1]}"))

    tcp = Side("tcp", tcp_features("tcp"))
    assert expect_cell(f, side((6, 1)), side((6, 18))).expected_outcome == "mptcp"
    old = expect_cell(f, side((5, 19)), side((6, 18)))
    assert old.status == "unsupported" and "lacks fastclose" in old.reason and "6.1" in old.reason
    for client, server in ((tcp, side((6, 18))), (side((6, 18)), tcp), (tcp, tcp)):
        e = expect_cell(f, client, server)
        assert (e.status, e.expected_outcome, e.mode) == ("run", "fallback", "fallback")
        assert "RST" in e.reason
    assert fallback_expect(f.has_bulk) == {"outcome": "fallback", "transfer_intact": True}
