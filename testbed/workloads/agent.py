#!/usr/bin/env python3
"""Standalone workload agent for the MPTCP testbed (stdlib only; run as ``python -S agent.py MODE ...``).

It is started inside network namespaces, so it never imports the ``testbed`` package and keeps its
imports small. Every mode prints exactly one JSON object (one line) on stdout when it ends; servers
first print the line ``ready`` (flushed) once listening, before anything else. Diagnostics never go to
stdout. Exit status: 1 when ``errors`` is not empty (bulk: any failure or digest mismatch; rr-client:
any failed request; rr-server: any connection-level failure), else 0; 2 for command-line errors
(argparse; no JSON then). The rr-server's normal end is SIGTERM/SIGINT or its --timeout (``stopped_by``),
which is not an error. SIGTERM/SIGINT make the clients and the bulk server stop, record ``terminated by
SIGTERM`` in ``errors`` and still print their JSON.

Modes
-----
bulk-server --bind ADDR --port P [--protocol mptcp|tcp] [--direction upload|download] [--size BYTES]
            [--seed S] [--timeout SECONDS] [--abort-after BYTES [--abort-side S] [--abort-how H]]
bulk-client --connect ADDR --port P --size BYTES [--protocol ...] [--direction ...] [--seed S]
            [--timeout SECONDS] [--connect-retries N] [--via KIND:ADDR:PORT] [--abort-... as the server]
rr-server   --bind ADDR --port P [--protocol ...] [--response-size BYTES] [--timeout SECONDS]
            [--max-threads N]
rr-client   --connect ADDR --port P --requests N --request-size BYTES --response-size BYTES
            [--protocol ...] [--interval SECONDS] [--new-connection-per-request] [--timeout SECONDS]
            [--connect-retries N] [--via KIND:ADDR:PORT]

BYTES accepts an integer or a number with a suffix: k/M/G/T (powers of 1000) or Ki/Mi/Gi/Ti (powers
of 1024), optionally followed by ``B``. ``--timeout`` bounds the whole run (0 = unlimited; default
300 s). ``--connect-retries`` (default 200) retries connect() every 10 ms on ECONNREFUSED.

``--via converter:ADDR:PORT`` reaches --connect through a Transport Converter (RFC 8803): the
Convert message with a Connect TLV goes in the SYN (TCP Fast Open: non-blocking sendto with
MSG_FASTOPEN; without a TFO cookie the SYN asks for one and the message follows the handshake),
and the connection is used once the converter's answer arrived (an Error TLV fails it). With
rr-client --new-connection-per-request the request rides along in the SYN. ``--via
socks5:ADDR:PORT`` does the SOCKS5 exchange (RFC 1928: no authentication, CONNECT) instead.

Bulk wire protocol
------------------
The payload is a deterministic pseudo-random stream: a 1 MiB block ``random.Random(seed).randbytes``,
emitted over and over, pass ``i`` rotated left by ``(i * 65537) % 1 MiB`` bytes, cut at SIZE bytes.
upload:   client sends SIZE bytes, shuts down writing; the server hashes (sha256) until EOF, replies
          with its hex digest and a newline, and closes.
download: server sends SIZE bytes and shuts down writing; the client hashes until EOF, sends its hex
          digest and a newline, and closes. The server compares it with the digest of what it sent.
          The client's ``sha256_remote`` is the digest of the stream the server sends for (seed, size),
          which is also the server's ``sha256``: client and server must be given the same --seed and
          --size.
The bulk server accepts one connection but keeps listening until the transfer ends (MPTCP MP_JOIN
subflows arrive through the listener).

Aborting (bulk, --abort-after BYTES)
------------------------------------
Both sides get the same --abort-* options. The aborting side (--abort-side, default client) moves
BYTES of payload (received, or handed to the kernel when it sends) and closes its socket abruptly;
the other side (the peer) must see the connection reset (ECONNRESET or EPIPE), which is the success
of the transfer: no digest line is exchanged. --abort-how: ``unread`` (receiving side only) stops
reading and closes once more payload waits unread in the receive queue (up to 5 s: FIONREAD, or
MSG_PEEK where MPTCP sockets lack it); ``linger0`` sets SO_LINGER {1, 0} first; ``both``; ``auto``
(default) is unread for the receiving side and linger0 for the sending side. Linux TCP answers
either with a RST; upstream Linux MPTCP sends MP_FASTCLOSE on close() with unread data since 6.1
("mptcp: use fastclose on more edge scenarios") and with SO_LINGER {1, 0} only since 7.1 ("mptcp:
fastclose msk when linger time is 0", backported to stable kernels); before that its close() is an
orderly DATA_FIN and the peer sees EOF, which is an error here. The receiving side checks that what
arrived is the start of the sender's stream (sha256 of the first ``bytes`` bytes, computed locally).

Request/response wire protocol
------------------------------
Request:  4-byte big-endian length L, then L bytes (the client sends L = --request-size).
Response: 4-byte big-endian length M, then M bytes (the server sends M = its --response-size; the
          client counts a different M as a failed request). The server answers only after it has read
          the whole request, and handles any number of requests per connection until EOF.

JSON keys
---------
common:      mode, protocol_requested, mptcp_socket (an MPTCP socket was opened), mptcp_socket_error
             (why socket(..., IPPROTO_MPTCP) failed and plain TCP was used, else null), is_mptcp,
             is_mptcp_method ("TCP_IS_MPTCP", "MPTCP_INFO", "plain-tcp-socket" or null), mptcp_info
             (struct mptcp_info as a dict with the ``mptcpi_`` prefix dropped, ``reserved`` left out,
             ``fallback`` / ``remote_key_received`` decoded from ``flags``, only the fields the
             kernel returned; null when unavailable), errors (list of distinct strings, at most 50).
             Addresses (peer, local) are {"host": str, "port": int}; durations are seconds.
bulk-server: direction, size, seed, bytes, sha256, seconds, peer, local; download adds sha256_peer and
             intact. ``seconds``: accept() to EOF (upload), accept() to the client's digest (download).
bulk-client: direction, size, seed, bytes, seconds, goodput_bps, sha256_local, sha256_remote, intact,
             connect_seconds, connect_attempts, first_byte_seconds, peer, local. ``seconds`` runs from
             connect() returning to the server's digest (upload) or to EOF (download);
             goodput_bps = bytes * 8 / seconds; first_byte_seconds (download only) runs from connect()
             returning to the first payload byte; connect_seconds is the successful connect() call.
             mptcp_info / is_mptcp are sampled just before close, while the subflows are still up.
             Also via, setup_seconds, established_seconds, syn_data, via_error (see "through a proxy").
rr-server:   response_size, requests (served), connections, mptcp_connections, bytes_received,
             bytes_sent (framing included), seconds, stopped_by ("signal" | "timeout" | null).
             is_mptcp aggregates the connections like the rr-client's (is_mptcp_method
             "per-connection"); mptcp_info is that of the last connection sampled. Each connection
             is served by its own thread, at most --max-threads (default 32) at once; further ones
             wait in the listen backlog.
aborted bulk (both sides): abort ({side, after, how}; how resolved); the aborting side adds aborted
             (it closed abruptly), abort_bytes (payload moved by then), unread_at_close / unread_bytes
             (how unread/both: payload waiting unread at close(); the count is null without FIONREAD),
             linger_zero; the peer adds peer_reset (the connection ended with ECONNRESET/EPIPE),
             reset_error, reset_bytes (payload moved when it did). The receiving side's intact
             compares the digest of what it received (bulk-client sha256_local, bulk-server sha256)
             with that of the stream's first ``bytes`` bytes (sha256_remote, sha256_expected); the
             sending client has intact null and sha256_local of what it sent. ``seconds`` ends at the
             abort or the reset.
through a proxy (bulk-client, rr-client): via ({kind, host, port} or null); setup_seconds: from the
             start of the attempt until the proxy confirmed the server (SOCKS reply 0 / Convert answer
             without Error TLV), = connect_seconds without --via; established_seconds: when the attempt
             counts as connected for a Happy-Eyeballs race (RFC 8305): through SOCKS the TCP
             connection to the proxy, through a converter its answer (as libconvert's connect());
             connect_seconds: the TCP connection to the proxy; syn_data (bulk) / syn_data_connections
             (rr): the SYN carried data (TCP_INFO); via_error: {kind, code, name, seconds,
             connect_seconds, established_seconds} of the last error the proxy reported (names as in
             RFC 8803 section 4.2.7 and RFC 1928 section 6, e.g. destination-unreachable,
             host-unreachable), via_errors (rr: how many).
rr-client:   requests, request_size, response_size, interval, new_connection_per_request, count
             (= requests; ok + failed), ok, failed, ttfb_seconds, completion_seconds, connect_seconds
             setup_seconds, established_seconds, first_byte_seconds (from the start of a connection
             attempt to the first response byte of its first request: handshake, proxy and request)
             (summaries {p50, p95, p99, mean, max, min}, null values when empty), connect_attempts
             (over all connections, retries included), samples (TTFB of each successful request,
             in order, rounded to microseconds), connections,
             mptcp_connections, seconds. TTFB / completion run from the start of the request write
             to the first / last response byte; with --new-connection-per-request they start before
             connect(), so they include the handshake. --interval paces request starts on a fixed
             schedule (start i at t0 + i * interval). Percentiles use the nearest-rank method: the
             p-th percentile of n sorted values is the value at 1-based rank ceil(p * n / 100).
             is_mptcp is true when every connection used MPTCP, false when any did not, null when
             unknown; mptcp_info is that of the last connection.

is_mptcp: false for a plain TCP socket. On an MPTCP socket, getsockopt(SOL_TCP, TCP_IS_MPTCP) (5.16+)
decides; without it, getsockopt(SOL_MPTCP, MPTCP_INFO) does: data -> not (flags & FALLBACK), zero
length or an error -> fallen back (when MPTCP_INFO worked on the fresh socket) or null (unknown).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
SOL_TCP = 6
TCP_IS_MPTCP = 43
MPTCP_INFO_FLAG_FALLBACK = 1
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 2
_MPTCP_SOCKET_ERRNOS = (errno.ENOPROTOOPT, errno.EPROTONOSUPPORT, errno.EINVAL)

BLOCK_SIZE = 1 << 20
ROTATE_STEP = 65537
RECV_CHUNK = 256 * 1024
DEFAULT_TIMEOUT = 300.0
DEFAULT_CONNECT_RETRIES = 200
CONNECT_RETRY_DELAY = 0.01
DEFAULT_MAX_THREADS = 32
STOP_GRACE = 1.0
MAX_ERRORS = 50
ABORT_UNREAD_WAIT = 5.0  # seconds an aborting receiver waits for payload to queue up unread

# struct mptcp_info (include/uapi/linux/mptcp.h), natural C alignment, host byte order:
# (name, offset, struct code, bytes the kernel must return for the field to be real). The kernel copies
# min(optlen, sizeof its struct); the last column keeps a field that an older, shorter struct only
# covers with tail padding (e.g. ``retransmits`` vs the 48-byte 5.14 struct) out of the result.
MPTCP_INFO_FIELDS: tuple[tuple[str, int, str, int], ...] = (
    ("subflows", 0, "B", 1),  # v5.9 (sizeof 40)
    ("add_addr_signal", 1, "B", 2),
    ("add_addr_accepted", 2, "B", 3),
    ("subflows_max", 3, "B", 4),
    ("add_addr_signal_max", 4, "B", 5),
    ("add_addr_accepted_max", 5, "B", 6),
    ("flags", 8, "I", 12),  # 2 bytes of padding before
    ("token", 12, "I", 16),
    ("write_seq", 16, "Q", 24),
    ("snd_una", 24, "Q", 32),
    ("rcv_nxt", 32, "Q", 40),
    ("local_addr_used", 40, "B", 41),  # v5.12 (sizeof 48)
    ("local_addr_max", 41, "B", 42),
    ("csum_enabled", 42, "B", 43),  # v5.14 (sizeof 48)
    ("retransmits", 44, "I", 80),  # v6.5 (sizeof 80), 1 byte of padding before
    ("bytes_retrans", 48, "Q", 80),
    ("bytes_sent", 56, "Q", 80),
    ("bytes_received", 64, "Q", 80),
    ("bytes_acked", 72, "Q", 80),
    ("subflows_total", 80, "B", 81),  # v6.8 (sizeof 88)
    ("last_data_sent", 84, "I", 96),  # v6.10 (sizeof 96), after u8 reserved[3]
    ("last_data_recv", 88, "I", 96),
    ("last_ack_recv", 92, "I", 96),
)
MPTCP_INFO_SIZE = 96


class ProtocolError(Exception):
    """The peer broke the agent's wire protocol."""


