"""Running argv lists on Mininet nodes and getting their exit codes back."""

from __future__ import annotations

import shlex
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from testbed.errors import RunError

_RC = "__testbed_rc="
# A Mininet node's shell serves one command at a time; events and samplers run in threads.
_locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)


def _cmd(node: Any, line: str) -> str:
    with _locks[id(node)]:
        return node.cmd(line)


def run(node: Any, argv: Sequence[str], check: bool = True) -> tuple[int, str]:
    """Run one command in the node's shell (arguments quoted) and return (exit code, output)."""
    out = _cmd(node, shlex.join(argv) + f" 2>&1; echo {_RC}$?")
    text, _, rc = out.rpartition(_RC)
    code = int(rc.strip() or 1)
    if check and code != 0:
        raise RunError(f"{node.name}: `{shlex.join(argv)}` failed ({code}): {text.strip()[:400]}")
    return code, text


def run_many(node: Any, commands: Sequence[Sequence[str]]) -> None:
    """Several commands in one round trip; stops at and reports the first failure."""
    if not commands:
        return
    if hasattr(node, "run_many"):  # a QEMU guest: every process costs, so it batches them itself
        node.run_many(commands)
        return
    script = " && ".join(f"{{ {shlex.join(c)} || {{ echo __failed={i}; false; }}; }}" for i, c in enumerate(commands))
    out = _cmd(node, f"{script} 2>&1; echo {_RC}$?")
    text, _, rc = out.rpartition(_RC)
    if int(rc.strip() or 1) != 0:
        idx = text.rsplit("__failed=", 1)[1].split()[0] if "__failed=" in text else "?"
        failed = shlex.join(commands[int(idx)]) if idx.isdigit() else "?"
        raise RunError(f"{node.name}: `{failed}` failed: {text.split('__failed=')[0].strip()[:400]}")


def parallel(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run independent jobs in threads (one per node shell); the first exception is raised."""
    if len(jobs) <= 1:
        return [job() for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


def wait_for_output(stream: Any, token: bytes, timeout: float) -> tuple[bool, bytes]:
    """Read a child's pipe until `token` appears; (found, what was read).

    Reads the raw descriptor: a buffered readline() could pull the token into Python's buffer,
    where select() no longer sees it."""
    import os
    import select
    import time

    fd = stream.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while token not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False, seen
        chunk = os.read(fd, 65536)
        if not chunk:
            return False, seen
        seen += chunk
    return True, seen
