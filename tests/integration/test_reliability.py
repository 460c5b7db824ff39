"""Timeouts, full disks, concurrent runs, hostile names, secrets: the run ends cleanly, the archive says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]
TOPO = ROOT / "topologies" / "dual-homed.yaml.j2"


def manifest_of(results: Path) -> tuple[Path, dict]:
    runs = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, list(results.iterdir())
    return runs[0], json.loads((runs[0] / "manifest.json").read_text())


def test_hung_workload_is_cut_off_at_the_experiment_timeout(tmp_path):
    exp = tmp_path / "hang.yaml"
    exp.write_text(f"""
name: hang
topology: {{file: {TOPO}, set: {{paths: 1, wifi_rate: 1Mbit}}}}
workloads: [{{type: bulk, size: 100MB, timeout: 600s}}]
capture: off
timeout: 3s
""")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    _, m = manifest_of(tmp_path / "res")
    assert m["status"] == "error" and "timed out" in m["error"] and "workloads" in m["error"]
    assert "Traceback" not in r.stderr


def test_full_disk_gives_a_clear_error_and_a_manifest(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], check=True)
    try:
        r = run_cli("run", str(ROOT / "experiments/basic-handshake.yaml"), "--results", str(mount), timeout=120)
        assert "Traceback" not in r.stderr
        assert r.returncode == 1, r.stdout + r.stderr
        assert "disk full" in r.stdout + r.stderr
        partial = [p for p in mount.iterdir() if p.name.endswith(".partial")]
        if not partial:
            _, m = manifest_of(mount)
            assert m["status"] == "error" and "disk full" in m["error"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_two_runs_side_by_side(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "testbed", "run", str(ROOT / f"experiments/{name}.yaml"),
                               "--results", str(tmp_path / name)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for name in ("dual-homed-join", "signal-address")]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out + err
    for name in ("dual-homed-join", "signal-address"):
        _, m = manifest_of(tmp_path / name)
        assert m["status"] == "complete" and m["outcome"] == "mptcp"


def read_root_sysctls() -> dict[str, str]:
    out = {}
    for path in [*Path("/proc/sys/net/mptcp").iterdir(), Path("/proc/sys/net/ipv4/ip_forward"),
                 *Path("/proc/sys/net/bridge").glob("bridge-nf-call-*")]:
        try:
            out[str(path)] = path.read_text()
        except OSError:
            pass
    return out


def test_root_namespace_sysctls_are_untouched(tmp_path):
    before = read_root_sysctls()
    r = run_cli("run", str(ROOT / "experiments/backup-path.yaml"), "--results", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_root_sysctls() == before


@pytest.mark.parametrize("node", ["client;reboot", "$(id)", "a" * 40, "../../etc", "client name"])
def test_hostile_names_never_reach_a_command(tmp_path, node):
    topo = tmp_path / "t.yaml"
    topo.write_text(json.dumps({"name": "t", "nodes": {node: {}, "server": {}}, "links": [[node, "server"]]}))
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ntopology: {topo}\nworkloads: [{{type: bulk, client: server, server: server}}]\n")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not a valid node name" in r.stderr
    assert not (tmp_path / "res").exists()


def test_secrets_in_inputs_are_redacted_in_the_archive(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"""
name: secrets
description: "mirror https://alice:hunter2@mirror.example/; ansible_password: sw0rdfish"
topology: {{file: {TOPO}, set: {{paths: 1}}}}
workloads: [{{type: bulk, size: 1MB}}]
capture: off
""")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir, m = manifest_of(tmp_path / "res")
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"hunter2" not in data and b"sw0rdfish" not in data, path
    assert run_cli("verify", str(run_dir)).returncode == 0
