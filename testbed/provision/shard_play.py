"""One play of playbooks/run-cells.yml through ansible-runner, cancellable, with per-host results.

`play()` is the only place the sharded matrix touches ansible-runner; it is meant to give way to
testbed.provision.playbook (the `testbed provision` wrapper) when that exists, and keeps to what
the sharded matrix needs: a timeout, a cancel event (Ctrl-C), and per host ok / failed /
unreachable with the failing task's message.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import CapabilityError

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
    try:
        import ansible_runner
    except ImportError:
        raise CapabilityError("--inventory needs ansible-runner (pip install 'testbed[provision]')") from None
    data_dir = Path(tempfile.mkdtemp(prefix="testbed-shard-"))
    # ansible-runner looks ansible-playbook up on PATH: the venv's, beside this interpreter.
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "ANSIBLE_PIPELINING": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    start = time.monotonic()
    try:
        run = ansible_runner.run(private_data_dir=str(data_dir), playbook=str(playbook), inventory=str(inventory),
                                 extravars={**extravars, "run_hosts": ",".join(hosts)}, quiet=True,
                                 timeout=int(timeout), envvars=env, cancel_callback=cancel.is_set)
        result = PlayResult(run.status, stdout=_read(run))
        stats = run.stats or {}
        for host in hosts:
            if host in (stats.get("dark") or {}):
                result.hosts[host] = "unreachable"
            elif host in (stats.get("failures") or {}) or host not in (stats.get("ok") or {}):
                result.hosts[host] = "failed"
            else:
                result.hosts[host] = "ok"
        for event in run.events:
            data = event.get("event_data") or {}
            if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and data.get("host"):
                res = data.get("res") or {}
                if data.get("ignore_errors"):
                    continue
                msg = res.get("msg") or res.get("stderr") or json.dumps(res)[:300]
                result.messages[data["host"]] = f"{data.get('task')}: {str(msg).strip()}"
        result.seconds = time.monotonic() - start
        return result
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _read(run: Any) -> str:
    try:
        return run.stdout.read()
    except (OSError, AttributeError, ValueError):
        return ""
