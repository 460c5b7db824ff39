"""`ss -M` / `ss -ti` snapshots of MPTCP and TCP sockets while workloads run."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any


class SocketSampler:
    def __init__(self, nodes: dict[str, Any], interval: float, t0: float):
        self.nodes = nodes
        self.interval = interval
        self.t0 = t0
        self.snapshots: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ss", daemon=True)

    def snap(self) -> None:
        at = round(time.monotonic() - self.t0, 3)
        for name, node in self.nodes.items():
            entry = {"t": at, "node": name}
            for key, argv in (("mptcp", ["ss", "-MniH"]), ("tcp", ["ss", "-tniH", "state", "established"])):
                try:
                    proc = node.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                    out, _ = proc.communicate(timeout=3)
                    entry[key] = out.decode(errors="replace").strip()
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    entry[key] = None
            if entry.get("mptcp") or entry.get("tcp"):
                self.snapshots.append(entry)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.snap()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
