"""An observation that came back empty is `unobserved`, with the reason; never a value that reads as
the kernel's (an empty peer list, 0 counters, 0 bytes)."""

from __future__ import annotations

import os
import subprocess
import time

from testbed.collect import sockets as sockets_mod
from testbed.collect.linkbytes import Sampler
from testbed.collect.sockets import SocketSampler, established_peers
from testbed.spec.experiment import Experiment
from testbed.verdict import Measurements, judge

EXP = Experiment.model_validate({
    "name": "e", "topology": "t.yaml", "workloads": [{"type": "bulk"}],
    "expect": {"outcome": "mptcp", "subflows": {"min": 2},
               "counters": {"server.MPTcpExtMPJoinAckRx": 1, "client.MPTcpExtMPJoinSynAckRx": 1},
               "peers": {"server": {"includes": ["client:wlan0"], "excludes": ["client:cell0"]}},
               "paths": {"client:cell0": {"min_share": "10%"}}}})
SPECS = dict(zip(EXP.workload_names(), EXP.workloads, strict=True))


def measurements(**kw) -> Measurements:
    base = dict(workloads={"bulk": {"type": "bulk", "ok": True, "protocol": "mptcp"}}, workload_specs=SPECS,
                counters={"client": {"MPTcpExtMPCapableSYNACKRX": 1, "MPTcpExtMPJoinSynAckRx": 1},
                          "server": {"MPTcpExtMPJoinAckRx": 1}},
                path_bytes=lambda ref, s, e: 500 if ref == "client:cell0" else 1000,
                node_interfaces={"client": ["wlan0", "cell0"]},
                sockets=[{"t": 1.0, "node": "server", "tcp": "0 0 10.0.9.2:5201 10.0.0.1:40000"}],
                addresses={"client:wlan0": ["10.0.0.1"], "client:cell0": ["10.0.2.1"]})
    return Measurements(**{**base, **kw})


def by_name(m: Measurements) -> dict:
    return {c.name: c for c in judge(EXP, m, "mptcp")}


def test_everything_observed_passes():
    assert {c.verdict for c in by_name(measurements()).values()} == {"pass"}


def test_no_socket_snapshot_is_unobserved_not_an_empty_peer_list():
    checks = by_name(measurements(sockets=[], socket_gaps={"server": "none of 3 `ss` snapshots of server answered"}))
    peers = checks["peers of server"]
    assert peers.verdict == "unobserved" and peers.measured is None
    assert "none of 3 `ss` snapshots of server answered" in peers.detail
    # without the gap the same empty list is a real observation, and a failure
    assert by_name(measurements(sockets=[]))["peers of server"].verdict == "fail"


def test_an_excluded_peer_seen_is_evidence_even_with_a_gap():
    snaps = [{"t": 1.0, "node": "server", "tcp": "0 0 10.0.9.2:5201 10.0.2.1:40000"}]
    peers = by_name(measurements(sockets=snaps, socket_gaps={"server": "late"}))["peers of server"]
    assert peers.verdict == "fail"


def test_unread_counters_are_unobserved_not_zero():
    m = measurements(counters={"client": {"MPTcpExtMPCapableSYNACKRX": 1, "MPTcpExtMPJoinSynAckRx": 1}},
                     counter_gaps={"server": "no counters could be read from server (after the workloads)"})
    checks = by_name(m)
    assert checks["counter server.MPTcpExtMPJoinAckRx"].verdict == "unobserved"
    assert checks["counter client.MPTcpExtMPJoinSynAckRx"].verdict == "pass"
    assert checks["outcome"].verdict == "unobserved"  # a fallback counter there could not be ruled out
    m = measurements(counters={}, counter_gaps={"client": "x", "server": "y"})
    assert by_name(m)["subflows at client"].verdict == "unobserved"


def test_unsampled_interfaces_are_unobserved_not_zero_bytes():
    share = by_name(measurements(link_gaps={"client:cell0": "client:cell0 was found in 0 of 5 samples"}))
    assert [c.verdict for n, c in share.items() if "client:cell0" in n] == ["unobserved"]


