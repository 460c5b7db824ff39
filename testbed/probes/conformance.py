"""Packet-level conformance probes: small classes, one per behaviour no available peer exhibits.

A probe runs inside the probe (client) node's namespace, in `probe_agent.py`: it crafts TCP
segments with scapy, sends them through a raw IP socket and reads the server's answers from an
AF_PACKET socket on the interface towards the server, each wait bounded in time. It never uses the
node's own TCP stack, so that stack must not get in the way:

- Crafted flows use source ports 61000-65535, outside the kernel's ephemeral range (32768-60999),
  so no kernel socket ever owns them; the kernel answers the server's segments on those ports with
  RSTs. An nftables table (``inet testbed_probe_<pid>``) in the node drops outgoing RSTs from those ports
  unless they carry the probe's firewall mark (SO_MARK 0x7e57 on its raw socket): the kernel's RSTs
  are dropped, the probe's own (it resets each flow when done) go out. The table goes with the probe.
  (The alternative, a source address the kernel does not own, needs ARP/neighbour answers for it.)
- Every probe records the segments it sent and received (flags, numbers, options, decoded MPTCP
  options) and, through the driver, the server's MPTcpExt counters at named moments.

Version negotiation (RFC 8684 §3.1): the initiator signals the highest version it supports and the
receiver answers with the version it wishes to use, never higher than the initiator's. A v1-only
listener has no version ≤ 0 to offer a v0 SYN, so it answers without MP_CAPABLE (plain TCP); to
version 15 it answers with version 1. Linux (net/mptcp/options.c) checks MP_CAPABLE lengths strictly
(a 12-byte SYN option is not an RFC 8684 SYN) and takes any version ≥ 1 on the initial SYN ("try to
be gentle vs future versions on the initial syn").

`Probe.run(ctx)` returns a `ProbeResult`: what was expected for a server that speaks `v1` (RFC 8684),
`v0` (RFC 6824) or plain `tcp`, with the RFC section; what was observed; and the verdict. Standard
library and scapy only (no testbed imports beyond the sibling `options` module).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

try:
    from testbed.probes import options as o
except ImportError:  # run as a script from this directory
    import options as o  # type: ignore[no-redef]

PORT_LOW, PORT_HIGH = 61000, 65535
MARK = 0x7E57
NFT_TABLE = f"testbed_probe_{os.getpid()}"  # one per probe process
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
REPLY_WAIT = 2.0  # seconds a probe waits for one answer
SETTLE = 0.3  # seconds after an injected option before counters are read
SPEAKS = ("v1", "v0", "tcp")


@dataclass(frozen=True)
class Expect:
    outcome: str  # short class: plain, mp-capable-v1, rst, ignored, ...
    text: str
    rfc: str


@dataclass
class ProbeResult:
    probe: str
    speaks: str
    expected: str
    expected_text: str
    rfc: str
    observed: str
    observed_text: str
    verdict: str  # as-expected | unexpected
    measured: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- network I/O --------------------------------------------------------------------------------
def route_to(target: str) -> tuple[str, str]:
    """(interface, source address) the kernel would use towards `target`."""
    out = subprocess.run(["ip", "-o", "-4", "route", "get", target], capture_output=True, text=True,
                         check=True, timeout=5).stdout.split()
    return out[out.index("dev") + 1], out[out.index("src") + 1]


class Flow:
    """One crafted TCP connection (or subflow) from the probe node."""

    def __init__(self, session: Session, sport: int, dport: int) -> None:
        self.session = session
        self.sport = sport
        self.dport = dport
        self.isn = random.getrandbits(32)
        self.snd_nxt = self.isn
        self.rcv_nxt: int | None = None
        self.inbox: list[dict[str, Any]] = []
        self.cursor = 0
        self.open = False

    def send(self, flags: str, options: list[bytes] | None = None, payload: bytes = b"") -> None:
        ack = self.rcv_nxt if "A" in flags and self.rcv_nxt is not None else 0
        self.session.send(self, flags, self.snd_nxt, ack, options or [], payload)
        self.snd_nxt = (self.snd_nxt + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        if "S" in flags:
            self.open = True
        if "R" in flags:
            self.open = False

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = REPLY_WAIT) -> dict[str, Any] | None:
        """The next segment of this flow that `match`es, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            while self.cursor < len(self.inbox):
                seg = self.inbox[self.cursor]
                self.cursor += 1
                if match(seg):
                    return seg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.session.receive(left)

    def connect(self, options: list[bytes], retries: int = 1) -> dict[str, Any] | None:
        """SYN with `options` (after MSS); the SYN/ACK or RST, retransmitting the SYN `retries` times."""
        for attempt in range(retries + 1):
            self.snd_nxt = self.isn
            self.send("S", options)
            reply = self.wait(lambda s: "R" in s["flags"] or ("S" in s["flags"] and "A" in s["flags"]),
                              REPLY_WAIT / (retries + 1) if attempt < retries else REPLY_WAIT)
            if reply is not None:
                if "R" in reply["flags"]:
                    self.open = False
                else:
                    self.rcv_nxt = (reply["seq"] + 1) & 0xFFFFFFFF
                return reply
        return None

    def reset(self) -> None:
        if self.open:
            self.send("R")

    def received(self, predicate: Callable[[dict[str, Any]], bool] = lambda s: True) -> list[dict[str, Any]]:
        return [s for s in self.inbox if predicate(s)]


