"""Shaping measured on real Mininet networks (needs root): RTT with ping, loss with a UDP count, rate with
a TCP transfer, through whichever backend `choose_backend()` picks here; then nothing may be left over.

Tolerances:
* RTT: configured ± (25 % + 2 ms) on the average; the minimum may not be below the configured RTT by
  more than 2 % (a delay line can only add delay, netem neither).
* loss: the binomial bounds n·p ± 4.5·sqrt(n·p·(1-p)) (a false alarm about once in 150 000 runs).
* rate: TCP goodput after the first 256 KB between 80 % and 105 % of the configured rate.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.emulation import shaping
from testbed.emulation.shaping import LinkDirection, Shaper
from testbed.errors import RunError
from testbed.spec.topology import Impairment

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ping", "tc", "nft", "iptables", "mnexec")),
                       reason="needs ping, tc, nft, iptables and Mininet's mnexec"),
]

TRAFFIC = r'''
import json, socket, sys, time

def udp_sink(port, quiet):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    seen = set()
    s.settimeout(10)
    while True:
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            break
        seen.add(int(data.split(b" ")[0]))
        s.settimeout(quiet)
    print(json.dumps({"received": len(seen)}), flush=True)

def udp_source(host, port, count, gap):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = b" " + b"x" * 100
    for i in range(count):
        s.sendto(str(i).encode() + pad, (host, port))
        time.sleep(gap)

def tcp_sink(port, mark):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    total, t_mark, at_mark = 0, None, 0
    while True:
        data = conn.recv(1 << 18)
        if not data:
            break
        total += len(data)
        if t_mark is None and total >= mark:
            t_mark, at_mark = time.monotonic(), total
    t_end = time.monotonic()
    print(json.dumps({"bytes": total, "bits_per_second": (total - at_mark) * 8 / (t_end - t_mark)}), flush=True)

def tcp_source(host, port, size):
    s = socket.create_connection((host, port))
    chunk = b"\0" * 65536
    sent = 0
    while sent < size:
        sent += s.send(chunk[: min(len(chunk), size - sent)])
    s.close()

mode, args = sys.argv[1], sys.argv[2:]
if mode == "udp-sink":
    udp_sink(int(args[0]), float(args[1]))
elif mode == "udp-source":
    udp_source(args[0], int(args[1]), int(args[2]), float(args[3]))
elif mode == "tcp-sink":
    tcp_sink(int(args[0]), int(args[1]))
elif mode == "tcp-source":
    tcp_source(args[0], int(args[1]), int(args[2]))
'''


# -- helpers -------------------------------------------------------------------------------------------


def mininet() -> tuple[Any, Any, Any]:
    from testbed.emulation.mininet_import import mininet_modules  # removes the slow distutils shim first

    return mininet_modules()


def sh(node: Any, *argv: str) -> str:
    return node.cmd(shlex.join(argv))


def ping(node: Any, target: str, count: int, interval: float, user: bool = False) -> dict[str, float]:
    """`user`: ping -U, user-to-user latency instead of the kernel's receive timestamp."""
    out = sh(node, "ping", "-n", "-q", *(["-U"] if user else []), "-c", str(count), "-i", str(interval),
             "-W", "1", target)
    sent = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert sent, out
    result = {"sent": float(sent[1]), "received": float(sent[2])}
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    if rtt:
        result |= {"min": float(rtt[1]), "avg": float(rtt[2]), "max": float(rtt[3]), "mdev": float(rtt[4])}
    return result


def binomial_bounds(n: int, p: float, sigmas: float = 4.5) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return (n * p - sigmas * sd) / n, (n * p + sigmas * sd) / n


def start(node: Any, script: pathlib.Path, *args: str) -> subprocess.Popen[bytes]:
    proc = node.popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    assert line == "ready", (line, proc.stderr.read().decode() if proc.stderr else "")


