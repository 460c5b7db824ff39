"""Kernel SNMP/netstat counters of a node's namespace (MPTcpExt, TcpExt, Tcp), read from /proc.

Reading /proc/<pid>/net/* of a process inside the namespace needs no command in the node at all,
so snapshots are cheap enough to take before and after every workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FILES = ("netstat", "snmp")


def parse(text: str) -> dict[str, int]:
    counters: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = header.partition(":")
        vprefix, _, nums = values.partition(":")
        if prefix != vprefix:
            continue
        for name, value in zip(names.split(), nums.split(), strict=False):
            try:
                counters[f"{prefix}{name}"] = int(value)
            except ValueError:
                pass
    return counters


def snapshot(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in FILES:
        try:
            out.update(parse(Path(f"/proc/{pid}/net/{name}").read_text()))
        except OSError:
            pass
    v0 = Path(f"/proc/{pid}/net/mptcp_net/snmp")  # out-of-tree v0.9x kernels
    if v0.exists():
        out.update(parse_v0_snmp(v0.read_text()))
    return out


def parse_v0_snmp(text: str) -> dict[str, int]:
    """/proc/net/mptcp_net/snmp of a v0.9x kernel: one `NAME<spaces, tab>VALUE` line per counter
    (mptcp_snmp_seq_show in net/mptcp/mptcp_ctrl.c prints "%-32s\t%ld\n"); names get the prefix MPTCP."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].lstrip("-").isdigit():
            out[f"MPTCP{words[0]}"] = int(words[1])
    return out


# The out-of-tree v0.9x kernels (multipath-tcp.org) count in /proc/net/mptcp_net/snmp under their own
# names (mptcp_snmp_list in net/mptcp/mptcp_ctrl.c). Those that count the same event as an upstream
# MPTcpExt counter are also given its name, so that outcome detection and scenario counter checks
# read a v0 kernel like an upstream one. Not exercised here: no v0.92 kernel runs on this machine.
V0_AS_UPSTREAM = {
    **{n: n for n in ("MPCapableSYNRX", "MPCapableSYNTX", "MPCapableSYNACKRX", "MPCapableACKRX",
                      "MPCapableFallbackACK", "MPCapableFallbackSYNACK", "MPTCPRetrans", "MPJoinNoTokenFound",
                      "MPJoinSynTx", "MPJoinSynRx", "MPJoinSynAckRx", "MPJoinSynAckHMacFailure", "MPJoinAckRx",
                      "MPJoinAckHMacFailure", "NoDSSInWindow", "DSSNotMatching", "InfiniteMapRx", "DSSNoMatchTCP",
                      "AddAddrTx")},
    "MPFailRX": "MPFailRx", "MPFastcloseRX": "MPFastcloseRx", "MPFastcloseTX": "MPFastcloseTx",
    "MPCsumFail": "DataCsumErr", "AddAddrRx": "AddAddr", "RemAddrRx": "RmAddr", "RemAddrTx": "RmAddrTx",
}


def with_upstream_names(counters: dict[str, int]) -> dict[str, int]:
    """`counters` plus, for a v0.9x kernel (MPTCP* names, no MPTcpExt*), the upstream names of the
    counters that mean the same (V0_AS_UPSTREAM)."""
    if any(k.startswith("MPTcpExt") for k in counters):
        return counters
    out = dict(counters)
    for v0, upstream in V0_AS_UPSTREAM.items():
        if f"MPTCP{v0}" in counters:
            out.setdefault(f"MPTcpExt{upstream}", counters[f"MPTCP{v0}"])
    return out


def of_node(node: Any) -> dict[str, int]:
    """A node's counters: a namespace node's from /proc/<pid>/net, a QEMU guest's (a node with its own
    `counters()`) from the guest's kernel; a v0.9x kernel's also under upstream names."""
    own = getattr(node, "counters", None)
    return with_upstream_names(own() if callable(own) else snapshot(node.pid))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Changed counters only (gauges like MPCurrEstab may go down)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
