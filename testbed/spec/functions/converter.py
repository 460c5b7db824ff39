"""The `converter` node kind: a Transport Converter (RFC 8803, 0-RTT TCP Convert Protocol).

Clients name the final server in a Connect TLV carried in the SYN (TCP Fast Open); the converter
opens a plain TCP connection to that server, answers with a Convert message (Extended TCP Header
TLV, or an Error TLV when the server cannot be reached) and then relays both ways. Towards clients
it listens with MPTCP (`mptcp_client_side`), towards servers it speaks plain TCP. Workloads go
through it with `via: <node>`. The node also forwards like a router.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from testbed.spec.nodebase import NodeBase
from testbed.spec.units import Duration

Loc = tuple[str | int, ...]

IANA_PORT = 5124  # "tcp-convert" (RFC 8803 section 7)

# RFC 8803 section 4.2.7 / IANA "Convert Errors": code -> name used in results and `expect_error`.
ERRORS: dict[int, str] = {
    0: "unsupported-version", 1: "malformed-message", 2: "unsupported-message", 3: "missing-cookie",
    32: "not-authorized", 33: "unsupported-tcp-option", 64: "resource-exceeded", 65: "network-failure",
    96: "connection-reset", 97: "destination-unreachable",
}


class Converter(NodeBase):
    kind: Literal["converter"]
    port: int = Field(IANA_PORT, ge=1, le=65535, description="TCP port of the Convert service (IANA: 5124)")
    mptcp_client_side: bool = Field(True, description="accept clients with MPTCP (the server side is plain TCP)")
    tfo: bool = Field(True, description="accept data in the SYN (TCP Fast Open): the Connect TLV costs no round trip")
    tfo_cookies: bool = Field(True, description="require a TFO cookie (RFC 7413); false: data in any SYN is "
                                                "accepted, so a client's first connection is 0-RTT too")
    connect_timeout: Duration = Field(10.0, gt=0, le=120,
                                      description="give up on a server after this long (Error TLV 97)")
    max_connections: int = Field(256, ge=1, le=4096,
                                 description="connections relayed at once; more get Error TLV 64")

    @model_validator(mode="after")
    def _mptcp_needs_mptcp(self) -> Converter:
        if self.mptcp_client_side and self.mptcp.stack == "tcp":
            raise PydanticCustomError("converter", "mptcp_client_side needs MPTCP in the node: drop "
                                                   "`mptcp: {stack: tcp}` or set mptcp_client_side: false")
        return self

    def check(self, name: str, resolved: Any) -> list[tuple[Loc, str]]:
        """A converter relays to servers: it needs an IPv4 link and a host it can reach."""
        return relay_check(name, resolved, "converter")


def relay_check(name: str, resolved: Any, what: str) -> list[tuple[Loc, str]]:
    """Problems of a relay node (converter, socks) that only the whole topology shows."""
    own = [i for i in resolved.interfaces.get(name, []) if i.address is not None]
    if not own:
        return [(("kind",), f"the {what} '{name}' has no IPv4 link: clients could not reach it")]
    if not reachable_hosts(name, resolved):
        return [(("kind",), f"the {what} '{name}' reaches no host: a {what} without a server has nothing to "
                            "relay to")]
    return []


def reachable_hosts(start: str, resolved: Any) -> set[str]:
    """Hosts reachable from `start` over IPv4 segments, forwarding only through non-host nodes."""
    nodes = resolved.topology.nodes
    members: dict[int, list[str]] = {}
    for node, lst in resolved.interfaces.items():
        for intf in lst:
            if intf.address is not None:
                members.setdefault(intf.segment, []).append(node)
    seen, hosts = {start}, set()
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for intf in resolved.interfaces.get(node, []):
            if intf.address is None:
                continue
            for other in members.get(intf.segment, []):
                if other in seen:
                    continue
                seen.add(other)
                if nodes[other].kind == "host":
                    hosts.add(other)
                else:
                    queue.append(other)
    return hosts


MODEL = Converter