def finish(proc: subprocess.Popen[bytes], timeout: float = 20) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Leaks:
    """What exists before a network is built; `check()` after teardown compares."""

    def __init__(self) -> None:
        self.links = root_links()
        self.netns = netns_list()
        self.pids: list[int] = []

    def check(self) -> None:
        assert root_links() == self.links, "root-namespace links left over"
        assert netns_list() == self.netns, "named network namespaces left over"
        left = [pid for pid in self.pids if alive(pid)]
        assert not left, f"processes left over: {left}"
        # other runs may have delay lines of their own: ours are this process's children
        ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
        ours = [line for line in ps.splitlines()
                if int(line.split()[0]) in self.pids
                or (int(line.split()[1]) == os.getpid() and str(shaping.DELAYLINE) in line)]
        assert not ours, f"delay lines or shells left over: {ours}"


@pytest.fixture
def traffic(tmp_path: pathlib.Path) -> pathlib.Path:
    script = tmp_path / "traffic.py"
    script.write_text(TRAFFIC)
    return script


@pytest.fixture(scope="module")
def backend() -> str:
    chosen = shaping.choose_backend()
    assert chosen == ("netem" if shaping.netem_available() else "fallback")
    return chosen


# -- host — router — host --------------------------------------------------------------------------------


@pytest.fixture
def routed(tmp_path: pathlib.Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    mn_net, mn_node, _ = mininet()
    leaks = Leaks()
    net = mn_net.Mininet(topo=None, controller=None, build=False)
    try:
        h1 = net.addHost("h1", cls=mn_node.Host, ip=None)
        r1 = net.addHost("r1", cls=mn_node.Host, ip=None)
        h2 = net.addHost("h2", cls=mn_node.Host, ip=None)
        net.addLink(h1, r1, intfName1="h1-eth0", intfName2="r1-eth0")
        net.addLink(r1, h2, intfName1="r1-eth1", intfName2="h2-eth0")
        net.build()
        leaks.pids += [h1.pid, r1.pid, h2.pid]
        for node, ifname, addr, gw in ((h1, "h1-eth0", "10.0.1.1/24", "10.0.1.254"),
                                       (h2, "h2-eth0", "10.0.2.1/24", "10.0.2.254")):
            sh(node, "ip", "addr", "add", addr, "dev", ifname)
            sh(node, "ip", "link", "set", ifname, "up")
            sh(node, "ip", "route", "replace", "default", "via", gw)
        for ifname, addr in (("r1-eth0", "10.0.1.254/24"), ("r1-eth1", "10.0.2.254/24")):
            sh(r1, "ip", "addr", "add", addr, "dev", ifname)
            sh(r1, "ip", "link", "set", ifname, "up")
        sh(r1, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        assert ping(h1, "10.0.2.1", 1, 0.2)["received"] == 1
        yield net, {"h1": h1, "r1": r1, "h2": h2, "leaks": leaks, "log_dir": tmp_path / "logs"}
    finally:
        net.stop()
        leaks.check()


def test_routed_link_rtt_jitter_loss_rate(routed: tuple[Any, dict[str, Any]], traffic: pathlib.Path,
                                          backend: str) -> None:
    _, n = routed
    h1, r1, h2 = n["h1"], n["r1"], n["h2"]
    shaper = Shaper(backend, n["log_dir"], seed=1)
    measured: dict[str, Any] = {}
    try:
        fwd = LinkDirection("access forward", h1, "h1-eth0", r1, "r1-eth0", Impairment(delay="20ms"))
        rev = LinkDirection("access reverse", r1, "r1-eth0", h1, "h1-eth0", Impairment(delay="20ms"))
        descs = [shaper.apply(d) for d in (fwd, rev)]
        for desc in descs:
            assert desc["backend"] == backend
            json.dumps(desc)
        if backend == "fallback":  # both on the router, which forwards: "on the wire" for h1
            assert "on r1:r1-eth0 ingress (forwarding node)" in descs[0]["delay"]
            assert "on r1:r1-eth0 egress (forwarding node)" in descs[1]["delay"]
            assert len(shaper.processes()) == 2
        n["leaks"].pids += shaper.processes()

        # RTT: 20 ms each way
        r = ping(h1, "10.0.2.1", 20, 0.05)
        measured["rtt"] = r
        assert r["received"] == 20
        assert 40 * 0.75 - 2 <= r["avg"] <= 40 * 1.25 + 2, r
        assert r["min"] >= 40 * 0.98, r

        # jitter added at runtime on the forward direction: 20 ms ± 5 ms
        shaper.change(fwd, Impairment(delay="20ms", jitter="5ms"))
        r = ping(h1, "10.0.2.1", 40, 0.05)
        measured["rtt_jitter"] = r
        assert r["min"] >= 35 * 0.98 and r["max"] <= 45 * 1.25 + 2, r
        assert r["mdev"] >= 0.5, r

        # loss instead of delay: 10 % forward, nothing reverse (delay lines idle, rules removed)
        shaper.change(fwd, Impairment(loss="10%"))
        shaper.change(rev, Impairment())
        r = ping(h1, "10.0.2.1", 5, 0.02)
        assert r.get("max", 99) < 5, r  # the delay is gone in both directions
        count = 3000
        sink = start(h2, traffic, "udp-sink", "5001", "0.7")
        wait_ready(sink)
        source = start(h1, traffic, "udp-source", "10.0.2.1", "5001", str(count), "0.0002")
        source.communicate(timeout=30)
        received = finish(sink)["received"]
        loss = 1 - received / count
        measured["loss"] = {"sent": count, "received": received, "rate": loss}
        low, high = binomial_bounds(count, 0.10)
        assert low <= loss <= high, (loss, low, high)

        # rate: 10 Mbit/s with 20 ms each way (queue: one BDP)
        desc = shaper.change(fwd, Impairment(rate="10Mbit", delay="20ms"))
        assert desc["queue"] == shaping.bdp_packets(10e6, 0.020)
        shaper.change(rev, Impairment(delay="20ms"))
        sink = start(h2, traffic, "tcp-sink", "5002", str(256 * 1024))
        wait_ready(sink)
        source = start(h1, traffic, "tcp-source", "10.0.2.1", "5002", str(3_000_000))
        result = finish(sink, timeout=30)
        source.communicate(timeout=10)
        measured["rate"] = result
        assert result["bytes"] == 3_000_000
        assert 0.80 * 10e6 <= result["bits_per_second"] <= 1.05 * 10e6, result
    finally:
        shaper.stop()
        shaper.stop()  # idempotent
        assert shaper.processes() == []
        print(f"\nmeasured ({backend}): {json.dumps(measured)}")


# -- host — switch — host: the switch port is in the root namespace -------------------------------------


def test_switch_port_sender_egress(tmp_path: pathlib.Path, backend: str) -> None:
    mn_net, mn_node, mn_nodelib = mininet()
    leaks = Leaks()
    sw = f"tbt{os.getpid() % 100000}"
    net = mn_net.Mininet(topo=None, controller=None, build=False)
    shaper = Shaper(backend, tmp_path / "logs", seed=2)
    measured: dict[str, Any] = {}
    try:
        h3 = net.addHost("h3", cls=mn_node.Host, ip=None)
        h4 = net.addHost("h4", cls=mn_node.Host, ip=None)
        s1 = net.addSwitch(sw, cls=mn_nodelib.LinuxBridge)
        net.addLink(h3, s1, intfName1="h3-eth0", intfName2=f"{sw}p1")
        net.addLink(h4, s1, intfName1="h4-eth0", intfName2=f"{sw}p2")
        net.build()
        s1.start([])
        leaks.pids += [h3.pid, h4.pid]
        for node, ifname, addr in ((h3, "h3-eth0", "10.0.3.3/24"), (h4, "h4-eth0", "10.0.3.4/24")):
            sh(node, "ip", "addr", "add", addr, "dev", ifname)
            sh(node, "ip", "link", "set", ifname, "up")
        assert ping(h3, "10.0.3.4", 1, 0.2)["received"] == 1

        d = LinkDirection("lan forward", h3, "h3-eth0", None, None, Impairment(delay="15ms", loss="20%"))
        desc = shaper.apply(d)
        assert desc["backend"] == backend
        if backend == "fallback":
            assert "sender egress" in desc["delay"] and "sender egress" in desc["loss"]
        leaks.pids += shaper.processes()
        r = ping(h3, "10.0.3.4", 300, 0.01)
        measured["egress"] = r
        assert r["min"] >= 15 * 0.98 and r["avg"] <= 15 * 1.25 + 2, r
        loss = 1 - r["received"] / r["sent"]
        low, high = binomial_bounds(int(r["sent"]), 0.20)
        assert low <= loss <= high, (loss, low, high)

        shaper.change(d, Impairment())  # everything removed again
        r = ping(h3, "10.0.3.4", 20, 0.01)
        assert r["received"] == 20 and r["max"] < 5, r
    finally:
        shaper.stop()
        net.stop()
        print(f"\nmeasured ({backend}): {json.dumps(measured)}")
    leaks.check()


def test_two_hosts_and_start_failure(tmp_path: pathlib.Path, backend: str) -> None:
    """Two hosts, no forwarding node: the fallback delays on each receiver's ingress, which ping sees with
    -U (its kernel receive timestamp precedes that delay). Then a delay line that cannot bind its queue
    (taken by another shaper's) makes apply() fail quickly with the delay line's own message."""
    mn_net, mn_node, _ = mininet()
    leaks = Leaks()
    net = mn_net.Mininet(topo=None, controller=None, build=False)
    first, second = Shaper(backend, tmp_path / "a"), Shaper(backend, tmp_path / "b")
    measured: dict[str, Any] = {}
    try:
        h5 = net.addHost("h5", cls=mn_node.Host, ip=None)
        h6 = net.addHost("h6", cls=mn_node.Host, ip=None)
        net.addLink(h5, h6, intfName1="h5-eth0", intfName2="h6-eth0")
        net.build()
        leaks.pids += [h5.pid, h6.pid]
        for node, ifname, addr in ((h5, "h5-eth0", "10.0.5.5/24"), (h6, "h6-eth0", "10.0.5.6/24")):
            sh(node, "ip", "addr", "add", addr, "dev", ifname)
            sh(node, "ip", "link", "set", ifname, "up")
        fwd = first.apply(LinkDirection("p2p forward", h5, "h5-eth0", h6, "h6-eth0", Impairment(delay="10ms")))
        first.apply(LinkDirection("p2p reverse", h6, "h6-eth0", h5, "h5-eth0", Impairment(delay="10ms")))
        leaks.pids += first.processes()
        if backend == "fallback":
            assert "h6:h6-eth0 ingress (receiver ingress" in fwd["delay"] and "ping without -U" in fwd["delay"]
        r = ping(h5, "10.0.5.6", 20, 0.03, user=True)
        measured["rtt_user"] = r
        assert 20 * 0.75 - 2 <= r["avg"] <= 20 * 1.25 + 2 and r["min"] >= 20 * 0.98, r

        if backend == "fallback":
            t0 = time.monotonic()
            with pytest.raises(RunError, match="did not start"):  # queue 1 in h6 is the first shaper's
                second.apply(LinkDirection("two", h5, "h5-eth0", h6, "h6-eth0", Impairment(delay="5ms")))
            assert time.monotonic() - t0 < shaping.READY_TIMEOUT
            assert second.processes() == []

            # a delay line that dies lets packets through undelayed (--queue-bypass) rather than
            # cutting the link; the next change() starts a new one
            fwd_line = first.processes()[0]
            os.kill(fwd_line, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive(fwd_line) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # the kernel lets go of a dead listener's queue a little after the exit
            r = ping(h5, "10.0.5.6", 5, 0.03, user=True)
            assert r["received"] == 5 and r["max"] < 15, r
            first.change(LinkDirection("p2p forward", h5, "h5-eth0", h6, "h6-eth0", Impairment(delay="10ms")),
                         Impairment(delay="15ms"))
            assert fwd_line not in first.processes() and len(first.processes()) == 2
            leaks.pids += first.processes()
            r = ping(h5, "10.0.5.6", 10, 0.03, user=True)
            assert r["min"] >= 25 * 0.98 and r["avg"] <= 25 * 1.25 + 2, r
    finally:
        first.stop()
        second.stop()
        net.stop()
        print(f"\nmeasured ({backend}): {json.dumps(measured)}")
    leaks.check()
