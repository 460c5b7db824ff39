"""Upstream Linux MPTCP (RFC 8684) on one node: enable/disable, limits, endpoints, sysctls."""

from __future__ import annotations

from typing import Any

from testbed.emulation.nodeexec import run, run_many
from testbed.errors import CapabilityError
from testbed.spec.resolve import Resolved
from testbed.spec.stack import Endpoint, StackConfig
from testbed.stacks.features import Features


def endpoint_argv(ep: Endpoint, address: str, verb: str = "add") -> list[str]:
    argv = ["ip", "mptcp", "endpoint", verb, address, "dev", ep.interface]
    if ep.id is not None:
        argv += ["id", str(ep.id)]
    if ep.port is not None:
        argv += ["port", str(ep.port)]
    return argv + list(ep.flags)


def endpoint_address(ep: Endpoint, resolved: Resolved, node: str) -> str:
    if ep.address is not None:
        return str(ep.address)
    return str(resolved.interface(node, ep.interface).primary)


def check_supported(cfg: StackConfig, features: Features, node: str, where: str | None = None) -> None:
    """Refuse, before anything is built, what this kernel or iproute2 cannot do (exit 3). `where` names
    another kernel than this machine's (a QEMU guest's image), whose `features` come from its release."""
    if cfg.stack == "upstream" and features.flavour != "upstream":
        if where is not None:
            has = "no MPTCP (built without CONFIG_MPTCP)" if features.flavour == "none" else features.flavour
            raise CapabilityError(f"{node}: needs upstream Linux MPTCP, but {where} has {has}: "
                                  f"set stack: tcp for '{node}' or choose another image")
        raise CapabilityError(f"{node}: needs upstream Linux MPTCP; this kernel has {features.flavour}")
    if cfg.stack == "tcp":
        return  # a plain-TCP node gets no endpoints, limits or MPTCP sysctls: nothing else to check
    for ep in cfg.endpoints:
        missing = [f for f in ep.flags if f not in features.endpoint_flags]
        if missing:
            by = f"{where} (or iproute2 here)" if where else "this kernel/iproute2"
            raise CapabilityError(f"{node}: endpoint flag(s) {', '.join(missing)} not supported by {by} "
                                  f"(supported: {', '.join(sorted(features.endpoint_flags))})")
    for name in cfg.sysctls:
        if name not in features.sysctls:
            raise CapabilityError(f"{node}: sysctl net.mptcp.{name} does not exist on kernel {features.kernel}")


def configure(node: Any, name: str, cfg: StackConfig, resolved: Resolved) -> dict:
    """Apply `cfg` in the node's namespace; returns what was applied, for the manifest."""
    if not getattr(node, "has_mptcp", True):  # a guest kernel built without MPTCP: plain TCP is all it does
        return {"stack": cfg.stack, "sysctls": {}, "endpoints": [], "note": "kernel without MPTCP"}
    sysctls = {"net.mptcp.enabled": "0" if cfg.stack == "tcp" else "1"}
    if cfg.stack == "upstream":  # a plain-TCP node only has MPTCP switched off
        sysctls.update({f"net.mptcp.{k}": str(v) for k, v in cfg.sysctls.items()})
    commands = [["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())]]
    applied: dict[str, Any] = {"stack": cfg.stack, "sysctls": sysctls, "endpoints": []}
    if cfg.stack == "upstream":
        if cfg.limits is not None:
            argv = ["ip", "mptcp", "limits", "set"]
            if cfg.limits.subflows is not None:
                argv += ["subflows", str(cfg.limits.subflows)]
            if cfg.limits.add_addr_accepted is not None:
                argv += ["add_addr_accepted", str(cfg.limits.add_addr_accepted)]
            commands.append(argv)
        for ep in cfg.endpoints:
            argv = endpoint_argv(ep, endpoint_address(ep, resolved, name))
            commands.append(argv)
            applied["endpoints"].append(argv[4:])
    run_many(node, commands)
    if cfg.stack == "upstream":
        _, limits = run(node, ["ip", "mptcp", "limits", "show"])
        applied["limits"] = limits.strip()
    return applied


def add_endpoint(node: Any, name: str, ep: Endpoint, resolved: Resolved) -> None:
    run(node, endpoint_argv(ep, endpoint_address(ep, resolved, name)))


def remove_endpoint(node: Any, name: str, interface: str, resolved: Resolved) -> None:
    address = str(resolved.interface(name, interface).primary)
    endpoint_id = _endpoint_id(node, address)
    run(node, ["ip", "mptcp", "endpoint", "delete", "id", endpoint_id])


def set_backup(node: Any, name: str, interface: str, backup: bool, resolved: Resolved) -> None:
    """MP_PRIO: change the endpoint's backup flag; the kernel signals it on existing subflows.

    An interface without an endpoint gets one (flagged backup only), so the initial subflow's
    address can be marked too."""
    address = str(resolved.interface(name, interface).primary)
    if _endpoint_id(node, address, required=False) is None:
        run(node, ["ip", "mptcp", "endpoint", "add", address, "dev", interface])
    run(node, ["ip", "mptcp", "endpoint", "change", address, "backup" if backup else "nobackup"])


def _endpoint_id(node: Any, address: str, required: bool = True) -> str | None:
    _, out = run(node, ["ip", "mptcp", "endpoint", "show"])
    for line in out.splitlines():
        words = line.split()
        if words and words[0] == address and "id" in words:
            return words[words.index("id") + 1]
    if required:
        raise CapabilityError(f"{node.name}: no MPTCP endpoint for {address}")
    return None
