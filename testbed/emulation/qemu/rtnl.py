"""Netlink for guestd (stdlib only, run inside a guest under ``python3 -S``): dumps, requests, and the
network half of a reused guest's reset.

Under TCG every process costs ~0.1 s, so a reset made of ip/tc batch processes took 0.3-0.5 s a
cell. The same deletions as netlink messages from the daemon take milliseconds: each object is
dumped and its own message sent back as the delete request (what ``ip route flush`` and friends do).
Constants are from linux/netlink.h, rtnetlink.h, if_link.h, fib_rules.h, neighbour.h, genetlink.h,
mptcp.h and nfnetlink.h.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

NETLINK_ROUTE, NETLINK_NETFILTER, NETLINK_GENERIC = 0, 12, 16
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_DELADDR, RTM_GETADDR = 21, 22
RTM_DELROUTE, RTM_GETROUTE = 25, 26
RTM_DELNEIGH, RTM_GETNEIGH = 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_DELQDISC, RTM_GETQDISC = 37, 38
IFLA_MTU = 4
RTA_TABLE, TCA_KIND = 15, 1
FRA_PRIORITY, FRA_TABLE = 6, 15
FR_ACT_TO_TBL = 1
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
IFF_UP = 0x1
TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
RT_TABLE_DEFAULT, RT_TABLE_MAIN, RT_TABLE_LOCAL = 253, 254, 255

GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
MPTCP_PM_CMD_FLUSH_ADDRS, MPTCP_PM_CMD_SET_LIMITS, MPTCP_PM_CMD_GET_LIMITS, MPTCP_PM_VER = 4, 5, 6, 1
MPTCP_PM_ATTR_RCV_ADD_ADDRS, MPTCP_PM_ATTR_SUBFLOWS = 2, 3
MPTCP_LIMIT_ATTRS = {"add_addr_accepted": MPTCP_PM_ATTR_RCV_ADD_ADDRS, "subflows": MPTCP_PM_ATTR_SUBFLOWS}
NFT_MSG_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES

# Fixed header of each reply type (RTM_NEW* = RTM_GET* - 2): ifinfomsg, ifaddrmsg, rtmsg, ndmsg,
# fib_rule_hdr, tcmsg; genlmsghdr and nfgenmsg for the other families.
HEADER_SIZE = {RTM_NEWLINK: 16, RTM_GETADDR - 2: 8, RTM_GETROUTE - 2: 12, RTM_GETNEIGH - 2: 12,
               RTM_GETRULE - 2: 12, RTM_GETQDISC - 2: 20}


class Message:
    """One dumped object: its type, its whole payload (to send back as a request), the fixed
    header, and the attributes by type."""

    __slots__ = ("type", "payload", "header", "attrs")

    def __init__(self, mtype: int, payload: bytes, header_size: int) -> None:
        self.type, self.payload, self.header = mtype, payload, payload[:header_size]
        self.attrs: dict[int, bytes] = {}
        at = header_size
        while at + 4 <= len(payload):
            alen, atype = struct.unpack_from("=HH", payload, at)
            if alen < 4:
                break
            self.attrs[atype & 0x3FFF] = payload[at + 4:at + alen]
            at += (alen + 3) & ~3

    def u32(self, attr: int) -> int | None:
        value = self.attrs.get(attr)
        return struct.unpack_from("=I", value)[0] if value is not None and len(value) >= 4 else None


def attr(atype: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), atype) + payload
    return data + b"\0" * (-len(data) & 3)


def _messages(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield mtype, seq, data[offset + 16:offset + length]
        offset += (length + 3) & ~3


def dump(proto: int, request: int, header: bytes, header_size: int | None = None) -> list[Message]:
    """Every object a dump request returns. OSError for a failed dump (ENOENT, EPROTONOSUPPORT when
    the subsystem is not there)."""
    out: list[Message] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto) as sock:
        sock.settimeout(10)
        sock.send(struct.pack("=IHHII", 16 + len(header), request, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + header)
        while True:
            for mtype, _seq, payload in _messages(sock.recv(1 << 17)):
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", payload)[0]
                    if errno:
                        raise OSError(errno, os.strerror(errno))
                    return out
                size = header_size if header_size is not None else HEADER_SIZE.get(mtype)
                if size is not None:
                    out.append(Message(mtype, payload, size))


def request(proto: int, messages: list[tuple[int, int, bytes]]) -> list[int]:
    """Send each (type, extra flags, payload) with an acknowledgement asked for; the error number of
    each (0: done), in order. Sent a few dozen to a datagram, so hundreds cost a few round trips."""
    errors: list[int] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto) as sock:
        sock.settimeout(10)
        for start in range(0, len(messages), 32):
            chunk = messages[start:start + 32]
            data = b"".join(struct.pack("=IHHII", 16 + len(payload), mtype, NLM_F_REQUEST | NLM_F_ACK | flags,
                                        start + i + 1, 0) + payload + b"\0" * (-len(payload) & 3)
                            for i, (mtype, flags, payload) in enumerate(chunk))
            sock.send(data)
            answers: dict[int, int] = {}
            while len(answers) < len(chunk):
                for mtype, seq, payload in _messages(sock.recv(1 << 17)):
                    if mtype == NLMSG_ERROR:
                        answers[seq] = -struct.unpack_from("=i", payload)[0]
            errors += [answers.get(start + i + 1, 0) for i in range(len(chunk))]
    return errors


def genl_family(name: str) -> int | None:
    """A generic netlink family's id; None when the kernel has no such family."""
    payload = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as sock:
        sock.settimeout(10)
        sock.send(struct.pack("=IHHII", 16 + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, 1, 0) + payload)
        for mtype, _seq, body in _messages(sock.recv(1 << 16)):
            if mtype == GENL_ID_CTRL:
                family = Message(mtype, body, 4).attrs.get(CTRL_ATTR_FAMILY_ID)
                return struct.unpack_from("=H", family)[0] if family else None
    return None


