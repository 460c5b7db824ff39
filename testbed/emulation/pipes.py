"""Reading a Popen-like process's output pipes to their end, for processes that are not local
subprocesses (a QEMU guest's, a remote machine's) but hand their output over real pipes."""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import IO, Any


def drain(args: Any, pipes: dict[int, IO[bytes] | None], collected: dict[int, bytearray],
          deadline: float | None, timeout: float | None) -> None:
    """Read every open pipe of `pipes` (1: stdout, 2: stderr) into `collected` until each ends, and
    close it; TimeoutExpired (as Popen.communicate raises it) once `deadline` has passed."""
    streams = {s.fileno(): (n, s) for n, s in pipes.items() if s is not None and not s.closed}
    while streams:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(args, timeout or 0)
        ready, _, _ = select.select(list(streams), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                collected[streams[fd][0]] += chunk
            else:
                streams.pop(fd)[1].close()