class Stop(BaseException):
    """Raised (once) from the SIGTERM/SIGINT handler in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_stop_signum: int | None = None


def _on_signal(signum: int, _frame: object) -> None:
    global _stop_signum
    if _stop_signum is None:
        _stop_signum = signum
        raise Stop(signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# --------------------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    """Parse a byte count: ``1000``, ``8M`` (10**6), ``8MiB`` (2**20), ``1.5G``."""
    s = text.strip().lower()
    if s.endswith("b"):
        s = s[:-1]
    mult = 1
    for suffix, factor in (("ki", 1 << 10), ("mi", 1 << 20), ("gi", 1 << 30), ("ti", 1 << 40),
                           ("k", 10**3), ("m", 10**6), ("g", 10**9), ("t", 10**12)):
        if s.endswith(suffix):
            s, mult = s[: -len(suffix)], factor
            break
    try:
        value = int(s) * mult if s.isdigit() else int(float(s) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must not be negative: {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, Stop):
        return f"terminated by {_signal_name(exc.signum)}"
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{type(exc).__name__}: {name}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"TimeoutError: {exc or 'timed out'}"
    return f"{type(exc).__name__}: {exc}"


def add_error(errors: list[str], message: str) -> None:
    if message not in errors and len(errors) < MAX_ERRORS:
        errors.append(message)


def digests_match(local: str | None, remote: str | None) -> bool:
    """True when both digests are present, well-formed sha256 hex strings and equal."""
    if not local or not remote or len(local) != 64 or len(remote) != 64:
        return False
    try:
        int(local, 16)
        int(remote, 16)
    except ValueError:
        return False
    return local.lower() == remote.lower()


def nearest_rank(sorted_values: list[float], p: int) -> float:
    """Nearest-rank percentile: value at 1-based rank ceil(p * n / 100) (p in 1..100)."""
    n = len(sorted_values)
    rank = max(1, -(-p * n // 100))
    return sorted_values[min(rank, n) - 1]


def summarize(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "min": None}
    s = sorted(values)
    return {"p50": round(nearest_rank(s, 50), 6), "p95": round(nearest_rank(s, 95), 6),
            "p99": round(nearest_rank(s, 99), 6), "mean": round(sum(s) / len(s), 6),
            "max": round(s[-1], 6), "min": round(s[0], 6)}


class Deadline:
    """Overall time bound of a run; ``seconds`` <= 0 or None means unlimited."""

    def __init__(self, seconds: float | None) -> None:
        self.end = time.monotonic() + seconds if seconds and seconds > 0 else None

    def remaining(self) -> float | None:
        if self.end is None:
            return None
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def apply(self, sock: socket.socket) -> None:
        """Set the socket timeout to the time left; raise TimeoutError when none is left."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise TimeoutError("deadline exceeded")
        sock.settimeout(left)