class Session:
    """Raw-socket I/O for one probe run: crafting (scapy), sending (marked raw IP socket), capturing
    (AF_PACKET on the interface towards the target), and the log of every segment."""

    def __init__(self, target: str, port: int) -> None:
        self.target = target
        self.port = port
        self.iface, self.src = route_to(target)
        self.t0 = time.monotonic()
        self.log: list[dict[str, Any]] = []
        self.flows: dict[int, Flow] = {}
        self.others: list[dict[str, Any]] = []  # segments from the target to ports that are not our flows
        self._ports = random.sample(range(PORT_LOW, PORT_HIGH + 1), 64)
        self.firewall: dict[str, Any] = {}
        self.capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self.capture.bind((self.iface, ETH_P_IP))
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        self._install_firewall()

    # -- the node's own RSTs ---------------------------------------------------------------------
    def _install_firewall(self) -> None:
        rules = (f"table inet {NFT_TABLE} {{\n  chain output {{\n    type filter hook output priority 0; "
                 f"policy accept;\n    tcp sport {PORT_LOW}-{PORT_HIGH} tcp flags & rst == rst "
                 f"meta mark != 0x{MARK:x} counter drop\n  }}\n}}\n")
        r = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise RuntimeError(f"nft refused the probe's RST filter: {r.stderr.strip()}")
        self.firewall = {"table": f"inet {NFT_TABLE}", "rules": rules.strip()}

    def _firewall_counters(self) -> str:
        r = subprocess.run(["nft", "list", "table", "inet", NFT_TABLE], capture_output=True, text=True, timeout=10)
        line = next((ln.strip() for ln in r.stdout.splitlines() if "counter" in ln), "")
        return line

    def close(self) -> None:
        for flow in self.flows.values():
            with contextlib.suppress(OSError):
                flow.reset()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.receive(0.1)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.firewall["dropped_kernel_rsts"] = self._firewall_counters()
            subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True, timeout=10)
        self.capture.close()
        self.raw.close()

    # -- flows -----------------------------------------------------------------------------------
    def flow(self, dport: int | None = None) -> Flow:
        sport = self._ports.pop()
        f = Flow(self, sport, self.port if dport is None else dport)
        self.flows[sport] = f
        return f

    def send(self, flow: Flow, flags: str, seq: int, ack: int, options: list[bytes], payload: bytes) -> None:
        from scapy.layers.inet import IP, TCP

        opts: list[tuple[Any, Any]] = [("MSS", 1460)] if "S" in flags else []
        for opt in options:
            opts.append((opt[0], bytes(opt[2:])))
        seg = IP(src=self.src, dst=self.target, ttl=64) / TCP(
            sport=flow.sport, dport=flow.dport, seq=seq, ack=ack, flags=flags,
            window=0 if "R" in flags else 65535, options=opts)
        packet = bytes(seg / payload) if payload else bytes(seg)
        self.raw.sendto(packet, (self.target, 0))
        parsed = o.parse_tcp(packet)
        assert parsed is not None
        self._record("tx", parsed)

    def receive(self, timeout: float) -> None:
        """Read what arrived within `timeout` seconds (at least one read attempt)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.capture], [], [], max(left, 0.0))
            if not ready:
                return
            data, addr = self.capture.recvfrom(65535)
            if addr[2] == PACKET_OUTGOING:
                continue
            seg = o.parse_tcp(data)
            if seg is None or seg["src"] != self.target or seg["dst"] != self.src:
                continue
            self._record("rx", seg)
            flow = self.flows.get(seg["dport"])
            if flow is not None and seg["sport"] == flow.dport:
                flow.inbox.append(seg)
            else:
                self.others.append(seg)
            return  # one segment: callers re-check their flow's inbox

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.receive(left)

    def _record(self, direction: str, seg: dict[str, Any]) -> None:
        self.log.append({"t": round(time.monotonic() - self.t0, 4), "dir": direction, **o.summarize(seg)})


@dataclass
class ProbeContext:
    target: str
    port: int
    speaks: str
    counters: Callable[[str], dict[str, int]]  # the server's counters at a named moment ({} if unknown)
    session: Session | None = None
    snapshots: dict[str, dict[str, int]] = field(default_factory=dict)

    def snapshot(self, label: str) -> dict[str, int]:
        self.snapshots[label] = self.counters(label)
        return self.snapshots[label]

    def settle(self, label: str, before: str, counter: str, until: Callable[[], bool] = lambda: False,
               timeout: float = REPLY_WAIT) -> dict[str, int]:
        """Snapshot `label` once the server counted something in `counter` since `before` (or `until()`
        holds), polling up to `timeout` seconds; a busy machine may take a while to process a segment."""
        assert self.session is not None
        deadline = time.monotonic() + timeout
        while True:
            self.session.drain(0.1)
            snap = self.snapshot(label)
            got = self.delta(before, label, counter)
            if got is None or got > 0 or until() or time.monotonic() >= deadline:
                return snap

    def delta(self, before: str, after: str, counter: str) -> int | None:
        """A server counter's change between two snapshots; None when the server has no such counter."""
        a, b = self.snapshots.get(before, {}), self.snapshots.get(after, {})
        if counter not in a or counter not in b:
            return None
        return b[counter] - a[counter]


