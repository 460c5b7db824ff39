"""Which testbed made an archive: the commit of the checkout it runs from, when it is one."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import testbed


@cache
def git_sha() -> str | None:
    """HEAD of the checkout the testbed package is imported from; None for an installed copy (or when
    git is missing). Cached: a matrix asks once per cell and the answer cannot change during a run."""
    src = Path(testbed.__file__).resolve().parent.parent
    if not (src / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None
