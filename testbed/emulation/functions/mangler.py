"""The middlebox's userspace packet mangler: NFQUEUE in, rewritten or injected TCP segments out.

Run inside the middlebox node's network namespace, behind iptables rules that queue forwarded TCP
segments by conntrack direction (original → the "to_server" queue, reply → the "to_client" queue)::

    python mangler.py --config CONFIG.json --counts COUNTS.json

CONFIG is written by :mod:`testbed.emulation.functions.middlebox` (``Middlebox.build()``)::

    {"queues": {"to_server": 31000, "to_client": 31001}, "seed": 1,
     "behaviours": [{"index": 2, "action": "corrupt_payload", "directions": ["to_server"],
                     "after": 1000000, "count": 1, "probability": null, "offset": 0, "xor": 255}, ...]}

Actions handled here: ``strip_mptcp`` (``when: after_handshake``: every MPTCP option but
MP_CAPABLE and MP_JOIN on segments without SYN, once the subflow carried ``after`` bytes; the
option bytes become NOPs so lengths stay), ``corrupt_payload``, ``randomise_seq`` (sequence numbers
in the chosen direction shifted by a random per-subflow offset, the acknowledgement and SACK numbers
coming back shifted back), ``inject_rst`` and ``inject_mp_prio`` (a segment spoofed from one end,
exactly in sequence, built with scapy and sent through a raw socket after the segment that
triggered it has been let through).

Segments are read and rewritten at byte level (parsing every forwarded segment with scapy would
cost ~0.4 ms each); after any rewrite the TCP checksum is recomputed in full. The queue is bound
without the GSO flag, so the kernel hands over MSS-sized segments, with complete checksums.

Prints ``ready`` on stdout once both queues are bound. On SIGTERM or SIGINT: unbind, write what
each behaviour did to COUNTS (JSON), exit 0. Standard library, ``netfilterqueue`` and scapy only:
it must not import the testbed package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MPTCP_KIND = 30
SACK_KIND = 5
TS_KIND = 8
SUBTYPES = {0: "MP_CAPABLE", 1: "MP_JOIN", 2: "DSS", 3: "ADD_ADDR", 4: "REMOVE_ADDR", 5: "MP_PRIO",
            6: "MP_FAIL", 7: "MP_FASTCLOSE", 8: "MP_TCPRST"}
MP_PRIO = 5
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
DIRECTIONS = ("to_server", "to_client")
OTHER = {"to_server": "to_client", "to_client": "to_server"}
MAX_FLOWS = 10_000
MAX_EVENTS = 200
MASK32 = 0xFFFFFFFF

# nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h): the queue flags message that the
# netfilterqueue package cannot send.
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_CONFIG = 2
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
_NFQA_CFG_F_FAIL_OPEN = 1 << 0
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLMSG_ERROR = 0x2
_COPY_PACKET = 2


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} mangler: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Segments at byte level


def seq_after(a: int, b: int) -> bool:
    """a comes after b in 32-bit sequence space."""
    return a != b and ((a - b) & MASK32) < 0x80000000


def checksum(data: bytes | bytearray) -> int:
    """The Internet checksum (RFC 1071) of `data`, as the 16-bit value to write."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class Segment:
    """A TCP segment in an IPv4 or IPv6 packet, as a mutable byte array with parsed offsets."""

    data: bytearray
    version: int
    tcp: int  # offset of the TCP header
    src: bytes
    dst: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Segment | None:
        data = bytearray(raw)
        if len(data) < 20:
            return None
        version = data[0] >> 4
        if version == 4:
            ihl = (data[0] & 0x0F) * 4
            if data[9] != 6 or ihl < 20 or struct.unpack_from("!H", data, 6)[0] & 0x3FFF:
                return None  # not TCP, or a fragment
            total = struct.unpack_from("!H", data, 2)[0]
            src, dst, tcp = bytes(data[12:16]), bytes(data[16:20]), ihl
        elif version == 6:
            if len(data) < 40 or data[6] != 6:
                return None  # not TCP right after the fixed header (extension headers are left alone)
            total = 40 + struct.unpack_from("!H", data, 4)[0]
            src, dst, tcp = bytes(data[8:24]), bytes(data[24:40]), 40
        else:
            return None
        if total != len(data) or len(data) < tcp + 20:
            return None
        seg = cls(data, version, tcp, src, dst)
        if seg.doff < 20 or tcp + seg.doff > len(data):
            return None
        return seg

    # -- header fields --------------------------------------------------------------------------
    @property
    def sport(self) -> int:
        return struct.unpack_from("!H", self.data, self.tcp)[0]

    @property
    def dport(self) -> int:
        return struct.unpack_from("!H", self.data, self.tcp + 2)[0]

    @property
    def seq(self) -> int:
        return struct.unpack_from("!I", self.data, self.tcp + 4)[0]

    @seq.setter
    def seq(self, value: int) -> None:
        struct.pack_into("!I", self.data, self.tcp + 4, value & MASK32)

    @property
    def ack(self) -> int:
        return struct.unpack_from("!I", self.data, self.tcp + 8)[0]

    @ack.setter
    def ack(self, value: int) -> None:
        struct.pack_into("!I", self.data, self.tcp + 8, value & MASK32)

    @property
    def doff(self) -> int:
        return (self.data[self.tcp + 12] >> 4) * 4

    @property
    def flags(self) -> int:
        return self.data[self.tcp + 13]

    @property
    def window(self) -> int:
        return struct.unpack_from("!H", self.data, self.tcp + 14)[0]

    @property
    def payload_offset(self) -> int:
        return self.tcp + self.doff

    @property
    def payload_len(self) -> int:
        return len(self.data) - self.payload_offset

    @property
    def seq_len(self) -> int:
        """Sequence space the segment uses: payload, plus one each for SYN and FIN."""
        return self.payload_len + bool(self.flags & SYN) + bool(self.flags & FIN)

    # -- options --------------------------------------------------------------------------------
    def options(self) -> list[tuple[int, int, int]]:
        """(offset in data, kind, length) of each option; NOPs and the end marker left out."""
        out = []
        i, end = self.tcp + 20, self.tcp + self.doff
        while i < end:
            kind = self.data[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end:
                break
            length = self.data[i + 1]
            if length < 2 or i + length > end:
                break  # malformed: stop, touch nothing beyond
            out.append((i, kind, length))
            i += length
        return out

    def mptcp_subtypes(self) -> list[int]:
        return [self.data[off + 2] >> 4 for off, kind, length in self.options()
                if kind == MPTCP_KIND and length >= 3]

    def timestamps(self) -> tuple[int, int] | None:
        for off, kind, length in self.options():
            if kind == TS_KIND and length == 10:
                return struct.unpack_from("!II", self.data, off + 2)
        return None

    def strip_mptcp(self, keep: tuple[int, ...] = ()) -> list[int]:
        """Overwrite MPTCP options (but subtypes in `keep`) with NOPs; the subtypes removed."""
        removed = []
        for off, kind, length in self.options():
            if kind != MPTCP_KIND:
                continue
            subtype = self.data[off + 2] >> 4 if length >= 3 else -1
            if subtype in keep:
                continue
            self.data[off:off + length] = b"\x01" * length
            removed.append(subtype)
        return removed

    def shift_sack(self, delta: int) -> int:
        """Add `delta` to every SACK block edge; the number of blocks changed."""
        blocks = 0
        for off, kind, length in self.options():
            if kind != SACK_KIND or (length - 2) % 8:
                continue
            for edge in range(off + 2, off + length, 4):
                value = struct.unpack_from("!I", self.data, edge)[0]
                struct.pack_into("!I", self.data, edge, (value + delta) & MASK32)
            blocks += (length - 2) // 8
        return blocks

    def fix_checksum(self) -> None:
        """Recompute the TCP checksum over the pseudo-header and the whole segment."""
        tcp_len = len(self.data) - self.tcp
        struct.pack_into("!H", self.data, self.tcp + 16, 0)
        if self.version == 4:
            pseudo = self.src + self.dst + struct.pack("!BBH", 0, 6, tcp_len)
        else:
            pseudo = self.src + self.dst + struct.pack("!I3xB", tcp_len, 6)
        struct.pack_into("!H", self.data, self.tcp + 16, checksum(pseudo + bytes(self.data[self.tcp:])))


def mp_prio_option(backup: bool, address_id: int | None) -> bytes:
    """MP_PRIO: RFC 8684 form (length 3) or, with an address ID, the RFC 6824 form (length 4)."""
    first = (MP_PRIO << 4) | (1 if backup else 0)
    if address_id is None:
        return bytes([MPTCP_KIND, 3, first])
    return bytes([MPTCP_KIND, 4, first, address_id])


# ----------------------------------------------------------------------------------------------
# Flows


@dataclass
class Side:
    """What one direction of a subflow looked like as forwarded (after any rewriting)."""

    src: bytes = b""
    dst: bytes = b""
    sport: int = 0
    dport: int = 0
    payload_bytes: int = 0  # payload bytes seen
    packets: int = 0
    seq_end: int | None = None  # highest sequence number + length forwarded: the receiver's rcv_nxt
    ack: int | None = None
    window: int = 0
    ts: tuple[int, int] | None = None


@dataclass
class Flow:
    key: tuple
    version: int
    started: float
    packets: int = 0
    bytes: int = 0
    sides: dict[str, Side] = field(default_factory=lambda: {d: Side() for d in DIRECTIONS})
    offsets: dict[str, int] = field(default_factory=dict)  # randomise_seq offset per direction
    done: set[int] = field(default_factory=set)  # trigger behaviours that acted on this flow

    def label(self) -> str:
        s = self.sides["to_server"]
        if not s.src:
            s = Side(src=self.sides["to_client"].dst, dst=self.sides["to_client"].src,
                     sport=self.sides["to_client"].dport, dport=self.sides["to_client"].sport)
        fam = socket.AF_INET if self.version == 4 else socket.AF_INET6
        return (f"{socket.inet_ntop(fam, s.src)}:{s.sport} -> {socket.inet_ntop(fam, s.dst)}:{s.dport}"
                if s.src else str(self.key))


def flow_key(seg: Segment, direction: str) -> tuple:
    if direction == "to_server":
        return (seg.src, seg.sport, seg.dst, seg.dport)
    return (seg.dst, seg.dport, seg.src, seg.sport)


# ----------------------------------------------------------------------------------------------
# Behaviours


@dataclass
class Behaviour:
    index: int
    action: str
    directions: tuple[str, ...]
    params: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "action": self.action, "directions": list(self.directions),
                **self.params, "counts": dict(self.counts)}


