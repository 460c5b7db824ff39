"""A validated topology made concrete: every interface named and addressed, every route computed.

Cross-reference problems (unknown nodes, duplicate interfaces, addresses outside their subnet) are
reported here, all at once, with the positions of the offending fields.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from testbed.errors import Problem, SpecError
from testbed.spec.source import Document, suggest
from testbed.spec.topology import Impairment, Topology


@dataclass
class Interface:
    node: str
    name: str
    segment: int
    link: int | None  # index in topology.links; None for nothing
    forward: bool  # True when this node is the link's first endpoint
    address: IPv4Interface | None = None
    peer: tuple[str, str] | None = None  # (node, interface) at the other end of the link
    address6: IPv6Interface | None = None

    @property
    def ref(self) -> str:
        return f"{self.node}:{self.name}"

    def addr(self, family: str) -> IPv4Interface | IPv6Interface | None:
        return self.address if family == "ipv4" else self.address6

    @property
    def primary(self) -> IPv4Address | IPv6Address:
        """The address that names this interface: IPv4 where it has one, else IPv6."""
        chosen = self.address or self.address6
        assert chosen is not None
        return chosen.ip


@dataclass
class Segment:
    """One broadcast domain: a point-to-point link, or a switch and everything plugged into it."""

    index: int
    subnet: IPv4Network | None = None
    switch: str | None = None
    subnet6: IPv6Network | None = None
    family: str = "ipv4"  # "ipv4" | "ipv6" | "dual"

    def has(self, family: str) -> bool:
        return self.family in (family, "dual")

    def net(self, family: str) -> IPv4Network | IPv6Network | None:
        return self.subnet if family == "ipv4" else self.subnet6
    members: list[tuple[str, str]] = field(default_factory=list)  # (node, interface) of L3 nodes
    links: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Route:
    destination: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address | None
    interface: str
    table: int | None = None  # None: main table


@dataclass
class SourceRule:
    address: IPv4Address | IPv6Address
    table: int


@dataclass
class Resolved:
    topology: Topology
    interfaces: dict[str, list[Interface]]
    segments: list[Segment]
    routes: dict[str, list[Route]]
    rules: dict[str, list[SourceRule]]
    served: dict[str, list[IPv4Network | IPv6Network]] = field(default_factory=dict)

    def interface(self, node: str, name: str) -> Interface:
        for intf in self.interfaces[node]:
            if intf.name == name:
                return intf
        raise KeyError(f"{node}:{name}")

    def find(self, ref: str) -> Interface | None:
        node, _, name = ref.partition(":")
        try:
            return self.interface(node, name)
        except KeyError:
            return None

    def link_impairment(self, link_index: int, forward: bool) -> Impairment | None:
        imp = self.topology.links[link_index].impairment
        return imp.direction(forward) if imp else None

    def l3_nodes(self) -> list[str]:
        return [n for n, spec in self.topology.nodes.items() if spec.kind != "switch"]


def resolve(topo: Topology, doc: Document | None = None) -> Resolved:
    problems: list[Problem] = []

    def problem(loc: tuple[str | int, ...], message: str) -> None:
        if doc is not None:
            problems.append(doc.problem(loc, message))
        else:
            problems.append(Problem("<topology>", None, None, ".".join(map(str, loc)), message))

    nodes = topo.nodes
    interfaces: dict[str, list[Interface]] = {n: [] for n in nodes if nodes[n].kind != "switch"}
    switch_ports: dict[str, int] = {n: 0 for n in nodes if nodes[n].kind == "switch"}
    used_names: dict[str, set[str]] = {n: set() for n in nodes}

    # Explicit interface names first, so that generated ones never take a name a later link asks for.
    for li, link in enumerate(topo.links):
        for ei, end in enumerate(link.endpoints):
            loc = ("links", li, "endpoints", ei)
            if end.node not in nodes:
                problem((*loc, "node") if doc and isinstance(_at(doc, loc), dict) else loc,
                        f"no node named '{end.node}'{suggest(end.node, nodes)}")
                continue
            if nodes[end.node].kind == "switch":
                if end.interface or end.address:
                    problem(loc, "a switch port takes no interface name or address")
                continue
            if end.interface:
                if end.interface in used_names[end.node]:
                    problem(loc, f"interface '{end.interface}' of '{end.node}' is used by another link")
                used_names[end.node].add(end.interface)
        a, b = link.endpoints
        if a.node == b.node and a.node in nodes:
            problem(("links", li), f"link connects '{a.node}' to itself")
    if problems:
        raise SpecError(problems)

    segments: list[Segment] = []
    switch_segment: dict[str, int] = {}
    link_segment: list[int] = []
    for li, link in enumerate(topo.links):
        sw = [e.node for e in link.endpoints if nodes[e.node].kind == "switch"]
        if sw:
            seg_ids = {switch_segment[s] for s in sw if s in switch_segment}
            if len(seg_ids) > 1:
                problem(("links", li), "joins two switches that already carry different segments")
                link_segment.append(next(iter(seg_ids)))
                continue
            seg = seg_ids.pop() if seg_ids else None
            if seg is None:
                seg = len(segments)
                segments.append(Segment(seg, switch=sw[0]))
            for s in sw:
                switch_segment[s] = seg
        else:
            seg = len(segments)
            segments.append(Segment(seg))
        segments[seg].links.append(li)
        family = link.family or topo.addressing.family
        if len(segments[seg].links) > 1 and link.family and segments[seg].family != family:
            problem(("links", li, "family"), f"conflicts with {segments[seg].family} on the same switch")
        if link.family or len(segments[seg].links) == 1:
            segments[seg].family = family
        if link.subnet is not None:
            if segments[seg].subnet not in (None, link.subnet):
                problem(("links", li, "subnet"), f"conflicts with {segments[seg].subnet} given for the same switch")
            segments[seg].subnet = link.subnet
        if link.subnet6 is not None:
            if segments[seg].subnet6 not in (None, link.subnet6):
                problem(("links", li, "subnet6"), f"conflicts with {segments[seg].subnet6} given for the same switch")
            segments[seg].subnet6 = link.subnet6
        link_segment.append(seg)

    # Interfaces, named where left out.
    for li, link in enumerate(topo.links):
        ends = link.endpoints
        made: list[Interface | None] = []
        for ei, end in enumerate(ends):
            if nodes[end.node].kind == "switch":
                switch_ports[end.node] += 1
                made.append(None)
                continue
            name = end.interface
            if not name:
                i = 0
                while f"eth{i}" in used_names[end.node]:
                    i += 1
                name = f"eth{i}"
                used_names[end.node].add(name)
            intf = Interface(end.node, name, link_segment[li], li, forward=(ei == 0), address=end.address,
                             address6=end.address6)
            interfaces[end.node].append(intf)
            segments[link_segment[li]].members.append((end.node, name))
            made.append(intf)
        if made[0] and made[1]:
            made[0].peer = (made[1].node, made[1].name)
            made[1].peer = (made[0].node, made[0].name)

    _check_families(topo, segments, interfaces, problem)
    _assign_subnets(topo, segments, problem)
    _assign_subnets6(topo, segments, problem)
    _assign_addresses(topo, segments, interfaces, problem)
    _assign_addresses6(segments, interfaces, problem)
    if problems:
        raise SpecError(problems)
    served = _served_networks(topo)
    routes, rules = _routes(topo, segments, interfaces, served)
    resolved = Resolved(topo, interfaces, segments, routes, rules, served)
    # Network functions check what only the whole topology can tell (e.g. a NAT's outside interface).
    for name, spec in topo.nodes.items():
        check = getattr(spec, "check", None)
        if check is not None:
            for loc, message in check(name, resolved):
                problem(("nodes", name, *loc), message)
    if problems:
        raise SpecError(problems)
    return resolved


def _served_networks(topo: Topology) -> dict[str, list[IPv4Network | IPv6Network]]:
    """Networks that live behind a node without being a link (e.g. a NAT64 prefix), by node."""
    out = {}
    for name, spec in topo.nodes.items():
        networks = getattr(spec, "served_networks", None)
        if networks is not None:
            out[name] = list(networks())
    return out


def _check_families(topo: Topology, segments: list[Segment], interfaces: dict[str, list[Interface]],
                    problem) -> None:
    for lst in interfaces.values():
        for intf in lst:
            seg = segments[intf.segment]
            ei = 0 if intf.forward else 1
            if intf.address is not None and not seg.has("ipv4"):
                problem(("links", intf.link, "endpoints", ei, "address"), "the link is IPv6-only (family: ipv6)")
            if intf.address6 is not None and not seg.has("ipv6"):
                problem(("links", intf.link, "endpoints", ei, "address6"),
                        "the link has no IPv6 (family: ipv4); set family: ipv6 or dual")
    for seg in segments:
        if seg.subnet is not None and not seg.has("ipv4"):
            problem(("links", seg.links[0], "subnet"), "the link is IPv6-only (family: ipv6)")
        if seg.subnet6 is not None and not seg.has("ipv6"):
            problem(("links", seg.links[0], "subnet6"), "the link has no IPv6 (family: ipv4)")


def _assign_subnets6(topo: Topology, segments: list[Segment], problem) -> None:
    pool = topo.addressing.ipv6
    prefix = topo.addressing.prefix6
    if prefix < pool.prefixlen:
        problem(("addressing", "prefix6"), f"/{prefix} is larger than the pool {pool}")
        return
    taken = [s.subnet6 for s in segments if s.subnet6 is not None]
    free = (n for n in pool.subnets(new_prefix=prefix) if not any(n.overlaps(t) for t in taken))
    for seg in segments:
        if seg.has("ipv6") and seg.subnet6 is None:
            seg.subnet6 = next(free, None)
            if seg.subnet6 is None:
                problem(("addressing", "ipv6"), f"pool {pool} has no /{prefix} left")
                return


def _assign_addresses6(segments: list[Segment], interfaces: dict[str, list[Interface]], problem) -> None:
    by_ref = {(i.node, i.name): i for lst in interfaces.values() for i in lst}
    for seg in segments:
        if not seg.has("ipv6") or seg.subnet6 is None:
            continue
        used = set()
        for node, name in seg.members:
            intf = by_ref[(node, name)]
            if intf.address6 is None:
                continue
            loc = ("links", intf.link, "endpoints", 0 if intf.forward else 1, "address6")
            if intf.address6.ip not in seg.subnet6:
                problem(loc, f"{intf.address6} is not inside the link's subnet {seg.subnet6}")
            elif intf.address6.ip in used:
                problem(loc, f"{intf.address6.ip} is already used on this segment")
            intf.address6 = IPv6Interface(f"{intf.address6.ip}/{seg.subnet6.prefixlen}")
            used.add(intf.address6.ip)
        hosts = (seg.subnet6.network_address + i for i in range(1, 1 << 16))
        for node, name in seg.members:
            intf = by_ref[(node, name)]
            if intf.address6 is None:
                ip = next(h for h in hosts if h not in used)
                intf.address6 = IPv6Interface(f"{ip}/{seg.subnet6.prefixlen}")


def _at(doc: Document, loc: tuple[str | int, ...]):
    node = doc.data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _assign_subnets(topo: Topology, segments: list[Segment], problem) -> None:
    taken = [s.subnet for s in segments if s.subnet is not None]
    pool = topo.addressing.ipv4
    if topo.addressing.prefix < pool.prefixlen:
        problem(("addressing", "prefix"), f"/{topo.addressing.prefix} is larger than the pool {pool}")
        return
    free = (n for n in pool.subnets(new_prefix=topo.addressing.prefix) if not any(n.overlaps(t) for t in taken))
    for i, seg in enumerate(segments):
        if not seg.has("ipv4"):
            continue
        for j in range(i):
            other = segments[j].subnet
            if seg.subnet is not None and other is not None and seg.subnet.overlaps(other):
                problem(("links", seg.links[0], "subnet"), f"{seg.subnet} overlaps {other}")
        if seg.subnet is None:
            seg.subnet = next(free, None)
            if seg.subnet is None:
                problem(("addressing", "ipv4"), f"pool {pool} has no /{topo.addressing.prefix} left")
                return


def _assign_addresses(topo: Topology, segments: list[Segment], interfaces: dict[str, list[Interface]],
                      problem) -> None:
    by_ref = {(i.node, i.name): i for lst in interfaces.values() for i in lst}
    for seg in segments:
        if not seg.has("ipv4"):
            continue
        assert seg.subnet is not None
        used: set[IPv4Address] = set()
        for node, name in seg.members:
            intf = by_ref[(node, name)]
            if intf.address is None:
                continue
            ei = 0 if intf.forward else 1
            loc = ("links", intf.link, "endpoints", ei, "address")
            if intf.address.network != seg.subnet:
                # A prefix that differs only in length from the segment's is taken as the segment's.
                if intf.address.ip in seg.subnet:
                    intf.address = IPv4Interface(f"{intf.address.ip}/{seg.subnet.prefixlen}")
                else:
                    problem(loc, f"{intf.address} is not inside the link's subnet {seg.subnet}")
                    continue
            if intf.address.ip in used:
                problem(loc, f"{intf.address.ip} is already used on this segment")
            if intf.address.ip in (seg.subnet.network_address, seg.subnet.broadcast_address):
                problem(loc, f"{intf.address.ip} is the network or broadcast address of {seg.subnet}")
            used.add(intf.address.ip)
        hosts = (h for h in seg.subnet.hosts() if h not in used)
        for node, name in seg.members:
            intf = by_ref[(node, name)]
            if intf.address is None:
                ip = next(hosts, None)
                if ip is None:
                    problem(("links", intf.link), f"subnet {seg.subnet} has no address left for {node}")
                    continue
                intf.address = IPv4Interface(f"{ip}/{seg.subnet.prefixlen}")


def _routes(topo: Topology, segments: list[Segment], interfaces: dict[str, list[Interface]],
            served: dict[str, list[Any]]):
    """Shortest-path static routes per address family; only routers and network functions forward.
    Multihomed hosts get one table per interface (and family) and a source rule per address."""
    routes: dict[str, list[Route]] = {n: [] for n in interfaces}
    rules: dict[str, list[SourceRule]] = {n: [] for n in interfaces}
    for family in ("ipv4", "ipv6"):
        _family_routes(topo, segments, interfaces, served, family, routes, rules)
    return routes, rules


def _family_routes(topo: Topology, segments: list[Segment], interfaces: dict[str, list[Interface]],
                   served: dict[str, list[Any]], family: str, routes: dict[str, list[Route]],
                   rules: dict[str, list[SourceRule]]) -> None:
    version = 4 if family == "ipv4" else 6
    own = {n: [i for i in lst if i.addr(family) is not None] for n, lst in interfaces.items()}
    attached: dict[int, list[Interface]] = {s.index: [] for s in segments}
    for lst in own.values():
        for intf in lst:
            attached[intf.segment].append(intf)
    extra = {n: [net for net in nets if net.version == version] for n, nets in served.items()}

    def forwards(node: str) -> bool:
        return topo.nodes[node].kind not in ("host", "switch")  # routers and network functions

    def bfs(start: str, first_hops: list[Interface]) -> dict[Any, tuple[Any, str]]:
        """Each reachable segment (by index) or served network: (gateway, out interface)."""
        best: dict[Any, tuple[Any, str]] = {}
        queue: deque[tuple[str, Any, str]] = deque()
        seen = {start}
        for intf in first_hops:
            best.setdefault(intf.segment, (None, intf.name))
            for nb in attached[intf.segment]:
                if nb.node not in seen and forwards(nb.node):
                    seen.add(nb.node)
                    queue.append((nb.node, nb.addr(family).ip, intf.name))
        while queue:
            node, gw, out = queue.popleft()
            for net in extra.get(node, []):
                best.setdefault(net, (gw, out))
            for intf in own[node]:
                best.setdefault(intf.segment, (gw, out))
                for nb in attached[intf.segment]:
                    if nb.node not in seen and forwards(nb.node):
                        seen.add(nb.node)
                        queue.append((nb.node, gw, out))
        return best

    def destination(key: Any) -> Any:
        return segments[key].net(family) if isinstance(key, int) else key

    for node, mine in own.items():
        if not mine:
            continue
        for key, (gw, out) in sorted(bfs(node, mine).items(), key=lambda kv: str(kv[0])):
            if gw is not None:
                routes[node].append(Route(destination(key), gw, out))
        if topo.nodes[node].kind == "host" and len(mine) > 1:
            for i, intf in enumerate(interfaces[node]):
                if intf.addr(family) is None:
                    continue
                table = 100 + i
                rules[node].append(SourceRule(intf.addr(family).ip, table))
                for key, (gw, out) in sorted(bfs(node, [intf]).items(), key=lambda kv: str(kv[0])):
                    routes[node].append(Route(destination(key), gw, out, table))
