"""Shared fixtures: root detection and a leak check around every test that builds networks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: network namespaces and veth pairs")
OUR_LINK = re.compile(r"^tb[0-9a-f]{6}")
OUR_PROCS = ("tcpdump", "delayline.py", "agent.py", "mangler.py", "convertd.py", "danted", "tayga", "qemu-system", "mnexec",
             "iperf3", "ping")


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def our_processes() -> set[str]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p in cmdline for p in OUR_PROCS) and "pytest" not in cmdline:
            found.add(f"{entry}:{cmdline.strip()[:80]}")
    return found


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves interfaces, named namespaces or processes of ours behind."""
    before_links, before_ns, before_procs = links(), namespaces(), our_processes()
    yield
    leaked_links = {name for name in links() - before_links}
    leaked_ns = namespaces() - before_ns
    leaked_procs = {p for p in our_processes() - before_procs}
    assert not leaked_links, f"interfaces left behind: {leaked_links}"
    assert not leaked_ns, f"namespaces left behind: {leaked_ns}"
    assert not leaked_procs, f"processes left behind: {leaked_procs}"


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=kwargs.pop("cwd", ROOT), **kwargs)


@pytest.fixture
def ssh_hosts(tmp_path, no_leaks):
    """A factory: `ssh_hosts(2)` starts two real SSH hosts (see tests/sshhosts.py), stopped after
    the test. Skips with the missing capability's name when this machine cannot run them."""
    from tests.sshhosts import SshHosts, missing_capability

    why = missing_capability()
    if why:
        pytest.skip(why)
    started: list[SshHosts] = []

    def start(count: int = 1, **kwargs) -> SshHosts:
        hosts = SshHosts(count, tmp_path / f"ssh{len(started)}", **kwargs)
        started.append(hosts)
        return hosts.__enter__()

    yield start
    for hosts in started:
        hosts.stop()
