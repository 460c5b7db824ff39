"""What may stop a run: SIGINT, SIGTERM and the experiment's timeout, and how far each one reaches.

Armed while the run sets up, shapes, runs and collects: a signal or the timeout first aborts every
node command waiting anywhere (testbed.emulation.abort), so that no thread the main thread waits for
can keep it from unwinding, then raises in the main thread. Teardown is graceful but bounded: a
further signal, or its time running out, raises `Escalated` inside it and the runner kills everything
instead. While neither applies (creating the archive, the hard teardown, the final sweep) a signal is
only remembered: nothing is ever left half-built or half-removed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from testbed.emulation import abort


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


class TimedOut(BaseException):
    """The experiment's timeout passed (SIGALRM in the main thread); the run ends as an error."""


class Escalated(BaseException):
    """Graceful teardown given up (a further signal, or its time ran out): kill everything instead."""


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class SignalGuard:
    """SIGINT/SIGTERM/SIGALRM handling for one run (signal handlers exist in the main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: int | None = None  # a signal remembered until the run is armed
        self.received: list[int] = []  # every SIGINT/SIGTERM, in order
        self.armed = False
        self.graceful = False  # in graceful teardown: a further signal escalates
        self.hard_reason: str | None = None  # why teardown was made hard
        self.hard_by_signal = False  # ... by the user (not by its time running out)
        self.active = threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}
        self._teardown_seconds = 0.0

    def install(self) -> None:
        abort.resume()  # a run before this one in the same process may have aborted
        if self.active:
            self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
            self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._alarm)

    def restore(self) -> None:
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    # -- the run ----------------------------------------------------------------------------------
    def arm_timeout(self, seconds: float) -> None:
        """Set-up, shaping, workloads and collection together end after `seconds`."""
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, seconds)

    def arm(self) -> None:
        self.armed = True
        if self.pending is not None:
            self._stop(self.pending)

    def disarm(self) -> None:
        self.armed = False

    def _stop(self, signum: int) -> None:
        self.armed = False  # one interruption; what follows is teardown
        abort.abort(f"the run was interrupted ({signal_name(signum)})")
        raise KeyboardInterrupt() if signum == signal.SIGINT else Interrupted()

    def _handler(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self.armed:
            self._stop(signum)
        if self.graceful:  # the user does not want to wait for this teardown either
            again = " again" if len(self.received) > 1 else ""
            self._escalate(f"{signal_name(signum)}{again} during teardown", by_signal=True)
        self.pending = self.pending or signum

    def _alarm(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            abort.abort("the experiment's timeout passed")
            raise TimedOut()
        if self.graceful:
            self._escalate(f"teardown took longer than {self._teardown_seconds:g} s")

    # -- teardown ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def teardown(self, seconds: float) -> Iterator[None]:
        """Graceful teardown for at most `seconds`; raises Escalated out of it if that is given up."""
        self._teardown_seconds = seconds
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, seconds)
        self.graceful = True
        try:
            if len(self.received) > 1:  # the second signal came while the run was unwinding
                self._escalate(f"{signal_name(self.received[-1])} again while stopping", by_signal=True)
            yield
        finally:
            self.graceful = False
            if self.active:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _escalate(self, reason: str, by_signal: bool = False) -> None:
        self.graceful = False
        self.hard_reason, self.hard_by_signal = reason, by_signal
        abort.abort(reason)  # node commands of the teardown itself give up too
        raise Escalated()