def test_established_peers_reads_proc_net_tcp():
    v4 = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
          "   0: 0100000A:1451 0100000A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1\n"
          "   1: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n"
          "   2: 0100000A:1451 0103000A:9C41 01 00000000:00000000 00:00000000 00000000     0        0 3\n")
    assert established_peers(v4) == {"10.0.0.1", "10.0.3.1"}  # the listener (0A) is not a peer
    v6 = ("  sl  local_address                         remote_address                        st\n"
          "   0: B80D0120000000000000000002000000:1451 B80D0120000001000000000001000000:9C40 01 0\n"
          "   1: 0000000000000000FFFF00000100000A:1451 0000000000000000FFFF00000200000A:9C40 01 0\n")
    assert established_peers(v6) == {"2001:db8:1::1", "10.0.0.2"}


def test_the_peer_reads_see_a_real_connection():
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    try:
        s = SocketSampler({"here": Local()}, 10.0, time.monotonic())
        s.read_peers("here")
        assert "127.0.0.1" in s.peer_table()["here"] and s.gap("here") is None
    finally:
        for x in (cli, conn, srv):
            x.close()


class Local:
    """A node that is this machine's own namespace: `ss` really runs."""

    def __init__(self, argv_prefix: list[str] | None = None):
        self.prefix = argv_prefix
        self.pid = os.getpid()

    def popen(self, argv, **kw):
        return subprocess.Popen(self.prefix or argv, **kw)


def test_socket_sampler_tells_no_answer_from_an_empty_answer(monkeypatch):
    monkeypatch.setattr(sockets_mod, "TIMEOUT", 0.3)
    t0 = time.monotonic()
    monkeypatch.setattr(sockets_mod, "PEER_INTERVAL", 0.1)
    stuck, broken = Local(["sleep", "5"]), Local(["false"])
    stuck.pid = broken.pid = 2 ** 22 + 1  # beyond pid_max: no /proc/<pid>/net to read either
    s = SocketSampler({"here": Local(), "stuck": stuck, "broken": broken}, 0.1, t0)
    s.start()
    time.sleep(1.0)
    s.stop()
    assert s.gap("here") is None and s.stats["here"].attempts >= 2  # answered, whatever it listed
    assert s.stats["here"].table_reads >= 3
    assert "took longer than 0.3 s" in s.gap("stuck") and s.stats["stuck"].failures >= 2
    assert "exited 1" in s.gap("broken")
    assert "was taken" in SocketSampler({"n": Local()}, 1.0, t0).gap("n")  # never sampled at all
    assert "after the first connection" in s.gap("here", since=1e6)


def test_link_sampler_notes_an_interface_it_never_found():
    s = Sampler({"a:eth0": (lambda: {"eth0": (1, 2)}, "eth0"), "a:gone": (lambda: {"eth0": (1, 2)}, "gone")}, 1.0,
                time.monotonic())
    s.sample()
    s.sample()
    assert s.gap("a:eth0") is None and "found in 0 of 2" in s.gap("a:gone")


def test_a_workload_that_never_started_is_unobserved_and_nothing_else_is_judged():
    m = measurements(workloads={"bulk": {"type": "bulk", "ok": False, "error": "x",
                                         "not_started": "bulk-server did not become ready within 60.0 s: no output"}})
    checks = judge(EXP, m, "failed")
    assert [(c.name, c.verdict) for c in checks] == [("workload bulk completed", "unobserved")]
    assert "it never started: bulk-server did not become ready" in checks[0].detail


class _Node:
    def popen(self, argv, **kw):
        return subprocess.Popen(argv, **kw)


class _State:
    def __init__(self):
        self.added = []

    def add_process(self, pid, what):
        self.added.append((pid, what))


def test_a_silent_server_is_not_ready_but_one_that_says_why_is_the_implementations(tmp_path):
    from testbed.workloads import process
    from testbed.workloads.context import Context

    ctx = Context(None, None, "::1", tmp_path, _State(), 1)
    cases = {"silent": (["sleep", "30"], True), "speaks": (["sh", "-c", "echo bind: EADDRNOTAVAIL; sleep 30"], False),
             "exits": (["sh", "-c", "exit 3"], False)}
    for what, (argv, silent) in cases.items():
        try:
            process.start(_Node(), argv, ctx, what, b"ready", timeout=0.5)
        except process.NotReady as exc:
            assert exc.silent is silent, what
            assert f"{what} did not become ready within" in str(exc)
        else:
            raise AssertionError(f"{what} became ready")
    assert [w for _, w in ctx.state.added] == list(cases)
    assert not [pid for pid, _ in ctx.state.added if os.path.exists(f"/proc/{pid}")], "stopped and reaped"