# ------------------------------------------------------------------------------- payload stream


def pattern_block(seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(BLOCK_SIZE)


def iter_stream(seed: int, size: int, block: bytes | None = None) -> Iterator[memoryview]:
    """The deterministic payload as zero-copy chunks of at most 1 MiB (see the module docstring)."""
    doubled = memoryview((block or pattern_block(seed)) * 2)
    left, i = size, 0
    while left > 0:
        offset = (i * ROTATE_STEP) % BLOCK_SIZE
        n = min(BLOCK_SIZE, left)
        yield doubled[offset:offset + n]
        left -= n
        i += 1


def stream_digest(seed: int, size: int, block: bytes | None = None) -> str:
    import hashlib

    h = hashlib.sha256()
    for chunk in iter_stream(seed, size, block):
        h.update(chunk)
    return h.hexdigest()


def pattern_bytes(n: int) -> bytes:
    """``n`` filler bytes for request/response payloads."""
    if n <= 0:
        return b""
    block = pattern_block(0)
    return (block * (n // BLOCK_SIZE + 1))[:n] if n > BLOCK_SIZE else block[:n]


# ---------------------------------------------------------------------------------------- MPTCP


def open_socket(family: int, protocol: str) -> tuple[socket.socket, dict[str, object]]:
    """A stream socket; for ``mptcp`` an IPPROTO_MPTCP one, or plain TCP if the kernel refuses it."""
    meta: dict[str, object] = {"mptcp_socket": False, "mptcp_socket_error": None, "info_probe": False}
    if protocol == "mptcp":
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
        except OSError as exc:
            if exc.errno not in _MPTCP_SOCKET_ERRNOS:
                raise
            meta["mptcp_socket_error"] = describe_error(exc)
        else:
            meta["mptcp_socket"] = True
            # Does MPTCP_INFO work at all here? (consulted only when TCP_IS_MPTCP is missing.)
            with contextlib.suppress(OSError):
                meta["info_probe"] = len(sock.getsockopt(SOL_MPTCP, MPTCP_INFO, MPTCP_INFO_SIZE)) > 0
            return sock, meta
    return socket.socket(family, socket.SOCK_STREAM), meta


def parse_mptcp_info(raw: bytes) -> dict[str, int | bool]:
    """Decode the fields of ``struct mptcp_info`` wholly contained in ``raw`` (host byte order)."""
    info: dict[str, int | bool] = {}
    for name, offset, code, needed in MPTCP_INFO_FIELDS:
        if needed > len(raw) or offset + struct.calcsize(code) > len(raw):
            break
        info[name] = struct.unpack_from("=" + code, raw, offset)[0]
    if "flags" in info:
        flags = int(info["flags"])
        info["fallback"] = bool(flags & MPTCP_INFO_FLAG_FALLBACK)
        info["remote_key_received"] = bool(flags & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED)
    return info


def mptcp_state(sock: socket.socket, meta: dict[str, object]
                ) -> tuple[bool | None, str | None, dict[str, int | bool] | None]:
    """(is_mptcp, method, mptcp_info) of a connected socket."""
    if not meta.get("mptcp_socket"):
        return False, "plain-tcp-socket", None
    raw: bytes | None
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, MPTCP_INFO_SIZE)
    except OSError:
        raw = None
    info = parse_mptcp_info(raw) if raw else None
    with contextlib.suppress(OSError):
        return bool(sock.getsockopt(SOL_TCP, TCP_IS_MPTCP)), "TCP_IS_MPTCP", info
    if info is not None and "flags" in info:
        return not info["fallback"], "MPTCP_INFO", info
    if raw is not None and not raw:
        return False, "MPTCP_INFO", None
    if raw is None and meta.get("info_probe"):
        return False, "MPTCP_INFO", None
    return None, None, info


# ------------------------------------------------------------------------------------ sockets io


def resolve(host: str, port: int, passive: bool = False) -> tuple[int, tuple]:
    flags = socket.AI_PASSIVE if passive else 0
    infos = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM, 0, flags)
    if not infos:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def format_addr(sockaddr: object) -> dict[str, object] | None:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return {"host": sockaddr[0], "port": sockaddr[1]}
    return None


def listen_socket(host: str, port: int, protocol: str, backlog: int
                  ) -> tuple[socket.socket, dict[str, object]]:
    family, sockaddr = resolve(host, port, passive=True)
    sock, meta = open_socket(family, protocol)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, meta


def set_nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(host: str, port: int, protocol: str, retries: int, deadline: Deadline,
            result: dict[str, object]) -> tuple[socket.socket, dict[str, object], float]:
    """Connect, retrying every 10 ms on ECONNREFUSED; returns (sock, meta, connect_seconds).

    Every attempt adds one to ``result["connect_attempts"]`` and records the socket kind in ``result``.
    """
    family, sockaddr = resolve(host, port)
    attempts = 0
    while True:
        attempts += 1
        sock, meta = open_socket(family, protocol)
        previous = result.get("connect_attempts")
        result["connect_attempts"] = (previous if isinstance(previous, int) else 0) + 1
        _meta_into(result, meta)
        try:
            deadline.apply(sock)
            start = time.monotonic()
            sock.connect(sockaddr)
            return sock, meta, time.monotonic() - start
        except ConnectionRefusedError:
            sock.close()
            left = deadline.remaining()
            if attempts > retries or (left is not None and left <= CONNECT_RETRY_DELAY):
                raise
            time.sleep(CONNECT_RETRY_DELAY)
        except BaseException:
            sock.close()
            raise


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class Progress:
    """Payload bytes moved so far (still meaningful when a transfer fails half-way)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def send_stream(sock: socket.socket, seed: int, size: int, deadline: Deadline, progress: Progress) -> None:
    for chunk in iter_stream(seed, size):
        deadline.apply(sock)
        sock.sendall(chunk)
        progress.bytes += len(chunk)


def recv_hash_until_eof(sock: socket.socket, update: Callable[[memoryview], object], deadline: Deadline,
                        progress: Progress, limit: int | None = None) -> float | None:
    """Feed everything up to EOF (or until ``progress.bytes`` reaches ``limit``, reading no byte
    beyond it) into ``update``; returns the monotonic time of the first byte."""
    buf = bytearray(RECV_CHUNK)
    view = memoryview(buf)
    first = None
    while limit is None or progress.bytes < limit:
        deadline.apply(sock)
        n = sock.recv_into(buf, RECV_CHUNK if limit is None else min(RECV_CHUNK, limit - progress.bytes))
        if not n:
            return first
        if first is None:
            first = time.monotonic()
        update(view[:n])
        progress.bytes += n
    return first


def recv_line(sock: socket.socket, deadline: Deadline, limit: int = 256) -> str:
    """Read up to a newline or EOF (at most ``limit`` bytes); returns the stripped ASCII text."""
    data = b""
    while b"\n" not in data:
        deadline.apply(sock)
        chunk = sock.recv(limit)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ProtocolError(f"line longer than {limit} bytes")
    return data.split(b"\n", 1)[0].strip().decode("ascii", errors="replace")


def recv_exact(sock: socket.socket, n: int, deadline: Deadline) -> bytes | None:
    """Exactly ``n`` bytes; None on EOF before the first byte; ProtocolError on EOF in between."""
    data = b""
    while len(data) < n:
        deadline.apply(sock)
        chunk = sock.recv(n - len(data))
        if not chunk:
            if not data:
                return None
            raise ProtocolError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def discard_exact(sock: socket.socket, n: int, deadline: Deadline, buf: bytearray) -> None:
    view = memoryview(buf)
    while n > 0:
        deadline.apply(sock)
        got = sock.recv_into(view[:min(n, len(buf))])
        if not got:
            raise ProtocolError(f"connection closed with {n} bytes still expected")
        n -= got


def _sample(result: dict[str, object], sock: socket.socket, meta: dict[str, object]) -> None:
    is_mptcp, method, info = mptcp_state(sock, meta)
    result.update(is_mptcp=is_mptcp, is_mptcp_method=method, mptcp_info=info)


def _common(mode: str, protocol: str) -> dict[str, object]:
    return {"mode": mode, "protocol_requested": protocol, "mptcp_socket": None, "mptcp_socket_error": None,
            "is_mptcp": None, "is_mptcp_method": None, "mptcp_info": None}


def _meta_into(result: dict[str, object], meta: dict[str, object]) -> None:
    result["mptcp_socket"] = meta["mptcp_socket"]
    result["mptcp_socket_error"] = meta["mptcp_socket_error"]


def emit(obj: object) -> None:
    import json

    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
        sys.stdout.flush()


def say_ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def say_connected() -> None:
    """The client's connection is established: the runner times events and path windows from here."""
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write("connected\n")
        sys.stdout.flush()


# --------------------------------------------------------- through a proxy: RFC 8803 converter, SOCKS5

# Error names as in testbed.spec.functions.converter.ERRORS and socks.REPLIES (a unit test keeps them equal).
CONVERT_ERRORS = {0: "unsupported-version", 1: "malformed-message", 2: "unsupported-message",
                  3: "missing-cookie", 32: "not-authorized", 33: "unsupported-tcp-option",
                  64: "resource-exceeded", 65: "network-failure", 96: "connection-reset",
                  97: "destination-unreachable"}
SOCKS_REPLIES = {1: "general-failure", 2: "not-allowed", 3: "network-unreachable", 4: "host-unreachable",
                 5: "connection-refused", 6: "ttl-expired", 7: "command-not-supported",
                 8: "address-type-not-supported"}
CONVERT_CONNECT, CONVERT_ERROR = 10, 30
TCPI_OPT_SYN_DATA = 0x20


class ViaError(Exception):
    """The converter or SOCKS proxy reported that it could not reach the server (or refused the request)."""

    def __init__(self, kind: str, code: int, seconds: float, timings: dict[str, object]) -> None:
        table = CONVERT_ERRORS if kind == "converter" else SOCKS_REPLIES
        self.kind, self.code, self.seconds, self.timings = kind, code, seconds, timings
        self.name = table.get(code, f"error-{code}")
        super().__init__(f"{kind} reported {self.name} ({code})")

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "code": self.code, "name": self.name, "seconds": round(self.seconds, 6),
                "connect_seconds": _round(self.timings.get("connect")),
                "established_seconds": _round(self.timings.get("established"))}


