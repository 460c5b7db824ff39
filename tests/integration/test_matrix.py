"""`testbed matrix` through the CLI: a small host/tcp matrix, its files, history, CI mode, interrupts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from testbed.archive.store import verify
from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

SUITE = str(ROOT / "experiments" / "suites" / "hackathon.yaml")
REQUIRED = ("schema_version", "testbed_version", "git_sha", "host", "started", "finished", "seed", "inputs",
            "status", "files", "cells")


def matrix(results: Path, *extra: str, timeout: float = 150) -> tuple[subprocess.CompletedProcess, Path, dict]:
    r = run_cli("matrix", SUITE, "--clients", "host,tcp", "--servers", "host,tcp,mptcp-v0.92",
                "--scenarios", "basic-handshake,tcp-client", "--jobs", "2", "--reruns", "1",
                "--results", str(results), *extra, timeout=timeout)
    m = re.search(r"^archive: (.+)$", r.stdout, re.M)
    assert m, r.stdout + r.stderr
    run_dir = Path(m.group(1))
    return r, run_dir, json.loads((run_dir / "matrix.json").read_text())


def test_small_matrix_twice_with_history(tmp_path):
    r, run_dir, mx = matrix(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    cells = mx["cells"]
    assert len(cells) == 2 * 2 * 3  # unavailable cells are listed, never dropped
    for key, c in cells.items():
        if c["server"] == "mptcp-v0.92":
            assert c["verdict"] == "unavailable" and "v0.92" in c["reason"] and not c["attempts"], key
            continue
        assert c["verdict"] == "as-expected", (key, c["reason"])
        checks = {ch["name"]: ch for ch in c["measured"]["checks"]}
        assert all(ch["verdict"] in ("pass", "info") for ch in checks.values()), key
        assert (run_dir / c["dir"] / "manifest.json").is_file()
        if "tcp" in (c["client"], c["server"]) or c["scenario"] == "tcp-client":
            assert c["expected_outcome"] == c["outcome"] == "fallback", key
            assert checks["transfer intact (sha256 end to end)"]["measured"] == "bulk: true", key
            assert c["measured"]["workloads"]["bulk"]["is_mptcp"] is False, key
        else:
            assert c["expected_outcome"] == c["outcome"] == "mptcp", key
            counters = c["measured"]["counters"]
            assert counters["client"]["MPTcpExtMPCapableSYNACKRX"] == 1
            assert counters["server"]["MPTcpExtMPCapableSYNRX"] == 1
            assert checks["counter client.MPTcpExtMPCapableSYNACKRX"]["measured"] == 1
    # the scenario's own checks ran in the pinned (tcp-client) cell, the generic ones in tcp cells
    assert cells["tcp-client/host/host"]["expectations"] == "scenario"
    assert cells["basic-handshake/tcp/host"]["expectations"] == "fallback"
    assert mx["summary"] == {"as-expected": 8, "unexpected": 0, "unsupported": 0, "unavailable": 4, "flaky": 0, "known": 0,
                             "error": 0}
    assert mx["schema"] == "testbed-matrix" and mx["schema_version"] == 1
    assert mx["implementations"]["host"]["available"] and not mx["implementations"]["mptcp-v0.92"]["available"]
    # files: manifest with the archive keys and cells, report, junit, integrity
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in REQUIRED:
        assert key in manifest, key
    assert manifest["status"] == "complete" and len(manifest["cells"]) == 12
    assert {"client", "server", "scenario", "outcome", "expected_outcome", "verdict", "attempts", "dir"} <= \
        set(manifest["cells"][0])
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    report = (run_dir / "report.md").read_text()
    assert "## basic-handshake" in report and "| **tcp** |" in report and "unavailable" in report
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "12" and suite.get("skipped") == "4"
    assert len(suite.findall("testcase")) == 12 and len(suite.findall("testcase/skipped")) == 4
    assert not suite.findall("testcase/failure") and not suite.findall("testcase/error")
    assert (run_dir / "inputs" / "cells" / "basic-handshake--tcp--host.yaml").is_file()
    # history shows the run; a second run (CI mode) reports no regressions against it
    h = run_cli("history", "--results", str(tmp_path), "--json")
    assert h.returncode == 0, h.stderr
    (suite_history,) = json.loads(h.stdout)
    assert suite_history["latest"]["run_id"] == mx["run_id"] and len(suite_history["cells"]) == 12
    r2, run_dir2, mx2 = matrix(tmp_path, "--ci")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert mx2["history"] == {"previous_run": mx["run_id"], "regressions": [], "fixes": []}
    assert "regressions: none" in r2.stdout and "unavailable: basic-handshake host -> mptcp-v0.92" in r2.stdout
    h = run_cli("history", "--results", str(tmp_path), "--suite", "hackathon", "--json")
    (suite_history,) = json.loads(h.stdout)
    assert suite_history["previous"]["run_id"] == mx["run_id"]
    rows = {row["cell"]: row for row in suite_history["cells"]}
    assert rows["basic-handshake/host/host"]["change"] == "same"
    assert rows["basic-handshake/host/host"]["series"] == ["as-expected", "as-expected"]
    assert all(row["change"] != "regression" and row["flake_rate"] == 0 for row in rows.values())
    text = run_cli("history", "--results", str(tmp_path))
    assert text.returncode == 0 and "regressions: none" in text.stdout and mx2["run_id"] in text.stdout


def test_interrupt_forwards_to_running_cells(tmp_path):
    """SIGINT to the matrix: the running cell tears down and archives itself, the rest is not run,
    the matrix archive says interrupted, exit 130, nothing left behind."""
    argv = [sys.executable, "-m", "testbed", "matrix", SUITE, "--clients", "host", "--servers", "host",
            "--scenarios", "aggregate,basic-handshake", "--results", str(tmp_path)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    started = False
    while time.monotonic() < deadline and not started:  # the first cell's network is up once it shapes links
        time.sleep(0.2)
        started = any(p.name.startswith("delayline") for p in tmp_path.glob(".*partial/cells/.*partial/logs/shaping/*"))
    assert started, "the first cell never started"
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    cells = {c["scenario"]: c for c in manifest["cells"]}
    assert cells["aggregate"]["verdict"] == "error" and cells["aggregate"]["reason"] == "interrupted"
    assert cells["basic-handshake"]["verdict"] == "error" and "not run" in cells["basic-handshake"]["reason"]
    cell_manifest = json.loads((run_dir / cells["aggregate"]["dir"] / "manifest.json").read_text())
    assert cell_manifest["status"] == "interrupted"
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}


def test_invalid_suite_exits_2_with_position(tmp_path):
    bad = tmp_path / "suite.yaml"
    bad.write_text(f"name: bad\nimplementations: {ROOT}/experiments/implementations.yaml\nscenarios:\n"
                   f"  - name: one\n    experiment: {ROOT}/experiments/basic-handshake.yaml\n    clients: [host]\n")
    r = run_cli("matrix", str(bad), "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(r"suite\.yaml:6:5: scenarios\[0\]\.clients: unknown field 'clients'", r.stderr), r.stderr
    assert not (tmp_path / "res").exists()
    r = run_cli("matrix", SUITE, "--clients", "hots", "--results", str(tmp_path / "res"))
    assert r.returncode == 2 and "unknown name 'hots'" in r.stderr and "did you mean 'host'" in r.stderr
