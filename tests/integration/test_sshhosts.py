"""The SSH test hosts themselves: reachable only through their namespace, key-verified, and with a
root of their own under the mount point."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import requires_root

pytestmark = [requires_root, pytest.mark.root]


def test_two_hosts_answer_over_ssh_with_their_own_root(ssh_hosts, tmp_path):
    hosts = ssh_hosts(2)
    a, b = hosts[0], hosts[1]
    assert a.address != b.address and a.netns != b.netns
    out = a.run("uname", "-r", "&&", "sysctl", "-n", "net.mptcp.enabled", "&&", "ip", "-o", "-4", "addr", "show", "eth0")
    assert out.returncode == 0, out.stderr
    assert a.address in out.stdout
    # A file written on a host under the mount point is in that host's root, not in the other's
    # and not at the same path in the root namespace.
    assert a.run("sh", "-c", "'echo from-a > /srv/marker'").returncode == 0
    assert (a.root / "marker").read_text() == "from-a\n"
    assert not (b.root / "marker").exists()
    assert b.run("test", "-e", "/srv/marker").returncode == 1
    # Fetching over scp is the way back.
    dest = tmp_path / "fetched"
    scp = subprocess.run(["scp", *a.ssh_options(), "-P", str(a.port), f"root@{a.address}:/srv/marker", str(dest)],
                         capture_output=True, text=True, timeout=30)
    assert scp.returncode == 0, scp.stderr
    assert dest.read_text() == "from-a\n"


def test_a_wrong_host_key_is_refused(ssh_hosts):
    hosts = ssh_hosts(2)
    a, b = hosts[0], hosts[1]
    # b's key under a's address: ssh must refuse, as a user's client would.
    key = b.host_key_pub.read_text().split()[:2]
    a.known_hosts.write_text(f"[{a.address}]:{a.port} {key[0]} {key[1]}\n")
    out = a.run("true")
    assert out.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in out.stderr or "verification failed" in out.stderr


def test_teardown_leaves_nothing(tmp_path):
    from tests.conftest import links, namespaces
    from tests.sshhosts import SshHosts, missing_capability

    if missing_capability():
        pytest.skip(missing_capability())
    with SshHosts(1, tmp_path) as hosts:
        host = hosts[0]
        assert host.run("true").returncode == 0
        pid = host.process.pid
    assert host.netns not in namespaces()
    assert host.veth not in links()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