def _round(value: object) -> float | None:
    return round(value, 6) if isinstance(value, float) else None


def parse_via(text: str) -> tuple[str, str, int]:
    """``converter:ADDR:PORT`` or ``socks5:ADDR:PORT`` (IPv6 in brackets)."""
    kind, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("converter", "socks5") or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected converter:ADDR:PORT or socks5:ADDR:PORT, got {text!r}")
    return kind, host.strip("[]"), int(port)


def _packed(host: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


def convert_request(host: str, port: int) -> bytes:
    """A Convert message (RFC 8803) with one Connect TLV: version 1 header (Total Length 6 words),
    then Type 10, Length 5 words, the port and the address (IPv4 as IPv4-mapped IPv6)."""
    addr = _packed(host)
    if len(addr) == 4:
        addr = b"\0" * 10 + b"\xff\xff" + addr
    return struct.pack("!BBHBBH", 1, 6, 0, CONVERT_CONNECT, 5, port) + addr


def read_convert_reply(sock: socket.socket, deadline: Deadline) -> list[tuple[int, bytes]]:
    """The converter's Convert message: [(TLV type, value)]."""
    header = recv_exact(sock, 4, deadline)
    if header is None:
        raise ProtocolError("the converter closed the connection without a Convert message")
    version, words, _ = struct.unpack("!BBH", header)
    if version != 1 or words < 1:
        raise ProtocolError(f"not a Convert version 1 message (version {version}, Total Length {words})")
    body = recv_exact(sock, words * 4 - 4, deadline) if words > 1 else b""
    if body is None:
        raise ProtocolError("the converter closed the connection inside its Convert message")
    tlvs, offset = [], 0
    while offset + 2 <= len(body):
        tlv_type, length = body[offset], body[offset + 1]
        if length == 0 or offset + length * 4 > len(body):
            raise ProtocolError(f"malformed TLV {tlv_type} in the converter's message")
        tlvs.append((tlv_type, body[offset + 2:offset + length * 4]))
        offset += length * 4
    return tlvs


def _wait_connected(sock: socket.socket, deadline: Deadline) -> None:
    """Wait for a non-blocking connect (or TFO SYN) to complete; raise its error."""
    import select

    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    left = deadline.remaining()
    if not poller.poll(None if left is None else int(left * 1000) + 1):
        raise TimeoutError("connect to the converter timed out")
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _syn_data(sock: socket.socket) -> bool | None:
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[5] & TCPI_OPT_SYN_DATA)
    except OSError:
        return None


