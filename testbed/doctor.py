"""What this machine can do: one fast probe per capability, and what each missing one disables.

Every probe that needs kernel state runs inside a throwaway network namespace (`unshare -n CMD`):
the namespace dies with the command, so nothing can be left behind, whatever happens. Probes in the
root namespace are read-only. The probes run concurrently; the whole doctor takes well under a second.

`testbed doctor` renders `checks()` with `render()` and exits 0 when `local_mode_ok()`.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Check:
    """One capability: found or not, what was found, and what is unavailable without it."""

    name: str
    ok: bool
    detail: str
    disables: str = ""  # empty when ok
    required: bool = False  # local mode needs it (netem and its fallback are alternatives: not required)


# Check names (stable: other modules and tests look checks up by name).
ROOT = "root"
NETNS = "network namespaces"
MPTCP = "MPTCP"
IP_MPTCP = "ip mptcp"
NETEM = "sch_netem"
HTB = "htb"
NFTABLES = "nftables"
NFQUEUE = "iptables NFQUEUE"
NETFILTERQUEUE = "netfilterqueue"
MININET = "mininet"
BRCTL = "bridge-utils"
TAYGA = "tayga"
DANTE = "danted"
IMAGES = "guest images"
QEMU = "qemu"
KVM = "kvm"
TCPDUMP = "tcpdump"
IPERF3 = "iperf3"
MPTCPIZE = "mptcpize"
PING = "ping"

LOCAL_MODE_REQUIRES = (ROOT, NETNS, MPTCP, IP_MPTCP, MININET, BRCTL, HTB)
FALLBACK_SHAPING = (NFTABLES, NFQUEUE, NETFILTERQUEUE)
NETEM_FALLBACK = "delay/jitter via userspace NFQUEUE delay line, loss via nftables"

_TIMEOUT = 5.0
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_MPTCP_PROC = Path("/proc/sys/net/mptcp")


# ---------------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class _Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stderr if the command failed and said something, else stdout; first line, trimmed."""
        body = self.err if self.rc != 0 and self.err.strip() else self.out or self.err
        lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
        return lines[0] if lines else ""