# -- probes -------------------------------------------------------------------------------------
PLAIN_TCP = Expect("plain", "a SYN/ACK without MPTCP options (plain TCP)",
                   "RFC 8684 §3.1 and §3.7: a host without MPTCP ignores the option and answers as TCP")


def reply_class(reply: dict[str, Any] | None) -> tuple[str, str]:
    """How a server answered a SYN: no-reply, rst, plain, mp-capable-vN, mp-join or mptcp-other."""
    if reply is None:
        return "no-reply", f"no answer within {REPLY_WAIT:g} s"
    if "R" in reply["flags"]:
        return "rst", f"RST ({reply['flags']})"
    caps = [o.decode_mptcp(opt) for opt in o.mptcp_options(reply)]
    if not caps:
        return "plain", f"SYN/ACK without MPTCP options (options {', '.join(o.summarize(reply)['options']) or 'none'})"
    first = caps[0]
    if first["subtype"] == "MP_CAPABLE":
        return f"mp-capable-v{first['version']}", (f"SYN/ACK with MP_CAPABLE version {first['version']}, "
                                                   f"length {first['length']}")
    if first["subtype"] == "MP_JOIN":
        return "mp-join", f"SYN/ACK with MP_JOIN (length {first['length']})"
    return "mptcp-other", f"SYN/ACK with {first['subtype']}"


@dataclass
class Connection:
    """A crafted MPTCP v1 connection (its initial subflow) and both keys."""

    flow: Flow
    key_a: int  # ours
    key_b: int | None  # the server's, from its MP_CAPABLE SYN/ACK
    synack: dict[str, Any] | None
    observed: str
    observed_text: str

    @property
    def established(self) -> bool:
        return self.key_b is not None

    @property
    def keys(self) -> dict[str, str]:
        """Both keys and the server's token (SHA-256 of its key), as recorded in results."""
        kb = self.key_b or 0
        return {"key_a": f"{self.key_a:016x}", "key_b": f"{kb:016x}", "token": f"{o.token(kb):08x}"}


