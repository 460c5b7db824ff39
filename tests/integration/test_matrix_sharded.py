"""`testbed matrix --cells` for real, and `testbed matrix --inventory` over real SSH hosts (sshd in
network namespaces, tests/sshhosts.py): the merged archive has the same cells and verdicts as a
local run of the same cells (which runs meanwhile) and is laid out as a local run's; a host that
fails has its cells retried on another, one that does not answer gets none; Ctrl-C stops the hosts;
an unknown host key stops everything before it starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testbed.archive.store import verify
from tests.conftest import IS_ROOT, ROOT, requires_root, run_cli
from tests.integration.test_matrix_cells import CELLS, SUITE, key

pytestmark = [requires_root, pytest.mark.root]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # ansible-runner finds the venv's ansible there
# The fake hosts share this checkout and venv; each has its own /srv for results.
TESTBED = {"testbed_dir": str(ROOT), "testbed_python": sys.executable, "remote_results": "/srv/results"}


class LocalRun:
    """`testbed matrix --cells` run here in the background (the sharded run's reference), its pid
    file watched while it runs."""

    def __init__(self, tmp: Path) -> None:
        cells = tmp / "cells.json"
        cells.write_text(json.dumps(CELLS))
        self.pid_file = tmp / "run" / "matrix.pid"
        self.argv = [sys.executable, "-m", "testbed", "matrix", SUITE, "--cells", str(cells), "--jobs", "2",
                     "--results", str(tmp / "results"), "--pid-file", str(self.pid_file)]
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.seen: list[str] = []
        self.watch = threading.Thread(target=self._watch, daemon=True)
        self.watch.start()
        self.done: tuple | None = None

    def _watch(self) -> None:
        while self.proc.poll() is None and not self.seen:
            if self.pid_file.exists():
                self.seen.append(self.pid_file.read_text().strip())
            time.sleep(0.05)

    def result(self) -> tuple[subprocess.CompletedProcess, Path, dict]:
        if self.done is None:
            out, err = self.proc.communicate(timeout=180)
            self.watch.join(5)
            done = subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err)
            found = re.findall(r"^archive: (.+)$", out, re.M)
            assert found, out + err
            run_dir = Path(found[-1])
            self.done = (done, run_dir, json.loads((run_dir / "matrix.json").read_text()))
        return self.done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    if not IS_ROOT:
        pytest.skip("needs root: network namespaces and veth pairs")
    run = LocalRun(tmp_path_factory.mktemp("local"))
    yield run
    run.stop()


def test_sharded_over_two_hosts_gives_the_local_cells_and_verdicts(ssh_hosts, tmp_path, local_run):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    h1, h2 = ssh_hosts(2)
    # Listed first so that the cost balance gives it a real cell: 'hbad' is h1's machine with a
    # testbed that cannot start (the play fails there), h9 answers nowhere.
    hosts = {"hbad": {**h1.inventory_vars(), **TESTBED, "testbed_python": "/nonexistent/python",
                      "remote_results": "/srv/results-bad"},
             "h1": {**h1.inventory_vars(), **TESTBED}, "h2": {**h2.inventory_vars(), **TESTBED},
             "h9": {**h1.inventory_vars(), **TESTBED, "ansible_host": "127.0.0.1", "ansible_port": 9}}
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"children": {"testbed_hosts": {"hosts": hosts}}}}, indent=2))
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps(CELLS))
    r = run_cli("matrix", SUITE, "--inventory", str(inv), "--cells", str(cells), "--results",
                str(tmp_path / "results"), timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    _, local_dir, local = local_run.result()
    run_dir = Path(re.findall(r"^archive: (.+)$", r.stdout, re.M)[-1])
    mx = json.loads((run_dir / "matrix.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # the same cells, in the same order, with the same verdicts and outcomes as the local run
    assert list(mx["cells"]) == list(local["cells"])
    for k, c in mx["cells"].items():
        assert (c["verdict"], c["outcome"], c["expected_outcome"]) == \
            (local["cells"][k]["verdict"], local["cells"][k]["outcome"], local["cells"][k]["expected_outcome"]), k
    assert mx["summary"] == local["summary"]
    # laid out as a local run: the same files and keys, every cell's links resolve in the merged archive
    assert {p.name for p in run_dir.iterdir()} >= {p.name for p in local_dir.iterdir()} - {"history.sqlite"}
    assert set(mx) == set(local) and mx["axes"] == local["axes"]
    for k, c in mx["cells"].items():
        if c["attempts"]:
            assert (run_dir / c["dir"] / "manifest.json").is_file(), k
            assert (run_dir / c["files"]["counters"]).is_file() and (run_dir / c["attempts"][0]["log"]).is_file(), k
            assert (run_dir / c["experiment"]).is_file(), k
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    assert "basic-handshake" in (run_dir / "report.html").read_text()
    # which host ran what: hbad failed and its cell was retried on a host that did not; h9 got nothing
    shards = {(s["host"], s["retry_of"]): s for s in manifest["shards"]}
    assert shards[("hbad", None)]["status"] == "failed" and "exited" in shards[("hbad", None)]["error"]
    assert shards[("h9", None)]["status"] == "unreachable" and shards[("h9", None)]["cells"] == 0
    assert "h9: unreachable" in r.stderr and "retrying 1 cell(s) of hbad" in r.stdout
    retried = [s for (h, of), s in shards.items() if of == "hbad"]
    assert len(retried) == 1 and retried[0]["status"] == "ok" and retried[0]["host"] in ("h1", "h2")
    ran = {key(c): c["host"] for c in manifest["cells"]}
    assert set(ran.values()) == {"h1", "h2"}, ran
    for h in (h1, h2):  # the runs happened under each host's own /srv, not the controller's
        assert list((h.root / "results").glob("run-*/*-matrix-hackathon-*/matrix.json"))
    # history: recorded like a local run
    hist = run_cli("history", "--results", str(tmp_path / "results"), "--json")
    assert json.loads(hist.stdout)[0]["latest"]["run_id"] == mx["run_id"]


def test_interrupt_stops_the_hosts_and_archives_what_came_back(ssh_hosts, tmp_path):
    """SIGINT to the controller while a host runs a cell: the host's matrix is interrupted through
    its pid file, archives itself, and that archive is merged (status interrupted, exit 130);
    no ansible or remote process is left."""
    import glob
    import signal

    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    (h1,) = ssh_hosts(1)
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"children": {"testbed_hosts": {"hosts": {
        "h1": {**h1.inventory_vars(), **TESTBED}}}}}}))
    cells = tmp_path / "cells.json"
    listed = [{"client": "host", "server": "host", "scenario": "aggregate"}, CELLS[0]]  # a long cell first
    cells.write_text(json.dumps(listed))
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "matrix", SUITE, "--inventory", str(inv), "--cells",
                             str(cells), "--results", str(tmp_path / "results")], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = f"{h1.root}/results/run-*/.*partial/cells/.*aggregate*partial/logs/shaping/*"  # its network is up
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not glob.glob(running) and proc.poll() is None:
        time.sleep(0.2)
    assert glob.glob(running), "no cell started on the host"
    (pid_file,) = glob.glob(f"{h1.root}/results/run-*/matrix.pid")
    remote_pid = int(Path(pid_file).read_text())
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert not Path(pid_file).exists() and not Path(f"/proc/{remote_pid}").exists()  # it stopped and cleaned up
    run_dir = Path(re.findall(r"^archive: (.+)$", out, re.M)[-1])
    mx = json.loads((run_dir / "matrix.json").read_text())
    assert mx["status"] == "interrupted" and json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    cell = mx["cells"]["aggregate/host/host"]  # the running cell: interrupted, a testbed error
    assert cell["verdict"] == "error" and cell["reason"] == "interrupted" and cell["dir"], (out, cell)
    after = mx["cells"][key(CELLS[0])]  # the next one never started
    assert after["verdict"] == "error" and not after["dir"] and not after["attempts"], after
    cell_manifest = json.loads((run_dir / cell["dir"] / "manifest.json").read_text())
    assert cell_manifest["status"] == "interrupted"  # the host's cell tore down and archived itself
    assert verify(run_dir) == {"missing": [], "extra": [], "altered": []}
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    lines = {p: Path(f"/proc/{p}/cmdline").read_text(errors="replace").replace("\0", " ") for p in left}
    assert not [c for c in lines.values() if c and not c.startswith("sshd")], lines


def test_an_unknown_host_key_stops_the_run_before_anything_is_sent(ssh_hosts, tmp_path):
    (h1,) = ssh_hosts(1)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    vars_ = {**h1.inventory_vars(), **TESTBED,
             "ansible_ssh_common_args": f"-o UserKnownHostsFile={empty} -o GlobalKnownHostsFile=/dev/null"}
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"children": {"testbed_hosts": {"hosts": {"h1": vars_}}}}}))
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps(CELLS[:1]))
    r = run_cli("matrix", SUITE, "--inventory", str(inv), "--cells", str(cells), "--results", str(tmp_path / "res"))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "not in" in r.stderr and "--accept-new-host-keys" in r.stderr
    assert not (h1.root / "results").exists() and empty.read_text() == ""  # nothing sent, nothing recorded
    assert list((tmp_path / "res").iterdir()) == []  # no archive, no work directory left


@pytest.mark.usefixtures("no_leaks")
def test_exactly_the_listed_cells_run_here(local_run):
    done, run_dir, mx = local_run.result()
    assert done.returncode == 0, done.stdout + done.stderr
    assert local_run.seen == [str(local_run.proc.pid)], "the pid file held the matrix's own pid while it ran"
    assert not local_run.pid_file.exists(), "the pid file is removed at the end"
    assert sorted(mx["cells"]) == sorted(key(c) for c in CELLS)  # no cartesian product (tcp/tcp, host/tcp absent)
    verdicts = {k: c["verdict"] for k, c in mx["cells"].items()}
    assert verdicts == {"basic-handshake/host/host": "as-expected", "basic-handshake/tcp/host": "as-expected",
                        "basic-handshake/host/mptcp-v0.92": "unavailable"}
    assert mx["options"]["cells"] == [key(c) for c in CELLS]
    assert "matrix hackathon: 3 cells (2 to run, 1 not runnable here)" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == f"report: {run_dir / 'report.html'}"
