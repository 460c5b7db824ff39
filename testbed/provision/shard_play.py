"""One play of playbooks/run-cells.yml (through testbed.provision.playbook, ansible-runner),
cancellable, reduced to what the sharded matrix needs: per host ok / failed / unreachable and the
failing task's message."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "run-cells.yml"


@dataclass
class PlayResult:
    status: str  # ansible-runner's: successful | failed | canceled | timeout
    hosts: dict[str, str] = field(default_factory=dict)  # host → ok | failed | unreachable
    messages: dict[str, str] = field(default_factory=dict)  # host → the failing task's message
    stdout: str = ""
    seconds: float = 0.0


def play(inventory: Path, extravars: dict[str, Any], hosts: list[str], *, cancel: threading.Event,
         timeout: float, data_dir: Path, playbook: Path = PLAYBOOK) -> PlayResult:
    """`data_dir` (new, kept) names this play's processes: after a cancel, ansible's forked workers
    (each in a session of its own, out of reach of ansible-runner's kill of the process group)
    are found by it and killed."""
    from testbed.provision.playbook import run_playbook

    # Host keys were checked (and new ones recorded, when asked) before the play: strict here.
    try:
        run = run_playbook(playbook, inventory, extravars={**extravars, "run_hosts": ",".join(hosts)},
                           limit=",".join(hosts), timeout=timeout, stop=cancel, data_dir=data_dir)
    finally:
        _kill_strays(data_dir)
    result = PlayResult(run.status, stdout=run.stdout, seconds=(run.finished - run.started).total_seconds())
    for host in hosts:
        h = run.hosts.get(host)
        status = "failed" if h is None else h.status
        result.hosts[host] = "ok" if status in ("ok", "changed") else status
        if h is not None and h.task:
            result.messages[host] = f"{h.task}: {h.message or ''}".strip()
        elif h is None:
            result.messages[host] = run.error or "the play did not reach it"
    return result


def _kill_strays(data_dir: Path) -> None:
    """SIGKILL the processes whose command line names this play's own data_dir (its workers)."""
    mark = str(data_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if mark in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
