"""Jinja2 rendering in a forked child process that cannot cost more than its limits.

Jinja2's sandbox keeps a template away from Python's internals, but not from time, memory or the
stack: two nested loops over `range(100000)`, `"x" * 10**10`, `10 ** 10 ** 10`, a macro that
calls itself. Guarding every operator, filter and string method in-process is an open-ended list;
a child process is bounded by construction. The kernel caps its address space (RLIMIT_AS), a
timer inside it stops the template at its deadline (and SIGKILL from here, if it is stuck inside
one C call), its output is counted as it streams, and whatever it does, crashing included, stays
in the child. Forking costs a few milliseconds: the child has everything imported already.

Only the outcome crosses back, as JSON on a pipe: the rendered text, or (line, message).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from testbed.spec.limits import Limits, hit, size

GRACE = 1.0  # seconds the child gets past its own deadline before it is killed from outside
_BLOCK_OPENERS = {"if", "for", "macro", "call", "filter", "block", "with", "raw", "autoescape", "trans"}
_FRAMES = {"macro", "call", "block"}  # compiled to a Python function of their own


class Deadline(Exception):
    """Raised inside the child's template code by its own timer."""


class OutputLimit(Exception):
    """Thrown into the template generator when its output passes the limit."""


class RenderFailure(Exception):
    """A template problem: the line it is at (template body lines, 1-based) and what it is."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def stream(chunks: Iterator[str], limits: Limits, throw: Callable[[BaseException], Any]) -> str:
    """Join a template's output, stopping it (inside its own code, for the line) at the size limit."""
    out: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limits.max_render_bytes:
            throw(OutputLimit(hit("max_render_bytes", f"output exceeds {size(limits.max_render_bytes)}")))
            break  # pragma: no cover - throw raises
        out.append(chunk)
    return "".join(out)


def run(render: Callable[[], str], limits: Limits) -> str:
    """`render()` in a child process; its text, or RenderFailure with a line and a named limit."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage cannot follow it
        os.close(read_fd)
        _child(write_fd, render, limits)
    os.close(write_fd)
    data = bytearray()
    finished = False
    deadline = time.monotonic() + limits.max_render_seconds + GRACE
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            block = os.read(read_fd, 1 << 16)
            if not block:
                finished = True
                break
            data += block
    finally:
        os.close(read_fd)
        if not finished:
            _kill(pid)
        _, status = os.waitpid(pid, 0)
    if not finished:
        raise RenderFailure(None, "template: " + hit("max_render_seconds", f"rendering takes longer than "
                                                                          f"{limits.max_render_seconds:g} s"))
    try:
        kind, *rest = json.loads(data.decode("utf-8"))
    except ValueError:
        raise RenderFailure(None, "template: " + _death(status)) from None
    if kind == "text":
        return str(rest[0])
    raise RenderFailure(rest[0], str(rest[1]))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _death(status: int) -> str:
    """Why a child ended without an answer (e.g. its C stack ran out under deep recursion)."""
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        if sig == "SIGSEGV":
            return hit("max_template_recursion", "the template engine crashed (SIGSEGV), most likely nested "
                                                 "or recursing too deep")
        return f"the template engine was killed ({sig})"
    return f"the template engine failed (exit status {os.WEXITSTATUS(status)})"


def _child(fd: int, render: Callable[[], str], limits: Limits) -> None:  # pragma: no cover
    code = 1
    try:
        # Ctrl-C and SIGTERM reach the whole process group: the child just ends, the parent handles it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _cap_memory(limits.max_render_memory)
        sys.setrecursionlimit(limits.max_template_recursion)
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limits.max_render_seconds)
        try:
            answer: list[Any] = ["text", render()]
        except RenderFailure as exc:
            answer = ["problem", exc.line, exc.message]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        payload = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        code = 0
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child into the parent's code
        code = 3
    finally:
        os._exit(code)


def _on_alarm(signum: int, frame: Any) -> None:  # pragma: no cover - runs in the child
    raise Deadline()


def _cap_memory(extra: int) -> None:  # pragma: no cover - runs in the child
    """Address space: what the process maps now plus `extra`, so that allocations past it fail
    as MemoryError in the template instead of pushing the machine into swap or the OOM killer."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


@dataclass
class Nesting:
    """How deep a template nests, each deepest point with its line (template body lines, 1-based)."""

    blocks: int = 0  # block tags inside one another: {% if %}, {% for %}, {% macro %}, ...
    blocks_line: int = 1
    loops: int = 0  # {% for %} inside one another within one macro (or the template's own body)
    loops_line: int = 1
    total: int = 0  # blocks and brackets: what Jinja2's recursive parser descends through
    total_line: int = 1


def nesting(tokens: Iterator[tuple[int, str, str]]) -> Nesting:
    """The nesting of a lexed template, found without recursion (Jinja2's parser and Python's
    compiler recurse per level and have fixed bounds; this is how a limit is checked before them)."""
    out = Nesting()
    stack: list[str] = []  # open block tags
    loops = [0]  # for loops open per function frame: a macro, a call block or a block is its own
    brackets = 0
    after_block_begin = False
    for lineno, kind, value in tokens:
        if kind == "whitespace":
            continue
        if kind == "block_begin":
            after_block_begin = True
            continue
        if after_block_begin and kind == "name":
            if value in _BLOCK_OPENERS:
                stack.append(value)
                if value in _FRAMES:
                    loops.append(0)
                elif value == "for":
                    loops[-1] += 1
            elif value.startswith("end") and stack and value == "end" + stack[-1]:
                # only the tag that is open: `{% set x %}...{% endset %}` opened nothing counted
                closed = stack.pop()
                if closed in _FRAMES and len(loops) > 1:
                    loops.pop()
                elif closed == "for":
                    loops[-1] -= 1
        after_block_begin = False
        if kind == "operator" and value in "([{":
            brackets += 1
        elif kind == "operator" and value in ")]}":
            brackets -= 1
        if len(stack) > out.blocks:
            out.blocks, out.blocks_line = len(stack), lineno
        if loops[-1] > out.loops:
            out.loops, out.loops_line = loops[-1], lineno
        if len(stack) + brackets > out.total:
            out.total, out.total_line = len(stack) + brackets, lineno
    return out