class Probe:
    name: ClassVar[str]
    description: ClassVar[str]
    # server features (testbed.matrix.features names, 'mib:Counter' for counters) the probe needs of a
    # server that speaks RFC 8684; a plain-TCP server needs nothing (the expectation is plain TCP)
    requires: ClassVar[tuple[str, ...]] = ("mptcp",)
    expectations: ClassVar[dict[str, Expect]]

    def expectation(self, speaks: str) -> Expect | None:
        return self.expectations.get(speaks)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def result(self, ctx: ProbeContext, observed: str, text: str, checks: list[dict[str, Any]] | None = None,
               **measured: Any) -> ProbeResult:
        exp = self.expectation(ctx.speaks)
        if exp is None:
            raise ValueError(f"probe {self.name} has no expectation for a server that speaks {ctx.speaks}")
        checks = checks or []
        ok = observed == exp.outcome and all(c["ok"] is not False for c in checks)
        assert ctx.session is not None
        counters = {label: {k: v for k, v in snap.items() if k.startswith("MPTcpExt")}
                    for label, snap in ctx.snapshots.items()}
        return ProbeResult(self.name, ctx.speaks, exp.outcome, exp.text, exp.rfc, observed, text,
                           "as-expected" if ok else "unexpected",
                           {**measured, "checks": checks, "segments": ctx.session.log,
                            "unsolicited": [o.summarize(s) for s in ctx.session.others],
                            "server_counters": counters, "firewall": ctx.session.firewall,
                            "source": f"{ctx.session.src} ({ctx.session.iface})"})

    @staticmethod
    def counter_check(ctx: ProbeContext, before: str, after: str, counter: str, wanted: int,
                      required: bool = True) -> dict[str, Any]:
        """A server counter's change against `wanted`; ok None (not judged) when the server has no
        such counter, or when the check is only a record (`required` False)."""
        got = ctx.delta(before, after, f"MPTcpExt{counter}")
        ok = None if got is None or not required else got == wanted
        return {"counter": f"server.MPTcpExt{counter}", "between": f"{before} → {after}", "expected": wanted,
                "measured": got, "ok": ok}

    @staticmethod
    def mptcp_connect(ctx: ProbeContext) -> Connection:
        """MP_CAPABLE v1 handshake: SYN (no key), the server's SYN/ACK (its key), third ACK (both keys)."""
        s = ctx.session
        assert s is not None
        flow = s.flow()
        key_a = random.getrandbits(64)
        synack = flow.connect([o.mp_capable_syn_v1()])
        observed, text = reply_class(synack)
        caps = o.mptcp_options(synack, o.MP_CAPABLE) if synack is not None and observed.startswith("mp-capable") else []
        if not caps or len(caps[0]) != 12:
            flow.reset()
            return Connection(flow, key_a, None, synack, observed, text)
        key_b = int.from_bytes(caps[0][4:12], "big")
        flow.send("A", [o.mp_capable_ack(key_a, key_b)])
        s.drain(0.1)
        return Connection(flow, key_a, key_b, synack, observed, text)


class V0Capable(Probe):
    name = "v0-capable"
    description = "RFC 6824 (v0) MP_CAPABLE SYN (version 0, 12 bytes with the sender's key) to the server"
    requires = ("mptcp",)
    expectations = {
        "v1": Expect("plain", "a SYN/ACK without MPTCP options: a v1 host cannot answer with a version it "
                              "supports that is not higher than 0, so the connection is plain TCP",
                     "RFC 8684 §3.1 (version negotiation: the answer's version must not exceed the SYN's)"),
        "v0": Expect("mp-capable-v0", "a SYN/ACK with MP_CAPABLE version 0 and the server's key",
                     "RFC 6824 §3.1"),
        "tcp": PLAIN_TCP,
    }

    def run(self, ctx: ProbeContext) -> ProbeResult:
        s = ctx.session
        assert s is not None
        ctx.snapshot("before")
        flow = s.flow()
        key = random.getrandbits(64)
        reply = flow.connect([o.mp_capable_syn_v0(key)])
        flow.reset()
        s.drain(0.1)
        ctx.snapshot("after")
        observed, text = reply_class(reply)
        # recorded, not judged: the RFC speaks of the answer, not of the server's counters
        checks = [self.counter_check(ctx, "before", "after", "MPCapableSYNRX", 1 if ctx.speaks == "v0" else 0,
                                     required=False)]
        return self.result(ctx, observed, text, checks, sent_key=f"{key:016x}")