ACTIONS = ("strip_mptcp", "corrupt_payload", "randomise_seq", "inject_rst", "inject_mp_prio")


def load_config(text: str) -> dict[str, Any]:
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError("the configuration is not a JSON object")
    queues = config.get("queues")
    if not isinstance(queues, dict) or set(queues) != set(DIRECTIONS) or \
            not all(isinstance(q, int) and 0 <= q <= 65535 for q in queues.values()):
        raise ValueError("queues: expected {\"to_server\": N, \"to_client\": M}")
    for b in config.get("behaviours", []):
        if b.get("action") not in ACTIONS:
            raise ValueError(f"unknown action {b.get('action')!r}")
        if not b.get("directions") or not set(b["directions"]) <= set(DIRECTIONS):
            raise ValueError(f"behaviour {b.get('index')}: bad directions {b.get('directions')!r}")
    return config


class Mangler:
    """Per-segment decisions; no sockets or queues here, so it can be exercised without root."""

    def __init__(self, config: dict[str, Any], clock: Any = time.monotonic) -> None:
        self.rng = random.Random(config.get("seed", 0))
        self.behaviours = [Behaviour(b["index"], b["action"], tuple(b["directions"]),
                                     {k: v for k, v in b.items() if k not in ("index", "action", "directions")})
                           for b in config.get("behaviours", [])]
        self.flows: OrderedDict[tuple, Flow] = OrderedDict()
        self.clock = clock
        self.t0 = clock()
        self.stats = {"to_server": 0, "to_client": 0, "modified": 0, "not_tcp": 0, "errors": 0}
        self.events: list[dict[str, Any]] = []

    def event(self, b: Behaviour, flow: Flow, what: str, **extra: Any) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t": round(self.clock() - self.t0, 4), "behaviour": b.index,
                                "action": b.action, "flow": flow.label(), "what": what, **extra})
        log(f"[{b.index}] {b.action}: {what} on {flow.label()} {extra or ''}".rstrip())

    def flow(self, seg: Segment, direction: str) -> Flow:
        key = flow_key(seg, direction)
        flow = self.flows.get(key)
        if flow is None:
            flow = self.flows[key] = Flow(key, seg.version, self.clock())
            while len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        return flow

    def handle(self, raw: bytes, direction: str) -> tuple[bytes | None, list[tuple[bytes, int, bytes]]]:
        """One queued packet: (new bytes or None if unchanged, packets to inject after it)."""
        seg = Segment.parse(raw)
        if seg is None:
            self.stats["not_tcp"] += 1
            return None, []
        self.stats[direction] += 1
        flow = self.flow(seg, direction)
        before_flow, before_side = flow.bytes, flow.sides[direction].payload_bytes
        flow.packets += 1
        flow.bytes += seg.payload_len
        flow.sides[direction].payload_bytes += seg.payload_len
        flow.sides[direction].packets += 1
        changed = False
        for b in self.behaviours:
            if b.action == "strip_mptcp":
                changed |= self._strip(b, seg, direction, before_flow)
            elif b.action == "corrupt_payload":
                changed |= self._corrupt(b, seg, direction, before_side, flow)
            elif b.action == "randomise_seq":
                changed |= self._randomise(b, seg, direction, flow)
        self._remember(flow, seg, direction)
        inject = []
        for b in self.behaviours:
            if b.action in ("inject_rst", "inject_mp_prio") and self._triggered(b, flow):
                inject += self._inject(b, flow)
        if changed:
            seg.fix_checksum()
            self.stats["modified"] += 1
            return bytes(seg.data), inject
        return None, inject

    # -- rewriting ------------------------------------------------------------------------------
    def _strip(self, b: Behaviour, seg: Segment, direction: str, flow_bytes: int) -> bool:
        if direction not in b.directions or seg.flags & SYN or flow_bytes < (b.params.get("after") or 0):
            return False
        removed = seg.strip_mptcp(keep=(0, 1))  # MP_CAPABLE and MP_JOIN belong to the handshake
        if not removed:
            return False
        if not b.counts.get("segments"):
            self.event(b, self.flows[flow_key(seg, direction)], "first segment stripped",
                       direction=direction, after_bytes=flow_bytes)
        b.bump("segments")
        for subtype in removed:
            b.bump(SUBTYPES.get(subtype, f"subtype_{subtype}"))
        return True

    def _corrupt(self, b: Behaviour, seg: Segment, direction: str, side_bytes: int, flow: Flow) -> bool:
        p = b.params
        offset = p.get("offset", 0)
        if direction not in b.directions or seg.payload_len <= offset or side_bytes < p.get("after", 0):
            return False
        if p.get("count") is not None and b.counts.get("segments", 0) >= p["count"]:
            return False
        if p.get("probability") is not None and self.rng.random() * 100 >= p["probability"]:
            return False
        at = seg.payload_offset + offset
        old = seg.data[at]
        seg.data[at] = old ^ p.get("xor", 0xFF)
        b.bump("segments")
        self.event(b, flow, "payload byte changed", direction=direction, seq=seg.seq, offset=offset,
                   old=old, new=seg.data[at], stream_bytes_before=side_bytes)
        return True

    def _randomise(self, b: Behaviour, seg: Segment, direction: str, flow: Flow) -> bool:
        changed = False
        for d in b.directions:
            if d not in flow.offsets:
                flow.offsets[d] = self.rng.randrange(1 << 20, (1 << 32) - (1 << 20))
                self.event(b, flow, "offset chosen", direction=d, offset=flow.offsets[d])
        if direction in b.directions:
            seg.seq = seg.seq + flow.offsets[direction]
            b.bump(f"seq_{direction}")
            changed = True
        back = OTHER[direction]
        if back in b.directions and seg.flags & ACK:
            seg.ack = seg.ack - flow.offsets[back]
            b.bump(f"ack_{direction}")
            blocks = seg.shift_sack(-flow.offsets[back])
            if blocks:
                b.bump("sack_blocks", blocks)
            changed = True
        return changed

    def _remember(self, flow: Flow, seg: Segment, direction: str) -> None:
        side = flow.sides[direction]
        side.src, side.dst, side.sport, side.dport = seg.src, seg.dst, seg.sport, seg.dport
        end = (seg.seq + seg.seq_len) & MASK32
        if side.seq_end is None or seq_after(end, side.seq_end):
            side.seq_end = end
        if seg.flags & ACK:
            side.ack = seg.ack
            side.window = seg.window
        ts = seg.timestamps()
        if ts is not None:
            side.ts = ts

    # -- injection ------------------------------------------------------------------------------
    def _triggered(self, b: Behaviour, flow: Flow) -> bool:
        if b.index in flow.done or b.counts.get("flows", 0) >= b.params.get("count", 1):
            return False
        if not all(flow.sides[d].ack is not None and flow.sides[d].seq_end is not None for d in b.directions):
            return False  # nothing to be in sequence with yet
        after = b.params.get("after") or {}
        if "bytes" in after:
            return flow.bytes >= after["bytes"]
        if "packets" in after:
            return flow.packets >= after["packets"]
        if "seconds" in after:
            return self.clock() - flow.started >= after["seconds"]
        return True

    def _inject(self, b: Behaviour, flow: Flow) -> list[tuple[bytes, int, bytes]]:
        flow.done.add(b.index)
        b.bump("flows")
        out = []
        for d in b.directions:
            side = flow.sides[d]
            assert side.seq_end is not None and side.ack is not None
            if b.action == "inject_rst":
                pkt = build_segment(flow.version, side, flags="RA", options=b"")
                what = "RST injected"
                extra: dict[str, Any] = {}
            else:
                option = mp_prio_option(bool(b.params.get("backup", True)), b.params.get("address_id"))
                pkt = build_segment(flow.version, side, flags="A", options=option)
                what = "MP_PRIO injected"
                extra = {"form": "RFC 6824 (length 4)" if b.params.get("address_id") is not None
                         else "RFC 8684 (length 3)", "address_id": b.params.get("address_id"),
                         "backup": bool(b.params.get("backup", True))}
            out.append((pkt, flow.version, side.dst))
            b.bump(f"packets_{d}")
            self.event(b, flow, what, direction=d, seq=side.seq_end, ack=side.ack, **extra)
        return out

    def report(self) -> dict[str, Any]:
        return {"packets": self.stats, "flows": len(self.flows),
                "behaviours": [b.describe() for b in self.behaviours], "events": self.events}


