"""A userspace delay line for kernels without sch_netem.

Run inside a node's network namespace, behind an iptables rule such as
``iptables -t mangle -A PREROUTING -i IF -j NFQUEUE --queue-num N --queue-bypass``::

    python delayline.py --queue N --delay SECONDS [--jitter SECONDS] [--loss PERCENT] [--seed S]
                        [--queue-maxlen 10000] [--control FILE] [--stdin-control]

Each packet is held for the delay (plus jitter drawn from a normal distribution with standard
deviation jitter/2, clipped to [delay - jitter, delay + jitter]) and then accepted. A packet is never
released before the one queued ahead of it, so there is no reordering. With ``--loss`` a share of the
packets gets a drop verdict instead (used on a sender's egress, where an nftables drop would make
local sends fail with EPERM instead of looking like loss on the wire).

Prints ``ready`` on stdout once the queue is bound. Settings change at runtime:

* ``--stdin-control``: each stdin line is a JSON object with any of ``delay``, ``jitter`` (seconds)
  and ``loss`` (percent); the answer is one stdout line, ``ok {json}`` or ``error message``.
  End of stdin means the controller is gone: the delay line releases what it holds and exits.
* ``--control FILE``: on SIGUSR1 the same JSON object is read from FILE (answer on stderr).

SIGTERM or SIGINT: release every held packet, unbind, exit 0.

Standard library plus the ``netfilterqueue`` package only: it must start fast and must not import
the testbed package.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time

# nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h), for the one config message the
# netfilterqueue package cannot send: the queue flags.
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_CONFIG = 2
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
_NFQA_CFG_F_FAIL_OPEN = 1 << 0
_NFQA_CFG_F_GSO = 1 << 2
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLMSG_ERROR = 0x2
_COPY_META = 1
# Scheduling (see Scheduler): real-time while the line uses less than RT_CPU_MAX of a CPU, back to
# normal above it, real-time again below RT_CPU_RESUME; measured over CPU_WINDOW seconds.
RT_PRIORITY = 1
RT_CPU_MAX = 0.5
RT_CPU_RESUME = 0.25
CPU_WINDOW = 1.0


# A named tuple, not a dataclass: dataclasses pulls in inspect, a tenth of the start-up time, and a
# topology starts one delay line per delayed link direction.
class Settings(collections.namedtuple("Settings", "delay jitter loss", defaults=(0.0, 0.0, 0.0))):
    __slots__ = ()

    def to_json(self) -> str:
        return json.dumps({"delay": self.delay, "jitter": self.jitter, "loss": self.loss}, sort_keys=True)


def parse_settings(text: str, base: Settings) -> Settings:
    """A JSON object with any of delay, jitter, loss laid over `base`; ValueError if invalid."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    unknown = set(data) - {"delay", "jitter", "loss"}
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    values: dict[str, float] = {}
    for key in ("delay", "jitter", "loss"):
        value = data.get(key, getattr(base, key))
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number")
        values[key] = float(value)
    return validate(Settings(**values))


def validate(s: Settings) -> Settings:
    if s.delay < 0 or s.jitter < 0:
        raise ValueError("delay and jitter cannot be negative")
    if s.jitter > s.delay:
        raise ValueError("jitter cannot be larger than the delay")
    if not 0 <= s.loss <= 100:
        raise ValueError("loss must be between 0 and 100 percent")
    return s


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} delayline: {message}", file=sys.stderr, flush=True)


def set_queue_flags(fd: int, queue: int, flags: int) -> str:
    """Set nfqueue flags on the bound queue through the library's own netlink socket.

    The kernel only accepts config messages from the socket that bound the queue, hence the dup.
    Returns a short status for the log.
    """
    sock = socket.socket(fileno=os.dup(fd))
    try:
        seq = 0x7E57BED
        attrs = b""
        for attr_type, value in ((_NFQA_CFG_FLAGS, flags), (_NFQA_CFG_MASK, flags)):
            attrs += struct.pack("=HH", 8, attr_type) + struct.pack("!I", value)
        nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
        body = nfgen + attrs
        header = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
                             _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
        sock.send(header + body)
        # The acknowledgement comes first unless a packet was queued in between; peek so that a
        # packet is never taken away from the library.
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            return "no answer"
        head = sock.recv(65536, socket.MSG_PEEK)
        if len(head) < 20:
            return "short answer"
        _length, msg_type, _flags, msg_seq, _pid = struct.unpack("=IHHII", head[:16])
        if msg_type != _NLMSG_ERROR or msg_seq != seq:
            return "answer not seen (a packet came first)"
        sock.recv(65536)
        (error,) = struct.unpack("=i", head[16:20])
        return "ok" if error == 0 else f"refused: {os.strerror(-error)}"
    finally:
        sock.close()


