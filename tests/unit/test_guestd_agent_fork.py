"""guestd forks the workload agent it imported once instead of exec'ing an interpreter for it.

Run here on the host's interpreter (guestd is stdlib-only and runs on the host's python3 in a guest):
the forked agent must behave as the exec'd one does — its own session, its stdio on the pipes given,
its exit status — and anything else (another interpreter, changed sources) is exec'd as asked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from testbed.emulation.qemu import guestd
from testbed.workloads import agent_path


def _argv(main: Path, *args: str) -> list[str]:
    return [sys.executable, "-S", str(main), *args]


def _read_all(stream) -> bytes:
    out = b""
    while chunk := os.read(stream.fileno(), 65536):
        out += chunk
    return out


def test_a_forked_agent_runs_the_mode_and_reports_its_exit_status():
    cache = guestd.AgentCache()
    argv = _argv(agent_path(), "bulk-client", "--connect", "127.0.0.1", "--port", "1", "--size", "1k",
                 "--connect-retries", "0", "--timeout", "5")
    package = cache.entry(argv)
    assert package == "agent"
    proc = guestd.fork_agent(package, argv[3:], stdin=False, stdout="pipe", stderr="pipe",
                             env=guestd._env(None), cwd="/")
    assert proc.pid != os.getpid()
    assert os.getsid(proc.pid) in (proc.pid, os.getsid(0))  # it may not have called setsid() yet
    out = _read_all(proc.stdout)
    assert proc.wait() == 1  # nothing listens on port 1: the agent's own failure status
    result = json.loads(out)
    assert result["mode"] == "bulk-client" and result["errors"]
    assert "refused" in " ".join(result["errors"]).lower()


def test_a_forked_agent_gets_its_own_session_and_dies_of_a_group_signal():
    cache = guestd.AgentCache()
    argv = _argv(agent_path(), "rr-server", "--bind", "127.0.0.1", "--port", "0", "--timeout", "30")
    proc = guestd.fork_agent(cache.entry(argv), argv[3:], stdin=False, stdout="pipe", stderr="stdout",
                             env=guestd._env(None), cwd="/")
    assert os.read(proc.stdout.fileno(), 6) == b"ready\n"
    assert os.getsid(proc.pid) == proc.pid
    os.killpg(proc.pid, signal.SIGTERM)
    rest = _read_all(proc.stdout)
    assert proc.wait() == 0
    assert json.loads(rest.splitlines()[-1])["stopped_by"] == "signal"


def test_argparse_errors_exit_2_on_the_forked_agents_stderr():
    cache = guestd.AgentCache()
    argv = _argv(agent_path(), "no-such-mode")
    proc = guestd.fork_agent(cache.entry(argv), argv[3:], stdin=False, stdout="pipe", stderr="pipe",
                             env=guestd._env(None), cwd="/")
    assert _read_all(proc.stdout) == b""
    assert b"invalid choice" in _read_all(proc.stderr)
    assert proc.wait() == 2


def test_only_this_interpreter_and_the_imported_sources_are_forked(tmp_path):
    copy = tmp_path / "agent"
    shutil.copytree(agent_path().parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    cache = guestd.AgentCache()
    main = copy / "__main__.py"
    assert cache.entry(["/bin/sh", "-S", str(main), "rr-server"]) is None  # another interpreter
    assert cache.entry([sys.executable, str(main), "rr-server"]) is None  # not as the drivers start it
    assert cache.entry(_argv(main, "rr-server")) == "agent"
    assert cache.entry(_argv(agent_path(), "rr-server")) is None  # another checkout's agent
    time.sleep(0.01)
    bulk = copy / "bulk.py"
    bulk.write_text(bulk.read_text() + "\n# changed\n")
    assert cache.entry(_argv(main, "rr-server")) is None  # changed since it was imported: exec'd


@pytest.fixture(autouse=True)
def _forget_the_imported_agent():
    """Each test imports the agent as guestd would; the next starts from a clean slate."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n == "agent" or n.startswith("agent.")]:
        del sys.modules[name]