def genl_call(family: int, cmd: int, version: int, attrs: bytes = b"") -> Message:
    """One generic netlink command's answer (attributes after the genlmsghdr). OSError on error."""
    payload = struct.pack("=BBH", cmd, version, 0) + attrs
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as sock:
        sock.settimeout(10)
        sock.send(struct.pack("=IHHII", 16 + len(payload), family, NLM_F_REQUEST, 1, 0) + payload)
        for mtype, _seq, body in _messages(sock.recv(1 << 16)):
            if mtype == NLMSG_ERROR:
                errno = -struct.unpack_from("=i", body)[0]
                raise OSError(errno, os.strerror(errno))
            if mtype == family:
                return Message(mtype, body, 4)
    raise OSError(0, "no answer")


def mptcp_limits_text() -> str | None:
    """What ``ip mptcp limits show`` prints (iproute2's format: each limit the kernel reports, in
    its order, then a newline); None when the kernel has no MPTCP path manager."""
    family = genl_family("mptcp_pm")
    if family is None:
        return None
    answer = genl_call(family, MPTCP_PM_CMD_GET_LIMITS, MPTCP_PM_VER)
    words = ""
    for name, attr_type in (("add_addr_accepted", MPTCP_PM_ATTR_RCV_ADD_ADDRS), ("subflows", MPTCP_PM_ATTR_SUBFLOWS)):
        value = answer.u32(attr_type)
        if value is not None:
            words += f"{name} {value} "
    return words + "\n"


def nft_tables() -> int:
    """How many nftables tables there are (0 when nf_tables is not loaded)."""
    try:
        return len(dump(NETLINK_NETFILTER, NFT_MSG_GETTABLE, struct.pack("=BBH", socket.AF_UNSPEC, 0, 0), 4))
    except OSError:
        return 0


def routes(family: int) -> list[Message]:
    return dump(NETLINK_ROUTE, RTM_GETROUTE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0))


def route_table(route: Message) -> int:
    table = route.u32(RTA_TABLE)
    return table if table is not None else route.header[4]


def qdiscs() -> list[Message]:
    return dump(NETLINK_ROUTE, RTM_GETQDISC, struct.pack("=BxxxiIII", 0, 0, 0, 0, 0))


def configured(qdisc: Message) -> bool:
    """A qdisc a cell made: an ingress/clsact one, or a root one with a handle (the kernel's default
    root qdiscs have handle 0)."""
    _family, _ifindex, handle, parent, _info = struct.unpack_from("=BxxxiIII", qdisc.header)
    return parent == TC_H_INGRESS or (parent == TC_H_ROOT and handle != 0)


def qdisc_ifindex(qdisc: Message) -> int:
    return struct.unpack_from("=Bxxxi", qdisc.header)[1]