def _which(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories that a non-login or non-root PATH may lack."""
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(name, path=os.pathsep.join([path, *_SBIN]))


def _run(argv: Sequence[str], stdin: str | None = None, timeout: float = _TIMEOUT) -> _Result:
    """Run an argv list; never raises (missing binary: 127, timeout: 124)."""
    exe = _which(argv[0]) if "/" not in argv[0] else argv[0]
    if exe is None:
        return _Result(127, "", f"{argv[0]}: not found")
    try:
        proc = subprocess.run([exe, *argv[1:]], input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False, env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        return _Result(124, "", f"{argv[0]}: timed out after {timeout:g}s")
    except OSError as exc:
        return _Result(126, "", f"{argv[0]}: {exc.strerror or exc}")
    return _Result(proc.returncode, proc.stdout, proc.stderr)


def _in_throwaway_netns(argv: Sequence[str], stdin: str | None = None) -> _Result:
    """`argv` inside a fresh network namespace that disappears when the command exits."""
    exe = _which(argv[0])
    if exe is None:
        return _Result(127, "", f"{argv[0]}: not found")
    res = _run(["unshare", "--net", exe, *argv[1:]], stdin=stdin)
    if res.rc != 0 and res.err.startswith("unshare:"):
        why = res.err.strip().splitlines()[0].rsplit(": ", 1)[-1]
        return _Result(125, "", f"not probed: cannot create a network namespace ({why})")
    return res


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _version(argv: Sequence[str], pattern: str = r"(\d+(?:\.\d+)+\S*)") -> str | None:
    res = _run(argv)
    m = re.search(pattern, res.out + "\n" + res.err)
    return m.group(1) if m else None


def _tool(name: str, binary: str, version_argv: Sequence[str] | None, disables: str, package: str,
          required: bool = False, pattern: str = r"(\d+(?:\.\d+)+\S*)") -> Check:
    exe = _which(binary)
    if exe is None:
        return Check(name, False, f"{binary} not found (Debian/Ubuntu package {package})", disables, required)
    version = _version([exe, *version_argv], pattern) if version_argv else None
    return Check(name, True, f"{version} ({exe})" if version else exe, "", required)


# ---------------------------------------------------------------------------------------------------
# probes


def check_root() -> Check:
    uid = os.geteuid()
    if uid == 0:
        return Check(ROOT, True, "euid 0", "", True)
    return Check(ROOT, False, f"euid {uid}", "everything: run with sudo", True)


def check_netns() -> Check:
    disables = "emulated networks (Mininet nodes are network namespaces)"
    res = _in_throwaway_netns(["ip", "link", "add", "tbd0", "type", "veth", "peer", "name", "tbd1"])
    if res.rc == 0:
        return Check(NETNS, True, "unshare -n and veth pairs work", "", True)
    return Check(NETNS, False, res.text or f"unshare exited {res.rc}", disables, True)


def _read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def oot_summary(read: Callable[[str], str | None], release: str, dmesg: str, config: str | None) -> str | None:
    """The out-of-tree (v0.9x) stack as the v0.92 driver detects it, or None when it is not one."""
    from testbed.stacks import v092

    p = v092.probe(read, release, dmesg, config)
    if p is None:
        return None
    parts = [f"out-of-tree {p.release or 'v0.9x'} (RFC 6824 v0), kernel {release}",
             f"net.mptcp.mptcp_enabled={p.sysctls.get('mptcp_enabled', '?')}"]
    if p.snmp:
        parts.append(f"counters in {v092.SNMP}")
    parts.append(f"path managers: {', '.join(p.path_managers)}; schedulers: {', '.join(p.schedulers)}")
    return "; ".join(parts)


def check_mptcp() -> Check:
    release = os.uname().release
    if (_MPTCP_PROC / "enabled").exists():
        parts = [f"upstream, kernel {release}", f"net.mptcp.enabled={_read(_MPTCP_PROC / 'enabled')}"]
        for label, fname in (("schedulers", "available_schedulers"), ("path managers", "available_path_managers")):
            value = _read(_MPTCP_PROC / fname)
            if value:
                parts.append(f"{label}: {', '.join(value.split())}")
        return Check(MPTCP, True, "; ".join(parts), "", True)
    disables = "local mode (needs upstream MPTCP, Linux >= 5.6); remote and guest nodes still work"
    if (_MPTCP_PROC / "mptcp_enabled").exists():
        summary = oot_summary(_read_or_none, release, _run(["dmesg"], timeout=2.0).out,
                              _read_or_none(f"/boot/config-{release}"))
        return Check(MPTCP, False, summary or f"out-of-tree, kernel {release}", disables, True)
    return Check(MPTCP, False, f"none, kernel {release}", disables, True)


def check_ip_mptcp() -> Check:
    disables = "MPTCP endpoints and limits (ip mptcp endpoint/limits)"
    res = _run(["ip", "mptcp", "limits", "show"])
    if res.rc != 0:
        return Check(IP_MPTCP, False, res.text or f"ip mptcp exited {res.rc}", disables, True)
    version = _version(["ip", "-V"], r"iproute2-(\S+?),?(?:\s|$)")
    limits = " ".join(res.out.split())
    return Check(IP_MPTCP, True, f"iproute2 {version or '?'}; limits: {limits}", "", True)


def probe_netem() -> tuple[bool, str]:
    """Whether the netem qdisc can be attached (tried on `lo` of a throwaway namespace)."""
    res = _in_throwaway_netns(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
    if res.rc == 0:
        return True, "netem qdisc attaches"
    why = res.text.removeprefix("Error: ").rstrip(".") or f"tc exited {res.rc}"
    return False, f"not available (tc: {why})" if res.rc not in (125, 127) else why


def check_netem() -> Check:
    ok, detail = probe_netem()
    if ok:
        return Check(NETEM, True, detail)
    return Check(NETEM, False, f"{detail}; fallback: {NETEM_FALLBACK}",
                 "kernel delay/jitter/loss shaping (the fallback is used instead)")


def check_htb() -> Check:
    script = ("qdisc add dev lo root handle 1: htb default 10\n"
              "class add dev lo parent 1: classid 1:10 htb rate 10mbit\n")
    res = _in_throwaway_netns(["tc", "-batch", "-"], stdin=script)
    if res.rc == 0:
        return Check(HTB, True, "htb qdisc and class attach", "", True)
    return Check(HTB, False, res.text or f"tc exited {res.rc}", "rate limiting of links", True)


def check_nftables() -> Check:
    disables = "loss without netem, network functions that filter or NAT with nft"
    version = _version(["nft", "--version"], r"v(\d+(?:\.\d+)+)")
    if version is None:
        return Check(NFTABLES, False, "nft not found", disables)
    # The ruleset the fallback's random loss uses, then a listing.
    script = ("table inet tbdoctor {\n"
              "  chain c { type filter hook prerouting priority 0; numgen random mod 100 < 1 drop; }\n"
              "}\n"
              "list tables\n")
    res = _in_throwaway_netns(["nft", "-f", "-"], stdin=script)
    if res.rc == 0 and "tbdoctor" in res.out:
        return Check(NFTABLES, True, f"{version}; random-drop rule loads")
    return Check(NFTABLES, False, f"{version}; {res.text or f'nft exited {res.rc}'}", disables)


def check_nfqueue() -> Check:
    disables = "delay/jitter without netem (userspace delay line)"
    version = _version(["iptables", "--version"], r"v(\d+(?:\.\d+)+(?:\s*\([^)]*\))?)")
    if version is None:
        return Check(NFQUEUE, False, "iptables not found", disables)
    res = _in_throwaway_netns(["iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp",
                               "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"])
    if res.rc == 0:
        return Check(NFQUEUE, True, f"iptables {version}; NFQUEUE target accepted")
    return Check(NFQUEUE, False, f"iptables {version}; {res.text or f'iptables exited {res.rc}'}", disables)


def check_netfilterqueue() -> Check:
    disables = "delay/jitter without netem (userspace delay line)"
    try:
        importlib.import_module("netfilterqueue")
    except ImportError as exc:
        return Check(NETFILTERQUEUE, False, f"not importable: {exc}", disables)
    try:
        version = metadata.version("NetfilterQueue")
    except metadata.PackageNotFoundError:
        version = "?"
    return Check(NETFILTERQUEUE, True, f"{version} (Python {sys.version.split()[0]})")


def check_mininet() -> Check:
    disables = "local mode (the emulated network is built with Mininet's Python API)"
    try:
        # Removes setuptools' distutils shim first on Python < 3.12 (saves ~125 ms) and hushes
        # Mininet's distutils DeprecationWarning.
        from testbed.emulation.mininet_import import mininet_modules

        net, _, _ = mininet_modules()
    except Exception as exc:  # any import failure means "not usable"
        return Check(MININET, False, f"not importable by {sys.executable}: {exc}", disables, True)
    version = getattr(net, "VERSION", "?")
    if _which("mnexec") is None:
        return Check(MININET, False, f"{version}, but mnexec not found", disables, True)
    return Check(MININET, True, f"{version}", "", True)


def check_brctl() -> Check:
    return _tool(BRCTL, "brctl", ["--version"], "switch nodes (Mininet LinuxBridge)", "bridge-utils",
                 required=True)


def check_tayga() -> Check:
    return _tool(TAYGA, "tayga", None, "NAT64 network function", "tayga")


def check_dante() -> Check:
    return _tool(DANTE, "danted", ["-v"], "SOCKS5 proxy network function", "dante-server", pattern=r"v(\d+(?:\.\d+)+)")


def check_images() -> Check:
    """Guest boot images already built (building needs the network and ~70 MB per kernel)."""
    try:
        from testbed.emulation.qemu import images

        built = images.list_images()
    except Exception as exc:  # noqa: BLE001 - a broken cache is reported, not raised
        return Check(IMAGES, False, f"cannot read the image cache: {exc}", "guest-kernel implementations")
    if not built:
        return Check(IMAGES, False, "none built yet", "guest-kernel implementations until `testbed images` builds them")
    return Check(IMAGES, True, ", ".join(f"{i.name} ({i.release}{'' if i.mptcp else ', no MPTCP'})" for i in built))


def check_qemu() -> Check:
    return _tool(QEMU, "qemu-system-x86_64", ["--version"], "guest-kernel implementations (matrix)", "qemu-system-x86",
                 pattern=r"version (\S+)")


def check_kvm() -> Check:
    disables = "hardware acceleration: QEMU guests fall back to TCG (slower, still works)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Check(KVM, False, f"/dev/kvm: {exc.strerror or exc}", disables)
    try:
        api = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
    except OSError as exc:
        return Check(KVM, False, f"/dev/kvm opens but KVM_GET_API_VERSION fails: {exc.strerror}", disables)
    finally:
        os.close(fd)
    return Check(KVM, True, f"/dev/kvm read-write, API {api} (if guests fail to boot, use TCG)")


def check_tcpdump() -> Check:
    return _tool(TCPDUMP, "tcpdump", ["--version"], "packet captures", "tcpdump", pattern=r"tcpdump version (\S+)")


def check_iperf3() -> Check:
    return _tool(IPERF3, "iperf3", ["--version"], "iperf3 workloads", "iperf3", pattern=r"iperf (\S+)")


def check_mptcpize() -> Check:
    return _tool(MPTCPIZE, "mptcpize", None, "running unmodified TCP tools over MPTCP (iperf3 workloads over MPTCP)",
                 "mptcpize")


def check_ping() -> Check:
    return _tool(PING, "ping", ["-V"], "ping workloads and reachability checks", "iputils-ping",
                 pattern=r"iputils[- ](\S+)")


PROBES: tuple[Callable[[], Check], ...] = (
    check_root, check_netns, check_mptcp, check_ip_mptcp, check_netem, check_htb, check_nftables,
    check_nfqueue, check_netfilterqueue, check_mininet, check_brctl, check_tayga, check_dante, check_qemu,
    check_kvm, check_images, check_tcpdump, check_iperf3, check_mptcpize, check_ping,
)
_NAMES = (ROOT, NETNS, MPTCP, IP_MPTCP, NETEM, HTB, NFTABLES, NFQUEUE, NETFILTERQUEUE, MININET, BRCTL,
          TAYGA, DANTE, QEMU, KVM, IMAGES, TCPDUMP, IPERF3, MPTCPIZE, PING)


def checks() -> list[Check]:
    """Every capability, probed concurrently, in a fixed order."""

    def guarded(index: int) -> Check:
        try:
            return PROBES[index]()
        except Exception as exc:  # a broken probe is reported, not raised
            return Check(_NAMES[index], False, f"probe failed: {exc!r}", "unknown", _NAMES[index] in LOCAL_MODE_REQUIRES)

    with ThreadPoolExecutor(max_workers=len(PROBES)) as pool:
        return list(pool.map(guarded, range(len(PROBES))))


# ---------------------------------------------------------------------------------------------------
# interpretation


def by_name(checks: Iterable[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _ok(found: dict[str, Check], name: str) -> bool:
    check = found.get(name)
    return check is not None and check.ok


def fallback_shaping_ok(checks: Iterable[Check]) -> bool:
    found = by_name(checks)
    return all(_ok(found, n) for n in FALLBACK_SHAPING)


def missing_for_local_mode(checks: Iterable[Check]) -> list[str]:
    """Names of what local mode lacks (empty: local mode works); for messages with exit code 3."""
    found = by_name(checks)
    missing = [n for n in LOCAL_MODE_REQUIRES if not _ok(found, n)]
    if not _ok(found, NETEM) and not fallback_shaping_ok(found.values()):
        lacking = [n for n in FALLBACK_SHAPING if not _ok(found, n)]
        missing.append(f"{NETEM} (or its fallback: {', '.join(lacking)})")
    return missing


def local_mode_ok(checks: Iterable[Check]) -> bool:
    return not missing_for_local_mode(checks)


def shaping_backend_name(checks: Iterable[Check]) -> str:
    """"netem" when the kernel has it, else "fallback" (NFQUEUE delay line + nftables loss)."""
    return "netem" if _ok(by_name(checks), NETEM) else "fallback"


def render(checks: Sequence[Check], console: Console) -> None:
    """The capability table, then one line saying whether local mode works and with which shaping."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="testbed doctor", title_justify="left", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("needed", no_wrap=True)
    table.add_column("found")
    table.add_column("unavailable without it")
    for c in checks:
        if c.ok:
            mark = Text("ok", style="green")
        elif c.required:
            mark = Text("MISSING", style="bold red")
        else:
            mark = Text("missing", style="yellow")
        needed = "local mode" if c.required else ("shaping" if c.name in (NETEM, *FALLBACK_SHAPING) else "")
        table.add_row(mark, c.name, needed, Text(c.detail), Text(c.disables, style="dim" if c.ok else ""))
    console.print(table)
    missing = missing_for_local_mode(checks)
    if not missing:
        backend = shaping_backend_name(checks)
        how = "kernel netem" if backend == "netem" else NETEM_FALLBACK
        console.print(f"[green]local mode works[/green]; shaping backend: [bold]{backend}[/bold] ({how})")
    else:
        console.print(f"[bold red]local mode unavailable[/bold red]; missing: {'; '.join(missing)}")