def build_segment(version: int, side: Side, flags: str, options: bytes) -> bytes:
    """A segment spoofed from `side`'s sender, exactly in sequence (seq = what its receiver expects
    next, ack = the sender's latest), with the sender's latest timestamps (so PAWS accepts it) and
    `options` (one raw option: kind, length, value), padded with NOPs. Built with scapy, which
    computes the lengths and checksums."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    assert side.seq_end is not None and side.ack is not None
    opts: list[tuple[Any, Any]] = []
    if side.ts is not None and "R" not in flags:
        opts += [("NOP", None), ("NOP", None), ("Timestamp", side.ts)]
    if options:
        opts.append((options[0], options[2:options[1]]))
        opts += [("NOP", None)] * (-len(options) % 4)
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    src, dst = socket.inet_ntop(fam, side.src), socket.inet_ntop(fam, side.dst)
    ip_layer = IP(src=src, dst=dst, ttl=64) if version == 4 else IPv6(src=src, dst=dst, hlim=64)
    tcp = TCP(sport=side.sport, dport=side.dport, seq=side.seq_end, ack=side.ack, flags=flags,
              window=0 if "R" in flags else side.window, options=opts)
    return bytes(ip_layer / tcp)


# ----------------------------------------------------------------------------------------------
# Queues and the main loop


def set_fail_open(fd: int, queue: int) -> str:
    """Ask the kernel to accept packets instead of dropping them when our queue is full.

    The kernel only takes config messages from the socket that bound the queue, hence the dup.
    """
    sock = socket.socket(fileno=os.dup(fd))
    try:
        seq = 0x3E57BED
        attrs = b"".join(struct.pack("=HH", 8, attr) + struct.pack("!I", _NFQA_CFG_F_FAIL_OPEN)
                         for attr in (_NFQA_CFG_FLAGS, _NFQA_CFG_MASK))
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
        header = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
                             _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
        sock.send(header + body)
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            return "no answer"
        head = sock.recv(65536, socket.MSG_PEEK)  # peek: a queued packet must stay for the library
        if len(head) < 20:
            return "short answer"
        _length, msg_type, _flags, msg_seq, _pid = struct.unpack("=IHHII", head[:16])
        if msg_type != _NLMSG_ERROR or msg_seq != seq:
            return "answer not seen (a packet came first)"
        sock.recv(65536)
        (error,) = struct.unpack("=i", head[16:20])
        return "ok" if error == 0 else f"refused: {os.strerror(-error)}"
    finally:
        sock.close()


class RawSender:
    """Raw IP sockets (header included) in this namespace; the kernel routes and resolves."""

    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}

    def __call__(self, packet: bytes, version: int, dst: bytes) -> None:
        fam = socket.AF_INET if version == 4 else socket.AF_INET6
        sock = self.socks.get(version)
        if sock is None:
            sock = self.socks[version] = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sock.sendto(packet, (socket.inet_ntop(fam, dst), 0))

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="NFQUEUE packet mangler of the middlebox node")
    parser.add_argument("--config", required=True, help="JSON configuration file")
    parser.add_argument("--counts", required=True, help="where to write what was done (JSON), on exit")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as f:
            config = load_config(f.read())
    except (OSError, ValueError) as exc:
        log(f"bad configuration {args.config}: {exc}")
        return 2

    from netfilterqueue import NetfilterQueue  # late, so that --help and config errors need no root

    sender = RawSender()
    mangler = Mangler(config)
    if any(b.action.startswith("inject_") for b in mangler.behaviours):
        import scapy.layers.inet  # noqa: F401 - imported now, not at the first injection
        import scapy.layers.inet6  # noqa: F401
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def stop(*_: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(wake_w, b"x")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def callback(direction: str):
        def on_packet(pkt: Any) -> None:
            inject: list[tuple[bytes, int, bytes]] = []
            try:
                new, inject = mangler.handle(pkt.get_payload(), direction)
                if new is not None:
                    pkt.set_payload(new)
            except Exception as exc:  # noqa: BLE001 - a bad packet must not stop the middlebox
                mangler.stats["errors"] += 1
                if mangler.stats["errors"] <= 20:
                    log(f"error on a {direction} packet: {exc!r}")
            pkt.accept()
            for packet, version, dst in inject:
                try:
                    sender(packet, version, dst)
                except OSError as exc:
                    mangler.stats["errors"] += 1
                    log(f"could not inject: {exc}")
        return on_packet

    queues: dict[str, Any] = {}
    try:
        for direction in DIRECTIONS:
            nfq = NetfilterQueue()
            number = config["queues"][direction]
            try:
                nfq.bind(number, callback(direction), max_len=4096, mode=_COPY_PACKET, range=65535,
                         sock_len=4 * 1024 * 1024)
            except OSError as exc:
                log(f"cannot bind NFQUEUE {number}: {exc}")
                return 2
            queues[direction] = nfq
            log(f"bound queue {number} ({direction}), fail-open: {set_fail_open(nfq.get_fd(), number)}")
        log(f"behaviours: {json.dumps([b.describe() for b in mangler.behaviours])}")
        print("ready", flush=True)
        fds = {nfq.get_fd(): nfq for nfq in queues.values()}
        running = True
        while running:
            readable, _, _ = select.select([*fds, wake_r], [], [])
            for fd in readable:
                if fd == wake_r:
                    running = False
                else:
                    fds[fd].run(block=False)
    finally:
        for nfq in queues.values():
            with contextlib.suppress(Exception):
                nfq.run(block=False)  # what is already queued passes
            with contextlib.suppress(Exception):
                nfq.unbind()
        sender.close()
        report = mangler.report()
        tmp = f"{args.counts}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.counts)
        log(f"stopped: {json.dumps(report['packets'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
