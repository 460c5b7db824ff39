"""One play of playbooks/run-cells.yml (through testbed.provision.playbook, ansible-runner),
cancellable, reduced to what the sharded matrix needs: per host ok / failed / unreachable and the
failing task's message."""

from __future__ import annotations

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
         timeout: float, playbook: Path = PLAYBOOK) -> PlayResult:
    from testbed.provision.playbook import run_playbook

    # Host keys were checked (and new ones recorded, when asked) before the play: strict here.
    run = run_playbook(playbook, inventory, extravars={**extravars, "run_hosts": ",".join(hosts)},
                       limit=",".join(hosts), timeout=timeout, stop=cancel)
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
