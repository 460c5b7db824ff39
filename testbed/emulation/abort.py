"""Cutting a run short: node commands that can be abandoned, and the switch that abandons them.

Mininet's `Node.cmd` writes a line to the node's shell and then reads, without a timeout, until the
shell's prompt comes back: a command that never ends blocks its thread forever, and a main thread
that waits for that thread (a thread pool's shutdown, a join) can then never unwind, whatever signal
it gets. So node commands are sent with Mininet's `sendCmd` and awaited here in short polls that
watch one process-wide flag: once the run is cut off (its timeout, SIGINT, SIGTERM) every waiting
command is abandoned within a poll, what it started is killed, and its shell is brought back to its
prompt if it comes back within a second; a shell that does not is marked stuck and nothing is typed
into it again (teardown kills it).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from testbed.errors import RunError

POLL_MS = 100  # how often a waiting command looks at the flag
RESYNC_SECONDS = 1.0  # how long an abandoned shell gets to show its prompt again

_abort = threading.Event()
_reason = ""
_stuck: weakref.WeakSet[Any] = weakref.WeakSet()
_inflight = 0
_inflight_cv = threading.Condition()


class Abandoned(RunError):
    """A node command given up because the run is being cut off."""


def abort(reason: str) -> None:
    """Abandon every node command waiting now and refuse new ones, until `resume()`.
    Called from signal handlers: it only sets a flag."""
    global _reason
    _reason = reason
    _abort.set()


def resume() -> None:
    """Node commands run again (a new run in the same process)."""
    _abort.clear()


def aborting() -> bool:
    return _abort.is_set()


def reason() -> str:
    return _reason


def stuck(node: Any) -> bool:
    """Whether the node's shell never came back from an abandoned command (nothing can run in it)."""
    return node in _stuck


def acquire(lock: threading.Lock, what: str) -> None:
    """`lock.acquire()` that gives up when the run is cut off (another thread may hold a node's lock
    in a command that is being abandoned)."""
    while not lock.acquire(timeout=POLL_MS / 1000):
        if _abort.is_set():
            raise Abandoned(f"{what}: not run, {_reason}")


def settle(timeout: float) -> bool:
    """Wait (at most `timeout` s) until no node command is being awaited: teardown closes the shells'
    terminals, which a thread still polling them must have let go of first."""
    deadline = time.monotonic() + timeout
    with _inflight_cv:
        while _inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _inflight_cv.wait(min(left, POLL_MS / 1000))
    return True


def command(node: Any, line: str) -> str:
    """`node.cmd(line)`, abandoned when the run is cut off. The caller holds the node's lock."""
    global _inflight
    if not hasattr(node, "sendCmd"):  # a QEMU guest: its control channel has its own timeouts
        return node.cmd(line)
    if _abort.is_set():
        raise Abandoned(f"{node.name}: not run, {_reason}")
    if node in _stuck:
        raise Abandoned(f"{node.name}: its shell is still busy with an abandoned command")
    with _inflight_cv:
        _inflight += 1
    try:
        node.sendCmd(line)
        out: list[str] = []
        while node.waiting:
            if _abort.is_set():
                _abandon(node)
                raise Abandoned(f"{node.name}: abandoned `{line[:120]}`: {_reason}")
            try:
                out.append(_output(node, POLL_MS))
            except (OSError, ValueError) as exc:  # the terminal was closed under us (the shell was killed)
                _stuck.add(node)
                raise Abandoned(f"{node.name}: the node's shell went away ({exc})") from None
        return "".join(out)
    finally:
        if node.waiting:  # left by an exception (a signal's, in the main thread): not at its prompt
            _stuck.add(node)
        with _inflight_cv:
            _inflight -= 1
            _inflight_cv.notify_all()


def _output(node: Any, timeout_ms: int) -> str:
    """What the shell printed within `timeout_ms` ('' if nothing); clears `node.waiting` at its prompt.

    Mininet's own `monitor(timeoutms)` cannot be used: its poll object is registered for POLLOUT too,
    which a terminal always is, so it "returns" at once and then blocks in read() regardless."""
    if node.readbuf:
        data, node.readbuf = node.readbuf, ""
    else:
        poller = select.poll()
        poller.register(node.stdout.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(timeout_ms):
            return ""
        raw = os.read(node.stdout.fileno(), 65536)
        if not raw:
            raise OSError("end of file on the node's terminal")
        data = node.decoder.decode(raw)
    if chr(127) in data:  # the prompt: Mininet's sentinel that the command is done
        node.waiting = False
        data = data.replace(chr(127), "")
    return data


def _abandon(node: Any) -> None:
    """Kill what the shell is running, and wait briefly for its prompt; else mark the shell stuck."""
    shell = getattr(node, "pid", None)
    if shell:
        kill_descendants(shell)
    deadline = time.monotonic() + RESYNC_SECONDS
    while node.waiting and time.monotonic() < deadline:
        try:
            _output(node, POLL_MS)
        except (OSError, ValueError):
            break
    if node.waiting:
        _stuck.add(node)


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc's parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants(pid: int) -> None:
    """SIGKILL whatever a node's shell runs: a hung command may ignore gentler signals, and only the
    abandoned command runs under the shell (long-lived processes are started with popen)."""
    for child in children_of(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
