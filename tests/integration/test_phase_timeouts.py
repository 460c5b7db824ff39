"""Every phase obeys the experiment's timeout and the user: a node command that never ends, in set-up,
shaping or teardown, is cut off, the run is archived as `error` (or `interrupted`) naming the phase it
stopped in, and nothing it made is left behind.

The hang is real: a directory put first on PATH holds a tool (`ethtool`, `tc` or `ip`) that never
returns when called the way one phase calls it, and runs the real tool otherwise; the nodes' shells
and the processes started in their namespaces inherit that PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_root

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

# client ── r0 ── s0 ── server; the client's link is lossy (set-up turns its offloads off with
# `ethtool -K`) and rate-limited (shaping installs an htb qdisc); the switch is a bridge that
# teardown deletes with one `ip -force -batch FILE` (`link del group ...`).
TOPOLOGY = """\
name: tiny
nodes:
  client: {kind: host}
  r0: {kind: router}
  s0: {kind: switch}
  server: {kind: host}
links:
  - endpoints: ["client:eth0", "r0:eth0"]
    impairment: {rate: 100Mbit, loss: 1%}
  - ["r0:eth1", "s0"]
  - ["s0", "server:eth0"]
"""

# When each fake hangs (shell `case` patterns on all its arguments), else it runs the real tool.
HANGS = {
    "bash": "*mininet:client*",  # set-up: the client node's shell never shows its first prompt
    "ethtool": "*-K*",  # set-up: offloads off on a lossy link
    "tc": "*htb*|-batch*",  # shaping: the rate limit (an htb qdisc, one command or a `tc -batch -`)
    "ip": "*-force*-batch*",  # teardown: the run's bridges deleted in one batch (the sweep uses its own)
}


def fake_tools(where: Path, *tools: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        real = shutil.which(tool)
        assert real, tool
        script = where / tool
        pattern = HANGS[tool]
        if tool == "ip":  # only a batch file that deletes a link group: `ip -force -batch -` still works
            test = f'case "$*" in {pattern}) case "$3" in -) ;; *) grep -q "link del group" "$3" && hang;; esac;; esac'
        else:
            test = f'case "$*" in {pattern}) hang;; esac'
        script.write_text("#!/bin/sh\n# a deliberately hung tool (tests/integration/test_phase_timeouts.py)\n"
                          "hang() { while :; do sleep 0.2; done; }\n"
                          f"{test}\nexec {real} \"$@\"\n")
        script.chmod(0o755)
    return where


def experiment(tmp: Path, timeout: str) -> Path:
    (tmp / "tiny.yaml").write_text(TOPOLOGY)
    path = tmp / "exp.yaml"
    path.write_text(f"name: hung\ntopology: {{file: tiny.yaml}}\ntimeout: {timeout}\n"
                    "capture: off\nworkloads:\n  - {type: bulk, size: 200KB}\n")
    return path


def start(tmp: Path, exp: Path, fakes: Path | None) -> subprocess.Popen:
    env = dict(os.environ)
    if fakes is not None:
        env["PATH"] = f"{fakes}:{env['PATH']}"
    return subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--results", str(tmp / "res")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def hanging(fakes: Path) -> list[int]:
    """The pids of fake tools that are hanging now."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(fakes) in cmdline:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_hanging(proc: subprocess.Popen, fakes: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not hanging(fakes):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the fake tool was never called"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, tmp: Path, fakes: Path, within: float) -> tuple[dict, str]:
    """The run's manifest once it has ended (within `within` seconds: a hang guard, not a benchmark)."""
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        subprocess.run([sys.executable, "-m", "testbed", "clean"], cwd=ROOT, capture_output=True, timeout=120)
        pytest.fail(f"the run did not end within {within:g} s")
    assert "Traceback" not in err, err
    assert not hanging(fakes), "a hung tool was left running"
    res = tmp / "res"
    runs = [p for p in res.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1 and not [p for p in res.iterdir() if p.name.endswith(".partial")], list(res.iterdir())
    return json.loads((runs[0] / "manifest.json").read_text()), err


@pytest.mark.parametrize("tool,phase", [("bash", "setup"), ("ethtool", "setup"), ("tc", "shaping")])
def test_hung_phase_is_cut_off_at_the_timeout(tmp_path, tool, phase):
    fakes = fake_tools(tmp_path / "bin", tool)
    proc = start(tmp_path, experiment(tmp_path, "4s"), fakes)
    m, err = finish(proc, tmp_path, fakes, within=4 + 30)
    assert proc.returncode == 1, err
    assert m["status"] == "error" and m["stopped_in"] == phase, m.get("error")
    assert "timeout (4 s) passed" in m["error"]


def test_hung_teardown_is_made_hard(tmp_path):
    fakes = fake_tools(tmp_path / "bin", "ip")
    proc = start(tmp_path, experiment(tmp_path, "8s"), fakes)
    m, err = finish(proc, tmp_path, fakes, within=8 + 10 + 30)
    assert proc.returncode == 1, err
    assert m["status"] == "error" and m["stopped_in"] == "teardown", m.get("error")
    assert m["teardown"].startswith("hard: teardown took longer than")
    assert m["outcome"] and m["checks"], "what was measured before teardown stays in the archive"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_hung_setup_ends_the_run(tmp_path, sig):
    fakes = fake_tools(tmp_path / "bin", "ethtool")
    proc = start(tmp_path, experiment(tmp_path, "120s"), fakes)
    wait_hanging(proc, fakes)
    proc.send_signal(sig)
    m, err = finish(proc, tmp_path, fakes, within=20)
    assert proc.returncode == 130, err
    assert m["status"] == "interrupted" and m["stopped_in"] == "setup"
    assert signal.Signals(sig).name in m["error"]
    assert "teardown" not in m, "one signal: a graceful teardown"


def test_second_interrupt_makes_a_hung_teardown_hard(tmp_path):
    fakes = fake_tools(tmp_path / "bin", "ethtool", "ip")
    proc = start(tmp_path, experiment(tmp_path, "120s"), fakes)
    wait_hanging(proc, fakes)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 20  # until the teardown hangs in its own `ip` batch
    while not [p for p in hanging(fakes) if f"{fakes}/ip\0".encode() in _cmdline(p)]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    m, err = finish(proc, tmp_path, fakes, within=20)
    assert proc.returncode == 130, err
    assert m["status"] == "interrupted" and m["stopped_in"] == "setup"
    assert m["teardown"] == "hard: SIGINT again during teardown"


def test_matrix_cell_with_hung_setup_is_an_error_and_the_matrix_goes_on(tmp_path):
    fakes = fake_tools(tmp_path / "bin", "ethtool")
    experiment(tmp_path, "4s")
    (tmp_path / "plain.yaml").write_text(TOPOLOGY.replace("rate: 100Mbit, loss: 1%", "rate: 100Mbit"))
    (tmp_path / "healthy.yaml").write_text((tmp_path / "exp.yaml").read_text().replace("tiny.yaml", "plain.yaml")
                                           .replace("timeout: 4s", "timeout: 60s"))
    (tmp_path / "suite.yaml").write_text(
        f"name: hung\nimplementations: {ROOT / 'experiments' / 'implementations.yaml'}\ntimeout: 90s\n"
        "scenarios:\n  - {name: hung-setup, experiment: exp.yaml}\n  - {name: healthy, experiment: healthy.yaml}\n")
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "testbed", "matrix", str(tmp_path / "suite.yaml"), "--clients", "host",
                        "--servers", "host", "--jobs", "1", "--results", str(tmp_path / "mx")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=4 + 60 + 60)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stdout + r.stderr  # one cell is an error
    assert not hanging(fakes)
    archive = re.search(r"^archive: (.+)$", r.stdout, re.M)
    assert archive, r.stdout + r.stderr
    run_dir = Path(archive.group(1))
    cells = {c["scenario"]: c for c in json.loads((run_dir / "matrix.json").read_text())["cells"].values()}
    hung = cells["hung-setup"]
    assert hung["verdict"] == "error" and "timeout (4 s) passed" in hung["reason"], hung
    m = json.loads((run_dir / hung["dir"] / "manifest.json").read_text())
    assert m["status"] == "error" and m["stopped_in"] == "setup"
    healthy = json.loads((run_dir / cells["healthy"]["dir"] / "manifest.json").read_text())
    assert healthy["status"] == "complete", cells["healthy"]
