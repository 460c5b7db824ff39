"""The `nat44` node kind: an IPv4 NAT (masquerade) between an inside and an `outside` interface.

Connections leaving by `outside` get the outside interface's address as their source (and, with
`randomize_ports`, a random source port); connections opened from the outside are dropped unless
`block_inbound` is off. Every other interface is inside. The node forwards like a router.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from testbed.spec.names import IfName
from testbed.spec.nodebase import NodeBase
from testbed.spec.source import suggest

Loc = tuple[str | int, ...]


class Nat44(NodeBase):
    kind: Literal["nat44"]
    outside: IfName = Field(description="the public side: connections leaving by this interface are masqueraded")
    randomize_ports: bool = Field(False, description="translate source ports at random (masquerade fully-random) "
                                                     "instead of keeping them where possible")
    block_inbound: bool = Field(True, description="drop connections opened from the outside, as a home NAT does")

    def check(self, name: str, resolved: Any) -> list[tuple[Loc, str]]:
        """Cross-references against the resolved topology (locations relative to this node)."""
        names = [i.name for i in resolved.interfaces.get(name, [])]
        if self.outside not in names:
            return [(("outside",), f"'{name}' has no interface '{self.outside}'{suggest(self.outside, names)}"
                                   f" (it has: {', '.join(names) or 'none'})")]
        if len(names) < 2:
            return [(("outside",), f"'{name}' has only its outside interface: a NAT needs an inside one too")]
        return []

    def outside_address(self, name: str, resolved: Any) -> str:
        return str(resolved.interface(name, self.outside).address.ip)


MODEL = Nat44
