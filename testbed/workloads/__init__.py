"""Workloads run between testbed nodes: the stdlib-only agent and the drivers that start it."""

from __future__ import annotations

import functools
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().with_name("agent")


@functools.cache
def agent_path() -> Path:
    """The agent as the drivers start it (``python -S AGENT MODE ...``): its ``__main__.py``, which
    Python runs without importing runpy as it would for the directory (a guest under TCG pays for
    every module). Its package's bytecode is brought up to date first: a QEMU guest sees this checkout read-only, so it could not cache what it compiles
    and would pay for compiling every module at every start (about half a second under TCG).
    Once per process; a checkout the host cannot write to is left as it is."""
    import compileall

    try:
        compileall.compile_dir(str(AGENT_DIR), quiet=2, maxlevels=0)
    except OSError:
        pass
    return AGENT_DIR / "__main__.py"
