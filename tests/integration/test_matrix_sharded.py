"""`testbed matrix --inventory` over two real SSH hosts (sshd in network namespaces, tests/sshhosts.py):
the merged archive has the same cells and verdicts as a local run of the same cells, laid out as
a local run's; an unreachable host's cells run on the other one."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from testbed.archive.store import verify
from tests.conftest import ROOT, requires_root, run_cli
from tests.integration.test_matrix_cells import CELLS, SUITE, key, local_run  # noqa: F401 - a fixture

pytestmark = [requires_root, pytest.mark.root]
BIN = Path(sys.executable).parent


def inventory(hosts, path: Path, extra: dict | None = None) -> Path:
    """The fake hosts share this checkout and venv; each has its own /srv for results."""
    data = hosts.inventory()
    for h in data["all"]["children"]["testbed_hosts"]["hosts"].values():
        h.update({"testbed_dir": str(ROOT), "testbed_python": sys.executable, "remote_results": "/srv/results"})
    data["all"]["children"]["testbed_hosts"]["hosts"].update(extra or {})
    path.write_text(json.dumps(data, indent=2))
    return path


def sharded(inv: Path, cells: Path, results: Path, *extra: str) -> tuple[object, Path, dict, dict]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = run_cli("matrix", SUITE, "--inventory", str(inv), "--cells", str(cells), "--results", str(results),
                *extra, timeout=240, env=env)
    m = re.findall(r"^archive: (.+)$", r.stdout, re.M)
    assert m, r.stdout + r.stderr
    run_dir = Path(m[-1])
    return r, run_dir, json.loads((run_dir / "matrix.json").read_text()), \
        json.loads((run_dir / "manifest.json").read_text())


def test_two_hosts_give_the_local_cells_and_verdicts(ssh_hosts, tmp_path, local_run):  # noqa: F811
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    _, local_dir, local, _ = local_run
    hosts = ssh_hosts(2)
    inv = inventory(hosts, tmp_path / "hosts.yml")
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps(CELLS))
    r, run_dir, mx, manifest = sharded(inv, cells, tmp_path / "results")
    assert r.returncode == 0, r.stdout + r.stderr
    # the same cells, in the same order, with the same verdicts and outcomes as the local run
    assert list(mx["cells"]) == list(local["cells"])
    for k, c in mx["cells"].items():
        assert (c["verdict"], c["outcome"], c["expected_outcome"]) == \
            (local["cells"][k]["verdict"], local["cells"][k]["outcome"], local["cells"][k]["expected_outcome"]), k
    assert mx["summary"] == local["summary"]
    # laid out as a local run: the same files, every cell's links resolve in the merged archive
    assert {p.name for p in run_dir.iterdir()} >= {"matrix.json", "report.html", "report.md", "junit.xml",
                                                   "manifest.json", "cells", "inputs", "logs"}
    assert set(mx) == set(local) and mx["axes"] == local["axes"]
    for k, c in mx["cells"].items():
        if c["attempts"]:
            assert (run_dir / c["dir"] / "manifest.json").is_file(), k
            assert (run_dir / c["files"]["counters"]).is_file() and (run_dir / c["attempts"][0]["log"]).is_file(), k
            assert (run_dir / c["experiment"]).is_file(), k
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    html = (run_dir / "report.html").read_text()
    assert "basic-handshake" in html and mx["run_id"] in html
    # the manifest says which host ran each cell: both did, by the cost balance
    ran = {key(c): c["host"] for c in manifest["cells"]}
    assert set(ran.values()) == {"h1", "h2"}, ran
    assert all(s["status"] == "ok" for s in manifest["shards"])
    for c in manifest["cells"]:  # each cell's run really happened on its host: its archive says so
        if c["dir"]:
            cell_manifest = json.loads((run_dir / c["dir"] / "manifest.json").read_text())
            assert cell_manifest["status"] == "complete"
    for h in hosts:  # the runs landed under each host's own /srv, not the controller's
        assert list((h.root / "results").glob("run-*/*-matrix-hackathon-*/matrix.json"))
    # history: recorded like a local run
    hist = run_cli("history", "--results", str(tmp_path / "results"), "--json")
    assert json.loads(hist.stdout)[0]["latest"]["run_id"] == mx["run_id"]


def test_an_unreachable_host_s_cells_run_on_the_other(ssh_hosts, tmp_path):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    hosts = ssh_hosts(1)
    dead = {**hosts[0].inventory_vars(), "ansible_host": "127.0.0.1", "ansible_port": 9,  # nothing listens
            "testbed_dir": str(ROOT), "testbed_python": sys.executable, "remote_results": "/srv/results"}
    inv = inventory(hosts, tmp_path / "hosts.yml", {"h9": dead})
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps(CELLS[:3]))
    r, run_dir, mx, manifest = sharded(inv, cells, tmp_path / "results")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "h9: unreachable" in r.stderr
    assert {k: c["verdict"] for k, c in mx["cells"].items()} == {
        "basic-handshake/host/host": "as-expected", "basic-handshake/tcp/host": "as-expected",
        "basic-handshake/host/mptcp-v0.92": "unavailable"}
    assert {c["host"] for c in manifest["cells"]} == {"h1"}
    assert {s["host"]: s["status"] for s in manifest["shards"]} == {"h1": "ok", "h9": "unreachable"}
