"""`testbed provision` on bad input: one line `file:line: field: problem`, exit 2, no archive; and
an unreachable host is exit 1 with its reason in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

PLAYBOOK = ROOT / "tests" / "fixtures" / "playbooks" / "probe.yml"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    h1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n")
    return path


def _bad(tmp_path: Path, *args: str) -> str:
    results = tmp_path / "results"
    done = run_cli("provision", *args, "--results", str(results), timeout=120)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not results.exists() or not any(results.iterdir()), "bad input must not leave an archive"
    return lines[0]


def test_missing_inventory_and_playbook(tmp_path, inventory):
    assert _bad(tmp_path, str(tmp_path / "nope.yml"), str(PLAYBOOK)) == f"{tmp_path / 'nope.yml'}: file not found"
    assert _bad(tmp_path, str(inventory), str(tmp_path / "nope.yml")) == f"{tmp_path / 'nope.yml'}: file not found"


def test_bad_inventory_points_at_the_line(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    h1:\n      ansible_port: many\n")
    assert _bad(tmp_path, str(inv), str(PLAYBOOK)) == \
        f"{inv}:4:7: all.hosts.h1.ansible_port: not a port number: 'many'"
    inv.write_text("all:\n  hostz:\n    h1: {}\n")
    assert _bad(tmp_path, str(inv), str(PLAYBOOK)).startswith(f"{inv}:2:3: all.hostz: unknown key 'hostz'")


def test_bad_extra_vars(tmp_path, inventory):
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "-e", "novalue") == \
        "--extra-vars: novalue: expected name=value or @file"
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "-e", "2x=1") == \
        "--extra-vars: 2x: not a valid Ansible variable name"
    extra = tmp_path / "extra.yml"
    extra.write_text("a: 1\nb: [1, 2\nc: 3\n")
    line = _bad(tmp_path, str(inventory), str(PLAYBOOK), "--extra-vars", f"@{extra}")
    assert line.startswith(f"{extra}:3:") and "YAML syntax" in line, line
    extra.write_text("- a\n- b\n")
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "-e", f"@{extra}") == \
        f"{extra}:1:1: extra vars are a mapping of names to values"
    extra.write_text("ok: 1\nnot-a-name: 2\n")
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "-e", f"@{extra}") == \
        f"{extra}:2:1: not-a-name: not a valid Ansible variable name"
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "-e", f"@{tmp_path / 'none.yml'}") == \
        f"{tmp_path / 'none.yml'}: file not found"


def test_bad_playbook_and_limit(tmp_path, inventory):
    play = tmp_path / "play.yml"
    play.write_text("hosts: all\ntasks: []\n")
    assert _bad(tmp_path, str(inventory), str(play)) == f"{play}:1:1: a playbook is a list of plays"
    play.write_text("- name: x\n  tasks: []\n")
    assert _bad(tmp_path, str(inventory), str(play)) == \
        f"{play}:1:3: [0]: each play is a mapping with `hosts:` (or an import_playbook)"
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "--limit", "h9").startswith(
        "--limit: h9: no host or group 'h9'")
    assert _bad(tmp_path, str(inventory), str(PLAYBOOK), "--timeout", "0").startswith("--timeout:")


def test_what_only_ansible_knows_is_bad_input_too(tmp_path, inventory):
    """A missing role or an unknown module: ansible's syntax check, reported at its line."""
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    play = tmp_path / "play.yml"
    play.write_text("- name: x\n  hosts: all\n  tasks:\n    - name: t\n      no.such.module: {}\n")
    line = _bad(tmp_path, str(inventory), str(play))
    assert line.startswith(f"{play}:4:7: playbook: ") or line.startswith(f"{play}:5:"), line
    play.write_text("- name: x\n  hosts: all\n  roles:\n    - no_such_role\n")
    line = _bad(tmp_path, str(inventory), str(play))
    assert line.startswith(f"{play}:4:") and "no_such_role" in line, line


def test_an_unreachable_host_is_exit_1_with_the_reason_and_an_archive(tmp_path, inventory):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    results = tmp_path / "results"
    done = run_cli("provision", str(inventory), str(PLAYBOOK), "-e", "site_password=hunter2-xyz",
                   "--results", str(results), timeout=180)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "unreachable" in done.stdout and "Connection refused" in done.stdout, done.stdout
    (run_dir,) = results.iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["exit_code"] == 1
    assert manifest["hosts"]["h1"]["status"] == "unreachable"
    assert "Connection refused" in manifest["hosts"]["h1"]["message"]
    assert manifest["inputs"]["extra_vars"] == {"site_password": "<redacted>"}
    for p in run_dir.rglob("*"):
        assert not p.is_file() or b"hunter2" not in p.read_bytes(), p
    assert run_cli("verify", str(run_dir)).returncode == 0
