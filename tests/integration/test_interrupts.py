"""Runs interrupted at random moments tear everything down and leave an archive that says so."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.state import STATE_DIR
from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]
EXPERIMENT = ROOT / "experiments" / "link-failure-handover.yaml"


def start_run(results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "testbed", "run", str(EXPERIMENT), "--results", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_until_building(proc: subprocess.Popen, results: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.name.endswith(".partial") for p in results.glob(".*")) or proc.poll() is not None:
            return
        time.sleep(0.01)


# 16 signalled runs at moments spread over set-up, workloads and teardown (seeded, so reproducible).
MOMENTS = sorted(random.Random(2).uniform(0.0, 2.5) for _ in range(8))


@pytest.mark.parametrize("sig,delay", [(s, round(d, 3)) for s in (signal.SIGINT, signal.SIGTERM) for d in MOMENTS])
def test_signal_tears_down_and_archives_interrupted(tmp_path, sig, delay):
    results = tmp_path / "res"
    results.mkdir()
    proc = start_run(results)
    wait_until_building(proc, results)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    runs = [p for p in results.iterdir() if not p.name.startswith(".")]
    assert not [p for p in results.iterdir() if p.name.endswith(".partial")], "half-written archive left"
    assert len(runs) == 1, (out, err)
    m = json.loads((runs[0] / "manifest.json").read_text())
    if proc.returncode == 130:
        assert m["status"] == "interrupted"
    else:  # the signal came before the run started or after it ended
        assert proc.returncode in (0, 1) and m["status"] in ("complete", "error"), (proc.returncode, err)
    assert "Traceback" not in err
    assert not list(STATE_DIR.glob(f"{runs[0].name}.json"))


@pytest.mark.parametrize("delay", [0.1, 0.5, 1.0, 2.0])
def test_sigkill_then_clean_removes_exactly_ours(tmp_path, delay):
    results = tmp_path / "res"
    results.mkdir()
    proc = start_run(results)
    wait_until_building(proc, results)
    time.sleep(delay)  # from set-up to mid-transfer: namespaces, delay lines, tcpdumps, agents
    proc.kill()
    proc.wait(timeout=10)
    # This run's state file is named after its archive (other runs may be going on beside it).
    partial = [p for p in results.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1
    states = [STATE_DIR / (partial[0].name.removeprefix(".").removesuffix(".partial") + ".json")]
    assert states[0].exists(), "a killed run must leave a state file for 'testbed clean'"
    r = run_cli("clean", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "removed" in r.stdout
    assert not [s for s in states if s.exists()]
    # Nothing the run recorded is lost: its archive is finalized as interrupted and verifies.
    assert not [p for p in results.iterdir() if p.name.endswith(".partial")]
    run_dir = next(results.iterdir())
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted" and "killed" in m["error"]
    assert run_cli("verify", str(run_dir)).returncode == 0


def test_killed_matrix_is_finished_by_clean(tmp_path):
    """SIGKILL to a matrix mid-way: clean stops its cells (they archive themselves) and finalizes the
    matrix archive as interrupted; nothing of it stays running."""
    results = tmp_path / "mx"
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "matrix", str(ROOT / "experiments/suites/hackathon.yaml"),
                             "--clients", "host,tcp", "--servers", "host", "--scenarios", "aggregate",
                             "--jobs", "2", "--results", str(results)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(results.glob(".*/cells/.*.partial")):
        time.sleep(0.05)  # until the cells are running
    proc.kill()
    proc.wait(timeout=10)
    r = run_cli("clean", timeout=180)
    assert r.returncode == 0, r.stderr
    runs = [p for p in results.iterdir()]
    assert len(runs) == 1 and not runs[0].name.endswith(".partial"), runs
    m = json.loads((runs[0] / "manifest.json").read_text())
    assert m["status"] == "interrupted"
    assert run_cli("verify", str(runs[0])).returncode == 0
    cells = [p for p in (runs[0] / "cells").iterdir()]
    assert cells and not [c for c in cells if c.name.endswith(".partial")]



@pytest.mark.parametrize("entry", ["python -m testbed", "the testbed script"])
def test_sigint_reaches_a_command_started_with_sigint_ignored(tmp_path, entry):
    """A background job of a non-interactive shell, nohup or an Ansible async task starts with SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler: `kill -INT` (how a sharded
    matrix's controller is stopped, and how it stops each host) must still end any testbed command.
    A render of a loop that would run for hours is a command that installs no handler of its own."""
    template = tmp_path / "slow.yaml.j2"
    template.write_text("name: x\nnodes: {a: {kind: host}}\n{% for i in range(100000) %}{% for j in range(100000) %}"
                        "{% endfor %}{% endfor %}links: []\n")
    # the installed console script calls testbed.cli:main without going through __main__.py
    command = [sys.executable, "-m", "testbed"] if entry.startswith("python") else [str(Path(sys.executable).with_name("testbed"))]
    proc = subprocess.Popen([*command, "render", str(template)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(1.5)  # past the interpreter's start, where the handler is installed
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("SIGINT was lost: the render was still running 30 s later")
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "testbed: interrupted" in err, err
