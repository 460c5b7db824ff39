"""Node kind → network-function implementation, imported only when a topology uses the kind."""

from __future__ import annotations

import importlib

from testbed.emulation.functions.base import NetworkFunction

IMPLEMENTATIONS: dict[str, str] = {
    # kind: "module:Class" under testbed.emulation.functions
    "nat64": "nat64:Nat64",
    "middlebox": "middlebox:Middlebox",
    "nat44": "nat44:Nat44",
    "lb": "lb:LoadBalancer",
    "converter": "converter:Converter",
    "socks": "socks:Socks",
}


def implementation(kind: str) -> type[NetworkFunction] | None:
    target = IMPLEMENTATIONS.get(kind)
    if target is None:
        return None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(f"testbed.emulation.functions.{module}"), cls)