def reset(down: dict[str, int], delete: dict[str, int], mptcp_limits: list[str] | None,
          mptcp: bool) -> dict:
    """Undo a cell's network configuration, in this order: the `down` links set down with MTU 1500
    (first: a qdisc deleted on a running device waits for RCU grace periods, slow under TCG), the
    `delete` links (name → ifindex) deleted, the qdiscs a cell configured deleted, the IPv4 addresses
    of the `down` links flushed, every route outside the local table flushed, the policy rules back
    to the kernel's defaults, neighbours flushed (not permanent or NOARP ones), MPTCP endpoints
    flushed and limits set back (`mptcp_limits` as ``ip mptcp limits show`` printed them).
    Returns counts, and the first errors (errors do not stop it, as with ``-force``)."""
    done: dict = {"errors": []}
    failed: list[str] = done["errors"]

    def send(what: str, messages: list[tuple[int, int, bytes]], proto: int = NETLINK_ROUTE,
             ignore: tuple[int, ...] = ()) -> None:
        errnos = request(proto, messages) if messages else []
        done[what] = len(messages)
        for errno in errnos:
            if errno and errno not in ignore and len(failed) < 10:
                failed.append(f"{what}: {os.strerror(errno)}")

    links = [(RTM_NEWLINK, 0, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, IFF_UP)
              + attr(IFLA_MTU, struct.pack("=I", 1500))) for index in down.values()]
    send("links_down", links)
    send("links_deleted", [(RTM_DELLINK, 0, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0))
                           for index in delete.values()], ignore=(19,))  # ENODEV: gone with its peer
    gone = set(delete.values())
    send("qdiscs_deleted", [(RTM_DELQDISC, 0, q.payload[:20]) for q in qdiscs()
                            if configured(q) and qdisc_ifindex(q) not in gone], ignore=(2, 22))
    ours = set(down.values())
    addrs = dump(NETLINK_ROUTE, RTM_GETADDR, struct.pack("=BBBBi", socket.AF_INET, 0, 0, 0, 0))
    send("addresses_flushed", [(RTM_DELADDR, 0, a.payload) for a in addrs
                               if struct.unpack_from("=BBBBi", a.header)[4] in ours], ignore=(99,))
    flush: list[tuple[int, int, bytes]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        flush += [(RTM_DELROUTE, 0, r.payload) for r in routes(family) if route_table(r) != RT_TABLE_LOCAL]
    send("routes_flushed", flush, ignore=(3,))  # ESRCH: went with an earlier one
    rules: list[tuple[int, int, bytes]] = []
    for family, defaults in ((socket.AF_INET, (RT_TABLE_MAIN, RT_TABLE_DEFAULT)), (socket.AF_INET6, (RT_TABLE_MAIN,))):
        header = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
        rules += [(RTM_DELRULE, 0, r.payload) for r in dump(NETLINK_ROUTE, RTM_GETRULE, header)
                  if r.u32(FRA_PRIORITY)]  # what `ip rule flush` keeps: priority 0, the local table
        for priority, table in zip((32766, 32767), defaults, strict=False):
            rules.append((RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL,
                          struct.pack("=BBBBBBBBI", family, 0, 0, 0, table, 0, 0, FR_ACT_TO_TBL, 0)
                          + attr(FRA_PRIORITY, struct.pack("=I", priority)) + attr(FRA_TABLE, struct.pack("=I", table))))
    send("rules", rules, ignore=(2, 17))
    neigh: list[tuple[int, int, bytes]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for n in dump(NETLINK_ROUTE, RTM_GETNEIGH, struct.pack("=BxxxiHBB", family, 0, 0, 0, 0)):
            if not struct.unpack_from("=BxxxiHBB", n.header)[2] & (NUD_NOARP | NUD_PERMANENT):
                neigh.append((RTM_DELNEIGH, 0, n.payload))
    send("neighbours_flushed", neigh, ignore=(2,))
    if mptcp:
        family = genl_family("mptcp_pm")
        if family is None:
            failed.append("mptcp: the kernel has no mptcp_pm generic netlink family")
        else:
            commands = [(family, 0, struct.pack("=BBH", MPTCP_PM_CMD_FLUSH_ADDRS, MPTCP_PM_VER, 0))]
            words = mptcp_limits or []
            limits = b"".join(attr(MPTCP_LIMIT_ATTRS[k], struct.pack("=I", int(v)))
                              for k, v in zip(words[::2], words[1::2], strict=False) if k in MPTCP_LIMIT_ATTRS and v.isdigit())
            if limits:
                commands.append((family, 0, struct.pack("=BBH", MPTCP_PM_CMD_SET_LIMITS, MPTCP_PM_VER, 0) + limits))
            send("mptcp", commands, proto=NETLINK_GENERIC)
    return done
