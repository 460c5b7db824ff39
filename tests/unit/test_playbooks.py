"""Every playbook passes `ansible-playbook --syntax-check` and `ansible-lint` (offline, production profile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yml"))
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip extra 'provision')")
    return str(found)


def _env() -> dict[str, str]:
    # Ansible writes its temporary and collection state under HOME: keep it inside the test run.
    return {**os.environ, "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-test", "ANSIBLE_HOME": "/tmp/.ansible-test"}


def test_there_are_playbooks() -> None:
    assert {p.name for p in PLAYBOOKS} >= {"testbed-host.yml", "kernel-upstream.yml", "kernel-mptcp-v0.92.yml"}


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_syntax_check(playbook: Path) -> None:
    done = subprocess.run([_tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(playbook)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_is_clean() -> None:
    done = subprocess.run([_tool("ansible-lint"), "--offline", "playbooks"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
