"""Flent-style metadata: kernel, tool versions, sysctls of every node."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from pathlib import Path

TOOLS = {"ip": ["ip", "-V"], "tc": ["tc", "-V"], "tcpdump": ["tcpdump", "--version"],
         "iperf3": ["iperf3", "--version"], "nft": ["nft", "--version"], "ping": ["ping", "-V"],
         "mptcpize": ["mptcpize", "--version"]}


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


@functools.cache
def tool_versions() -> dict[str, str | None]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(TOOLS)) as pool:
        versions = dict(zip(TOOLS, pool.map(_first_line, TOOLS.values()), strict=True))
    versions["python"] = platform.python_version()
    try:
        import mininet  # noqa: F401 - version only

        from testbed.emulation.mininet_import import mininet_modules

        net, _, _ = mininet_modules()
        versions["mininet"] = getattr(net, "VERSION", None)
    except ImportError:
        versions["mininet"] = None
    return versions


def host_info() -> dict:
    u = os.uname()
    return {"hostname": u.nodename, "kernel": u.release, "kernel_build": u.version, "machine": u.machine,
            "os": _os_release()}


def _os_release() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return None


# Named keys and subtrees only: `sysctl -a` walks every sysctl and costs ~50 ms per node.
SYSCTL_KEYS = ("net.mptcp", "net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
               "net.ipv4.tcp_no_metrics_save", "net.ipv4.tcp_ecn", "net.ipv4.tcp_sack", "net.ipv4.tcp_timestamps",
               "net.ipv4.ip_forward", "net.core.default_qdisc")


def node_sysctls(node) -> dict[str, str]:
    """net.mptcp.* and the TCP knobs that shape results, read in the node's namespace."""
    from testbed.emulation.nodeexec import run

    _, out = run(node, ["sysctl", *SYSCTL_KEYS], check=False)
    result = {}
    for line in out.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            result[key.strip()] = value.strip()
    return result
