"""MPTCP v0.92 (multipath-tcp.org, out of tree, Linux 4.4, RFC 6824 "v0") on one node.

The same interface as testbed.stacks.upstream (check_supported, configure, add_endpoint,
remove_endpoint, set_backup), translated to what that kernel has. Names and formats are those of
the multipath-tcp/mptcp tree, branch mptcp_v0.92:

- net/mptcp/mptcp_ctrl.c, `mptcp_table`: the sysctls net.mptcp.mptcp_{enabled, version, checksum,
  debug, syn_retries, path_manager, scheduler}. It is registered for init_net only, so they are
  global to the machine (a guest or a remote host), not per network namespace as upstream's are.
- mptcp_ctrl.c, `mptcp_init()`: the kernel log line "MPTCP: Stable release v0.92".
- mptcp_ctrl.c, `mptcp_snmp_seq_show()`: /proc/net/mptcp_net/snmp, one "%-32s\\t%ld\\n" line per
  counter of `mptcp_snmp_list`; `mptcp_pm_seq_show()`: /proc/net/mptcp_net/mptcp, one line per
  MPTCP connection (tokens, addresses, state, number of subflows).
- net/mptcp/Kconfig: path managers default/fullmesh/ndiffports/binder, schedulers
  default/roundrobin/redundant.
- include/uapi/linux/if.h: IFF_NOMULTIPATH 0x80000, IFF_MPBACKUP 0x100000, the per-interface
  switches that the project's patched iproute2 sets with `ip link set dev X multipath
  on|off|backup`, and that the kernel shows in /sys/class/net/X/flags.

v0.92 has no endpoints and no limits: its path manager decides. A node's upstream-style
configuration is translated like this: with endpoints, the fullmesh path manager, the endpoints'
interfaces `multipath on` (`backup` for backup endpoints) and the node's other interfaces
`multipath off`, so that subflows and announcements use the same addresses as upstream would;
without endpoints, the default path manager (one subflow, nothing announced), as upstream with no
endpoints. Limits have no counterpart and are recorded as ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.collect.counters import parse_v0_snmp, with_upstream_names
from testbed.emulation.nodeexec import run, run_many
from testbed.errors import CapabilityError, RunError
from testbed.spec.resolve import Resolved
from testbed.spec.stack import Endpoint, StackConfig
from testbed.stacks.features import Features

PROC_SYS = "/proc/sys/net/mptcp"
SNMP = "/proc/net/mptcp_net/snmp"
CONNECTIONS = "/proc/net/mptcp_net/mptcp"
SYSCTLS = ("mptcp_enabled", "mptcp_version", "mptcp_checksum", "mptcp_debug", "mptcp_syn_retries",
           "mptcp_path_manager", "mptcp_scheduler")  # mptcp_ctrl.c mptcp_table
PATH_MANAGERS = ("default", "fullmesh", "ndiffports", "binder")  # net/mptcp/Kconfig
SCHEDULERS = ("default", "roundrobin", "redundant")
KCONFIG = {"CONFIG_MPTCP_FULLMESH": ("pm", "fullmesh"), "CONFIG_MPTCP_NDIFFPORTS": ("pm", "ndiffports"),
           "CONFIG_MPTCP_BINDER": ("pm", "binder"), "CONFIG_MPTCP_ROUNDROBIN": ("sched", "roundrobin"),
           "CONFIG_MPTCP_REDUNDANT": ("sched", "redundant")}
IFF_NOMULTIPATH = 0x80000
IFF_MPBACKUP = 0x100000
RELEASE = re.compile(r"MPTCP: Stable release (v0\.\d+)")

# Upstream sysctl names (what experiments write) → their v0.92 counterpart. Values of path_manager
# differ between the two (upstream: kernel/userspace), so only v0.92's own names are accepted.
FROM_UPSTREAM = {"enabled": "mptcp_enabled", "checksum_enabled": "mptcp_checksum",
                 "scheduler": "mptcp_scheduler", "path_manager": "mptcp_path_manager"}
# Upstream endpoint flags → what the interface becomes; fullmesh is the path manager itself.
FLAG_MODES = {"subflow": "on", "signal": "on", "fullmesh": "on", "backup": "backup"}
MODES = ("on", "off", "backup")


@dataclass(frozen=True)
class Probe:
    """What a v0.9x kernel shows: its release (None when the kernel log is not readable), kernel
    version, the current values of its net.mptcp sysctls, whether its counters file exists, and the
    path managers/schedulers its build has (from its Kconfig when readable, else the current ones)."""

    release: str | None
    kernel: str
    sysctls: dict[str, str]
    snmp: bool
    path_managers: tuple[str, ...] = ()
    schedulers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def release_from_dmesg(text: str) -> str | None:
    m = RELEASE.search(text)
    return m.group(1) if m else None


def built_options(config: str) -> dict[str, tuple[str, ...]]:
    """Path managers and schedulers a kernel .config builds (=y or =m), besides 'default'."""
    pms, scheds = ["default"], ["default"]
    for line in config.splitlines():
        name, _, value = line.strip().partition("=")
        if name in KCONFIG and value in ("y", "m"):
            kind, what = KCONFIG[name]
            (pms if kind == "pm" else scheds).append(what)
    return {"path_managers": tuple(pms), "schedulers": tuple(scheds)}


def probe(read: Callable[[str], str | None], kernel: str, dmesg: str = "", config: str | None = None) -> Probe | None:
    """Detect a v0.9x kernel through `read(path) -> text or None` (a local file, a guest's or a remote
    host's: the same code serves all three). None when it is not one."""
    if read(f"{PROC_SYS}/mptcp_enabled") is None:
        return None
    values = {n: v.strip() for n in SYSCTLS if (v := read(f"{PROC_SYS}/{n}")) is not None}
    built = built_options(config) if config else {}
    pms = built.get("path_managers") or tuple(dict.fromkeys(("default", values.get("mptcp_path_manager", "default"))))
    scheds = built.get("schedulers") or tuple(dict.fromkeys(("default", values.get("mptcp_scheduler", "default"))))
    return Probe(release_from_dmesg(dmesg), kernel, values, read(SNMP) is not None, pms, scheds)


def features(p: Probe) -> Features:
    m = re.match(r"(\d+)\.(\d+)", p.kernel)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return Features("v0.9x", p.kernel, version, frozenset(FLAG_MODES), p.schedulers, p.path_managers,
                    tuple(sorted(p.sysctls)), release=p.release)


def from_detected(found: dict) -> Features:
    """The features of a guest whose image's first boot recorded this (testbed.stacks.features.classify,
    flavour v0.9x): the same as probing it again."""
    return features(Probe(found.get("release"), found.get("kernel") or "", dict(found.get("sysctls") or {}),
                          bool(found.get("snmp")), tuple(found.get("path_managers") or ("default",)),
                          tuple(found.get("schedulers") or ("default",))))


def translate_sysctls(values: dict[str, str | int]) -> dict[str, str]:
    """Experiment sysctls (upstream or v0.92 short names) as v0.92 net.mptcp.* assignments."""
    out = {}
    for name, value in values.items():
        v0 = name if name in SYSCTLS else FROM_UPSTREAM.get(name)
        if v0 is None:
            raise CapabilityError(f"net.mptcp.{name} has no counterpart in MPTCP v0.92 (it has "
                                  f"{', '.join(SYSCTLS)})")
        out[f"net.mptcp.{v0}"] = str(value)
    return out


def check_supported(cfg: StackConfig, features: Features, node: str, where: str | None = None) -> None:
    """Refuse, before anything is built, what the v0.92 kernel cannot do (exit 3)."""
    on = where or "this kernel"
    if features.flavour != "v0.9x":
        raise CapabilityError(f"{node}: the v0.92 driver needs a multipath-tcp.org kernel; {on} has {features.flavour}")
    if cfg.stack == "tcp":
        return
    for ep in cfg.endpoints:
        missing = [f for f in ep.flags if f not in FLAG_MODES]
        if missing:
            raise CapabilityError(f"{node}: endpoint flag(s) {', '.join(missing)} have no counterpart in MPTCP "
                                  f"v0.92 on {on} (it has: {', '.join(FLAG_MODES)})")
        if ep.address is not None or ep.port is not None:
            raise CapabilityError(f"{node}: MPTCP v0.92 on {on} uses an interface's own addresses: an endpoint's "
                                  "address or port cannot be given")
    try:
        sysctls = translate_sysctls(cfg.sysctls)
    except CapabilityError as exc:
        raise CapabilityError(f"{node}: {exc} on {on}") from None
    for key, known in (("net.mptcp.mptcp_path_manager", features.path_managers),
                       ("net.mptcp.mptcp_scheduler", features.schedulers)):
        if key in sysctls and known and sysctls[key] not in known:
            raise CapabilityError(f"{node}: {key}={sysctls[key]} is not built into {on} (it has: {', '.join(known)})")


def plan(cfg: StackConfig, interfaces: list[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(sysctls, interface → multipath mode, ignored settings) for a node's configuration."""
    sysctls = {"net.mptcp.mptcp_enabled": "0" if cfg.stack == "tcp" else "1"}
    if cfg.stack == "tcp":
        return sysctls, {}, []
    given = translate_sysctls(cfg.sysctls)
    modes: dict[str, str] = {}
    if cfg.endpoints:
        sysctls["net.mptcp.mptcp_path_manager"] = "fullmesh"
        modes = dict.fromkeys(interfaces, "off")
        for ep in cfg.endpoints:
            modes[ep.interface] = FLAG_MODES["backup"] if "backup" in ep.flags else "on"
    else:
        sysctls["net.mptcp.mptcp_path_manager"] = "default"
    sysctls.update(given)  # an explicit path manager or scheduler wins
    ignored = ["limits (v0.92 has none: its path manager decides)"] if cfg.limits is not None else []
    return sysctls, modes, ignored


def link_argv(interface: str, mode: str) -> list[str]:
    if mode not in MODES:
        raise ValueError(f"multipath mode {mode!r}")
    return ["ip", "link", "set", "dev", interface, "multipath", mode]


def mode_of(flags: int) -> str:
    """An interface's multipath mode from its /sys/class/net/X/flags value."""
    if flags & IFF_NOMULTIPATH:
        return "off"
    return "backup" if flags & IFF_MPBACKUP else "on"


def read_mode(node: Any, interface: str) -> str:
    _, out = run(node, ["cat", f"/sys/class/net/{interface}/flags"])
    return mode_of(int(out.strip().split()[-1], 16))


def set_mode(node: Any, interface: str, mode: str) -> None:
    """`ip link set dev X multipath MODE` and check that the kernel took it (a stock iproute2 or kernel
    would fail or ignore it)."""
    run(node, link_argv(interface, mode))
    got = read_mode(node, interface)
    if got != mode:
        raise RunError(f"{node.name}: {interface} is multipath {got} after `multipath {mode}`")


def configure(node: Any, name: str, cfg: StackConfig, resolved: Resolved) -> dict:
    """Apply `cfg` on the node's (v0.92) kernel; returns what was applied, for the manifest."""
    interfaces = [i.name for i in resolved.interfaces.get(name, [])]
    sysctls, modes, ignored = plan(cfg, interfaces)
    run_many(node, [["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())]])
    for interface, mode in modes.items():
        set_mode(node, interface, mode)
    applied: dict[str, Any] = {"stack": cfg.stack, "driver": "v0.92", "sysctls": sysctls,
                               "multipath": modes, "endpoints": []}
    if ignored:
        applied["ignored"] = ignored
    return applied


def add_endpoint(node: Any, name: str, ep: Endpoint, resolved: Resolved) -> None:
    set_mode(node, ep.interface, FLAG_MODES["backup"] if "backup" in ep.flags else "on")


def remove_endpoint(node: Any, name: str, interface: str, resolved: Resolved) -> None:
    """The fullmesh path manager sends REMOVE_ADDR and closes the interface's subflows."""
    set_mode(node, interface, "off")


def set_backup(node: Any, name: str, interface: str, backup: bool, resolved: Resolved) -> None:
    """v0.92 signals the change with an MP_PRIO on the interface's subflows."""
    set_mode(node, interface, "backup" if backup else "on")


def counters(node: Any) -> dict[str, int]:
    """The node's /proc/net/mptcp_net/snmp (MPTCP* names) plus the upstream names of the counters
    that count the same events (testbed.collect.counters.V0_AS_UPSTREAM)."""
    _, out = run(node, ["cat", SNMP])
    return with_upstream_names(parse_v0_snmp(out))


def _addr4(hexa: str) -> str:
    # The kernel prints the __be32 address as a host-order u32 ("%08X"): on little-endian machines
    # (every target of this kernel we know of) the bytes come out reversed, as in /proc/net/tcp.
    return ".".join(str(b) for b in bytes.fromhex(hexa)[::-1])


def connections(text: str) -> list[dict[str, Any]]:
    """Parse /proc/net/mptcp_net/mptcp: one dict per MPTCP connection (IPv4 addresses decoded)."""
    out = []
    for line in text.splitlines()[1:]:  # the first line is the header
        words = line.split()
        if len(words) < 10 or not words[0].endswith(":"):
            continue
        _, loc_tok, rem_tok, v6, local, remote, state, subflows, queues, inode = words[:10]
        (laddr, lport), (raddr, rport) = local.rsplit(":", 1), remote.rsplit(":", 1)
        tx, _, rx = queues.partition(":")
        out.append({"local_token": loc_tok, "remote_token": rem_tok, "ipv6": v6 == "1",
                    "local": _addr4(laddr) if v6 == "0" else laddr, "local_port": int(lport, 16),
                    "remote": _addr4(raddr) if v6 == "0" else raddr, "remote_port": int(rport, 16),
                    "state": int(state, 16), "subflows": int(subflows, 16), "tx_queue": int(tx, 16),
                    "rx_queue": int(rx, 16), "inode": int(inode)})
    return out