class DelayLine:
    def __init__(self, settings: Settings, seed: int | None) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.held: collections.deque[tuple[float, object]] = collections.deque()
        self.cond = threading.Condition()
        self.last_due = 0.0
        self.stopping = False
        self.releasing = 0  # packets taken off `held` by the release thread, verdict not yet given
        self.dropped = 0  # main thread only
        self.passed = 0  # main thread only: accepted without waiting
        self.released = 0  # release thread only
        # release thread only: how late held packets were let go (seconds past due), a bounded sample
        self.lateness: list[float] = []
        self.release_tid: int | None = None
        self.release_started = threading.Event()

    def sample_delay(self, s: Settings) -> float:
        if s.jitter <= 0:
            return s.delay
        d = self.rng.gauss(s.delay, s.jitter / 2)
        return min(max(d, s.delay - s.jitter), s.delay + s.jitter)

    def on_packet(self, pkt: object) -> None:
        """Called by the library on the main thread for every queued packet."""
        s = self.settings
        if s.loss > 0 and self.rng.random() * 100.0 < s.loss:
            pkt.drop()
            self.dropped += 1
            return
        now = time.monotonic()
        due = max(now + self.sample_delay(s), self.last_due)
        self.last_due = due
        with self.cond:
            if self.stopping or (due <= now and not self.held and not self.releasing):
                pkt.accept()
                self.passed += 1
                return
            self.held.append((due, pkt))
            if len(self.held) == 1:
                self.cond.notify()

    def release_loop(self) -> None:
        """Accept held packets when due; due times never decrease, so a FIFO suffices."""
        self.release_tid = threading.get_native_id()
        self.release_started.set()
        while True:
            batch: list[object] = []
            with self.cond:
                while not self.held and not self.stopping:
                    self.cond.wait()
                if not self.held and self.stopping:
                    return
                now = time.monotonic()
                while self.held and (self.stopping or self.held[0][0] <= now):
                    due, pkt = self.held.popleft()
                    if len(self.lateness) < 100_000 and not self.stopping:
                        self.lateness.append(now - due)
                    batch.append(pkt)
                if not batch:
                    self.cond.wait(self.held[0][0] - now)
                    continue
                self.releasing = len(batch)
            try:
                for pkt in batch:
                    pkt.accept()
                    self.released += 1
            except RuntimeError as exc:  # queue already unbound
                log(f"could not release a packet: {exc}")
                return
            finally:
                with self.cond:
                    self.releasing = 0

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class Scheduler:
    """Real-time scheduling for the delay line's threads, bounded by its own CPU use.

    A packet's delay is only as exact as two wake-ups: the main thread's when the packet is queued to
    us (its due time counts from then) and the release thread's when it is due. On a busy machine a
    normal process wakes tens of milliseconds late (measured: RTT p95 +60 % at 10 ms on a 2-core
    machine at load 8; under SCHED_FIFO +1 %); netem's timer is a softirq, ahead of every process.
    A real-time thread that needs a whole CPU would starve the endpoints it serves (and everything
    else), so above RT_CPU_MAX of a CPU the threads go back to normal scheduling (nice -10), and
    return to real-time below RT_CPU_RESUME. Without the privilege, the threads stay normal."""

    def __init__(self) -> None:
        self.tids: list[int] = []
        self.realtime = False
        self.switches = 0
        self.mark = (time.monotonic(), time.process_time())
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)

    def add(self, tid: int) -> None:
        self.tids.append(tid)
        self._set(tid, self.realtime)

    def start(self) -> str:
        self.realtime = all(self._set(tid, True) for tid in self.tids)
        if not self.realtime:
            for tid in self.tids:
                self._set(tid, False)
        return f"SCHED_FIFO {RT_PRIORITY}" if self.realtime else "normal (real-time refused)"

    @staticmethod
    def _set(tid: int, realtime: bool) -> bool:
        try:
            if realtime:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
            else:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            return True
        except (OSError, AttributeError):
            return False

    def check(self) -> str | None:
        """Called from the main loop; a log line when the policy changed."""
        now, cpu = time.monotonic(), time.process_time()
        wall = now - self.mark[0]
        if wall < CPU_WINDOW:
            return None
        share = (cpu - self.mark[1]) / wall
        self.mark = (now, cpu)
        if self.realtime and share > RT_CPU_MAX:
            self.realtime = False
        elif not self.realtime and self.switches < 1000 and share < RT_CPU_RESUME and self.tids \
                and self._set(self.tids[0], True):
            self.realtime = True
        else:
            return None
        self.switches += 1
        for tid in self.tids:
            self._set(tid, self.realtime)
        return f"{share:.0%} of a CPU: {'real-time' if self.realtime else 'normal scheduling'}"


