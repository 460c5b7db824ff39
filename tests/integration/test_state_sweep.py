"""The sweep of a run's state kills what is in its namespaces, and nothing in a namespace that only
has a number the run once wrote down (the kernel reuses a freed namespace's inode number)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from testbed import state as state_mod
from tests.conftest import requires_root

pytestmark = requires_root


def in_new_netns(*argv: str) -> subprocess.Popen:
    proc = subprocess.Popen(["unshare", "--net", "--fork", "--kill-child", *argv], start_new_session=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the forked child is the one in the new namespace
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if kids and state_mod.netns_inode(int(kids[0])) not in (None, state_mod.netns_inode(os.getpid())):
            proc.child = int(kids[0])  # type: ignore[attr-defined]
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail("unshare did not start its child")


def alive(pid: int) -> bool:
    return state_mod.proc_start_time(pid) is not None and not state_mod._zombie(pid)


def test_a_namespace_without_a_live_recorded_process_is_not_swept(tmp_path, no_leaks):
    other = in_new_netns("sleep", "30")  # another run's node, in a namespace with a number we recorded
    ours = in_new_netns("sleep", "30")
    sibling = subprocess.Popen(["nsenter", f"--net=/proc/{ours.child}/ns/net", "sleep", "30"])
    deadline = time.monotonic() + 5
    while state_mod.netns_inode(sibling.pid) != state_mod.netns_inode(ours.child) and time.monotonic() < deadline:
        time.sleep(0.02)  # nsenter has not entered it yet
    try:
        st = state_mod.RunState(run_id="sweep-test")
        st.namespaces = [state_mod.netns_inode(other.child), state_mod.netns_inode(ours.child)]
        st.processes = [{"pid": ours.child, "start": state_mod.proc_start_time(ours.child),
                         "netns": st.namespaces[1], "what": "shell of a node"},
                        {"pid": 999999, "start": 1, "netns": st.namespaces[0], "what": "a shell long gone"}]
        counts = state_mod.sweep(st)
        assert not alive(ours.child) and not alive(sibling.pid), "a namespace still ours is swept whole"
        assert alive(other.child), "the other namespace only has a number we once recorded"
        assert counts["processes"] == 3  # unshare itself, its child and the sibling: all in that namespace

    finally:
        for proc in (other, ours, sibling):
            proc.kill()
            proc.wait()


def test_orphans_are_swept_while_the_recorded_shell_anchors_the_namespace(no_leaks):
    ours = in_new_netns("sleep", "30")  # a node's shell, recorded
    orphan = subprocess.Popen(["nsenter", f"--net=/proc/{ours.child}/ns/net", "sleep", "30"])  # a hung tool
    deadline = time.monotonic() + 5
    while state_mod.netns_inode(orphan.pid) != state_mod.netns_inode(ours.child) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        st = state_mod.RunState(run_id="orphan-test")
        st.namespaces = [state_mod.netns_inode(ours.child)]
        st.processes = [{"pid": ours.child, "start": state_mod.proc_start_time(ours.child),
                         "netns": st.namespaces[0], "what": "shell of a node"}]
        killed = state_mod.sweep_orphans(st)
        assert not alive(orphan.pid), "an unrecorded process in our namespace is an orphan"
        assert alive(ours.child), "the recorded shell is left to the network's own teardown"
        assert killed == 2  # the orphan, and unshare itself (unrecorded, in that namespace)
    finally:
        for proc in (ours, orphan):
            proc.kill()
            proc.wait()
