"""Per-interface byte counters sampled over time: which path carried what, and when."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


def read_dev(pid: int) -> dict[str, tuple[int, int]]:
    """{interface: (rx_bytes, tx_bytes)} of the namespace `pid` lives in."""
    out = {}
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


Source = int | Callable[[], dict[str, tuple[int, int]]]


class Sampler:
    """A thread that samples the given (node, interface) byte counters every `interval` seconds.

    Each target's source is the pid of a process in the node's namespace, or a callable returning
    what read_dev() would (a QEMU guest node's read_dev: its TAPs' host sides, rx and tx swapped);
    each source is read once per sample."""

    def __init__(self, targets: dict[str, tuple[Source, str]], interval: float, t0: float):
        self.targets = targets  # ref "node:intf" -> (pid or callable, intf)
        self.interval = interval
        self.t0 = t0
        self.series: dict[str, list[tuple[float, int, int]]] = {ref: [] for ref in targets}
        self.found: dict[str, int] = {ref: 0 for ref in targets}  # samples in which the interface was there
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="linkbytes", daemon=True)

    def sample(self) -> None:
        now = round(time.monotonic() - self.t0, 4)
        by_source: dict[Source, dict[str, tuple[int, int]]] = {}
        for ref, (source, intf) in self.targets.items():
            if source not in by_source:
                by_source[source] = source() if callable(source) else read_dev(source)
            seen = by_source[source].get(intf)
            if seen is not None:
                self.found[ref] += 1
            rx, tx = seen or (0, 0)
            self.series[ref].append((now, rx, tx))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.sample()

    def bytes_between(self, ref: str, start: float | None, end: float | None) -> int:
        """rx+tx bytes an interface carried between two times (nearest samples)."""
        series = self.series.get(ref, [])
        if not series:
            return 0
        lo = series[0] if start is None else min(series, key=lambda s: abs(s[0] - start))
        hi = series[-1] if end is None else min(series, key=lambda s: abs(s[0] - end))
        return max(0, (hi[1] - lo[1]) + (hi[2] - lo[2]))

    def gap(self, ref: str) -> str | None:
        """Why the bytes of `ref` were not observed (so that 0 never reads as the kernel's), or None."""
        if ref not in self.series:
            return f"{ref} was not sampled"
        if self.found[ref] < 2:
            return (f"{ref} was found in {self.found[ref]} of {len(self.series[ref])} byte-counter samples "
                    "(at least 2 are needed for a difference)")
        return None
