"""Events count from when the workloads got under way (the first bulk client's connection), not
from when the runner launched them: a client that takes a second to start does not shift them."""

from __future__ import annotations

import threading
import time

from testbed.events import Origin, Timeline
from testbed.spec.experiment import LinkEvent


def event(at: str) -> LinkEvent:
    return LinkEvent.model_validate({"at": at, "action": "link_down", "link": "client:wlan0"})


def test_events_wait_for_the_origin_and_count_from_it():
    origin = Origin()
    fired: list[float] = []
    timeline = Timeline([event("200ms")], lambda e: fired.append(time.monotonic()), origin)
    timeline.start()
    time.sleep(0.4)  # a slow client start-up: nothing fires before the connection
    assert fired == []
    origin.mark()
    connected = origin.at
    time.sleep(0.5)
    timeline.stop()
    assert len(fired) == 1 and 0.19 <= fired[0] - connected < 0.4, fired[0] - connected
    assert timeline.log[0]["executed"] and 0.19 <= timeline.log[0]["executed_at"] < 0.4
    first = origin.at
    origin.mark()  # a later workload's connection does not move it
    assert origin.at == first


def test_events_of_workloads_that_never_started_are_recorded_as_not_run():
    timeline = Timeline([event("1s"), event("2s")], lambda e: None, Origin())
    timeline.start()
    time.sleep(0.1)
    timeline.stop()
    timeline._thread.join(2)
    assert [e["executed"] for e in timeline.log] == [False, False]
    assert all(e["error"] == "workloads ended first" for e in timeline.log)


def test_origin_marks_once_across_threads():
    origin = Origin()
    threads = [threading.Thread(target=origin.mark) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert origin.at is not None and origin.wait(threading.Event()) == origin.at
