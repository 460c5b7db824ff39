"""Topology models: nodes (hosts, routers, switches), links with impairments, addressing.

Inheritance follows containerlab/netlab habits: `defaults` apply to every host and router, then
`kinds.<kind>`, then the node's own fields (mappings merge, the more specific wins).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from testbed.spec.functions import FUNCTION_KINDS, FUNCTION_MODELS
from testbed.spec.model import Model
from testbed.spec.names import IfName, NodeName, RunName
from testbed.spec.nodebase import NodeBase
from testbed.spec.remote import RemoteHost
from testbed.spec.source import guest_image_path, suggest
from testbed.spec.units import Duration, Percent, Rate


class Impairment(Model):
    """What a link does to packets in one direction."""

    rate: Rate | None = None
    delay: Duration | None = None
    jitter: Duration | None = None
    loss: Percent | None = None
    queue: int | None = Field(None, ge=1, le=100_000,
                              description="queue length in packets (default: one bandwidth-delay product, at least 10)")

    def over(self, base: Impairment | None) -> Impairment:
        """This impairment's fields laid over `base`."""
        if base is None:
            return self
        # Field values directly: model_dump() would serialise the quantities back to text.
        return Impairment.model_construct(**{
            k: getattr(self, k) if getattr(self, k) is not None else getattr(base, k)
            for k in Impairment.model_fields})

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) in (None, 0) for f in ("rate", "delay", "jitter", "loss"))

    @model_validator(mode="after")
    def _jitter_needs_delay(self) -> Impairment:
        if self.jitter and not self.delay:
            raise PydanticCustomError("jitter", "jitter needs a delay to vary around")
        if self.jitter and self.delay and self.jitter > self.delay:
            raise PydanticCustomError("jitter", "jitter larger than the delay would need negative delays")
        return self


class LinkImpairment(Impairment):
    """Both directions, with optional per-direction overrides."""

    forward: Impairment | None = Field(None, description="first endpoint → second endpoint")
    reverse: Impairment | None = Field(None, description="second endpoint → first endpoint")

    def direction(self, forward: bool) -> Impairment:
        common = Impairment.model_construct(**{k: getattr(self, k) for k in Impairment.model_fields})
        override = self.forward if forward else self.reverse
        return override.over(common) if override else common


Family = Literal["ipv4", "ipv6", "dual"]


class LinkEnd(Model):
    node: NodeName
    interface: IfName | None = None
    address: IPv4Interface | None = None
    address6: IPv6Interface | None = None

    @model_validator(mode="before")
    @classmethod
    def _brief(cls, value: Any) -> Any:
        if isinstance(value, str):
            node, _, interface = value.partition(":")
            return {"node": node, "interface": interface or None}
        return value

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}" if self.interface else self.node


class Link(Model):
    endpoints: tuple[LinkEnd, LinkEnd]
    name: str | None = Field(None, description="label shown in graphs and reports, e.g. wifi")
    subnet: IPv4Network | None = None
    subnet6: IPv6Network | None = None
    family: Family | None = Field(None, description="address family of this link (default: addressing.family)")
    impairment: LinkImpairment | None = None
    mtu: int | None = Field(None, ge=576, le=9000)

    @model_validator(mode="before")
    @classmethod
    def _brief(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"endpoints": value}
        return value


GUEST_IMAGE = re.compile(r"^[A-Za-z0-9_.+/-]{1,200}$")