class UnknownVersion(Probe):
    name = "unknown-version"
    description = "MP_CAPABLE SYN in the RFC 8684 form (4 bytes) with version 15, a version nobody speaks"
    requires = ("mptcp",)
    expectations = {
        "v1": Expect("mp-capable-v1", "a SYN/ACK with MP_CAPABLE version 1: the highest version the server "
                                      "speaks that is not higher than the initiator's 15",
                     "RFC 8684 §3.1 (the receiver signals the version it wishes to use, at most the "
                     "initiator's)"),
        "tcp": PLAIN_TCP,
    }

    def run(self, ctx: ProbeContext) -> ProbeResult:
        s = ctx.session
        assert s is not None
        ctx.snapshot("before")
        flow = s.flow()
        reply = flow.connect([o.mp_capable_syn_v1(version=15)])
        flow.reset()
        s.drain(0.1)
        ctx.snapshot("after")
        observed, text = reply_class(reply)
        checks = [self.counter_check(ctx, "before", "after", "MPCapableSYNRX", 1 if ctx.speaks == "v1" else 0,
                                     required=False)]  # recorded, not judged
        return self.result(ctx, observed, text, checks, sent_version=15)


class JoinBadHmac(Probe):
    name = "join-bad-hmac"
    description = ("MP_JOIN to an established connection (token from the server's key), then a third ACK "
                   "with a wrong 160-bit HMAC")
    requires = ("mptcp", "join", "mib:MPJoinAckHMacFailure")
    expectations = {
        "v1": Expect("rst", "the MP_JOIN SYN/ACK (its HMAC valid), then a RST of the new subflow once the bad "
                            "HMAC arrives; MPJoinAckHMacFailure +1",
                     "RFC 8684 §3.2 (an MP_JOIN ACK whose HMAC does not match closes the subflow with a RST)"),
        "tcp": PLAIN_TCP,
    }

    def run(self, ctx: ProbeContext) -> ProbeResult:
        s = ctx.session
        assert s is not None
        conn = self.mptcp_connect(ctx)
        if not conn.established:
            return self.result(ctx, conn.observed, f"the initial handshake got {conn.observed_text}")
        ctx.snapshot("connected")
        tok = o.token(conn.key_b or 0)
        join = s.flow()
        nonce_a = random.getrandbits(32)
        synack = join.connect([o.mp_join_syn(tok, nonce_a, address_id=1)])
        observed, text = reply_class(synack)
        measured: dict[str, Any] = {**conn.keys, "nonce_a": f"{nonce_a:08x}", "join_synack": text}
        if observed != "mp-join" or synack is None:
            join.reset()
            ctx.snapshot("after")
            return self.result(ctx, "no-join" if observed != "rst" else "rst-at-syn",
                               f"the MP_JOIN SYN got {text}", [], **measured)
        opt = o.mptcp_options(synack, o.MP_JOIN)[0]
        hmac_b, nonce_b = opt[4:12], int.from_bytes(opt[12:16], "big")
        measured["server_hmac_valid"] = hmac_b == o.join_synack_hmac(conn.key_b or 0, conn.key_a, nonce_b, nonce_a)
        good = o.join_ack_hmac(conn.key_a, conn.key_b or 0, nonce_a, nonce_b)
        bad = o.wrong(good)
        measured.update(nonce_b=f"{nonce_b:08x}", sent_hmac=bad.hex(), correct_hmac=good.hex())
        join.send("A", [o.mp_join_ack(bad)])
        rst = join.wait(lambda seg: "R" in seg["flags"])
        s.drain(SETTLE)
        ctx.snapshot("after")
        initial_reset = bool(conn.flow.received(lambda seg: "R" in seg["flags"]))
        measured["initial_subflow_reset"] = initial_reset
        if rst is not None:
            rstopt = [o.decode_mptcp(x) for x in o.mptcp_options(rst, o.MP_TCPRST)]
            measured["rst"] = {"flags": rst["flags"], "mp_tcprst": rstopt[0] if rstopt else None}
            observed, text = "rst", ("RST of the new subflow after the bad HMAC"
                                     + (f" (MP_TCPRST reason {rstopt[0].get('reason')})" if rstopt else ""))
        else:
            acked = join.received(lambda seg: "A" in seg["flags"] and "S" not in seg["flags"])
            observed, text = ("accepted", "the subflow was acknowledged, not reset") if acked else \
                ("no-rst", f"no RST within {REPLY_WAIT:g} s")
        checks = [{"counter": "server MP_JOIN SYN/ACK HMAC (RFC 8684 §3.2)", "expected": True,
                   "measured": measured["server_hmac_valid"], "ok": measured["server_hmac_valid"]},
                  self.counter_check(ctx, "connected", "after", "MPJoinSynRx", 1),
                  self.counter_check(ctx, "connected", "after", "MPJoinAckHMacFailure", 1),
                  self.counter_check(ctx, "connected", "after", "MPJoinAckRx", 0, required=False),
                  {"counter": "initial subflow left alone", "expected": False, "measured": initial_reset,
                   "ok": not initial_reset}]
        return self.result(ctx, observed, text, checks, **measured)


