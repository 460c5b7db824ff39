"""The `socks` node kind: a SOCKS5 proxy (RFC 1928), run by a real implementation (Dante's danted).

Clients reach it with MPTCP (`mptcp_client_side`: danted runs under `mptcpize`, so its sockets are
MPTCP; towards a plain-TCP server they fall back to TCP, which the socks node's counters show).
Only CONNECT without authentication is offered. Workloads go through it with `via: <node>`.
The node also forwards like a router.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from testbed.spec.functions.converter import Loc, relay_check
from testbed.spec.nodebase import NodeBase
from testbed.spec.units import Duration

# RFC 1928 section 6, REP field: code -> name used in results and `expect_error`.
REPLIES: dict[int, str] = {
    1: "general-failure", 2: "not-allowed", 3: "network-unreachable", 4: "host-unreachable",
    5: "connection-refused", 6: "ttl-expired", 7: "command-not-supported", 8: "address-type-not-supported",
}


class Socks(NodeBase):
    kind: Literal["socks"]
    port: int = Field(1080, ge=1, le=65535, description="TCP port the proxy listens on")
    implementation: Literal["dante"] = Field("dante", description="the SOCKS server run (Debian package "
                                                                  "dante-server)")
    mptcp_client_side: bool = Field(True, description="accept clients with MPTCP (danted under mptcpize)")
    connect_timeout: Duration = Field(10.0, gt=0, le=120,
                                      description="danted's timeout.connect: give up on a server after this long")

    @model_validator(mode="after")
    def _mptcp_needs_mptcp(self) -> Socks:
        if self.mptcp_client_side and self.mptcp.stack == "tcp":
            raise PydanticCustomError("socks", "mptcp_client_side needs MPTCP in the node: drop "
                                               "`mptcp: {stack: tcp}` or set mptcp_client_side: false")
        return self

    def check(self, name: str, resolved: Any) -> list[tuple[Loc, str]]:
        """A proxy relays to servers: it needs an IPv4 link and a host it can reach."""
        return relay_check(name, resolved, "socks proxy")


MODEL = Socks