class Host(NodeBase):
    kind: Literal["host"]
    remote: RemoteHost | None = Field(None, description="run this host on a remote machine over SSH (its own "
                                                         "kernel, in a network namespace there) instead of in a "
                                                         "namespace here; its links become VXLAN tunnels")
    image: str | None = Field(None, description="run this host on a QEMU guest booted from this kernel image "
                                                "(linux-5.10, linux-6.1, linux-6.12, or the path of a built image "
                                                "directory) instead of in a network namespace; its links become "
                                                "TAP devices. Routers, switches and network functions stay "
                                                "namespaces")

    @field_validator("image")
    @classmethod
    def _image_name(cls, value: str | None) -> str | None:
        if value is not None and not GUEST_IMAGE.match(value):
            raise PydanticCustomError("image", f"'{value}' is not an image name: letters, digits, '.', '_', "
                                               "'+', '-' (or a path made of those and '/')")
        return guest_image_path(value)

    def check(self, name: str, resolved: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """A guest's image must be known (locations relative to this node); two guests cannot share a
        point-to-point link (each guest NIC's host side lives with its peer: a switch or a namespace).
        A remote host's machine must be in its inventory, and its links end in namespaces here."""
        if self.remote is not None:
            return self._check_remote(name, resolved)
        if self.image is None:
            return []
        from testbed.emulation.qemu import images  # lazily: the spec does not depend on the backend

        problems: list[tuple[tuple[str | int, ...], str]] = []
        if "/" in self.image:
            if not (Path(self.image) / images.MANIFEST).is_file():
                problems.append((("image",), f"no built guest image in {self.image} (no {images.MANIFEST})"))
        elif self.image not in images.names():
            problems.append((("image",), f"unknown guest image '{self.image}'{suggest(self.image, images.names())}"
                                         f" (known: {', '.join(images.names())})"))
        nodes = resolved.topology.nodes
        for intf in resolved.interfaces.get(name, []):
            if intf.peer is not None and getattr(nodes[intf.peer[0]], "image", None):
                problems.append((("image",), f"'{name}:{intf.name}' is linked directly to '{intf.peer[0]}', another "
                                             "QEMU guest: connect guests through a switch or a router"))
        return problems


    def _check_remote(self, name: str, resolved: Any) -> list[tuple[tuple[str | int, ...], str]]:
        assert self.remote is not None
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.image is not None:
            problems.append((("remote",), "a host runs on a QEMU guest (image) or on a remote machine, not both"))
        from testbed.errors import SpecError
        from testbed.provision.hosts import load_inventory  # lazily: only remote hosts need it

        path = Path(self.remote.inventory)
        if not path.is_file():
            problems.append((("remote", "inventory"), f"no inventory file {path}"))
        else:
            try:
                hosts = load_inventory(path).hosts
            except SpecError as exc:
                problems.append((("remote", "inventory"), f"{path}: {exc.problems[0].message}"))
            else:
                if self.remote.host not in hosts:
                    problems.append((("remote", "host"), f"no host '{self.remote.host}' in {path}"
                                                         f"{suggest(self.remote.host, list(hosts))}"))
        nodes = resolved.topology.nodes
        for intf in resolved.interfaces.get(name, []):
            if intf.peer is None:
                problems.append((("remote",), f"'{name}:{intf.name}' is on a switch: a remote host's links go to a "
                                              "router or host here (a tunnel ends in its peer's namespace)"))
            elif getattr(nodes[intf.peer[0]], "image", None) or getattr(nodes[intf.peer[0]], "remote", None):
                problems.append((("remote",), f"'{name}:{intf.name}' is linked directly to '{intf.peer[0]}', which "
                                              "is not a namespace here: put a router between them"))
        return problems


class Router(NodeBase):
    kind: Literal["router"]


class Switch(Model):
    kind: Literal["switch"]


Node = Annotated[Union[(Host, Router, Switch, *FUNCTION_MODELS)], Field(discriminator="kind")]  # noqa: UP007
Kind = Literal[("host", "router", "switch", *FUNCTION_KINDS)]  # type: ignore[valid-type]


class Addressing(Model):
    family: Family = Field("ipv4", description="address family of links that do not say")
    # 10.0.0.0/8 hands out the same first 256 /24s as the 10.0.0.0/16 it used to be, and 65536 of them
    # in all: a topology of thousands of links fits without an addressing section.
    ipv4: IPv4Network = Field(IPv4Network("10.0.0.0/8"), description="pool that link subnets are taken from")
    prefix: int = Field(24, ge=8, le=30, description="prefix length of each link subnet")
    ipv6: IPv6Network = Field(IPv6Network("2001:db8:1::/48"), description="pool that IPv6 link subnets come from")
    prefix6: int = Field(64, ge=48, le=126, description="prefix length of each IPv6 link subnet")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Topology(Model):
    name: RunName
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict, description="fields every host and router inherits")
    kinds: dict[Kind, dict[str, Any]] = Field(default_factory=dict, description="fields per node kind")
    nodes: dict[NodeName, Node] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    addressing: Addressing = Field(default_factory=Addressing)

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
            return data
        defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
        kinds = data.get("kinds") if isinstance(data.get("kinds"), dict) else {}
        nodes = {}
        for name, node in data["nodes"].items():
            if node is None:
                node = {"kind": "host"}
            if isinstance(node, dict):
                node = {"kind": "host", **node}
                kind = node.get("kind")
                if not isinstance(kind, str):
                    nodes[name] = node  # validation reports the bad kind
                    continue
                base = dict(defaults) if kind != "switch" else {}
                if isinstance(kinds.get(kind), dict):
                    base = _deep_merge(base, kinds[kind])
                node = _deep_merge(base, node)
            nodes[name] = node
        return {**data, "nodes": nodes}

    def node_kind(self, name: str) -> str:
        return self.nodes[name].kind
