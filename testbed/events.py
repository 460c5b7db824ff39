"""Timed faults during the workloads: link down/up, impairment changes, endpoints, MP_PRIO."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from testbed.spec.experiment import Event


class Origin:
    """When the workloads got under way: the first workload's connection (a bulk client's), else its
    start. Events and path windows count from it, so a slow start-up (a client in an emulated guest
    takes a second or more) does not eat into them."""

    def __init__(self) -> None:
        self.at: float | None = None
        self._set = threading.Event()
        self._lock = threading.Lock()

    def mark(self) -> None:
        with self._lock:
            if self.at is None:
                self.at = time.monotonic()
                self._set.set()

    def wait(self, stop: threading.Event) -> float | None:
        while not self._set.wait(0.05):
            if stop.is_set():
                return None
        return self.at


class Timeline:
    def __init__(self, events: list[Event], apply: Callable[[Event], Any], origin: Origin,
                 counter: Callable[[str, str], int] = lambda node, name: 0):
        """`counter(node, name)`: how much a counter rose since the workloads started (for wait_for)."""
        self.events = sorted(events, key=lambda e: e.at)
        self.index = {id(e): i for i, e in enumerate(events)}  # the experiment's order (expect refers to it)
        self.apply = apply
        self.counter = counter
        self.origin = origin
        self.t0 = 0.0
        self.log: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="events", daemon=True)

    def _loop(self) -> None:
        t0 = self.origin.wait(self._stop)
        if t0 is None:
            self.log += [{"at": e.at, "action": e.action, "executed": False, "error": "workloads ended first"}
                         for e in self.events]
            return
        self.t0 = t0
        for event in self.events:
            if self._stop.wait(max(0.0, self.t0 + event.at - time.monotonic())):
                self.log.append({"at": event.at, "action": event.action, "executed": False,
                                 "error": "workloads ended first"})
                continue
            waited = self._wait_for(event)
            if waited is None:
                self.log.append({"at": event.at, "action": event.action, "executed": False,
                                 "error": "workloads ended first" if self._stop.is_set() else
                                 f"wait_for not met within {event.wait_timeout:g} s: {event.wait_for}"})
                continue
            started = time.monotonic() - self.t0
            entry: dict[str, Any] = {"at": event.at, "action": event.action, "executed_at": round(started, 4),
                                     "index": self.index[id(event)],
                                     "event": event.model_dump(mode="json", exclude_none=True)}
            if event.wait_for:
                entry["waited"] = round(waited, 4)
            try:
                detail = self.apply(event)
                entry.update(executed=True, detail=detail)
            except Exception as exc:  # noqa: BLE001 - recorded as the event's outcome, judged later
                entry.update(executed=False, error=str(exc))
            # how long the action took: in a loaded emulated guest one `ip` command can take seconds,
            # which is when the kernel was told, not when the event was due
            entry["seconds"] = round(time.monotonic() - self.t0 - started, 4)
            self.log.append(entry)

    def _wait_for(self, event: Event) -> float | None:
        """Seconds spent waiting until every wait_for counter moved enough; None if it did not in time."""
        if not event.wait_for:
            return 0.0
        began = time.monotonic()
        while True:
            try:
                if all(self.counter(*key.split(".", 1)) >= need for key, need in event.wait_for.items()):
                    return time.monotonic() - began
            except Exception:  # noqa: BLE001 - a node that cannot be read now may be readable in a moment
                pass
            if self._stop.wait(0.05) or time.monotonic() - began > event.wait_timeout:
                return None

    def start(self) -> None:
        if self.events:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
