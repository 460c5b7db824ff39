"""Aborted bulk transfers (``--abort-after``): the plan, waiting for unread payload, the abrupt
close, and the payload phase of either side (see "Aborting" in the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import time

from .common import (
    ABORT_UNREAD_WAIT,
    Deadline,
    add_error,
    describe_error,
    digests_match,
    receiver,
    stream_digest,
)
from .sockets import Progress, recv_hash_until_eof, recv_line, sample_state, send_stream

# ----------------------------------------------------------------------------------------- abort


def abort_plan(args: argparse.Namespace) -> dict[str, object] | None:
    """{side, after, how} of a bulk transfer's abort (``how`` auto resolved), or None."""
    if args.abort_after is None:
        return None
    how = args.abort_how
    if how == "auto":
        how = "unread" if args.abort_side == receiver(args.direction) else "linger0"
    return {"side": args.abort_side, "after": args.abort_after, "how": how}


def abort_keys(plan: dict[str, object], role: str) -> dict[str, object]:
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
    receiving = role == receiver(args.direction)
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
            sample_state(result, sock, meta)  # before the abort, while the subflows are up
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
            sample_state(result, sock, meta)
    if not receiving:
        return {"first": None, "digest": None, "expected": None}
    digest, expected = h.hexdigest(), stream_digest(args.seed, progress.bytes)
    if not digests_match(digest, expected):
        add_error(errors, f"digest mismatch: the {progress.bytes} bytes received before the abort are not "
                          "the start of the sender's stream")
    return {"first": first, "digest": digest, "expected": expected}