class MpPrioAddressId(Probe):
    name = "mp-prio-address-id"
    description = ("on an established connection, an RFC 6824 MP_PRIO (length 4, with an address ID), then "
                   "an RFC 8684 MP_PRIO (length 3) as a control")
    requires = ("mptcp", "mp_prio", "mib:MPPrioRx")
    expectations = {
        "v1": Expect("ignored", "the length-4 MP_PRIO is ignored (MPPrioRx unchanged, the subflow stays); the "
                                "length-3 control is taken (MPPrioRx +1)",
                     "RFC 8684 §3.3.8 (MP_PRIO has no address ID: length 3; it applies to the subflow it "
                     "arrives on); the RFC 6824 §3.3.8 form is malformed for v1"),
        "tcp": PLAIN_TCP,
    }

    def run(self, ctx: ProbeContext) -> ProbeResult:
        s = ctx.session
        assert s is not None
        conn = self.mptcp_connect(ctx)
        if not conn.established:
            return self.result(ctx, conn.observed, f"the initial handshake got {conn.observed_text}")
        ctx.snapshot("connected")
        conn.flow.send("A", [o.mp_prio(True, address_id=0)])
        s.drain(SETTLE)
        ctx.snapshot("after-rfc6824")
        reset = bool(conn.flow.received(lambda seg: "R" in seg["flags"]))
        conn.flow.send("A", [o.mp_prio(True)])  # the control; the server takes a subflow's segments in order
        ctx.settle("after-rfc8684", "after-rfc6824", "MPTcpExtMPPrioRx")
        v0 = ctx.delta("connected", "after-rfc6824", "MPTcpExtMPPrioRx")
        v1 = ctx.delta("after-rfc6824", "after-rfc8684", "MPTcpExtMPPrioRx")
        if reset:
            observed, text = "rst", "the subflow was reset after the length-4 MP_PRIO"
        elif v0 is None or v1 is None:
            observed, text = "unknown", "the server has no MPPrioRx counter: not observable"
        elif v0 > 0:
            observed, text = "accepted", f"the length-4 MP_PRIO was taken (MPPrioRx +{v0})"
        elif v1 == 0:
            observed, text = "inconclusive", ("neither form moved MPPrioRx: the control did not reach the "
                                              "server's MPTCP layer")
        else:
            observed, text = "ignored", f"length 4: MPPrioRx +0; length-3 control: MPPrioRx +{v1}"
        checks = [self.counter_check(ctx, "connected", "after-rfc6824", "MPPrioRx", 0),
                  self.counter_check(ctx, "after-rfc6824", "after-rfc8684", "MPPrioRx", 1)]
        return self.result(ctx, observed, text, checks, **conn.keys,
                           sent=[o.mp_prio(True, address_id=0).hex(), o.mp_prio(True).hex()])


