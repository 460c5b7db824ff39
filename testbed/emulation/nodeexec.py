"""Running argv lists on Mininet nodes and getting their exit codes back.

A Mininet node is a shell on a pseudo-terminal: every command is written to it as one input line.
A terminal in canonical mode holds at most 4096 bytes of a line and discards the rest, so a long line
never reaches the shell whole, the end-of-output sentinel never comes back, and the caller waits
forever (a 100-router chain hung like that on its routes). So nothing long is ever typed into a
node's shell: a batch of commands, or one command whose line would be long, is written to a script
file that the shell runs with `sh FILE`, a line of a few dozen bytes whatever the batch's size. The
nodes share the host's filesystem (a namespace has its own network only), so they all read it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import re
import shlex
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.emulation import abort
from testbed.errors import RunError

_RC = "__testbed_rc="
_FAILED = "__testbed_failed="
#: The longest line typed into a node's shell (well under the terminal's 4096-byte line limit).
LINE_MAX = 512
# A Mininet node's shell serves one command at a time; events and samplers run in threads.
_locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
_dir_lock = threading.Lock()
_script_dir: Path | None = None
_counter = 0


def _cmd(node: Any, line: str) -> str:
    lock = _locks[id(node)]
    abort.acquire(lock, getattr(node, "name", "node"))
    try:
        return abort.command(node, line)  # node.cmd, but given up when the run is cut off
    finally:
        lock.release()


def _scripts() -> Path:
    """This process's private directory for batch scripts, removed when the process exits."""
    global _script_dir
    with _dir_lock:
        if _script_dir is None or not _script_dir.is_dir():
            _script_dir = Path(tempfile.mkdtemp(prefix="testbed-exec-"))
            atexit.register(shutil.rmtree, _script_dir, True)
        return _script_dir


def write_script(text: str, suffix: str = ".sh") -> Path:
    """A new file under the private script directory holding `text` (the caller removes it)."""
    global _counter
    base = _scripts()
    with _dir_lock:
        _counter += 1
        path = base / f"{os.getpid()}-{threading.get_ident()}-{_counter}{suffix}"
    path.write_text(text)
    return path


#: Tools whose consecutive commands in a batch run as one process reading a batch file: a 100-router
#: chain gives every router a hundred routes, and one `ip` process per route was most of its set-up.
BATCH_TOOLS = ("ip", "tc")
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@%+,=-]+")


