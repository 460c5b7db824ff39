"""A validated topology made concrete: every interface named and addressed, every route computed.

Cross-reference problems (unknown nodes, duplicate interfaces, addresses outside their subnet) are
reported here, all at once, with the positions of the offending fields.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
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
    next_eth: dict[str, int] = {}
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
                i = next_eth.get(end.node, 0)  # names only ever get taken: start where the last one was
                while f"eth{i}" in used_names[end.node]:
                    i += 1
                name = f"eth{i}"
                next_eth[end.node] = i + 1
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
    wanted = [seg for seg in segments if seg.has("ipv6") and seg.subnet6 is None]
    free = _free_subnets(pool, prefix, [s.subnet6 for s in segments if s.subnet6 is not None])
    for seg in wanted:
        seg.subnet6 = next(free, None)
        if seg.subnet6 is None:
            problem(("addressing", "ipv6"), _exhausted(pool, prefix, len(wanted), "prefix6"))
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
    pool = topo.addressing.ipv4
    prefix = topo.addressing.prefix
    if prefix < pool.prefixlen:
        problem(("addressing", "prefix"), f"/{prefix} is larger than the pool {pool}")
        return
    given = [seg for seg in segments if seg.has("ipv4") and seg.subnet is not None]
    # sorted by first address, a subnet overlaps an earlier one only if it starts before the
    # furthest end so far: n log n, where comparing every pair was quadratic in links
    furthest: tuple[int, Segment] | None = None
    for seg in sorted(given, key=lambda g: (int(g.subnet.network_address), g.index)):  # type: ignore[union-attr]
        net = seg.subnet
        assert net is not None
        if furthest is not None and int(net.network_address) <= furthest[0]:
            first, later = sorted((seg, furthest[1]), key=lambda g: g.index)
            problem(("links", later.links[0], "subnet"), f"{later.subnet} overlaps {first.subnet}")
        if furthest is None or int(net.broadcast_address) > furthest[0]:
            furthest = (int(net.broadcast_address), seg)
    wanted = [seg for seg in segments if seg.has("ipv4") and seg.subnet is None]
    free = _free_subnets(pool, prefix, [s.subnet for s in segments if s.subnet is not None])
    for seg in wanted:
        seg.subnet = next(free, None)
        if seg.subnet is None:
            problem(("addressing", "ipv4"), _exhausted(pool, prefix, len(wanted), "prefix"))
            return


def _free_subnets(pool: Any, prefix: int, taken: list[Any]) -> Iterator[Any]:
    """The /prefix subnets of `pool` in address order that overlap none of `taken`, in time linear
    in what is handed out and taken (not their product)."""
    size = 1 << (pool.max_prefixlen - prefix)
    spans = sorted((int(t.network_address), int(t.broadcast_address) + 1) for t in taken)
    make = type(pool)
    start, end = int(pool.network_address), int(pool.broadcast_address) + 1
    i = 0
    while start + size <= end:
        while i < len(spans) and spans[i][1] <= start:
            i += 1
        if i < len(spans) and spans[i][0] < start + size:
            start = max(start + size, -(-spans[i][1] // size) * size)  # past it, aligned
            continue
        yield make((start, prefix))
        start += size


def _exhausted(pool: Any, prefix: int, wanted: int, prefix_field: str) -> str:
    fits = 1 << (prefix - pool.prefixlen)
    return (f"pool {pool} has no /{prefix} left: {wanted} links need a subnet of their own, it holds "
            f"{fits}; give a larger pool or a longer addressing.{prefix_field}")


def _assign_addresses(topo: Topology, segments: list[Segment], interfaces: dict[str, list[Interface]],
                      problem) -> None:
    by_ref = {(i.node, i.name): i for lst in interfaces.values() for i in lst}
    for seg in segments:
        if not seg.has("ipv4") or seg.subnet is None:  # None: the pool ran out, already reported
            continue
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
    """One breadth-first search per router and per distinct way a host is attached, over integer
    indices, each giving every segment a first hop; the segments are then walked in address order
    and runs of adjacent subnets with the same first hop are merged into the fewest prefixes that
    cover exactly them. A route per (node, segment) is quadratic: a 1000-router chain has 1M of
    them, but only ~20 prefixes per router once merged. Hosts attached the same way (same segments
    and interface names, as in a star) share one search: a host does not forward, so its search
    does not depend on which host it is."""
    version = 4 if family == "ipv4" else 6
    own = {n: [i for i in lst if i.addr(family) is not None] for n, lst in interfaces.items()}
    names = list(own)
    forwards = [topo.nodes[n].kind not in ("host", "switch") for n in names]  # routers, network functions
    attached: list[list[tuple[int, Any]]] = [[] for _ in segments]  # forwarders on a segment: (node, address)
    node_segments: list[list[int]] = []
    for k, name in enumerate(names):
        node_segments.append([i.segment for i in own[name]])
        if forwards[k]:
            for intf in own[name]:
                attached[intf.segment].append((k, intf.addr(family).ip))  # type: ignore[union-attr]
    extra = [[net for net in served.get(n, []) if net.version == version] for n in names]
    nets = [s.net(family) if s.has(family) else None for s in segments]
    # (first address, end, segment) in address order; runs of these merge into prefixes
    spans = sorted((int(net.network_address), int(net.broadcast_address) + 1, s)
                   for s, net in enumerate(nets) if net is not None)
    served_nets = [net for lst in extra for net in lst]
    # a served network overlapping a link's subnet: merging could make two routes of the same prefix
    merge = not any(net.overlaps(seg_net) for net in served_nets for seg_net in _overlapping(spans, net, nets))
    bits = 32 if version == 4 else 128
    network = IPv4Network if version == 4 else IPv6Network
    made: dict[tuple[int, int], Any] = {}  # one object per prefix: ipaddress is slow to construct

    def make(block: tuple[int, int]) -> Any:
        net = made.get(block)
        if net is None:
            net = made[block] = network(block)
        return net

    def labels(start: int | None, first: list[tuple[int, str]]) -> tuple[list[int], list[tuple[Any, str]],
                                                                          dict[Any, int]]:
        """The search: per segment 0 (not reached) or k, reached through hops[k - 1] = (gateway,
        out interface), gateway None where directly attached; and the same per served network."""
        label = [0] * len(segments)
        hops: list[tuple[Any, str]] = []
        seen = bytearray(len(names))
        if start is not None:
            seen[start] = 1
        queue: list[tuple[int, int]] = []
        for seg, out in first:
            if not label[seg]:
                hops.append((None, out))  # directly attached: a route only in a per-interface table
                label[seg] = len(hops)
            for nb, address in attached[seg]:
                if not seen[nb]:
                    seen[nb] = 1
                    hops.append((address, out))
                    queue.append((nb, len(hops)))
        served_label: dict[Any, int] = {}
        head = 0
        while head < len(queue):
            node, lab = queue[head]
            head += 1
            for net in extra[node]:
                served_label.setdefault(net, lab)
            for seg in node_segments[node]:
                if not label[seg]:
                    label[seg] = lab  # every forwarder on it is queued now: no need to look again later
                    for nb, _ in attached[seg]:
                        if not seen[nb]:
                            seen[nb] = 1
                            queue.append((nb, lab))
        return label, hops, served_label

    def search(start: int | None, first: list[tuple[int, str]], direct: bool) -> list[tuple[Any, Any, str]]:
        """(destination, gateway, out interface) of every network reachable from `first`; those
        directly attached (gateway None) only if `direct`."""
        label, hops, served_label = labels(start, first)
        out_routes: list[tuple[Any, Any, str]] = []
        run_label, run_start, run_end = 0, 0, 0
        for lo, hi, seg in spans:
            lab = label[seg]
            if lab and not direct and hops[lab - 1][0] is None:
                lab = 0
            if merge and lab > 0 and lab == run_label and lo == run_end:
                run_end = hi
                continue
            if run_label > 0:
                out_routes += [(make(block), *hops[run_label - 1]) for block in _blocks(run_start, run_end, bits)]
            run_label, run_start, run_end = lab, lo, hi
        if run_label > 0:
            out_routes += [(make(block), *hops[run_label - 1]) for block in _blocks(run_start, run_end, bits)]
        for net, lab in sorted(served_label.items(), key=lambda kv: str(kv[0])):
            if lab and hops[lab - 1][0] is not None:
                out_routes.append((net, *hops[lab - 1]))
        return out_routes

    reach: dict[int, tuple[list[tuple[int, int]], list[Any]]] = {}

    def reached_from(f: int) -> tuple[list[tuple[int, int]], list[Any]]:
        """Everything forwarder `f` reaches, its own segments included: address runs, served networks."""
        if f not in reach:
            label, _, served_label = labels(f, [(seg, "") for seg in node_segments[f]])
            runs: list[tuple[int, int]] = []
            for lo, hi, seg in spans:
                if label[seg]:
                    if runs and runs[-1][1] == lo:
                        runs[-1] = (runs[-1][0], hi)
                    else:
                        runs.append((lo, hi))
            served_here = dict.fromkeys([*extra[f], *served_label])
            reach[f] = runs, sorted(served_here, key=str)
        return reach[f]

    def through_one(seg: int, out: str, direct: bool) -> list[tuple[Any, Any, str]]:
        """A host's search through one segment with one forwarder on it: everything that forwarder
        reaches but this segment goes through it. One search per forwarder, not per host: a
        router with 1000 single-homed hosts would otherwise search 1000 times."""
        (f, gw), = attached[seg]
        runs, served_here = reached_from(f)
        lo, hi = seg_span[seg]
        i = bisect.bisect_right(runs, (lo, float("inf"))) - 1
        if i >= 0 and runs[i][0] <= lo < runs[i][1]:
            runs = [*runs[:i], *((a, b) for a, b in ((runs[i][0], lo), (hi, runs[i][1])) if a < b), *runs[i + 1:]]
        found: list[tuple[Any, Any, str]] = [(nets[seg], None, out)] if direct else []
        for a, b in runs:
            found += [(make(block), gw, out) for block in _run_blocks(a, b)]
        return found + [(net, gw, out) for net in served_here]

    run_blocks: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def _run_blocks(a: int, b: int) -> list[tuple[int, int]]:
        if (a, b) not in run_blocks:
            run_blocks[(a, b)] = _blocks(a, b, bits)
        return run_blocks[(a, b)]

    seg_span = {seg: (lo, hi) for lo, hi, seg in spans}
    shared: dict[tuple[Any, ...], list[tuple[Any, Any, str]]] = {}

    def host_search(first: list[tuple[int, str]], direct: bool) -> list[tuple[Any, Any, str]]:
        if merge and len(first) == 1 and len(attached[first[0][0]]) == 1:
            return through_one(*first[0], direct)
        key = (*first, direct)
        if key not in shared:
            shared[key] = search(None, first, direct)
        return shared[key]

    for k, node in enumerate(names):
        mine = own[node]
        if not mine:
            continue
        first = [(i.segment, i.name) for i in mine]
        found = search(k, first, False) if forwards[k] else host_search(first, False)
        routes[node] += [Route(dest, gw, out) for dest, gw, out in found]
        if topo.nodes[node].kind == "host" and len(mine) > 1:
            for i, intf in enumerate(interfaces[node]):
                address = intf.addr(family)
                if address is None:
                    continue
                table = 100 + i
                rules[node].append(SourceRule(address.ip, table))
                routes[node] += [Route(dest, gw, out, table)
                                 for dest, gw, out in host_search([(intf.segment, intf.name)], True)]


def _blocks(start: int, end: int, bits: int) -> list[tuple[int, int]]:
    """The fewest aligned (address, prefix length) blocks that cover exactly [start, end)."""
    out = []
    while start < end:
        size = start & -start if start else 1 << bits
        while size > end - start:
            size >>= 1
        out.append((start, bits - size.bit_length() + 1))
        start += size
    return out


def _overlapping(spans: list[tuple[int, int, int]], net: Any, nets: list[Any]) -> list[Any]:
    """Subnets of segments (from `spans`, in address order) that overlap `net`."""
    lo, hi = int(net.network_address), int(net.broadcast_address) + 1
    i = bisect.bisect_left(spans, (lo, 0, 0))
    out = []
    j = max(0, i - 1)
    while j < len(spans) and spans[j][0] < hi:
        if spans[j][1] > lo:
            out.append(nets[spans[j][2]])
        j += 1
    return out
