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


def test_an_event_waits_for_its_counters():
    """wait_for: the event fires once the counters moved (an MP_PRIO needs the join it is about)."""
    origin = Origin()
    joins = {"n": 0}
    fired: list[float] = []
    ev = LinkEvent.model_validate({"at": "100ms", "action": "link_down", "link": "client:wlan0",
                                   "wait_for": {"client.MPTcpExtMPJoinSynAckRx": 1}, "wait_timeout": "2s"})
    timeline = Timeline([ev], lambda e: fired.append(time.monotonic()), origin,
                        lambda node, name: joins["n"] if (node, name) == ("client", "MPTcpExtMPJoinSynAckRx") else 0)
    timeline.start()
    origin.mark()
    time.sleep(0.4)
    assert fired == []  # 'at' has passed, the join has not happened
    joins["n"] = 1
    time.sleep(0.3)
    timeline.stop()
    assert len(fired) == 1 and timeline.log[0]["executed"] and 0.25 <= timeline.log[0]["waited"] < 0.6

    never = LinkEvent.model_validate({"at": "0s", "action": "link_down", "link": "client:wlan0",
                                      "wait_for": {"client.MPTcpExtMPJoinSynAckRx": 1}, "wait_timeout": "200ms"})
    timeline = Timeline([never], lambda e: fired.append(0.0), Origin(), lambda node, name: 0)
    timeline.origin.mark()
    timeline.start()
    time.sleep(0.5)
    timeline.stop()
    assert len(fired) == 1 and not timeline.log[0]["executed"] and "wait_for not met" in timeline.log[0]["error"]
