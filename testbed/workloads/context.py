"""Where a workload runs: its client and server nodes, its target, the node it goes through (a
converter or SOCKS proxy) and the path RTT the topology configures for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.spec.experiment import Bulk, RequestResponse, Workload


@dataclass
class Context:
    client: Any
    server: Any
    target: str
    log_dir: Path
    state: Any
    seed: int
    servers: dict[str, Any] = field(default_factory=dict)  # name → node: the server side runs on each
    via: Via | None = None  # the converter or SOCKS proxy the client goes through
    path_rtt: float | None = None  # seconds: the configured delays of the path, both ways (see path_info)
    # Called once the workload is under way: a bulk client's connection is established (or it gave up).
    on_started: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Via:
    node: str
    kind: str  # "converter" (RFC 8803) | "socks5"
    address: str  # the via node's address nearest the client
    port: int

    def argv(self) -> list[str]:
        return ["--via", f"{self.kind}:{self.address}:{self.port}"]


def add_path_info(ctx: Context, res: Any, w: Workload) -> None:
    """Fill `ctx.via` (the `via` node's address the client reaches in the fewest hops, and its port)
    and `ctx.path_rtt` for bulk and rr workloads.

    The path RTT is what the topology configures, not a measurement: the impairment delays of every
    link the static routes take from the client to the target (through the via node when there is
    one), in both directions; jitter, queueing and processing are left out. A `ping` workload over
    the same path measures it. None when a leg has no route."""
    if not isinstance(w, Bulk | RequestResponse):
        return
    legs: list[list[tuple[int, bool]] | None]
    if w.via:
        spec = res.topology.nodes[w.via]
        candidates = []
        for intf in res.interfaces.get(w.via, []):
            if intf.address is not None:
                hops = route_hops(res, w.client, intf.address.ip)
                if hops is not None:
                    candidates.append((len(hops), str(intf.address.ip), hops))
        if not candidates:
            return
        _, address, to_via = min(candidates, key=lambda c: c[0])
        ctx.via = Via(w.via, "converter" if spec.kind == "converter" else "socks5", address, spec.port)
        legs = [to_via, route_hops(res, w.via, ctx.target)]
    else:
        legs = [route_hops(res, w.client, ctx.target)]
    if all(leg is not None for leg in legs):
        ctx.path_rtt = round(sum(_delay(res, li, fwd) + _delay(res, li, not fwd)
                                 for leg in legs if leg for li, fwd in leg), 6)


def _delay(res: Any, link: int, forward: bool) -> float:
    imp = res.link_impairment(link, forward)
    return float(imp.delay or 0) if imp is not None else 0.0


def route_hops(res: Any, src: str, dst: Any) -> list[tuple[int, bool]] | None:
    """(link index, forward) of every link a packet from node `src` to address `dst` crosses, following
    the main routing tables; up to the destination's segment when no node has the address, None when
    a node on the way has no route."""
    from ipaddress import ip_address

    dst = ip_address(str(dst))
    family = "ipv4" if dst.version == 4 else "ipv6"
    node, hops = src, []
    for _ in range(64):
        own = [i for i in res.interfaces.get(node, []) if i.addr(family) is not None]
        if any(i.addr(family).ip == dst for i in own):
            return hops
        out = next((i for i in own if dst in i.addr(family).network), None)
        nexthop = dst
        if out is None:
            routes = [r for r in res.routes.get(node, []) if r.table is None
                      and r.destination.version == dst.version and dst in r.destination]
            if not routes:
                return None
            best = max(routes, key=lambda r: r.destination.prefixlen)
            out, nexthop = res.interface(node, best.interface), best.via or dst
        hops.append((out.link, out.forward))
        members = res.segments[out.segment].members
        owner = next((res.interface(n, name) for n, name in members if (n, name) != (node, out.name)
                      and res.interface(n, name).addr(family) is not None
                      and res.interface(n, name).addr(family).ip == nexthop), None)
        if owner is None:
            return hops
        if owner.link != out.link:  # through a switch: the switch's link to the next node, towards it
            hops.append((owner.link, not owner.forward))
        node = owner.node
    return None
