"""`testbed matrix --cells FILE`: exactly the listed cells; bad files with their positions; the pid file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, ROOT, requires_root, run_cli

SUITE = str(ROOT / "experiments" / "suites" / "hackathon.yaml")
# Cheap namespace cells (and one that cannot run here), not a cartesian product of their axes
# (tcp -> tcp and host -> tcp are not among them): the same list the sharded test uses.
CELLS = [{"client": "host", "server": "host", "scenario": "basic-handshake"},
         {"client": "tcp", "server": "host", "scenario": "basic-handshake"},
         {"client": "host", "server": "mptcp-v0.92", "scenario": "basic-handshake"}]


def key(c: dict) -> str:
    return f"{c['scenario']}/{c['client']}/{c['server']}"


def test_bad_cells_files_are_refused_with_positions(tmp_path):
    bad = tmp_path / "cells.json"
    bad.write_text('[\n  {"client": "host", "server": "host", "scenario": "basic-handshake"},\n'
                   '  {"client": "hots", "server": "host", "scenario": "basic-handshake"},\n'
                   '  {"client": "host", "server": "host", "scenario": "nope", "extra": 1},\n'
                   '  {"client": "host", "server": "host", "scenario": "basic-handshake"}\n]\n')
    r = run_cli("matrix", SUITE, "--cells", str(bad), "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert f"{bad}:3:4: [1].client: no implementation 'hots' (did you mean 'host'?)" in lines
    assert any(re.fullmatch(rf"{re.escape(str(bad))}:4:\d+: \[2\]\.scenario: no scenario 'nope' in suite hackathon",
                            line) for line in lines), lines
    assert any(line.startswith(f"{bad}:4:") and "[2].extra: unknown field 'extra'" in line for line in lines), lines
    assert any(line.startswith(f"{bad}:5:") and "listed twice" in line for line in lines), lines
    assert not (tmp_path / "res").exists()  # nothing half-built
    for text, message in (('{"client": "host"}', "expected a non-empty list"), ("[]", "expected a non-empty list"),
                          ("[\n  {\"client\": \"host\", \"server\": \"host\"}\n]", "[0].scenario: missing"),
                          ("[\n", "YAML syntax")):
        bad.write_text(text)
        r = run_cli("matrix", SUITE, "--cells", str(bad))
        assert r.returncode == 2 and r.stderr.startswith(f"{bad}:") and message in r.stderr, (text, r.stderr)
    r = run_cli("matrix", SUITE, "--cells", str(bad), "--clients", "host")
    assert r.returncode == 2 and "--cells" in r.stderr


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict, list[str]]:
    """The cells run here, with a pid file watched while the matrix runs."""
    if not IS_ROOT:
        pytest.skip("needs root: network namespaces and veth pairs")
    tmp = tmp_path_factory.mktemp("local")
    cells = tmp / "cells.json"
    cells.write_text(json.dumps(CELLS))
    pid_file = tmp / "run" / "matrix.pid"
    argv = [sys.executable, "-m", "testbed", "matrix", SUITE, "--cells", str(cells), "--jobs", "2",
            "--results", str(tmp / "results"), "--pid-file", str(pid_file)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if pid_file.exists() and not seen:
            seen.append(pid_file.read_text().strip())
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    m = re.findall(r"^archive: (.+)$", out, re.M)
    assert m, out + err
    run_dir = Path(m[-1])
    assert not pid_file.exists(), "the pid file is removed at the end"
    return done, run_dir, json.loads((run_dir / "matrix.json").read_text()), seen + [str(proc.pid)]


@requires_root
@pytest.mark.usefixtures("no_leaks")
def test_exactly_the_listed_cells_run(local_run):
    done, run_dir, mx, pids = local_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert pids[0] == pids[1], "the pid file held the matrix's own pid while it ran"
    assert sorted(mx["cells"]) == sorted(key(c) for c in CELLS)  # no cartesian product (tcp/tcp, host/tcp absent)
    verdicts = {k: c["verdict"] for k, c in mx["cells"].items()}
    assert verdicts == {"basic-handshake/host/host": "as-expected", "basic-handshake/tcp/host": "as-expected",
                        "basic-handshake/host/mptcp-v0.92": "unavailable"}
    assert mx["options"]["cells"] == [key(c) for c in CELLS]
    assert "matrix hackathon: 3 cells (2 to run, 1 not runnable here)" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == f"report: {run_dir / 'report.html'}"
