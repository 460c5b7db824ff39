"""Shared fixtures: root detection and a leak check around every test that builds networks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: network namespaces and veth pairs")
OUR_LINK = re.compile(r"^tb[0-9a-f]{6}")
# Every process this test session starts inherits the marker; a live run of another checkout or
# session on the same machine (a demo, a second `make test`) does not carry it and is not ours.
SESSION = os.environ.setdefault("TESTBED_TEST_SESSION", uuid.uuid4().hex)
OUR_PROCS = ("tcpdump", "delayline.py", "workloads/agent", "mangler.py", "convertd.py", "danted", "tayga", "qemu-system", "mnexec",
             "iperf3", "ping")


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}
    return {name for name in names - others_links() if not others_ssh_host(name)}


def others_ssh_host(name: str) -> bool:
    """A test SSH host's link or namespace (tests/sshhosts.py) that another test session started."""
    from tests.sshhosts import OUR_TAGS

    m = re.match(r"^(?:tss([0-9a-f]{6})\d+|tbssh-([0-9a-f]{6})-h\d+)$", name)
    return m is not None and (m.group(1) or m.group(2)) not in OUR_TAGS


def others_links() -> set[str]:
    """Root-namespace links that a live run of another session has written down in its state file:
    those come and go while a test runs and are not the test's leak."""
    from testbed.state import STATE_DIR

    found: set[str] = set()
    for path in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        owner = str(state.get("owner_pid"))
        if Path(f"/proc/{owner}").exists() and not started_by_us(owner):
            found.update(state.get("links") or [])
    return found


def our_processes() -> set[str]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p in cmdline for p in OUR_PROCS) and "pytest" not in cmdline and started_by_us(entry):
            found.add(f"{entry}:{cmdline.strip()[:80]}")
    return found


def started_by_us(pid: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    return f"TESTBED_TEST_SESSION={SESSION}".encode() in environ


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip() and not others_ssh_host(line.split()[0])}


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
