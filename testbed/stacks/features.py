"""What the kernel (and iproute2) here can do for MPTCP: flavour, version, feature set."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Features:
    flavour: str  # "upstream" | "v0.9x" | "none"
    kernel: str
    version: tuple[int, int]
    endpoint_flags: frozenset[str] = field(default_factory=frozenset)
    schedulers: tuple[str, ...] = ()
    path_managers: tuple[str, ...] = ()
    sysctls: tuple[str, ...] = ()
    release: str | None = None  # an out-of-tree stack's own release ("v0.92"), from the kernel log

    def as_dict(self) -> dict:
        out = {"flavour": self.flavour, "kernel": self.kernel, "version": ".".join(map(str, self.version)),
               "endpoint_flags": sorted(self.endpoint_flags), "schedulers": list(self.schedulers),
               "path_managers": list(self.path_managers)}
        if self.release is not None:
            out["release"] = self.release
        return out


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@functools.cache
def iproute2_endpoint_flags() -> frozenset[str]:
    try:
        out = subprocess.run(["ip", "mptcp", "help"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    text = out.stdout + out.stderr
    m = re.search(r"FLAG\s*:=\s*\[([^\]]*)\]", text)
    return frozenset(f.strip() for f in m.group(1).split("|")) if m else frozenset()


def _dmesg() -> str:
    try:
        return subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


@functools.cache
def detect() -> Features:
    release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    base = Path("/proc/sys/net/mptcp")
    if (base / "enabled").exists():
        flags = set(iproute2_endpoint_flags())
        if version < (6, 18):
            flags.discard("laminar")  # the kernel learnt 'laminar' endpoints in 6.18
        return Features("upstream", release, version, frozenset(flags),
                        tuple(_read(base / "available_schedulers").split()),
                        tuple(_read(base / "available_path_managers").split()),
                        tuple(sorted(p.name for p in base.iterdir())))
    if (base / "mptcp_enabled").exists():
        from testbed.stacks import v092

        return v092.features(v092.probe(lambda p: _read(Path(p)) if Path(p).exists() else None, release,
                                        _dmesg(), _read(Path(f"/boot/config-{release}")) or None)
                             or v092.Probe(None, release, {}, False))
    return Features("none", release, version)


PROC_MPTCP = "/proc/sys/net/mptcp"


def classify_paths() -> list[str]:
    """The files classify() reads (a guest reads them in one round trip)."""
    from testbed.stacks import v092

    return [f"{PROC_MPTCP}/enabled", *(f"{v092.PROC_SYS}/{n}" for n in v092.SYSCTLS), v092.SNMP]


def classify(files: Mapping[str, str | None], kernel: str, dmesg: str = "", config: str | None = None) -> dict:
    """Which MPTCP another kernel has, from its files (path → text, None when absent: what
    classify_paths() names) and kernel log: upstream (net.mptcp.enabled exists), the out-of-tree
    v0.9x stack (net.mptcp.mptcp_enabled, testbed.stacks.v092.probe; its release from the log line
    "MPTCP: Stable release v0.92"), or none. A JSON-able record, kept in a guest image's manifest."""
    from testbed.stacks import v092

    if files.get(f"{PROC_MPTCP}/enabled") is not None:
        return {"flavour": "upstream", "kernel": kernel, "evidence": f"{PROC_MPTCP}/enabled"}
    p = v092.probe(files.get, kernel, dmesg, config)
    release = v092.release_from_dmesg(dmesg)
    if p is None and release is None:
        return {"flavour": "none", "kernel": kernel,
                "evidence": f"neither {PROC_MPTCP}/enabled nor {v092.PROC_SYS}/mptcp_enabled, no v0.9x log line"}
    found: dict = {"flavour": "v0.9x", "kernel": kernel, "release": release,
                   "evidence": " and ".join(([f"{v092.PROC_SYS}/mptcp_enabled"] if p else [])
                                            + ([f"kernel log: MPTCP: Stable release {release}"] if release else []))}
    if p is not None:
        found.update(sysctls=p.sysctls, snmp=p.snmp, path_managers=list(p.path_managers),
                     schedulers=list(p.schedulers))
    return found


# What a guest kernel has, judged from its release without booting it: net.mptcp sysctls and endpoint
# flags by the upstream release that first had them (the releases testbed/matrix/features.py cites).
SYSCTL_SINCE: dict[str, tuple[int, int]] = {
    "enabled": (5, 6), "add_addr_timeout": (5, 10), "checksum_enabled": (5, 14),
    "allow_join_initial_addr_port": (5, 14), "stale_loss_cnt": (5, 15), "pm_type": (5, 19), "scheduler": (6, 6),
    "close_timeout": (6, 8), "blackhole_timeout": (6, 12), "syn_retrans_before_tcp_fallback": (6, 12),
    "path_manager": (6, 15),
}
FLAG_SINCE: dict[str, tuple[int, int]] = {"subflow": (5, 7), "signal": (5, 7), "backup": (5, 7),
                                          "fullmesh": (5, 15), "laminar": (6, 18)}


def for_kernel(release: str, mptcp: bool) -> Features:
    """The feature set of another kernel (a QEMU guest's): `mptcp` says whether it was built with
    CONFIG_MPTCP; flags are those iproute2 here knows and the release has."""
    m = re.match(r"(\d+)\.(\d+)", release)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not mptcp:
        return Features("none", release, version)
    flags = frozenset(f for f in iproute2_endpoint_flags() if FLAG_SINCE.get(f, (99, 0)) <= version)
    return Features("upstream", release, version, flags,
                    sysctls=tuple(sorted(k for k, since in SYSCTL_SINCE.items() if since <= version)))
