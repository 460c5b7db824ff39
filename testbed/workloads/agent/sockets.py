"""Sockets and MPTCP: opening (IPPROTO_MPTCP, or TCP when refused), ``struct mptcp_info``,
is_mptcp, listening, connecting with retries, and the exact-length reads the modes use."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time

from .common import (
    CONNECT_RETRY_DELAY,
    RECV_CHUNK,
    Deadline,
    ProtocolError,
    describe_error,
    iter_stream,
    meta_into,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
SOL_TCP = 6
TCP_IS_MPTCP = 43
MPTCP_INFO_FLAG_FALLBACK = 1
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 2
_MPTCP_SOCKET_ERRNOS = (errno.ENOPROTOOPT, errno.EPROTONOSUPPORT, errno.EINVAL)

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
    # An ASCII name or address as bytes: getaddrinfo() would import the idna codec for a str.
    name = host.encode("ascii") if host and host.isascii() else host or None
    infos = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, 0, flags)
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
        meta_into(result, meta)
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


def sample_state(result: dict[str, object], sock: socket.socket, meta: dict[str, object]) -> None:
    is_mptcp, method, info = mptcp_state(sock, meta)
    result.update(is_mptcp=is_mptcp, is_mptcp_method=method, mptcp_info=info)
