"""The request/response modes (see "Request/response wire protocol" in the package docstring)."""

from __future__ import annotations

import argparse
import socket
import struct
import time

from .common import (
    RECV_CHUNK,
    STOP_GRACE,
    Deadline,
    ProtocolError,
    Stop,
    add_error,
    base_result,
    describe_error,
    meta_into,
    pattern_bytes,
    say_ready,
    summarize,
)
from .relay import ViaError, via_connect, via_json
from .sockets import (
    close_quietly,
    connect,
    discard_exact,
    listen_socket,
    mptcp_state,
    recv_exact,
    set_nodelay,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading


# ------------------------------------------------------------------------------ request/response


class RRServerStats:
    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0  # requests read whose response is being sent
        self.connections = 0
        self.is_mptcp: list[bool | None] = []  # per connection, in accept order
        self.mptcp_info: dict[str, int | bool] | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.errors: list[str] = []


def _rr_serve_connection(conn: socket.socket, meta: dict[str, object], response: bytes,
                         stats: RRServerStats, deadline: Deadline, slots: threading.BoundedSemaphore) -> None:
    scratch = bytearray(RECV_CHUNK)
    with stats.lock:
        slot = len(stats.is_mptcp)
        stats.is_mptcp.append(None)

    def sample() -> None:
        try:
            is_mptcp, _, info = mptcp_state(conn, meta)
        except Exception:
            return
        with stats.lock:
            if is_mptcp is not None:
                stats.is_mptcp[slot] = is_mptcp
            if info is not None:
                stats.mptcp_info = info

    try:
        sample()  # before the first request; again before close
        set_nodelay(conn)
        while True:
            header = recv_exact(conn, 4, deadline)
            if header is None:
                break
            (length,) = struct.unpack("!I", header)
            discard_exact(conn, length, deadline, scratch)
            with stats.lock:
                stats.in_flight += 1
            try:
                deadline.apply(conn)
                conn.sendall(response)
            except BaseException:
                with stats.lock:
                    stats.in_flight -= 1
                raise
            with stats.lock:
                stats.in_flight -= 1
                stats.requests += 1
                stats.bytes_received += 4 + length
                stats.bytes_sent += len(response)
    except Exception as exc:
        with stats.lock:
            add_error(stats.errors, describe_error(exc))
    finally:
        sample()
        close_quietly(conn)
        slots.release()


def aggregate_is_mptcp(values: list[bool | None]) -> bool | None:
    if not values:
        return None
    if any(v is False for v in values):
        return False
    if any(v is None for v in values):
        return None
    return True


def run_rr_server(args: argparse.Namespace) -> dict[str, object]:
    import threading

    stats = RRServerStats()
    errors = stats.errors
    result = base_result("rr-server", args.protocol)
    result.update(response_size=args.response_size, requests=0, connections=0, mptcp_connections=0,
                  bytes_received=0, bytes_sent=0, seconds=None, stopped_by=None, errors=errors)
    deadline = Deadline(args.timeout)
    response = struct.pack("!I", args.response_size) + pattern_bytes(args.response_size)
    slots = threading.BoundedSemaphore(args.max_threads)
    lsock = None
    start = time.monotonic()
    try:
        lsock, meta = listen_socket(args.bind, args.port, args.protocol, backlog=128)
        meta_into(result, meta)
        say_ready()
        start = time.monotonic()
        while True:
            left = deadline.remaining()
            if left is not None and left <= 0:
                result["stopped_by"] = "timeout"
                break
            if not slots.acquire(timeout=0.5 if left is None else min(left, 0.5)):
                continue
            try:
                deadline.apply(lsock)
                conn, _ = lsock.accept()
            except TimeoutError:
                slots.release()
                result["stopped_by"] = "timeout"
                break
            except BaseException:
                slots.release()
                raise
            with stats.lock:
                stats.connections += 1
            threading.Thread(target=_rr_serve_connection, daemon=True,
                             args=(conn, meta, response, stats, deadline, slots)).start()
    except Stop:
        result["stopped_by"] = "signal"
    except Exception as exc:
        with stats.lock:
            add_error(errors, describe_error(exc))
    finally:
        close_quietly(lsock)
    # Let responses already being sent finish (briefly), so that they are counted.
    grace = time.monotonic() + STOP_GRACE
    while time.monotonic() < grace:
        with stats.lock:
            if not stats.in_flight:
                break
        time.sleep(0.002)
    with stats.lock:
        result.update(requests=stats.requests, connections=stats.connections,
                      mptcp_connections=sum(1 for v in stats.is_mptcp if v), bytes_received=stats.bytes_received,
                      bytes_sent=stats.bytes_sent, is_mptcp=aggregate_is_mptcp(stats.is_mptcp),
                      mptcp_info=stats.mptcp_info, seconds=round(time.monotonic() - start, 6),
                      errors=list(errors))
        if stats.is_mptcp:
            result["is_mptcp_method"] = "per-connection"
    return result


def run_rr_client(args: argparse.Namespace) -> dict[str, object]:
    errors: list[str] = []
    result = base_result("rr-client", args.protocol)
    n = args.requests
    result.update(requests=n, request_size=args.request_size, response_size=args.response_size,
                  interval=args.interval, new_connection_per_request=args.new_connection_per_request,
                  count=n, ok=0, failed=0, ttfb_seconds=summarize([]), completion_seconds=summarize([]),
                  connect_seconds=summarize([]), connect_attempts=0, samples=[], connections=0,
                  mptcp_connections=0, via=via_json(args.via), setup_seconds=summarize([]),
                  established_seconds=summarize([]), first_byte_seconds=summarize([]), syn_data_connections=0,
                  via_error=None, via_errors=0, seconds=None, errors=errors)
    deadline = Deadline(args.timeout)
    request = struct.pack("!I", args.request_size) + pattern_bytes(args.request_size)
    scratch = bytearray(RECV_CHUNK)
    ttfb: list[float] = []
    completion: list[float] = []
    connects: list[float] = []
    setups: list[float] = []  # until the proxy confirmed the server (= connect without --via)
    established: list[float] = []  # what a Happy-Eyeballs race counts (see via_connect)
    first_bytes: list[float] = []  # attempt start -> first response byte, first request of each connection
    syn_data = via_errors = 0
    states: list[bool | None] = []
    ok = failed = 0
    sock: socket.socket | None = None
    meta: dict[str, object] = {}

    def finish_connection() -> None:
        nonlocal sock
        if sock is None:
            return
        try:
            is_mptcp, method, info = mptcp_state(sock, meta)
            states.append(is_mptcp)
            result["is_mptcp_method"] = method
            result["mptcp_info"] = info
        finally:
            close_quietly(sock)
            sock = None

    t0 = time.monotonic()
    try:
        for i in range(n):
            if args.interval > 0:
                delay = t0 + i * args.interval - time.monotonic()
                left = deadline.remaining()
                if left is not None:
                    delay = min(delay, left)
                if delay > 0:
                    time.sleep(delay)
            if deadline.expired():
                add_error(errors, f"deadline reached: {n - i} requests not attempted")
                failed += n - i
                break
            try:
                start = attempt = time.monotonic()
                sent = fresh = False
                if sock is None:
                    fresh = True
                    if args.via:
                        # With one connection per request, the request rides with the Convert message
                        # (in the SYN): the converter's 0-RTT.
                        early = request if args.via[0] == "converter" and args.new_connection_per_request else b""
                        sock, meta, timings = via_connect(args.via, args.connect, args.port, args.protocol,
                                                          args.connect_retries, deadline, result, early)
                        connects.append(timings["connect"])
                        setups.append(timings["setup"])
                        established.append(timings["established"])
                        syn_data += bool(timings["syn_data"])
                        sent = bool(timings["early_sent"])
                    else:
                        sock, meta, connect_seconds = connect(args.connect, args.port, args.protocol,
                                                              args.connect_retries, deadline, result)
                        connects.append(connect_seconds)
                        setups.append(connect_seconds)
                        established.append(connect_seconds)
                    set_nodelay(sock)
                    if not args.new_connection_per_request:
                        start = time.monotonic()  # a persistent connection's setup is not in the timings
                deadline.apply(sock)
                if not sent:
                    sock.sendall(request)
                got = b""
                first = None
                while len(got) < 4:
                    deadline.apply(sock)
                    chunk = sock.recv(RECV_CHUNK)
                    if not chunk:
                        raise ProtocolError("connection closed before the response")
                    if first is None:
                        first = time.monotonic()
                    got += chunk
                (length,) = struct.unpack("!I", got[:4])
                rest = 4 + length - len(got)
                if rest < 0:
                    raise ProtocolError("more response bytes than framed")
                discard_exact(sock, rest, deadline, scratch)
                end = time.monotonic()
                if length != args.response_size:
                    raise ProtocolError(f"response of {length} bytes, expected {args.response_size}")
                assert first is not None
                ttfb.append(first - start)
                completion.append(end - start)
                if fresh:
                    first_bytes.append(first - attempt)
                ok += 1
            except Exception as exc:
                failed += 1
                add_error(errors, describe_error(exc))
                if isinstance(exc, ViaError):
                    via_errors += 1
                    result["via_error"] = exc.as_dict()
                    if isinstance(exc.timings.get("established"), float):
                        established.append(exc.timings["established"])
                if sock is not None:
                    finish_connection()
                continue
            if args.new_connection_per_request:
                finish_connection()
    except Stop as exc:
        add_error(errors, describe_error(exc))
        failed += n - ok - failed
    finally:
        try:
            finish_connection()
        except Exception as exc:
            add_error(errors, describe_error(exc))
    result.update(ok=ok, failed=failed, ttfb_seconds=summarize(ttfb), completion_seconds=summarize(completion),
                  connect_seconds=summarize(connects), setup_seconds=summarize(setups),
                  established_seconds=summarize(established), first_byte_seconds=summarize(first_bytes),
                  syn_data_connections=syn_data, via_errors=via_errors, samples=[round(v, 6) for v in ttfb],
                  connections=len(connects), mptcp_connections=sum(1 for s in states if s),
                  is_mptcp=aggregate_is_mptcp(states), seconds=round(time.monotonic() - t0, 6))
    return result