def lateness_summary(late: list[float]) -> str:
    """Median, p99 and max of how late packets were released, in ms (the delay line's own error)."""
    if not late:
        return "nothing held"
    s = sorted(late)
    return (f"median {1000 * s[len(s) // 2]:.2f} ms, p99 {1000 * s[min(len(s) - 1, int(0.99 * len(s)))]:.2f} ms, "
            f"max {1000 * s[-1]:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="NFQUEUE delay line (netem stand-in)")
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number to bind")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="seconds (normal, sd jitter/2, clipped)")
    parser.add_argument("--loss", type=float, default=0.0, help="percent of packets to drop")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--queue-maxlen", type=int, default=10000, help="packets the kernel may hold for us")
    parser.add_argument("--control", default=None, help="JSON settings file re-read on SIGUSR1")
    parser.add_argument("--lib", default=None,
                        help="directory holding netfilterqueue (the line runs under python -S, no site)")
    parser.add_argument("--stdin-control", action="store_true",
                        help="read JSON settings lines from stdin; exit at end of stdin")
    args = parser.parse_args(argv)

    try:
        settings = validate(Settings(args.delay, args.jitter, args.loss))
    except ValueError as exc:
        parser.error(str(exc))

    if args.lib:
        sys.path.append(args.lib)
    from netfilterqueue import NetfilterQueue  # imported late so that --help works without it

    sys.setswitchinterval(0.0005)  # the release thread must not wait 5 ms for the GIL
    sched = Scheduler()
    line = DelayLine(settings, args.seed)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    events: collections.deque[str] = collections.deque()
    out_lock = threading.Lock()

    def wake(event: str) -> None:
        events.append(event)
        with contextlib.suppress(BlockingIOError):
            os.write(wake_w, b"x")

    def reply(text: str) -> None:
        with out_lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    signal.signal(signal.SIGTERM, lambda *_: wake("stop"))
    signal.signal(signal.SIGINT, lambda *_: wake("stop"))
    signal.signal(signal.SIGUSR1, lambda *_: wake("reload"))

    nfq = NetfilterQueue()
    try:
        nfq.bind(args.queue, line.on_packet, max_len=args.queue_maxlen, mode=_COPY_META,
                 sock_len=8 * 1024 * 1024)
    except OSError as exc:
        log(f"cannot bind NFQUEUE {args.queue}: {exc}")
        return 2
    fd = nfq.get_fd()
    log(f"queue {args.queue} flags fail-open+gso: {set_queue_flags(fd, args.queue, _NFQA_CFG_F_FAIL_OPEN | _NFQA_CFG_F_GSO)}")

    releaser = threading.Thread(target=line.release_loop, name="release", daemon=True)
    releaser.start()
    line.release_started.wait(5)
    sched.add(threading.get_native_id())
    if line.release_tid is not None:
        sched.add(line.release_tid)
    log(f"scheduling: {sched.start()}")

    def read_stdin() -> None:
        try:
            for text in sys.stdin:
                if not text.strip():
                    continue
                try:
                    line.settings = parse_settings(text, line.settings)
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    reply(f"error {exc}")
                    continue
                log(f"settings {line.settings.to_json()}")
                reply(f"ok {line.settings.to_json()}")
            log("end of stdin: the controller is gone")
        except OSError as exc:  # stdout closed: the controller is gone too
            log(f"control channel broken: {exc}")
        finally:
            wake("stop")

    if args.stdin_control:
        threading.Thread(target=read_stdin, name="stdin", daemon=True).start()

    log(f"bound queue {args.queue}, settings {settings.to_json()}, seed {args.seed}")
    reply("ready")

    running = True
    while running:
        readable, _, _ = select.select([fd, wake_r], [], [], CPU_WINDOW)
        change = sched.check()
        if change:
            log(change)
        if fd in readable:
            nfq.run(block=False)
        if wake_r in readable:
            os.read(wake_r, 4096)
            while events:
                event = events.popleft()
                if event == "stop":
                    running = False
                elif event == "reload" and args.control:
                    try:
                        with open(args.control, encoding="utf-8") as f:
                            line.settings = parse_settings(f.read(), line.settings)
                        log(f"settings {line.settings.to_json()} (from {args.control})")
                    except (OSError, ValueError) as exc:
                        log(f"cannot reload {args.control}: {exc}")

    line.stop()  # the release thread lets everything held go at once
    releaser.join(timeout=5)
    nfq.run(block=False)  # packets already queued to us pass straight through
    nfq.unbind()
    log(f"stopped: {line.released} delayed, {line.passed} passed, {line.dropped} dropped; "
        f"released late by {lateness_summary(line.lateness)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
