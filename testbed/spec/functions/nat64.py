"""A stateful NAT64 gateway: tayga (stateless, RFC 7915) translating into a dynamic IPv4 pool, and a
NAT44 masquerade behind it, so IPv6-only hosts reach IPv4 servers (RFC 6146 behaviour)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from testbed.spec.names import IfName
from testbed.spec.nodebase import NodeBase

WELL_KNOWN_PREFIX = IPv6Network("64:ff9b::/96")
PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)  # RFC 6052 section 2.2


class Nat64(NodeBase):
    kind: Literal["nat64"]
    prefix: IPv6Network = Field(IPv6Network("2001:db8:64::/96"),
                                description="NAT64 prefix; 64:ff9b::/96 only where every IPv4 address is global")
    pool4: IPv4Network = Field(IPv4Network("192.168.255.0/24"),
                               description="tayga's dynamic IPv4 pool (masqueraded on the way out)")
    outside: IfName | None = Field(None, description="IPv4 interface traffic leaves by (default: the first)")
    implementation: Literal["tayga"] = "tayga"

    @field_validator("prefix")
    @classmethod
    def _length(cls, prefix: IPv6Network) -> IPv6Network:
        if prefix.prefixlen not in PREFIX_LENGTHS:
            raise PydanticCustomError("prefix", f"a NAT64 prefix is /32, /40, /48, /56, /64 or /96 (RFC 6052), "
                                                f"not /{prefix.prefixlen}")
        return prefix

    @model_validator(mode="after")
    def _pool(self) -> Nat64:
        if self.pool4.num_addresses < 4:
            raise PydanticCustomError("pool4", "pool4 needs at least 4 addresses")
        return self

    def served_networks(self) -> list[IPv6Network]:
        return [self.prefix]

    def tayga_address(self) -> IPv4Address:
        return self.pool4.network_address + 1

    def check(self, name: str, resolved: Any) -> list[tuple[tuple[str, ...], str]]:
        problems = []
        own = resolved.interfaces.get(name, [])
        v4 = [i.name for i in own if i.address is not None]
        if not any(i.address6 is not None for i in own):
            problems.append(((), "a nat64 node needs an IPv6 link (family: ipv6 or dual) on its inside"))
        if not v4:
            problems.append(((), "a nat64 node needs an IPv4 link on its outside"))
        elif self.outside is not None and self.outside not in v4:
            problems.append((("outside",), f"'{self.outside}' is not an IPv4 interface of '{name}' "
                                           f"(IPv4 interfaces: {', '.join(v4)})"))
        subnets = [s.subnet for s in resolved.segments if s.subnet is not None]
        if self.prefix == WELL_KNOWN_PREFIX:
            private = [str(s) for s in subnets if not s.is_global]
            if private:
                problems.append((("prefix",), f"the well-known prefix {WELL_KNOWN_PREFIX} must not translate "
                                              f"non-global IPv4 (RFC 6052 section 3.1), and this topology's IPv4 "
                                              f"subnets {', '.join(private[:3])} are not global: use a "
                                              f"network-specific prefix such as 2001:db8:64::/96, or global "
                                              f"addresses"))
        clash = [str(s) for s in subnets if s.overlaps(self.pool4)]
        if clash:
            problems.append((("pool4",), f"{self.pool4} overlaps the topology's {', '.join(clash)}"))
        return problems


MODEL = Nat64
