"""testbed.provision.remote over real SSH (sshd in network namespaces, tests/sshhosts.py): host-key
policy, argv quoting, timeouts and stops, SFTP, inventories."""

from __future__ import annotations

import json
import threading
import time

import pytest

from testbed.errors import RunError, SpecError
from testbed.provision.hosts import load_inventory
from testbed.provision.remote import HostKeyError, Remote, Target
from tests.conftest import requires_root

pytestmark = [requires_root, pytest.mark.root]


def target(h, known_hosts=None) -> Target:
    return Target(h.name, h.address, h.port, "root", str(h.user_key), str(known_hosts or h.known_hosts))


def test_host_keys_unknown_refused_unless_accepted_and_changed_always_refused(ssh_hosts, tmp_path):
    hosts = ssh_hosts(2)
    a, b = hosts[0], hosts[1]
    empty = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError) as refused:
        Remote(target(a, empty)).connect()
    msg = str(refused.value)
    assert f"ssh-keyscan -p {a.port} {a.address} >> {empty}" in msg and "--accept-new-host-keys" in msg
    assert not empty.exists()  # nothing recorded
    with Remote(target(a, empty), accept_new=True) as r:  # recorded in the file, as accept-new does
        assert r.run(["true"]).rc == 0
    key_type, key_b64 = a.host_key_pub.read_text().split()[:2]
    assert empty.read_text() == f"[{a.address}]:{a.port} {key_type} {key_b64}\n"
    with Remote(target(a, empty)) as r:  # now known: no flag needed
        assert r.run(["true"]).rc == 0
    # b's key recorded under a's name: a changed key, refused even with the flag
    wrong = tmp_path / "wrong"
    btype, bkey = b.host_key_pub.read_text().split()[:2]
    wrong.write_text(f"[{a.address}]:{a.port} {btype} {bkey}\n")
    for accept in (False, True):
        with pytest.raises(HostKeyError, match="CHANGED"):
            Remote(target(a, wrong), accept_new=accept).connect()
    assert wrong.read_text() == f"[{a.address}]:{a.port} {btype} {bkey}\n"  # never rewritten


def test_argv_quoting_timeouts_stops_and_sftp(ssh_hosts, tmp_path):
    (h,) = ssh_hosts(1)
    with Remote(target(h)) as r:
        words = ["printf", "%s|", "two words", "$HOME", "`id`", "a'b\"c", "; rm -rf /nope", "*"]
        res = r.run(words, check=True)
        assert res.stdout == "two words|$HOME|`id`|a'b\"c|; rm -rf /nope|*|"  # nothing interpreted
        assert r.run(["sh", "-c", "echo err >&2; exit 7"]).rc == 7
        assert r.run(["sh", "-c", "echo err >&2; exit 7"]).stderr == "err\n"
        assert r.run(["cat"], stdin=b"fed\n").stdout == "fed\n"
        # a command past its timeout is killed on the remote, with its children
        start = time.monotonic()
        with pytest.raises(RunError, match="timed out"):
            r.run(["sh", "-c", "echo $$ > /srv/pid; sleep 300 & wait"], timeout=1)
        assert time.monotonic() - start < 10
        pid = (h.root / "pid").read_text().strip()
        assert r.run(["kill", "-0", pid]).rc != 0
        # its process group (the background sleep) is gone too; dead ones may wait for a reaper as zombies
        states = r.run(["ps", "-o", "stat=", "-g", pid]).stdout.split()
        assert all(s.startswith("Z") for s in states), states
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        with pytest.raises(RunError, match="stopped"):
            r.run(["sleep", "300"], stop=stop, timeout=60)
        # SFTP: files under the host's /srv are its own; fetching is the only way back
        r.run(["sh", "-c", "mkdir -p /srv/run/sub && echo one > /srv/run/a && echo two > /srv/run/sub/b"], check=True)
        assert r.read_text("/srv/run/a") == "one\n" and r.read_text("/srv/nope") is None
        assert r.get_tree("/srv/run", tmp_path / "got") == 2
        assert (tmp_path / "got" / "sub" / "b").read_text() == "two\n"
        (tmp_path / "up").write_text("up\n")
        r.put(tmp_path / "up", "/srv/up")
        assert (h.root / "up").read_text() == "up\n"


def test_inventory_targets_and_bad_inventories(ssh_hosts, tmp_path):
    hosts = ssh_hosts(1)
    inv_path = hosts.write_inventory(tmp_path / "hosts.yml")
    data = json.loads(inv_path.read_text())
    data["all"]["children"]["testbed_hosts"]["hosts"]["h1"]["ansible_password"] = "hunter2"
    inv_path.write_text(json.dumps(data))
    inv = load_inventory(inv_path)
    assert inv.testbed_hosts() == ["h1"]
    t = inv.target("h1")
    assert t.known_hosts == str(hosts[0].known_hosts) and t.port == hosts[0].port
    assert "hunter2" not in repr(t) and "hunter2" not in json.dumps(t.describe())
    with Remote(t) as r:  # key login; the password is never needed
        assert r.run(["hostname"]).rc == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("all:\n  children:\n    testbed_hosts:\n      hosts: [h1, h2]\n")
    with pytest.raises(SpecError, match=r"bad.yml:4:\d+: all.children.testbed_hosts.hosts: must be a mapping"):
        load_inventory(bad)