def via_connect(via: tuple[str, str, int], host: str, port: int, protocol: str, retries: int,
                deadline: Deadline, result: dict[str, object], early: bytes = b""
                ) -> tuple[socket.socket, dict[str, object], dict[str, object]]:
    """Connect to host:port through a converter or SOCKS5 proxy; returns (sock, meta, timings).

    timings (seconds from the start of the attempt): ``connect`` the TCP connection to the proxy is
    established; ``setup`` the proxy confirmed the connection to the server; ``established`` when
    the attempt counts as connected for a Happy-Eyeballs race (RFC 8305): through SOCKS that is the
    proxy connection (the CONNECT exchange can only follow it), through a converter the Convert
    answer (the request rides in the SYN, and a Convert client such as libconvert returns from
    connect() only with that answer); ``early_sent`` ``early`` went with the request (converter
    only: in the SYN with TCP Fast Open); ``syn_data`` the SYN carried data.
    ViaError (with the timings so far) when the proxy reports a failure."""
    kind, vhost, vport = via
    t0 = time.monotonic()
    timings: dict[str, object] = {"connect": None, "setup": None, "established": None, "early_sent": False,
                                  "syn_data": None}
    if kind == "socks5":
        sock, meta, connect_seconds = connect(vhost, vport, protocol, retries, deadline, result)
        timings.update(connect=connect_seconds, established=time.monotonic() - t0)
        try:
            deadline.apply(sock)
            sock.sendall(b"\x05\x01\x00")  # version 5, one method: no authentication
            if recv_exact(sock, 2, deadline) != b"\x05\x00":
                raise ProtocolError("the SOCKS5 proxy refused the no-authentication method")
            addr = _packed(host)
            sock.sendall(b"\x05\x01\x00" + (b"\x01" if len(addr) == 4 else b"\x04") + addr + struct.pack("!H", port))
            head = recv_exact(sock, 4, deadline)
            if head is None or head[0] != 5:
                raise ProtocolError(f"not a SOCKS5 reply: {head!r}")
            if head[1] != 0:
                raise ViaError(kind, head[1], time.monotonic() - t0, timings)
            if head[3] == 3:
                size = recv_exact(sock, 1, deadline)
                alen = size[0] if size else 0
            else:
                alen = 16 if head[3] == 4 else 4
            if recv_exact(sock, alen + 2, deadline) is None:
                raise ProtocolError("the SOCKS5 reply was cut short")
        except BaseException:
            close_quietly(sock)
            raise
        timings["setup"] = time.monotonic() - t0
        return sock, meta, timings
    family, sockaddr = resolve(vhost, vport)
    sock, meta = open_socket(family, protocol)
    previous = result.get("connect_attempts")
    result["connect_attempts"] = (previous if isinstance(previous, int) else 0) + 1
    _meta_into(result, meta)
    message = convert_request(host, port) + early
    try:
        sock.setblocking(False)
        try:
            sent = sock.sendto(message, socket.MSG_FASTOPEN, sockaddr)  # the SYN carries it if TFO allows
        except BlockingIOError:  # no TFO cookie yet: a plain SYN (asking for one) left
            sent = 0
        _wait_connected(sock, deadline)
        timings.update(connect=time.monotonic() - t0, syn_data=_syn_data(sock))
        deadline.apply(sock)
        if sent < len(message):
            sock.sendall(message[sent:])
        timings["early_sent"] = bool(early)
        tlvs = read_convert_reply(sock, deadline)
        for tlv_type, value in tlvs:
            if tlv_type == CONVERT_ERROR:
                raise ViaError(kind, value[0] if value else -1, time.monotonic() - t0, timings)
    except BaseException:
        close_quietly(sock)
        raise
    timings["setup"] = timings["established"] = time.monotonic() - t0
    return sock, meta, timings


