"""The bulk modes: one transfer with integrity (see "Bulk wire protocol" in the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import socket
import time

from .abort import abort_keys, abort_plan, aborted_transfer
from .common import (
    Deadline,
    Stop,
    add_error,
    base_result,
    describe_error,
    digests_match,
    meta_into,
    say_connected,
    say_ready,
    stream_digest,
)
from .relay import ViaError, round6, via_connect, via_json
from .sockets import (
    Progress,
    close_quietly,
    connect,
    format_addr,
    listen_socket,
    recv_hash_until_eof,
    recv_line,
    sample_state,
    send_stream,
)

# ------------------------------------------------------------------------------------------ bulk


def run_bulk_server(args: argparse.Namespace) -> dict[str, object]:
    errors: list[str] = []
    result = base_result("bulk-server", args.protocol)
    result.update(direction=args.direction, size=args.size, seed=args.seed, bytes=0, sha256=None,
                  seconds=None, peer=None, local=None, errors=errors)
    download = args.direction == "download"
    plan = abort_plan(args)
    if plan is not None:  # the receiving side judges the bytes that arrived before the abort
        result.update(abort_keys(plan, "server"), intact=None if download else False)
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
        meta_into(result, meta)
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
            sample_state(result, conn, meta)  # just before close
    except (Exception, Stop) as exc:
        add_error(errors, describe_error(exc))
        if conn is not None and conn.fileno() != -1:
            with contextlib.suppress(Exception):
                sample_state(result, conn, meta)
    finally:
        close_quietly(conn)
        close_quietly(lsock)
        result["bytes"] = progress.bytes
    return result


def run_bulk_client(args: argparse.Namespace) -> dict[str, object]:
    errors: list[str] = []
    result = base_result("bulk-client", args.protocol)
    result.update(direction=args.direction, size=args.size, seed=args.seed, bytes=0, seconds=None,
                  goodput_bps=None, sha256_local=None, sha256_remote=None, intact=False,
                  connect_seconds=None, connect_attempts=0, first_byte_seconds=None, peer=None, local=None,
                  via=via_json(args.via), setup_seconds=None, established_seconds=None, syn_data=None,
                  via_error=None, errors=errors)
    upload = args.direction == "upload"
    plan = abort_plan(args)
    if plan is not None:
        result.update(abort_keys(plan, "client"))
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
            result.update(connect_seconds=round6(timings["connect"]), setup_seconds=round6(timings["setup"]),
                          established_seconds=round6(timings["established"]), syn_data=timings["syn_data"])
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
            sample_state(result, sock, meta)  # just before close, while the subflows are still up
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
            result.update(via_error=exc.as_dict(), connect_seconds=round6(exc.timings.get("connect")),
                          established_seconds=round6(exc.timings.get("established")))
        if sock is not None and sock.fileno() != -1:
            with contextlib.suppress(Exception):
                sample_state(result, sock, meta)
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
