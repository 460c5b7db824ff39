"""Timed faults during the workloads: link down/up, impairment changes, endpoints, MP_PRIO."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from testbed.spec.experiment import Event


class Timeline:
    def __init__(self, events: list[Event], apply: Callable[[Event], Any], t0: float):
        self.events = sorted(events, key=lambda e: e.at)
        self.apply = apply
        self.t0 = t0
        self.log: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="events", daemon=True)

    def _loop(self) -> None:
        for event in self.events:
            if self._stop.wait(max(0.0, self.t0 + event.at - time.monotonic())):
                self.log.append({"at": event.at, "action": event.action, "executed": False,
                                 "error": "workloads ended first"})
                continue
            started = time.monotonic() - self.t0
            entry: dict[str, Any] = {"at": event.at, "action": event.action, "executed_at": round(started, 4),
                                     "event": event.model_dump(mode="json", exclude_none=True)}
            try:
                detail = self.apply(event)
                entry.update(executed=True, detail=detail)
            except Exception as exc:  # noqa: BLE001 - recorded as the event's outcome, judged later
                entry.update(executed=False, error=str(exc))
            self.log.append(entry)

    def start(self) -> None:
        if self.events:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