def _via_json(via: tuple[str, str, int] | None) -> dict[str, object] | None:
    return None if via is None else {"kind": via[0], "host": via[1], "port": via[2]}


# ----------------------------------------------------------------------------------------- abort


def abort_plan(args: argparse.Namespace) -> dict[str, object] | None:
    """{side, after, how} of a bulk transfer's abort (``how`` auto resolved), or None."""
    if args.abort_after is None:
        return None
    how = args.abort_how
    if how == "auto":
        how = "unread" if args.abort_side == _receiver(args.direction) else "linger0"
    return {"side": args.abort_side, "after": args.abort_after, "how": how}


def _receiver(direction: str) -> str:
    return "client" if direction == "download" else "server"


def _abort_keys(plan: dict[str, object], role: str) -> dict[str, object]:
    """The result keys of an aborted transfer, before it runs (see "Aborting")."""
    if plan["side"] == role:
        return {"abort": plan, "aborted": False, "abort_bytes": None, "unread_at_close": None,
                "unread_bytes": None, "linger_zero": False}
    return {"abort": plan, "peer_reset": False, "reset_error": None, "reset_bytes": None}


def unread_bytes(sock: socket.socket) -> int | None:
    """Bytes waiting unread in the receive queue (FIONREAD); None when the socket cannot say."""
    import fcntl
    import termios

    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return None


def wait_unread(sock: socket.socket, deadline: Deadline, wait: float = ABORT_UNREAD_WAIT
                ) -> tuple[bool, int | None]:
    """Wait (at most ``wait`` s) until payload is waiting unread: (whether it is, FIONREAD's count).

    Readability alone cannot tell data from an EOF: FIONREAD decides, or without it a MSG_PEEK."""
    import select

    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    left = deadline.remaining()
    end = time.monotonic() + (wait if left is None else min(wait, left))
    count = unread_bytes(sock)
    while not count:
        remaining = end - time.monotonic()
        events = poller.poll(max(0, int(remaining * 1000)) + 1) if remaining > 0 else []
        if not events:
            return False, count
        count = unread_bytes(sock)
        if count:
            break
        try:  # readable, yet no count: data (FIONREAD missing or late), or the peer's FIN or reset
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return True, None  # how much, the socket does not say
            return False, count  # EOF: nothing more will arrive
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            return False, count
    return True, count


