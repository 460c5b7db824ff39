"""The small base every network function shares (IPMininet's Daemon habit: build → start → stop).

A function runs inside its node's namespace. `build()` turns the node's spec into the concrete
configuration (a JSON-able dict: it goes into the manifest as is), `start()` applies it and starts
its processes, `stop()` undoes both. Every process started is recorded with the run's state so a
killed run can still be cleaned up, and every log is written under `log_dir`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class FunctionContext:
    name: str  # node name in the topology
    node: Any  # the Mininet node (own network namespace): .cmd, .popen, .pid
    interfaces: list[Any]  # testbed.spec.resolve.Interface: .name, .address, .peer, .segment
    resolved: Any  # testbed.spec.resolve.Resolved: the whole topology, for peers' addresses
    log_dir: Path
    state: Any = None  # testbed.state.RunState (has add_process(pid, what)); None in unit tests
    seed: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)


class NetworkFunction:
    kind: ClassVar[str]

    def __init__(self, spec: Any, ctx: FunctionContext):
        self.spec = spec
        self.ctx = ctx

    def build(self) -> dict:
        """The concrete configuration, derived from the spec and the topology; no side effects."""
        raise NotImplementedError

    def start(self) -> dict:
        """Apply the configuration and start processes; returns build()'s dict plus what was started."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop processes (SIGTERM, then SIGKILL) and remove what start() added; idempotent."""
        for proc in self.ctx.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.ctx.processes:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def spawn(self, argv: list[str], what: str, **kwargs: Any) -> subprocess.Popen:
        """Start a process in the node's namespace, its output in log_dir/<what>.log, and record it."""
        self.ctx.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.ctx.log_dir / f"{what}.log", "ab") as log:
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stderr", subprocess.STDOUT)
            proc = self.ctx.node.popen(argv, **kwargs)
        self.ctx.processes.append(proc)
        if self.ctx.state is not None:
            self.ctx.state.add_process(proc.pid, f"{self.kind} {self.ctx.name}: {what}")
        return proc
