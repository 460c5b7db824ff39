"""kernel-upstream.yml for real through ansible-runner against an sshd in a network namespace: its
sysctl, limits and verify tasks change the host's own namespace, and a second run changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_root

pytestmark = [requires_root, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's ansible-playbook


def _netns_sysctl(netns: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", key], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_kernel_upstream_applies_in_the_host_namespace_and_is_idempotent(ssh_hosts, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")  # ansible-runner looks ansible-playbook up there
    ansible_runner = pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    host = ssh_hosts(1)[0]
    before_root = Path("/proc/sys/net/mptcp/add_addr_timeout").read_text().strip()
    wanted = "61" if before_root != "61" else "62"
    extravars = {
        "kernel_min_version": "5.15",
        "kernel_reboot": False,  # never reboot the machine the tests run on
        "mptcp_sysctls": {"net.mptcp.enabled": 1, "net.mptcp.add_addr_timeout": int(wanted)},
        "mptcp_sysctl_file": "/srv/sysctl.d/90-testbed-mptcp.conf",  # the host's own directory
        "mptcp_limits": {"subflows": 4, "add_addr_accepted": 4},
    }
    inventory = {"all": {"hosts": {host.name: host.inventory_vars()}}}
    runs = []
    for attempt in (1, 2):
        data_dir = tmp_path / f"runner{attempt}"
        data_dir.mkdir()
        run = ansible_runner.run(private_data_dir=str(data_dir),
                                 playbook=str(ROOT / "playbooks" / "kernel-upstream.yml"),
                                 inventory=inventory, extravars=extravars, quiet=True, timeout=300,
                                 envvars={"ANSIBLE_PIPELINING": "1"})
        assert run.status == "successful", (run.status, run.stdout.read()[:1500] + "..." )
        runs.append(run.stats)
    assert runs[0]["changed"].get(host.name, 0) >= 1
    assert runs[1]["changed"].get(host.name, 0) == 0, runs[1]
    assert _netns_sysctl(host.netns, "net.mptcp.add_addr_timeout") == wanted
    assert Path("/proc/sys/net/mptcp/add_addr_timeout").read_text().strip() == before_root  # per namespace
    limits = subprocess.run(["ip", "-n", host.netns, "mptcp", "limits", "show"], capture_output=True,
                            text=True, check=True).stdout
    assert "subflows 4" in limits and "add_addr_accepted 4" in limits
    persisted = (host.root / "sysctl.d" / "90-testbed-mptcp.conf").read_text()  # under the host's /srv
    assert len(re.findall(rf"^net\.mptcp\.add_addr_timeout\s*=\s*{wanted}$", persisted, re.M)) == 1, persisted
