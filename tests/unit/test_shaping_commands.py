"""Shaping without root: the argv lists each backend would run, queue sizing, backend choice, and the
delay line's scheduling logic (fed fake packets)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
from typing import Any

import pytest

from testbed.emulation import delayline, shaping
from testbed.emulation.shaping import LinkDirection, Shaper
from testbed.errors import CapabilityError
from testbed.spec.topology import Impairment


def imp(**kw: Any) -> Impairment:
    return Impairment(**kw)


# -- queue sizing ---------------------------------------------------------------------------------


def test_bdp_packets() -> None:
    assert shaping.bdp_packets(10e6, 0.020) == 34  # 10 Mbit/s * 40 ms / (8 * 1500 B) = 33.3
    assert shaping.bdp_packets(1e9, 0.050) == 8334
    assert shaping.bdp_packets(1e6, 0.001) == 10  # at least 10
    assert shaping.bdp_packets(1e6, 0.0) == 10
    assert shaping.bdp_packets(100e9, 10.0) == 100_000  # at most 100000


def test_queue_length() -> None:
    assert shaping.queue_length(imp(rate="10Mbit", delay="20ms")) == 34
    assert shaping.queue_length(imp(rate="10Mbit", delay="20ms", queue=7)) == 7
    assert shaping.queue_length(imp(delay="20ms")) is None
    assert shaping.queue_length(imp(delay="20ms", queue=50)) == 50


def test_formatting() -> None:
    assert shaping.tc_rate(10e6) == "10000000bit"
    assert shaping.tc_time(0.02) == "20000us"
    assert shaping.tc_time(0.0005) == "500us"
    assert shaping.tc_percent(10.0) == "10%"
    assert shaping.tc_percent(0.25) == "0.25%"
    assert shaping.loss_threshold(10) == 1000
    assert shaping.loss_threshold(0.25) == 25
    assert shaping.loss_threshold(0.0001) == 1  # any loss asked for is some loss
    assert shaping.loss_threshold(100) == 10_000
    assert shaping.loss_threshold(0) == 0


@pytest.mark.parametrize("name", ["eth0", "h1-eth0", "wlan0.5", "a" * 15])
def test_ifname_ok(name: str) -> None:
    assert shaping.check_ifname(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, 'x"; drop', "a b", "eth0\n"])
def test_ifname_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        shaping.check_ifname(name)


# -- netem backend ----------------------------------------------------------------------------------


def test_netem_with_rate_is_htb_with_netem_leaf() -> None:
    cmds = shaping.netem_commands("eth0", imp(rate="10Mbit", delay="20ms", jitter="5ms", loss="1%"))
    assert cmds == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "class", "replace", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb",
         "rate", "10000000bit", "ceil", "10000000bit"],
        ["tc", "qdisc", "replace", "dev", "eth0", "parent", "1:1", "handle", "10:",
         "netem", "delay", "20000us", "5000us", "loss", "1%", "limit", "34"],
    ]


def test_netem_without_rate_is_root_netem() -> None:
    cmds = shaping.netem_commands("eth0", imp(delay="20ms", loss="10%"))
    assert cmds == [["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:",
                     "netem", "delay", "20000us", "loss", "10%", "limit", str(shaping.DELAY_QUEUE)]]
    assert shaping.netem_commands("eth0", imp(loss="0.5%", queue=200)) == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "netem", "loss", "0.5%", "limit", "200"]]


def test_netem_layout_switch_deletes_root_first() -> None:
    cmds = shaping.netem_commands("eth0", imp(delay="20ms"), previous_layout="htb")
    assert cmds[0] == ["tc", "qdisc", "del", "dev", "eth0", "root"]
    assert cmds[1][:9] == ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "netem"]
    same = shaping.netem_commands("eth0", imp(rate="1Mbit"), previous_layout="htb")
    # same layout: class and leaf changed in place; htb itself has no change operation
    assert [c[1] for c in same] == ["class", "qdisc"] and all(c[2] == "replace" for c in same)
    assert same[1][5:7] == ["parent", "1:1"]
    assert shaping.netem_commands("eth0", imp(), previous_layout="netem") == [
        ["tc", "qdisc", "del", "dev", "eth0", "root"]]
    assert shaping.netem_commands("eth0", imp(), previous_layout=None) == []


# -- fallback backend ---------------------------------------------------------------------------------


def test_fallback_rate_is_htb_with_pfifo() -> None:
    assert shaping.fallback_rate_commands("eth1", 5e6, 17)[-1] == [
        "tc", "qdisc", "replace", "dev", "eth1", "parent", "1:1", "handle", "10:", "pfifo", "limit", "17"]


def test_nft_loss_command() -> None:
    argv = shaping.nft_loss_command("loss_3", "h2-eth0", 10.0)
    assert argv[0] == "nft" and len(argv) == 2
    assert argv[1] == (
        "add table inet testbed_shaping; "
        "add chain inet testbed_shaping loss_3 { type filter hook prerouting priority -300; policy accept; }; "
        "flush chain inet testbed_shaping loss_3; "
        'add rule inet testbed_shaping loss_3 iifname "h2-eth0" numgen random mod 10000 < 1000 drop')
    assert "drop" not in shaping.nft_loss_command("loss_3", "h2-eth0", 0.0)[1]  # loss removed: chain emptied
    with pytest.raises(ValueError):
        shaping.nft_loss_command("bad chain", "eth0", 1.0)


def test_nfqueue_rules() -> None:
    add_in = shaping.nfqueue_rule_commands("eth0", 4, ingress=True, add=True)
    assert add_in == [
        [tool, "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "eth0", "-j", "NFQUEUE", "--queue-num", "4",
         "--queue-bypass"] for tool in ("iptables", "ip6tables")]
    del_out = shaping.nfqueue_rule_commands("eth0", 4, ingress=False, add=False)
    assert del_out[0][3:8] == ["mangle", "-D", "POSTROUTING", "-o", "eth0"]


def test_delayline_command() -> None:
    argv = shaping.delayline_command(3, delay=0.02, jitter=0.005, loss=0.0, seed=7, python="/py")
    assert argv == ["/py", str(shaping.DELAYLINE), "--queue", "3", "--delay", "0.02", "--jitter", "0.005",
                    "--loss", "0.0", "--seed", "7", "--queue-maxlen", "10000", "--stdin-control"]
    assert shaping.DELAYLINE.is_file()
    fast = shaping.delayline_command(3, delay=0.02, jitter=0.0, loss=0.0, seed=7, python="/py", lib="/site")
    assert fast[:5] == ["/py", "-S", str(shaping.DELAYLINE), "--lib", "/site"]


def test_delay_line_starts_without_site_and_finds_netfilterqueue() -> None:
    """The line runs under -S with only --lib to find netfilterqueue: a wrong directory would make
    every delay line fail to start."""
    lib = shaping.netfilterqueue_lib()
    assert lib is not None and pathlib.Path(lib, "netfilterqueue").exists()
    probe = ("import sys; sys.path.append(sys.argv[1]); import netfilterqueue; "
             "print('site' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", probe, lib], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "False"


def test_safe_label() -> None:
    assert shaping.safe_label("WiFi forward") == "wifi_forward"
    assert shaping.safe_label("../../x y") == "x_y"
    assert shaping.safe_label("***") == "link"


# -- backend choice -------------------------------------------------------------------------------------


@pytest.mark.parametrize("available", [True, False])
def test_choose_backend(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    monkeypatch.setattr(shaping, "netem_available", lambda: available)
    assert shaping.choose_backend() == ("netem" if available else "fallback")
    assert shaping.choose_backend("fallback") == "fallback"
    if available:
        assert shaping.choose_backend("netem") == "netem"
    else:
        with pytest.raises(CapabilityError, match="sch_netem"):
            shaping.choose_backend("netem")
    with pytest.raises(ValueError):
        shaping.choose_backend("tbf")


# -- the Shaper against a fake node ----------------------------------------------------------------------


class FakeProc:
    def __init__(self, out: bytes = b"", batch: list[list[str]] | None = None) -> None:
        self.returncode = 0
        self.pid = 4242
        self.out = out
        self.batch = batch  # a `tc -batch -`: the commands read from stdin go here

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[bytes, bytes]:
        if self.batch is not None and input is not None:
            self.batch += [["tc", *line.split()] for line in input.decode().splitlines()]
        return self.out, b""


class FakeNode:
    """Records the commands it is given; answers the forwarding sysctl probe."""

    def __init__(self, name: str, forwards: bool = False, in_namespace: bool = True) -> None:
        self.name = name
        self.forwards = forwards
        self.inNamespace = in_namespace
        self.ran: list[list[str]] = []
        self.probes = 0

    def popen(self, argv: list[str], **_: Any) -> FakeProc:
        if argv[0] == "sysctl":
            self.probes += 1
            return FakeProc(b"1\n0\n" if self.forwards else b"0\n0\n")
        if argv == ["tc", "-batch", "-"]:  # recorded as the commands it is given
            return FakeProc(batch=self.ran)
        self.ran.append(list(argv))
        return FakeProc()


def test_shaper_netem_apply_and_change(tmp_path: pathlib.Path) -> None:
    a, b = FakeNode("a"), FakeNode("b")
    shaper = Shaper("netem", tmp_path)
    d = LinkDirection("wifi forward", a, "a-eth0", b, "b-eth0", imp(rate="10Mbit", delay="20ms"))
    desc = shaper.apply(d)
    assert desc["backend"] == "netem" and desc["queue"] == 34
    assert desc["rate"].startswith("htb on a:a-eth0 egress") and desc["delay"] == "netem on a:a-eth0 egress"
    assert a.ran == shaping.netem_commands("a-eth0", imp(rate="10Mbit", delay="20ms")) and b.ran == []
    a.ran.clear()
    desc = shaper.change(d, imp(delay="50ms", loss="2%"))
    assert a.ran[0] == ["tc", "qdisc", "del", "dev", "a-eth0", "root"]
    assert a.ran[1][-7:] == ["netem", "delay", "50000us", "loss", "2%", "limit", "10000"]
    assert "rate" not in desc and desc["loss"] == "netem on a:a-eth0 egress"
    assert d.impairment == imp(delay="50ms", loss="2%")
    assert shaper.processes() == []
    shaper.stop()
    shaper.stop()


def test_shaper_fallback_rate_and_loss_without_delay_line(tmp_path: pathlib.Path) -> None:
    a, b = FakeNode("a"), FakeNode("b")
    shaper = Shaper("fallback", tmp_path)
    d = LinkDirection("lte reverse", a, "a-eth1", b, "b-eth1", imp(rate="5Mbit", loss="10%"))
    desc = shaper.apply(d)
    assert a.ran == shaping.fallback_rate_commands("a-eth1", 5e6, 10)
    assert b.ran == [shaping.nft_loss_command("loss_0", "b-eth1", 10.0)]
    assert desc["loss"].startswith("nft numgen drop on b:b-eth1 ingress") and desc["loss_effective"] == "10%"
    assert desc["rate"] == "htb on a:a-eth1 egress (pfifo limit 10)"
    a.ran.clear()
    b.ran.clear()
    shaper.change(d, imp(rate="2Mbit", loss="10%"))  # rate changed: class and leaf only
    assert [c[1] for c in a.ran] == ["class", "qdisc"] and b.ran[0] == shaping.nft_loss_command("loss_0", "b-eth1", 10.0)
    a.ran.clear()
    b.ran.clear()
    shaper.change(d, imp(loss="1%"))  # rate removed, loss changed in place
    assert a.ran == [["tc", "qdisc", "del", "dev", "a-eth1", "root"]]
    assert b.ran == [shaping.nft_loss_command("loss_0", "b-eth1", 1.0)]
    assert shaper.processes() == []


def test_apply_many_numbers_directions_in_order_and_batches_tc(tmp_path: pathlib.Path) -> None:
    nodes = [(FakeNode(f"a{i}"), FakeNode(f"b{i}")) for i in range(12)]
    shaper = Shaper("fallback", tmp_path)
    ds = [LinkDirection(f"l{i}", a, "eth0", b, "eth0", imp(rate="5Mbit", loss="10%")) for i, (a, b) in enumerate(nodes)]
    descs = shaper.apply_many(ds)
    assert [d["label"] for d in descs] == [f"l{i}" for i in range(12)]
    for i, (a, b) in enumerate(nodes):  # chain names follow the order given, whatever thread ran first
        assert b.ran == [shaping.nft_loss_command(f"loss_{i}", "eth0", 10.0)]
        assert a.ran == shaping.fallback_rate_commands("eth0", 5e6, 10)


# -- the delay line's scheduling -------------------------------------------------------------------------


class FakePacket:
    def __init__(self, log: list[int], n: int) -> None:
        self.log, self.n, self.verdict = log, n, ""

    def accept(self) -> None:
        self.verdict = "accept"
        self.log.append(self.n)

    def drop(self) -> None:
        self.verdict = "drop"


def test_delayline_settings() -> None:
    base = delayline.Settings(0.02, 0.0, 0.0)
    assert delayline.parse_settings('{"jitter": 0.005}', base) == delayline.Settings(0.02, 0.005, 0.0)
    assert delayline.parse_settings('{"delay": 0, "jitter": null, "loss": 5}', base) == \
        delayline.Settings(0.0, 0.0, 5.0)
    for bad in ('{"jitter": 0.05}', '{"loss": 101}', '{"delay": "1s"}', '{"rate": 1}', "[1]", "nope"):
        with pytest.raises(ValueError):
            delayline.parse_settings(bad, base)


def test_delayline_jitter_bounds_and_order() -> None:
    line = delayline.DelayLine(delayline.Settings(0.010, 0.004, 0.0), seed=1)
    samples = [line.sample_delay(line.settings) for _ in range(5000)]
    assert min(samples) >= 0.006 and max(samples) <= 0.014
    assert 0.0095 < sum(samples) / len(samples) < 0.0105
    released: list[int] = []
    thread = threading.Thread(target=line.release_loop)
    thread.start()
    packets = [FakePacket(released, n) for n in range(300)]
    for p in packets:
        line.on_packet(p)
    dues = [due for due, _ in list(line.held)]
    assert dues == sorted(dues)  # never released before the packet ahead of it
    thread.join(timeout=0.01)
    line.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert released == list(range(300))


def test_delayline_loss() -> None:
    line = delayline.DelayLine(delayline.Settings(0.0, 0.0, 25.0), seed=3)
    packets = [FakePacket([], n) for n in range(4000)]
    for p in packets:
        line.on_packet(p)
    dropped = sum(p.verdict == "drop" for p in packets)
    assert 850 < dropped < 1150  # 25 % of 4000, sd 27
    assert all(p.verdict == "accept" for p in packets if p.verdict != "drop")  # no delay: passed at once


def test_fallback_site_choice(tmp_path: pathlib.Path) -> None:
    host, router, other, switch = FakeNode("h"), FakeNode("r", forwards=True), FakeNode("h2"), \
        FakeNode("s", in_namespace=False)
    shaper = Shaper("fallback", tmp_path)

    def site(sender: FakeNode, receiver: FakeNode | None) -> Any:
        return shaper._choose_site(LinkDirection("x", sender, "a0", receiver, "b0" if receiver else None, imp()))

    up = site(host, router)  # host -> router: on the router, where it forwards
    assert (up.node, up.ingress) == (router, True) and "forwarding" in str(up)
    down = site(router, host)  # router -> host: still on the router, on its egress
    assert (down.node, down.ingress) == (router, False) and str(down).startswith("r:a0 egress")
    flat = site(host, other)  # two hosts: receiver ingress, with the timestamp caveat
    assert (flat.node, flat.ingress) == (other, True) and "ping without -U" in str(flat)
    assert site(switch, host).node is host  # a root-namespace bridge never counts as forwarding
    assert switch.probes == 0
    lan = site(host, None)  # to a switch port: sender egress, with the TCP caveat
    assert (lan.node, lan.ingress) == (host, False) and "TCP throughput will be limited" in str(lan)
    assert router.probes == 1  # probed once per node


def test_fallback_loss_at_router_ingress(tmp_path: pathlib.Path) -> None:
    host, router = FakeNode("client"), FakeNode("ap0", forwards=True)
    shaper = Shaper("fallback", tmp_path)
    desc = shaper.apply(LinkDirection("wifi forward", host, "wlan0", router, "eth0", imp(loss="5%")))
    assert router.ran == [shaping.nft_loss_command("loss_0", "eth0", 5.0)] and host.ran == []
    assert desc["loss"].startswith("nft numgen drop on ap0:eth0 ingress (forwarding node)")
