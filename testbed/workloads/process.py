"""The processes a workload starts in its nodes: started and registered in the run's state (so
`testbed clean` finds them after a crash), waited for, stopped, and their JSON result line read.
Both the workload drivers and the probe driver build on these."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from typing import Any

from testbed.emulation.nodeexec import wait_for_output
from testbed.workloads.context import Context

STATE_LOCK = threading.Lock()  # concurrent workloads: RunState.save() is not thread-safe


def track(ctx: Context, proc: subprocess.Popen, what: str) -> None:
    """Registers a started process in the run's state. A QEMU guest's process has no host pid of its
    own (.pid is qemu's): the guest is stopped whole, so it is not registered."""
    if getattr(proc, "guest_pid", None) is None:
        with STATE_LOCK:
            ctx.state.add_process(proc.pid, what)


class NotReady(RuntimeError):
    """A workload's process did not say it was ready in time. `silent`: it was still running and had
    printed nothing, so it was not the implementation that refused (a bind error would be printed):
    it had not got that far, which is the machine's or the testbed's failure, not a measurement."""

    def __init__(self, message: str, silent: bool) -> None:
        super().__init__(message)
        self.silent = silent


READY_SECONDS = 10.0
# An emulated (TCG) guest starts Python 10-20 times slower than a namespace, and more on a loaded
# machine: the demo saw guest servers miss 10 s with load 10 on 2 cores. The cell's timeout still bounds it.
GUEST_READY_SECONDS = 60.0


def start(node: Any, argv: list[str], ctx: Context, what: str, wait_for: bytes | None,
          timeout: float | None = None) -> subprocess.Popen:
    """Starts `argv` in `node`; with `wait_for`, waits until the process prints it (it is listening),
    at most `timeout` seconds (default: READY_SECONDS, GUEST_READY_SECONDS in a guest)."""
    with open(ctx.log_dir / f"{what}.stderr", "wb") as log:  # the child keeps its own descriptor
        proc = node.popen(argv, stdout=subprocess.PIPE, stderr=log)
    track(ctx, proc, what)
    if wait_for is None:
        return proc
    if timeout is None:
        timeout = GUEST_READY_SECONDS if getattr(proc, "guest_pid", None) is not None else READY_SECONDS
    started = time.monotonic()
    found, seen = wait_for_output(proc.stdout, wait_for, timeout)
    if not found:
        with contextlib.suppress(subprocess.TimeoutExpired):  # its output ended: it is exiting
            proc.wait(timeout=0.5)
        silent = proc.returncode is None and not seen.strip()
        stop(proc)
        output = seen.decode(errors="replace")[-300:].strip() or "no output"
        raise NotReady(f"{what} did not become ready within {time.monotonic() - started:.1f} s: {output}", silent)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> bytes:
    """Signals `proc` and collects its output; kills it after `timeout`. A child it left behind may
    hold the pipe open forever (a shell's `sleep`): then what was read is returned, not waited for."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, _ = proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired as exc:
            out = exc.output
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait(timeout=2.0)
    return out or b""


def finish(proc: subprocess.Popen, timeout: float) -> tuple[bytes, bool]:
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out or b"", False
    except subprocess.TimeoutExpired:
        return stop(proc, signal.SIGKILL), True


def json_tail(out: bytes) -> dict | None:
    for line in reversed(out.decode(errors="replace").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def start_servers(argv: list[str], ctx: Context, what: str) -> dict[str, subprocess.Popen]:
    """The server side on each of `ctx.servers` (logs named what-<node>); stopped again on failure."""
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, node in ctx.servers.items():
            procs[name] = start(node, argv, ctx, f"{what}-{name}", b"ready")
    except RuntimeError:
        for proc in procs.values():
            stop(proc)
        raise
    return procs


def servers_result(procs: dict[str, subprocess.Popen], wait: float, served: Any) -> dict:
    """Results of several servers. Those that end by themselves within `wait` seconds (a bulk server
    ends with its one transfer) are waited for; the others are idle, waiting for a connection the
    balancer never sent them, and are stopped (their 'terminated' is not an error of the workload)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and all(p.poll() is None for p in procs.values()):
        time.sleep(0.02)
    outs = {name: json_tail(stop(p, timeout=2.0)) for name, p in procs.items()}
    by = [name for name, out in outs.items() if out is not None and served(out)]
    return {"served_by": by, "server": outs[by[0]] if by else None, "servers": outs}
