"""Per-node MPTCP configuration as users write it (in a topology node or an experiment's `stacks`)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from testbed.spec.model import Model
from testbed.spec.names import IfName
from testbed.spec.remote import RemoteHost
from testbed.spec.source import guest_image_path, suggest

EndpointFlag = Literal["subflow", "signal", "backup", "fullmesh", "laminar"]

# net.mptcp.* sysctls known to upstream Linux; unknown names are refused with a suggestion.
MPTCP_SYSCTLS = ("enabled", "add_addr_timeout", "allow_join_initial_addr_port", "checksum_enabled",
                 "close_timeout", "pm_type", "path_manager", "scheduler", "stale_loss_cnt",
                 "blackhole_timeout", "syn_retrans_before_tcp_fallback",
                 # MPTCP v0.92's own (testbed.stacks.v092); refused on upstream kernels, which lack them
                 "mptcp_enabled", "mptcp_checksum", "mptcp_path_manager", "mptcp_scheduler", "mptcp_syn_retries",
                 "mptcp_version", "mptcp_debug")


class Limits(Model):
    subflows: int | None = Field(None, ge=0, le=8, description="max extra subflows per connection")
    add_addr_accepted: int | None = Field(None, ge=0, le=8, description="max ADD_ADDRs acted on")


class Endpoint(Model):
    """An `ip mptcp endpoint`: the address of `interface` (or an explicit one) with flags."""

    interface: IfName
    address: IPv4Address | IPv6Address | None = None
    flags: list[EndpointFlag] = Field(default_factory=lambda: ["subflow"])
    port: int | None = Field(None, ge=1, le=65535, description="signal endpoints only: announce this port")
    id: int | None = Field(None, ge=1, le=255)

    @field_validator("flags")
    @classmethod
    def _flags(cls, flags: list[str]) -> list[str]:
        if "fullmesh" in flags and "signal" in flags:
            raise PydanticCustomError("flags", "'fullmesh' cannot be combined with 'signal'")
        if len(set(flags)) != len(flags):
            raise PydanticCustomError("flags", "a flag is listed twice")
        return flags


class StackConfig(Model):
    """How one node speaks MPTCP. `stack: tcp` makes the node plain TCP (net.mptcp.enabled=0)."""

    stack: Literal["upstream", "tcp"] = "upstream"
    limits: Limits | None = None
    endpoints: list[Endpoint] = Field(default_factory=list)
    sysctls: dict[str, str | int] = Field(default_factory=dict,
                                          description="net.mptcp.* sysctls by short name, e.g. scheduler")
    guest: str | None = Field(None, description="run this host on a QEMU guest booted from this image (as the "
                                                "topology's `image:`, which it overrides); how the matrix puts an "
                                                "implementation's kernel on a node")

    remote: RemoteHost | None = Field(None, description="run this host on a remote machine over SSH (as the "
                                                         "topology's `remote:`, which it overrides); how the matrix "
                                                         "puts an ssh implementation on a node")

    @field_validator("guest")
    @classmethod
    def _guest_path(cls, value: str | None) -> str | None:
        return guest_image_path(value)

    @field_validator("sysctls")
    @classmethod
    def _known(cls, values: dict[str, str | int]) -> dict[str, str | int]:
        for name in values:
            short = name.removeprefix("net.mptcp.")
            if short not in MPTCP_SYSCTLS:
                raise PydanticCustomError("sysctl", f"unknown MPTCP sysctl '{name}'{suggest(short, MPTCP_SYSCTLS)}")
        return {k.removeprefix("net.mptcp."): v for k, v in values.items()}
