"""The `lb` node kind: a stateless layer-4 load balancer with direct server return.

Each packet to `virtual_address:port` goes to the backend chosen by a hash of its `hash` fields
(the 5-tuple by default); nothing is remembered per connection, so a new MPTCP subflow (another
source address or port) may land on another backend. The backends answer from the virtual address
themselves (it is added to their loopback), so they must share a link or switch with the balancer.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from testbed.spec.names import NodeName
from testbed.spec.nodebase import NodeBase
from testbed.spec.source import suggest

Loc = tuple[str | int, ...]
HashField = Literal["saddr", "sport", "daddr", "dport"]


class LoadBalancer(NodeBase):
    kind: Literal["lb"]
    backends: list[NodeName] = Field(description="hosts that serve the virtual address, in hash order")
    virtual_address: IPv4Address | None = Field(
        None, description="address the balancer answers for (default: its first interface not facing a backend)")
    port: int = Field(5201, ge=1, le=65535, description="TCP port balanced; other traffic is routed as usual")
    hash: list[HashField] = Field(default_factory=lambda: ["saddr", "sport", "daddr", "dport"],
                                  description="packet fields hashed to pick a backend (TCP is implied)")
    seed: int = Field(0, ge=0, le=0xFFFFFFFF, description="hash seed: the same tuple picks the same backend every run")

    @field_validator("backends", "hash")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if not values:
            raise PydanticCustomError("empty", "needs at least one entry")
        if len(values) > 64:
            raise PydanticCustomError("many", f"at most 64 entries, not {len(values)}")
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise PydanticCustomError("unique", f"listed twice: {', '.join(twice)}")
        return values

    def check(self, name: str, resolved: Any) -> list[tuple[Loc, str]]:
        """Cross-references against the resolved topology (locations relative to this node)."""
        problems: list[tuple[Loc, str]] = []
        nodes = resolved.topology.nodes
        hosts = [n for n, s in nodes.items() if s.kind == "host"]
        own = {i.segment: i for i in resolved.interfaces.get(name, [])}
        for i, backend in enumerate(self.backends):
            if backend not in nodes:
                problems.append((("backends", i), f"no node named '{backend}'{suggest(backend, hosts)}"))
            elif nodes[backend].kind != "host":
                problems.append((("backends", i), f"'{backend}' is a {nodes[backend].kind}; backends are hosts"))
            elif not any(b.segment in own and b.address is not None and own[b.segment].address is not None
                         for b in resolved.interfaces[backend]):
                problems.append((("backends", i), f"'{backend}' shares no link or switch with '{name}': direct "
                                                  "server return needs every backend on an IPv4 segment of the "
                                                  "balancer"))
        if problems:
            return problems
        facing = self.backend_segments(name, resolved)
        front = [i for i in resolved.interfaces.get(name, []) if i.segment not in facing and i.address is not None]
        if self.virtual_address is None:
            if not front:
                problems.append((("backends",), f"no IPv4 interface of '{name}' faces away from the backends: add one "
                                                "towards the clients, or give virtual_address"))
            return problems
        vip = self.virtual_address
        for seg in resolved.segments:
            if seg.subnet is not None and vip in seg.subnet and vip in (seg.subnet.network_address,
                                                                         seg.subnet.broadcast_address):
                problems.append((("virtual_address",), f"{vip} is the network or broadcast address of {seg.subnet}"))
            elif seg.subnet is not None and vip in seg.subnet and seg.index in facing:
                problems.append((("virtual_address",), f"{vip} is inside {seg.subnet}, a subnet facing the backends"))
        for node, lst in resolved.interfaces.items():
            for intf in lst:
                if node != name and intf.address is not None and intf.address.ip == vip:
                    problems.append((("virtual_address",), f"{vip} is already the address of {intf.ref}"))
        return problems

    def served_networks(self) -> list[IPv4Network]:
        """A given virtual address is routed to the balancer from everywhere (a /32)."""
        return [IPv4Network(self.virtual_address)] if self.virtual_address is not None else []

    def backend_segments(self, name: str, resolved: Any) -> set[int]:
        """Segments the balancer shares with a backend."""
        backends = {i.segment for b in self.backends for i in resolved.interfaces.get(b, [])}
        return {i.segment for i in resolved.interfaces.get(name, []) if i.segment in backends}

    def vip(self, name: str, resolved: Any) -> IPv4Address:
        """The virtual address: given, or that of the first interface not facing a backend."""
        if self.virtual_address is not None:
            return self.virtual_address
        facing = self.backend_segments(name, resolved)
        intf = next(i for i in resolved.interfaces[name] if i.segment not in facing and i.address is not None)
        return intf.address.ip


MODEL = LoadBalancer
