"""A validated topology made concrete: every interface named and addressed, every route computed.

Cross-reference problems (unknown nodes, duplicate interfaces, addresses outside their subnet) are
reported here, all at once, with the positions of the offending fields.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

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

    @property
    def ref(self) -> str:
        return f"{self.node}:{self.name}"


@dataclass
class Segment:
    """One broadcast domain: a point-to-point link, or a switch and everything plugged into it."""

    index: int
    subnet: IPv4Network | None = None
    switch: str | None = None
    members: list[tuple[str, str]] = field(default_factory=list)  # (node, interface) of L3 nodes
    links: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Route:
    destination: IPv4Network
    via: IPv4Address | None
    interface: str
    table: int | None = None  # None: main table


@dataclass
class SourceRule:
    address: IPv4Address
    table: int


@dataclass
class Resolved:
    topology: Topology
    interfaces: dict[str, list[Interface]]
    segments: list[Segment]
    routes: dict[str, list[Route]]
    rules: dict[str, list[SourceRule]]

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
        if link.subnet is not None:
            if segments[seg].subnet not in (None, link.subnet):
                problem(("links", li, "subnet"), f"conflicts with {segments[seg].subnet} given for the same switch")
            segments[seg].subnet = link.subnet
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
            intf = Interface(end.node, name, link_segment[li], li, forward=(ei == 0), address=end.address)
            interfaces[end.node].append(intf)
            segments[link_segment[li]].members.append((end.node, name))
            made.append(intf)
        if made[0] and made[1]:
            made[0].peer = (made[1].node, made[1].name)
            made[1].peer = (made[0].node, made[0].name)

    _assign_subnets(topo, segments, problem)
    _assign_addresses(topo, segments, interfaces, problem)
    if problems:
        raise SpecError(problems)
    routes, rules = _routes(topo, segments, interfaces)
    return Resolved(topo, interfaces, segments, routes, rules)


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


def _routes(topo: Topology, segments: list[Segment], interfaces: dict[str, list[Interface]]):
    """Shortest-path static routes; only routers forward. Multihomed hosts get one table per interface."""
    attached: dict[int, list[Interface]] = {s.index: [] for s in segments}
    for lst in interfaces.values():
        for intf in lst:
            attached[intf.segment].append(intf)

    def is_router(node: str) -> bool:
        return topo.nodes[node].kind not in ("host", "switch")  # routers and network functions

    def bfs(start: str, first_hops: list[Interface]) -> dict[int, tuple[IPv4Address | None, str]]:
        """For every segment reachable from `start` leaving by `first_hops`: (gateway, out interface)."""
        best: dict[int, tuple[IPv4Address | None, str]] = {}
        queue: deque[tuple[str, IPv4Address | None, str]] = deque()
        seen = {start}
        for intf in first_hops:
            best.setdefault(intf.segment, (None, intf.name))
            for nb in attached[intf.segment]:
                if nb.node != start and nb.node not in seen and is_router(nb.node):
                    seen.add(nb.node)
                    assert nb.address is not None
                    queue.append((nb.node, nb.address.ip, intf.name))
        while queue:
            node, gw, out = queue.popleft()
            for intf in interfaces[node]:
                best.setdefault(intf.segment, (gw, out))
                for nb in attached[intf.segment]:
                    if nb.node not in seen and is_router(nb.node):
                        seen.add(nb.node)
                        queue.append((nb.node, gw, out))
        return best

    routes: dict[str, list[Route]] = {}
    rules: dict[str, list[SourceRule]] = {}
    for node, own in interfaces.items():
        lst: list[Route] = []
        for seg, (gw, out) in sorted(bfs(node, own).items()):
            if gw is not None:
                subnet = segments[seg].subnet
                assert subnet is not None
                lst.append(Route(subnet, gw, out))
        node_rules: list[SourceRule] = []
        if topo.nodes[node].kind == "host" and len(own) > 1:
            for i, intf in enumerate(own):
                table = 100 + i
                assert intf.address is not None
                node_rules.append(SourceRule(intf.address.ip, table))
                for seg, (gw, out) in sorted(bfs(node, [intf]).items()):
                    subnet = segments[seg].subnet
                    assert subnet is not None
                    lst.append(Route(subnet, gw, out, table))
        routes[node] = lst
        rules[node] = node_rules
    return routes, rules