def _batchable(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The (tool, global options...) prefix under which `argv` can go into a batch file, else None.
    Batch files are split on whitespace, so only plain words go in; options stay on the command line
    (`ip -6 -batch FILE`: a batch line cannot carry them)."""
    if not argv or argv[0] not in BATCH_TOOLS or not all(_PLAIN.fullmatch(a) for a in argv[1:]):
        return None
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("-batch", "-b", "-force", "-n", "-netns"):
            return None
        i += 1
    return tuple(argv[:i]) if i < len(argv) else None


@dataclass
class _Step:
    argv: list[str]  # what the script runs
    covers: list[int]  # indices into the caller's commands
    batch: Path | None = None  # the batch file `argv` reads


def plan(commands: Sequence[Sequence[str]], files: list[Path]) -> list[_Step]:
    """Commands grouped into script steps: runs of batchable commands with the same prefix become one
    `TOOL [OPTIONS] -batch FILE` (FILE written and appended to `files`), the rest stay as they are."""
    steps: list[_Step] = []
    group: tuple[str, ...] | None = None
    for i, argv in enumerate(commands):
        prefix = _batchable(argv)
        if prefix is not None and prefix == group and steps[-1].batch is not None:
            steps[-1].covers.append(i)
            continue
        group = prefix
        if prefix is None:
            steps.append(_Step(list(argv), [i]))
        else:
            steps.append(_Step([*prefix, "-batch", ""], [i], Path()))
    for step in steps:
        if step.batch is not None:
            if len(step.covers) == 1:  # a batch of one is just the command
                step.argv, step.batch = list(commands[step.covers[0]]), None
                continue
            width = len(step.argv) - 2
            step.batch = write_script("".join(" ".join(commands[i][width:]) + "\n" for i in step.covers),
                                      suffix=".batch")
            files.append(step.batch)
            step.argv[-1] = str(step.batch)
    return steps


def batch_script(steps: Sequence[_Step]) -> str:
    """A POSIX sh script running `steps` in order, stopping at the first failure, which it names by
    step index (after that step's own output) and exits with its code."""
    lines = ["exec 2>&1"]
    for i, step in enumerate(steps):
        lines.append(f"{shlex.join(step.argv)} || {{ rc=$?; echo; echo {_FAILED}{i}; exit $rc; }}")
    return "\n".join(lines) + "\n"


def _failed_command(commands: Sequence[Sequence[str]], step: _Step, output: str) -> str:
    """The command of `step` that failed: a batch names its line ("Command failed FILE:N")."""
    if step.batch is not None:
        found = re.search(re.escape(str(step.batch)) + r":(\d+)", output)
        if found and 1 <= int(found.group(1)) <= len(step.covers):
            return shlex.join(commands[step.covers[int(found.group(1)) - 1]])
        return f"one of {len(step.covers)} `{' '.join(step.argv[:-2])}` commands"
    return shlex.join(commands[step.covers[0]])


def _run_script(node: Any, text: str) -> tuple[int, str]:
    path = write_script(text)
    try:
        out = _cmd(node, f"sh {shlex.quote(str(path))} 2>&1; echo {_RC}$?")
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    body, _, rc = out.rpartition(_RC)
    return _code(rc), body


def _code(text: str) -> int:
    try:
        return int(text.strip() or 1)
    except ValueError:
        return 1


def run(node: Any, argv: Sequence[str], check: bool = True) -> tuple[int, str]:
    """Run one command in the node's shell (arguments quoted) and return (exit code, output)."""
    direct = getattr(node, "run_argv", None)
    if direct is not None:  # a QEMU guest: no shell in between (it can do some commands itself)
        code, text = direct(list(argv))
        if check and code != 0:
            raise RunError(f"{node.name}: `{_short(shlex.join(argv))}` failed ({code}): {text.strip()[:400]}")
        return code, text
    line = shlex.join(argv)
    if len(line) > LINE_MAX and _is_terminal(node):
        code, text = _run_script(node, f"exec 2>&1\n{line}\n")
    else:
        out = _cmd(node, line + f" 2>&1; echo {_RC}$?")
        text, _, rc = out.rpartition(_RC)
        code = _code(rc)
    if check and code != 0:
        raise RunError(f"{node.name}: `{_short(line)}` failed ({code}): {text.strip()[:400]}")
    return code, text


def run_many(node: Any, commands: Sequence[Sequence[str]]) -> None:
    """Several commands in one round trip (one script file, runs of `ip`/`tc` commands in one batch
    process each); stops at and reports the first failure."""
    if not commands:
        return
    if not _is_terminal(node):  # a QEMU guest: every process costs, so it batches them itself
        (getattr(node, "run_many", None) or node.run_tools)(commands)
        return
    files: list[Path] = []
    try:
        steps = plan(commands, files)
        code, text = _run_script(node, batch_script(steps))
    finally:
        for path in files:
            with contextlib.suppress(OSError):
                path.unlink()
    if code != 0:
        head, _, tail = text.rpartition(_FAILED)
        idx = tail.split()[0] if tail.split() else "?"
        failed = (_failed_command(commands, steps[int(idx)], head) if head and idx.isdigit() and int(idx) < len(steps)
                  else "?")
        raise RunError(f"{node.name}: `{_short(failed)}` failed ({code}): {(head or text).strip()[-400:]}")


def _is_terminal(node: Any) -> bool:
    """A Mininet node's shell reads a terminal (lines of at most 4096 bytes, files it can open); a
    QEMU guest (a GuestNode, or a bare Guest) takes commands over its control channel and does not
    see this process's script directory."""
    return not (hasattr(node, "run_many") or hasattr(node, "run_tools"))


def _short(line: str) -> str:
    return line if len(line) <= 300 else f"{line[:300]}… ({len(line)} characters)"


def submit_all(jobs: Sequence[Callable[[], Any]], workers: int = 8, name: str = "node-job") -> list[Future]:
    """Start `jobs` on at most `workers` daemon threads; one Future each (cancel() one not started).

    Not a ThreadPoolExecutor: the interpreter joins its threads at exit, so one thread blocked for
    good (a Mininet shell that never shows its first prompt reads its terminal without a timeout)
    would keep a run that has already been cut off and torn down from ever exiting."""
    futures: list[Future] = [Future() for _ in jobs]
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(jobs)):
        todo.put(i)

    def work() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            future = futures[i]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(jobs[i]())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
                future.set_exception(exc)

    for n in range(min(workers, len(jobs))):
        threading.Thread(target=work, name=f"{name}-{n}", daemon=True).start()
    return futures


def parallel(jobs: Sequence[Callable[[], Any]], workers: int = 8) -> list[Any]:
    """Run independent jobs in threads (one per node shell); the first exception is raised.

    The caller never waits for a thread it cannot interrupt: it waits in short timeouts (so a signal
    handler runs and its exception propagates), and on the first failure, or an exception raised in
    it by a signal, it leaves at once (jobs not started are cancelled; those running are node
    commands, which give up when the run is aborted)."""
    if len(jobs) <= 1:
        return [job() for job in jobs]
    from concurrent.futures import FIRST_EXCEPTION, wait

    futures = submit_all(jobs, workers)
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
        return [f.result() for f in futures]
    finally:
        for f in futures:
            f.cancel()


def readable(fd: int, timeout: float) -> bool:
    """Whether `fd` has input (or hung up) within `timeout` seconds. poll(), not select(): a
    thousand-node network holds more than select()'s 1024 descriptors (every shell has a pty)."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def wait_for_output(stream: Any, token: bytes, timeout: float) -> tuple[bool, bytes]:
    """Read a child's pipe until `token` appears; (found, what was read).

    Reads the raw descriptor: a buffered readline() could pull the token into Python's buffer,
    where select() no longer sees it."""
    import time

    fd = stream.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while token not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not readable(fd, left):
            return False, seen
        chunk = os.read(fd, 65536)
        if not chunk:
            return False, seen
        seen += chunk
    return True, seen