def abort_close(sock: socket.socket, plan: dict[str, object], deadline: Deadline, result: dict[str, object],
                errors: list[str]) -> None:
    """Close ``sock`` abruptly, as ``plan["how"]`` says, and record how."""
    how = plan["how"]
    if how in ("unread", "both"):
        unread, count = wait_unread(sock, deadline)
        result.update(unread_at_close=unread, unread_bytes=count)
        if not unread and how == "unread":
            add_error(errors, "no payload was waiting unread at close(): the close may have been orderly")
    if how in ("linger0", "both"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        result["linger_zero"] = True
    sock.close()
    result["aborted"] = True


def aborted_transfer(sock: socket.socket, args: argparse.Namespace, plan: dict[str, object], role: str,
                     deadline: Deadline, progress: Progress, result: dict[str, object],
                     meta: dict[str, object]) -> dict[str, object]:
    """The payload phase of a bulk transfer that ``plan["side"]`` aborts, on side ``role``; fills
    ``result`` (see "Aborting"). Returns {first: monotonic time of the first payload byte or None,
    digest: sha256 of what this side received or None, expected: that of the stream's first as many
    bytes}. ``sock`` is closed when this side aborted."""
    import hashlib

    errors = result["errors"]
    assert isinstance(errors, list)
    receiving = role == _receiver(args.direction)
    aborting = plan["side"] == role
    after = plan["after"]
    assert isinstance(after, int)
    h = hashlib.sha256()
    first = None
    try:
        if receiving:
            first = recv_hash_until_eof(sock, h.update, deadline, progress, after if aborting else None)
        else:
            send_stream(sock, args.seed, after if aborting else args.size, deadline, progress)
        if aborting:
            result["abort_bytes"] = progress.bytes
            _sample(result, sock, meta)  # before the abort, while the subflows are up
            abort_close(sock, plan, deadline, result, errors)
        elif receiving:
            add_error(errors, f"the connection ended in order (EOF) after {progress.bytes} bytes: the peer's "
                              "abort did not reset it")
        else:  # everything was handed to the kernel before a reset came: the receiver never answers
            sock.shutdown(socket.SHUT_WR)
            line = recv_line(sock, deadline)
            add_error(errors, "the peer sent its digest: it did not abort" if line else
                      "the connection ended in order (EOF): the peer's abort did not reset it")
    except (ConnectionResetError, BrokenPipeError) as exc:
        if aborting:
            raise
        result.update(peer_reset=True, reset_error=describe_error(exc), reset_bytes=progress.bytes)
    if not aborting:
        with contextlib.suppress(Exception):
            _sample(result, sock, meta)
    if not receiving:
        return {"first": None, "digest": None, "expected": None}
    digest, expected = h.hexdigest(), stream_digest(args.seed, progress.bytes)
    if not digests_match(digest, expected):
        add_error(errors, f"digest mismatch: the {progress.bytes} bytes received before the abort are not "
                          "the start of the sender's stream")
    return {"first": first, "digest": digest, "expected": expected}


# ------------------------------------------------------------------------------------------ bulk


def run_bulk_server(args: argparse.Namespace) -> dict[str, object]:
    errors: list[str] = []
    result = _common("bulk-server", args.protocol)
    result.update(direction=args.direction, size=args.size, seed=args.seed, bytes=0, sha256=None,
                  seconds=None, peer=None, local=None, errors=errors)
    download = args.direction == "download"
    plan = abort_plan(args)
    if plan is not None:  # the receiving side judges the bytes that arrived before the abort
        result.update(_abort_keys(plan, "server"), intact=None if download else False)
        if not download:
            result["sha256_expected"] = None
    elif download:
        result.update(sha256_peer=None, intact=False)
    deadline = Deadline(args.timeout)
    lsock: socket.socket | None = None
    conn: socket.socket | None = None
    meta: dict[str, object] = {}
    progress = Progress()
    try:
        expected = None
        if download:
            # Hash the stream before listening: neither the transfer nor its end waits on it.
            expected = stream_digest(args.seed, args.size)
            result["sha256"] = expected
        # Backlog > 1: an MP_JOIN SYN that arrives before accept() would otherwise find the queue full.
        lsock, meta = listen_socket(args.bind, args.port, args.protocol, backlog=16)
        _meta_into(result, meta)
        say_ready()
        deadline.apply(lsock)
        conn, peer = lsock.accept()
        start = time.monotonic()
        # The listener stays open until the transfer ends: upstream MPTCP accepts MP_JOIN
        # subflows through it, so closing it here would reset every join.
        result["peer"] = format_addr(peer)
        result["local"] = format_addr(conn.getsockname())
        if plan is not None:
            moved = aborted_transfer(conn, args, plan, "server", deadline, progress, result, meta)
            result["seconds"] = round(time.monotonic() - start, 6)
            if not download:
                result.update(sha256=moved["digest"], sha256_expected=moved["expected"],
                              intact=moved["digest"] == moved["expected"])
        elif not download:
            import hashlib

            h = hashlib.sha256()
            recv_hash_until_eof(conn, h.update, deadline, progress)
            result["seconds"] = round(time.monotonic() - start, 6)
            result["sha256"] = digest = h.hexdigest()
            deadline.apply(conn)
            conn.sendall(digest.encode() + b"\n")
        else:
            send_stream(conn, args.seed, args.size, deadline, progress)
            conn.shutdown(socket.SHUT_WR)
            peer_digest = recv_line(conn, deadline)
            result["seconds"] = round(time.monotonic() - start, 6)
            result["sha256_peer"] = peer_digest or None
            result["intact"] = digests_match(expected, peer_digest)
            if not result["intact"]:
                add_error(errors, "digest mismatch: the client received different data"
                          if peer_digest else "the client sent no digest")
        if plan is None:
            _sample(result, conn, meta)  # just before close
    except (Exception, Stop) as exc:
        add_error(errors, describe_error(exc))
        if conn is not None and conn.fileno() != -1:
            with contextlib.suppress(Exception):
                _sample(result, conn, meta)
    finally:
        close_quietly(conn)
        close_quietly(lsock)
        result["bytes"] = progress.bytes
    return result


def run_bulk_client(args: argparse.Namespace) -> dict[str, object]:
    errors: list[str] = []
    result = _common("bulk-client", args.protocol)
    result.update(direction=args.direction, size=args.size, seed=args.seed, bytes=0, seconds=None,
                  goodput_bps=None, sha256_local=None, sha256_remote=None, intact=False,
                  connect_seconds=None, connect_attempts=0, first_byte_seconds=None, peer=None, local=None,
                  via=_via_json(args.via), setup_seconds=None, established_seconds=None, syn_data=None,
                  via_error=None, errors=errors)
    upload = args.direction == "upload"
    plan = abort_plan(args)
    if plan is not None:
        result.update(_abort_keys(plan, "client"))
    deadline = Deadline(args.timeout)
    sock: socket.socket | None = None
    meta: dict[str, object] = {}
    progress = Progress()
    local: str | None = None
    remote: str | None = None
    completed = False
    try:
        if args.via:
            sock, meta, timings = via_connect(args.via, args.connect, args.port, args.protocol,
                                              args.connect_retries, deadline, result)
            result.update(connect_seconds=_round(timings["connect"]), setup_seconds=_round(timings["setup"]),
                          established_seconds=_round(timings["established"]), syn_data=timings["syn_data"])
        else:
            sock, meta, connect_seconds = connect(args.connect, args.port, args.protocol,
                                                  args.connect_retries, deadline, result)
            result.update(connect_seconds=round(connect_seconds, 6), setup_seconds=round(connect_seconds, 6),
                          established_seconds=round(connect_seconds, 6))
        say_connected()
        start = time.monotonic()
        result.update(peer=format_addr(sock.getpeername()), local=format_addr(sock.getsockname()))
        if plan is not None:
            moved = aborted_transfer(sock, args, plan, "client", deadline, progress, result, meta)
            elapsed = time.monotonic() - start
            if isinstance(moved["first"], float):
                result["first_byte_seconds"] = round(moved["first"] - start, 6)
            local, remote = moved["digest"], moved["expected"]
            result.update(seconds=round(elapsed, 6),
                          goodput_bps=round(progress.bytes * 8 / elapsed, 3) if elapsed > 0 else None)
            close_quietly(sock)
            sock = None
            if upload:  # what this side sent; the server checks what it received
                local = stream_digest(args.seed, progress.bytes)
            completed = True
        else:
            if upload:
                send_stream(sock, args.seed, args.size, deadline, progress)
                sock.shutdown(socket.SHUT_WR)
                remote = recv_line(sock, deadline) or None
                elapsed = time.monotonic() - start
            else:
                import hashlib

                h = hashlib.sha256()
                first = recv_hash_until_eof(sock, h.update, deadline, progress)
                elapsed = time.monotonic() - start
                if first is not None:
                    result["first_byte_seconds"] = round(first - start, 6)
                local = h.hexdigest()
                deadline.apply(sock)
                sock.sendall(local.encode() + b"\n")
            completed = True
            result.update(seconds=round(elapsed, 6),
                          goodput_bps=round(progress.bytes * 8 / elapsed, 3) if elapsed > 0 else None)
            _sample(result, sock, meta)  # just before close, while the subflows are still up
            close_quietly(sock)
            sock = None
            # The digest of the deterministic stream, computed outside the timed transfer.
            if upload:
                local = stream_digest(args.seed, args.size)
            else:
                remote = stream_digest(args.seed, args.size)
    except (Exception, Stop) as exc:
        add_error(errors, describe_error(exc))
        if isinstance(exc, ViaError):
            result.update(via_error=exc.as_dict(), connect_seconds=_round(exc.timings.get("connect")),
                          established_seconds=_round(exc.timings.get("established")))
        if sock is not None and sock.fileno() != -1:
            with contextlib.suppress(Exception):
                _sample(result, sock, meta)
    finally:
        close_quietly(sock)
    nbytes = result["bytes"] = progress.bytes
    if plan is not None:  # the receiving side judges the bytes that arrived before the abort
        result.update(sha256_local=local, sha256_remote=remote,
                      intact=digests_match(local, remote) if not upload else None)
        return result
    intact = completed and nbytes == args.size and digests_match(local, remote)
    result.update(sha256_local=local, sha256_remote=remote, intact=intact)
    if completed and not intact:
        if nbytes != args.size:
            add_error(errors, f"transferred {nbytes} bytes, expected {args.size}")
        add_error(errors, "digest mismatch: data corrupted in transit (or --seed/--size differ)"
                  if remote else "no digest from the server")
    return result


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
    result = _common("rr-server", args.protocol)
    result.update(response_size=args.response_size, requests=0, connections=0, mptcp_connections=0,
                  bytes_received=0, bytes_sent=0, seconds=None, stopped_by=None, errors=errors)
    deadline = Deadline(args.timeout)
    response = struct.pack("!I", args.response_size) + pattern_bytes(args.response_size)
    slots = threading.BoundedSemaphore(args.max_threads)
    lsock = None
    start = time.monotonic()
    try:
        lsock, meta = listen_socket(args.bind, args.port, args.protocol, backlog=128)
        _meta_into(result, meta)
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
    result = _common("rr-client", args.protocol)
    n = args.requests
    result.update(requests=n, request_size=args.request_size, response_size=args.response_size,
                  interval=args.interval, new_connection_per_request=args.new_connection_per_request,
                  count=n, ok=0, failed=0, ttfb_seconds=summarize([]), completion_seconds=summarize([]),
                  connect_seconds=summarize([]), connect_attempts=0, samples=[], connections=0,
                  mptcp_connections=0, via=_via_json(args.via), setup_seconds=summarize([]),
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


# ------------------------------------------------------------------------------------------- cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent.py", description="MPTCP testbed workload agent "
                                     "(prints one JSON object on stdout; servers print 'ready' first)")
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    def common(p: argparse.ArgumentParser, server: bool) -> None:
        if server:
            p.add_argument("--bind", required=True, metavar="ADDR", help="address to listen on")
        else:
            p.add_argument("--connect", required=True, metavar="ADDR", help="server address")
        p.add_argument("--port", required=True, type=int, metavar="P")
        p.add_argument("--protocol", choices=("mptcp", "tcp"), default="mptcp",
                       help="mptcp opens IPPROTO_MPTCP sockets, falling back to TCP if refused (default)")
        p.add_argument("--timeout", type=_non_negative_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"bound on the whole run, 0 = none (default {DEFAULT_TIMEOUT:g})")
        if not server:
            p.add_argument("--via", type=parse_via, default=None, metavar="KIND:ADDR:PORT",
                           help="go through a converter (RFC 8803, converter:ADDR:PORT) or a SOCKS5 proxy "
                                "(socks5:ADDR:PORT) to --connect")
            p.add_argument("--connect-retries", type=_non_negative_int, default=DEFAULT_CONNECT_RETRIES,
                           metavar="N", help="retries on ECONNREFUSED, every 10 ms "
                           f"(default {DEFAULT_CONNECT_RETRIES})")

    def bulk(p: argparse.ArgumentParser, server: bool) -> None:
        common(p, server)
        p.add_argument("--direction", choices=("upload", "download"), default="upload",
                       help="upload: client -> server (default); download: server -> client")
        p.add_argument("--size", type=parse_size, required=not server, default=None, metavar="BYTES",
                       help="payload bytes" + (" (required for download)" if server else ""))
        p.add_argument("--seed", type=int, default=0, metavar="S", help="payload seed (default 0)")
        p.add_argument("--abort-after", type=parse_size, default=None, metavar="BYTES",
                       help="the transfer is aborted after BYTES of payload (less than --size; give the same "
                            "--abort-* options to both sides)")
        p.add_argument("--abort-side", choices=("client", "server"), default="client",
                       help="the side that aborts (default client)")
        p.add_argument("--abort-how", choices=("auto", "unread", "linger0", "both"), default="auto",
                       help="unread: close with payload unread (receiving side only); linger0: close with "
                            "SO_LINGER {1, 0}; both; auto (default): unread on the receiving side, else linger0")

    bulk(sub.add_parser("bulk-server", help="accept one bulk transfer"), True)
    bulk(sub.add_parser("bulk-client", help="run one bulk transfer"), False)

    p = sub.add_parser("rr-server", help="serve request/response exchanges until SIGTERM or timeout")
    common(p, True)
    p.add_argument("--response-size", type=parse_size, default=1000, metavar="BYTES",
                   help="response payload bytes (default 1000)")
    p.add_argument("--max-threads", type=_positive_int, default=DEFAULT_MAX_THREADS, metavar="N",
                   help=f"connections served at once (default {DEFAULT_MAX_THREADS})")

    p = sub.add_parser("rr-client", help="run request/response exchanges")
    common(p, False)
    p.add_argument("--requests", type=_positive_int, required=True, metavar="N")
    p.add_argument("--request-size", type=parse_size, required=True, metavar="BYTES")
    p.add_argument("--response-size", type=parse_size, required=True, metavar="BYTES")
    p.add_argument("--interval", type=_non_negative_float, default=0.0, metavar="SECONDS",
                   help="spacing of request starts (default 0: back to back)")
    p.add_argument("--new-connection-per-request", action="store_true",
                   help="open a new connection for every request (timings include the handshake)")
    return parser


MODES = {"bulk-server": run_bulk_server, "bulk-client": run_bulk_client, "rr-server": run_rr_server,
         "rr-client": run_rr_client}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "bulk-server" and args.size is None:
        if args.direction == "download":
            parser.error("bulk-server --direction download needs --size")
        args.size = 0
    if args.mode.startswith("bulk") and args.abort_after is not None:
        if not 0 < args.abort_after < args.size:
            parser.error("--abort-after must be more than 0 and less than --size"
                         + (" (bulk-server needs --size to abort)" if not args.size else ""))
        if args.abort_how in ("unread", "both") and args.abort_side != _receiver(args.direction):
            parser.error(f"--abort-how {args.abort_how} needs the receiving side to abort "
                         f"(--abort-side {_receiver(args.direction)} for --direction {args.direction})")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)
    result: dict[str, object] | None = None
    try:
        try:
            result = MODES[args.mode](args)
        except (Exception, Stop) as exc:  # a bug, or a signal outside the modes' own handling
            result = _common(args.mode, args.protocol)
            result["errors"] = [describe_error(exc)]
    except Stop as exc:  # a signal right after the mode returned
        if result is None:
            result = _common(args.mode, args.protocol)
            result["errors"] = [describe_error(exc)]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    assert result is not None
    emit(result)
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    code = main()
    os._exit(code)  # stdout is flushed; do not wait for rr-server connection threads blocked in recv()
