"""The conformance probe agent: runs inside a node's network namespace (started by the testbed).

    probe_agent.py run NAME --target IP --port P --speaks v1|v0|tcp [--counters]
    probe_agent.py listen --port P [--bind ADDRESS]
    probe_agent.py list

``run`` (in the probe node, as root) runs one probe (`conformance.PROBES`) and prints its result as
one JSON line. With ``--counters`` it asks whoever started it for the server's counters at named
moments: it prints ``@@counters LABEL`` and reads one JSON object (counter → value) from stdin.

``listen`` (in the server node) is the application behind the probes' connections: an MPTCP
listening socket (plain TCP where the node has no MPTCP) that accepts and holds every connection,
reading and discarding what arrives. Prints ``ready``; on SIGTERM/SIGINT prints one JSON line with
what it accepted (per connection: peer, MPTCP token, subflows and flags from MPTCP_INFO) and exits.

``list`` prints the probe catalog as JSON. Standard library (and scapy for ``run``) only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1


def _counters_from_stdin(label: str) -> dict[str, int]:
    print(f"@@counters {label}", flush=True)
    line = sys.stdin.readline()
    try:
        data = json.loads(line)
    except ValueError:
        return {}
    return {k: int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def cmd_run(args: argparse.Namespace) -> int:
    import conformance  # noqa: PLC0415 - the sibling module, found through sys.path

    counters = _counters_from_stdin if args.counters else (lambda label: {})
    started = time.monotonic()
    try:
        result = conformance.run_probe(args.name, args.target, args.port, args.speaks, counters).as_dict()
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported as the probe's error, with the traceback on stderr
        traceback.print_exc()
        result = {"ok": False, "probe": args.name, "speaks": args.speaks, "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def _info(conn: socket.socket) -> dict[str, Any]:
    try:
        raw = conn.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    except OSError as exc:
        return {"mptcp_info": None, "error": exc.strerror}
    if len(raw) < 16:
        return {"mptcp_info": None}
    subflows = raw[0]
    flags, token = struct.unpack_from("=II", raw, 8)
    return {"subflows": subflows, "flags": flags, "fallback": bool(flags & 1), "token": f"{token:08x}"}


def cmd_listen(args: argparse.Namespace) -> int:
    protocol = "mptcp"
    try:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as exc:
        protocol = f"tcp (MPTCP socket refused: {exc.strerror})"
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.bind, args.port))
    lsock.listen(64)
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    signal.signal(signal.SIGINT, lambda *_: os.write(stop_w, b"x"))
    print("ready", flush=True)
    conns: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
    accepted: list[dict[str, Any]] = []
    while True:
        try:
            ready, _, _ = select.select([stop_r, lsock, *[c for c, _ in conns.values()]], [], [], 1.0)
        except InterruptedError:
            continue
        if stop_r in ready:
            break
        for r in ready:
            if r is lsock:
                conn, peer = lsock.accept()
                entry = {"peer": f"{peer[0]}:{peer[1]}", "t": round(time.time(), 3), **_info(conn), "bytes": 0}
                accepted.append(entry)
                conns[conn.fileno()] = (conn, entry)
            elif isinstance(r, socket.socket):
                conn, entry = conns[r.fileno()]
                try:
                    data = conn.recv(65536)
                except OSError as exc:
                    data = b""
                    entry["error"] = exc.strerror
                entry["bytes"] += len(data)
                if not data:
                    entry["closed"] = True
                    entry.update({f"final_{k}": v for k, v in _info(conn).items()})
                    del conns[conn.fileno()]
                    conn.close()
    for conn, entry in conns.values():
        entry.update({f"final_{k}": v for k, v in _info(conn).items()})
        conn.close()
    print(json.dumps({"protocol": protocol, "port": args.port, "accepted": accepted}), flush=True)
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    import conformance  # noqa: PLC0415

    print(json.dumps(conformance.catalog(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MPTCP conformance probes (inside a node's namespace)")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one probe against a server")
    r.add_argument("name")
    r.add_argument("--target", required=True, help="the server's IPv4 address")
    r.add_argument("--port", type=int, default=5201)
    r.add_argument("--speaks", choices=["v1", "v0", "tcp"], required=True,
                   help="what the server is expected to speak: RFC 8684, RFC 6824 or plain TCP")
    r.add_argument("--counters", action="store_true", help="ask for the server's counters over stdin/stdout")
    listen = sub.add_parser("listen", help="accept and hold connections (the server side)")
    listen.add_argument("--port", type=int, default=5201)
    listen.add_argument("--bind", default="0.0.0.0")
    sub.add_parser("list", help="the probe catalog as JSON")
    args = parser.parse_args(argv)
    return {"run": cmd_run, "listen": cmd_listen, "list": cmd_list}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