class AddAddrBadHmac(Probe):
    name = "add-addr-bad-hmac"
    description = ("on an established connection, an ADD_ADDR whose truncated HMAC is wrong, then one with "
                   "the right HMAC as a control")
    requires = ("mptcp", "signal", "mib:AddAddr")
    expectations = {
        "v1": Expect("ignored", "the ADD_ADDR with the wrong HMAC is dropped: AddAddr unchanged, no echo, no "
                                "join; the control is taken (AddAddr +1)",
                     "RFC 8684 §3.4.1 (the receiver checks the ADD_ADDR HMAC over address ID, address and "
                     "port with Key-sender + Key-receiver; one that does not match is not accepted)"),
        "tcp": PLAIN_TCP,
    }
    BAD = (7, "192.0.2.7")  # TEST-NET-1 (RFC 5737): announced, never reachable
    GOOD = (8, "192.0.2.8")

    def run(self, ctx: ProbeContext) -> ProbeResult:
        s = ctx.session
        assert s is not None
        conn = self.mptcp_connect(ctx)
        if not conn.established:
            return self.result(ctx, conn.observed, f"the initial handshake got {conn.observed_text}")
        key_b = conn.key_b or 0
        ctx.snapshot("connected")

        def announce(address_id: int, address: str, right: bool) -> str:
            mac = o.add_addr_hmac(conn.key_a, key_b, address_id, socket.inet_aton(address))
            opt = o.add_addr_v4(address_id, address, mac if right else o.wrong(mac))
            conn.flow.send("A", [opt])
            return opt.hex()

        def echoed(address_id: int) -> bool:
            return any(d.get("subtype") == "ADD_ADDR" and d.get("echo") and d.get("address_id") == address_id
                       for seg in conn.flow.inbox for d in map(o.decode_mptcp, o.mptcp_options(seg)))

        sent_bad = announce(*self.BAD, right=False)
        s.drain(2 * SETTLE)
        ctx.snapshot("after-bad")
        joins_bad = [o.summarize(x) for x in s.others if "S" in x["flags"] and "A" not in x["flags"]]
        sent_good = announce(*self.GOOD, right=True)  # the control, after the bad one on the same subflow
        ctx.settle("after-good", "after-bad", "MPTcpExtAddAddr", until=lambda: echoed(self.GOOD[0]))
        s.drain(SETTLE)  # its echo, if it comes after the count
        bad_count = ctx.delta("connected", "after-bad", "MPTcpExtAddAddr")
        good_count = ctx.delta("after-bad", "after-good", "MPTcpExtAddAddr")
        measured = {**conn.keys, "sent_bad": sent_bad,
                    "sent_good": sent_good, "echo_of_bad": echoed(self.BAD[0]), "echo_of_good": echoed(self.GOOD[0]),
                    "server_syns_after_bad": joins_bad}
        if measured["echo_of_bad"] or (bad_count or 0) > 0:
            observed, text = "accepted", (f"the ADD_ADDR with the wrong HMAC was taken (AddAddr +{bad_count}, "
                                          f"echo {'seen' if measured['echo_of_bad'] else 'not seen'})")
        elif joins_bad:
            observed, text = "join", "the server opened a subflow after the ADD_ADDR with the wrong HMAC"
        elif bad_count is None:
            observed, text = ("ignored", "no echo, no join (the server has no AddAddr counter)")
        elif not good_count and not measured["echo_of_good"]:
            observed, text = "inconclusive", "the control ADD_ADDR was not taken either"
        else:
            observed, text = "ignored", (f"wrong HMAC: AddAddr +0, no echo, no join; control: AddAddr "
                                         f"+{good_count}, echo {'seen' if measured['echo_of_good'] else 'not seen'}")
        checks = [self.counter_check(ctx, "connected", "after-bad", "AddAddr", 0),
                  self.counter_check(ctx, "after-bad", "after-good", "AddAddr", 1),
                  {"counter": "ADD_ADDR echo of the bad one", "expected": False, "measured": measured["echo_of_bad"],
                   "ok": not measured["echo_of_bad"]}]
        return self.result(ctx, observed, text, checks, **measured)


PROBES: dict[str, type[Probe]] = {p.name: p for p in (V0Capable, UnknownVersion, JoinBadHmac, MpPrioAddressId,
                                                       AddAddrBadHmac)}


def catalog() -> dict[str, dict[str, Any]]:
    """Every probe's name, description, requirements and expectations (for matrices and reports)."""
    return {name: {"description": cls.description, "requires": list(cls.requires),
                   "expectations": {k: asdict(v) for k, v in cls.expectations.items()}}
            for name, cls in PROBES.items()}


def run_probe(name: str, target: str, port: int, speaks: str,
              counters: Callable[[str], dict[str, int]] = lambda label: {}) -> ProbeResult:
    """Run one probe from this namespace against target:port (the session is always closed)."""
    probe = PROBES[name]()
    if speaks not in SPEAKS:
        raise ValueError(f"speaks must be one of {', '.join(SPEAKS)}, not {speaks!r}")
    if probe.expectation(speaks) is None:
        raise ValueError(f"probe {name} has no expectation for a server that speaks {speaks}")
    ctx = ProbeContext(target, port, speaks, counters)
    ctx.session = Session(target, port)
    try:
        return probe.run(ctx)
    finally:
        ctx.session.close()
