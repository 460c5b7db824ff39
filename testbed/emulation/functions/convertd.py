#!/usr/bin/env python3
"""Transport Converter daemon: the server side of the 0-RTT TCP Convert Protocol (RFC 8803).

Standalone and stdlib-only (run as ``python -S convertd.py ...`` inside a node's namespace); the
testbed package is never imported here, and the codec below is importable for tests.

Wire format (RFC 8803 section 4), all integers in network byte order:

  Convert message = fixed header, then TLVs, Total Length * 4 bytes in all.
    header: Version (8 bits, = 1) | Total Length (8 bits, in 32-bit words, header included) |
            Unassigned (16 bits, sent as zero, ignored)
    TLV:    Type (8) | Length (8, in 32-bit words, Type and Length included) | Value, zero-padded
  Info (1)                     Unassigned (16)                         client: "what do you support?"
  Connect (10)                 Remote Peer Port (16), Remote Peer IP Address (128; IPv4 as
                               IPv4-mapped IPv6), then optional TCP options, padded
  Extended TCP Header (20)     Unassigned (16), then the TCP options of the server's SYN+ACK
  Supported TCP Extensions(21) Unassigned (16), then one byte per supported TCP option kind
  Cookie (22)                  Unassigned (16), then opaque data
  Error (30)                   Error Code (8), Value (8 or more: e.g. the supported version, the
                               unsupported TLV type or TCP option kind)

Per connection: the client's first bytes must be one Convert message (with TCP Fast Open it rides
in the SYN). With a Connect TLV the converter opens a plain TCP connection to the server; when it
is established the converter answers with a Convert message holding an Extended TCP Header TLV
(and a Supported TCP Extensions TLV if the client also sent an Info TLV), then relays both ways;
bytes the client sent after its Convert message are forwarded. When the server cannot be reached,
or the message is unacceptable, the answer is a Convert message with one Error TLV and the
connection is closed. An Info TLV alone gets the Supported TCP Extensions TLV, then a close.

Limitation: Linux does not hand the SYN+ACK's raw options to applications, so the Extended TCP
Header TLV is rebuilt from the upstream socket's TCP_INFO (MSS, window scale, SACK-permitted,
timestamps with zero values): which options the server agreed to, not its exact bytes.

Output: ``ready {json}`` on stdout once listening; one JSON line per finished connection in
--log; counters in --stats at exit (SIGTERM/SIGINT end the daemon).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

VERSION = 1
IPPROTO_MPTCP = 262
TCP_IS_MPTCP = 43
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_SYN_DATA = 0x1, 0x2, 0x4, 0x20
TCP_SYN_RECV = 3

TLV_INFO = 1
TLV_CONNECT = 10
TLV_EXTENDED_TCP_HEADER = 20
TLV_SUPPORTED_TCP_EXTENSIONS = 21
TLV_COOKIE = 22
TLV_ERROR = 30
TLV_NAMES = {TLV_INFO: "info", TLV_CONNECT: "connect", TLV_EXTENDED_TCP_HEADER: "extended-tcp-header",
             TLV_SUPPORTED_TCP_EXTENSIONS: "supported-tcp-extensions", TLV_COOKIE: "cookie", TLV_ERROR: "error"}

E_UNSUPPORTED_VERSION = 0
E_MALFORMED = 1
E_UNSUPPORTED_MESSAGE = 2
E_MISSING_COOKIE = 3
E_NOT_AUTHORIZED = 32
E_UNSUPPORTED_TCP_OPTION = 33
E_RESOURCE_EXCEEDED = 64
E_NETWORK_FAILURE = 65
E_CONNECTION_RESET = 96
E_DESTINATION_UNREACHABLE = 97
ERRORS = {
    E_UNSUPPORTED_VERSION: "unsupported-version", E_MALFORMED: "malformed-message",
    E_UNSUPPORTED_MESSAGE: "unsupported-message", E_MISSING_COOKIE: "missing-cookie",
    E_NOT_AUTHORIZED: "not-authorized", E_UNSUPPORTED_TCP_OPTION: "unsupported-tcp-option",
    E_RESOURCE_EXCEEDED: "resource-exceeded", E_NETWORK_FAILURE: "network-failure",
    E_CONNECTION_RESET: "connection-reset", E_DESTINATION_UNREACHABLE: "destination-unreachable",
}

# TCP option kinds a client may ask for in a Connect TLV (the upstream kernel negotiates these itself).
ACCEPTED_CONNECT_OPTIONS = (0, 1, 2, 3, 4, 8)  # EOL, NOP, MSS, window scale, SACK-permitted, timestamps
MAX_MESSAGE = 255 * 4


class ConvertError(Exception):
    """A message the converter refuses, or an upstream failure: becomes one Error TLV."""

    def __init__(self, code: int, value: bytes = b"", detail: str = "") -> None:
        super().__init__(detail or ERRORS.get(code, str(code)))
        self.code = code
        self.value = value
        self.detail = detail

    @property
    def name(self) -> str:
        return ERRORS.get(self.code, f"error-{self.code}")


# ------------------------------------------------------------------------------------------ codec


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def encode_tlv(tlv_type: int, value: bytes) -> bytes:
    """One TLV: Type, Length in 32-bit words (Type and Length included), Value zero-padded."""
    body = _pad(bytes([tlv_type, 0]) + value)
    words = len(body) // 4
    if words > 255:
        raise ValueError(f"TLV of {len(body)} bytes does not fit an 8-bit word count")
    return bytes([tlv_type, words]) + body[2:]


def encode_message(tlvs: list[tuple[int, bytes]]) -> bytes:
    """A Convert message: the version 1 header, then the TLVs."""
    body = b"".join(encode_tlv(t, v) for t, v in tlvs)
    words = 1 + len(body) // 4
    if words > 255:
        raise ValueError(f"Convert message of {words * 4} bytes exceeds 1020")
    return struct.pack("!BBH", VERSION, words, 0) + body


def connect_value(host: str, port: int, options: bytes = b"") -> bytes:
    """Value of a Connect TLV; IPv4 destinations are written as IPv4-mapped IPv6 addresses."""
    addr = ipaddress.ip_address(host)
    if addr.version == 4:
        addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
    return struct.pack("!H", port) + addr.packed + _pad(options)


def error_value(code: int, value: bytes = b"") -> bytes:
    return bytes([code]) + (value or b"\0")


def supported_value(kinds: list[int]) -> bytes:
    return b"\0\0" + bytes(kinds)


def extended_header_value(options: bytes) -> bytes:
    return b"\0\0" + options


def parse_header(data: bytes) -> int:
    """Bytes of the whole message announced by a 4-byte header; ConvertError when unacceptable."""
    if len(data) != 4:
        raise ConvertError(E_MALFORMED, detail=f"header of {len(data)} bytes")
    version, words, _ = struct.unpack("!BBH", data)
    if version != VERSION:
        raise ConvertError(E_UNSUPPORTED_VERSION, bytes([VERSION]), f"version {version}")
    if words < 1:
        raise ConvertError(E_MALFORMED, detail="Total Length 0")
    return words * 4


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """TLVs of a message body (after the header) as (type, value with padding); ConvertError if malformed."""
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise ConvertError(E_MALFORMED, detail=f"{len(data) - offset} stray bytes after the TLVs")
        tlv_type, words = data[offset], data[offset + 1]
        if words == 0:
            raise ConvertError(E_MALFORMED, detail=f"TLV {tlv_type} with Length 0")
        end = offset + words * 4
        if end > len(data):
            raise ConvertError(E_MALFORMED, detail=f"TLV {tlv_type} runs past the message")
        out.append((tlv_type, data[offset + 2:end]))
        offset = end
    return out


def decode_message(data: bytes) -> list[tuple[int, bytes]]:
    """A whole message (header included) → its TLVs."""
    total = parse_header(data[:4])
    if total != len(data):
        raise ConvertError(E_MALFORMED, detail=f"Total Length says {total} bytes, got {len(data)}")
    return parse_tlvs(data[4:])


def decode_connect(value: bytes) -> tuple[str, int, bytes]:
    """(host, port, TCP options) of a Connect TLV's value."""
    if len(value) < 18:
        raise ConvertError(E_MALFORMED, detail=f"Connect TLV value of {len(value)} bytes")
    (port,) = struct.unpack("!H", value[:2])
    addr = ipaddress.IPv6Address(value[2:18])
    host = str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)
    return host, port, value[18:]


def decode_error(value: bytes) -> tuple[int, bytes]:
    if len(value) < 1:
        raise ConvertError(E_MALFORMED, detail="empty Error TLV")
    return value[0], value[1:]


def option_kinds(options: bytes) -> list[int]:
    """TCP option kinds in an option list (EOL ends it); ConvertError when a length is broken."""
    kinds, i = [], 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            raise ConvertError(E_MALFORMED, detail=f"TCP option {kind} with a broken length")
        kinds.append(kind)
        i += options[i + 1]
    return kinds


def check_destination(host: str, port: int) -> None:
    """RFC 8803: no multicast, broadcast, loopback (nor unspecified) destinations; port not 0."""
    addr = ipaddress.ip_address(host)
    if (port == 0 or addr.is_multicast or addr.is_loopback or addr.is_unspecified
            or (addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"))):
        raise ConvertError(E_NOT_AUTHORIZED, detail=f"destination {host} port {port} is not allowed")


def upstream_error(exc: BaseException) -> ConvertError:
    """An upstream connect() failure as the Error TLV the client gets."""
    if isinstance(exc, ConnectionRefusedError):
        return ConvertError(E_CONNECTION_RESET, detail="the server refused (RST)")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConvertError(E_DESTINATION_UNREACHABLE, detail="connect timed out")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
                                                  errno.EHOSTDOWN, errno.ENETDOWN):
        return ConvertError(E_DESTINATION_UNREACHABLE, detail=os.strerror(exc.errno))
    return ConvertError(E_NETWORK_FAILURE, detail=str(exc))


def tcp_info_options(sock: socket.socket) -> bytes:
    """The options the peer agreed to in its SYN+ACK, rebuilt from TCP_INFO (see the module notes)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return b""
    opts, wscale = raw[5], raw[6] & 0x0F
    (snd_mss,) = struct.unpack_from("=I", raw, 16)
    ts = bool(opts & TCPI_OPT_TIMESTAMPS)
    out = struct.pack("!BBH", 2, 4, min(0xFFFF, snd_mss + (12 if ts else 0)))
    if opts & TCPI_OPT_SACK:
        out += b"\x04\x02"
    if ts:
        out += b"\x08\x0a" + b"\0" * 8
    if opts & TCPI_OPT_WSCALE:
        out += bytes([3, 3, wscale])
    return out


# ---------------------------------------------------------------------------------------- daemon


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {
            "connections": 0, "mptcp_connections": 0, "syn_data_connections": 0, "connect_requests": 0,
            "info_requests": 0, "converted": 0, "errors": 0, "bytes_to_server": 0, "bytes_to_client": 0,
            "active": 0}
        self.errors: dict[str, int] = {}

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                self.counts[k] += v

    def error(self, name: str) -> None:
        with self.lock:
            self.counts["errors"] += 1
            self.errors[name] = self.errors.get(name, 0) + 1

    def as_dict(self) -> dict:
        with self.lock:
            return {**self.counts, "errors_by_name": dict(self.errors)}


class Converter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.log_lock = threading.Lock()
        self.log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115 - lives as long as the daemon
        self.supported = [2, 3, 4, 8] + ([30] if args.protocol == "mptcp" else []) + ([34] if args.tfo_qlen else [])

    def write_log(self, record: dict) -> None:
        if self.log is None:
            return
        with self.log_lock:
            self.log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def listen(self) -> tuple[socket.socket, bool]:
        family = socket.AF_INET6 if ":" in self.args.bind else socket.AF_INET
        mptcp = False
        if self.args.protocol == "mptcp":
            sock = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)  # an error here is fatal: no MPTCP
            mptcp = True
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.args.tfo_qlen:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, self.args.tfo_qlen)
        sock.bind((self.args.bind, self.args.port))
        sock.listen(128)
        return sock, mptcp

    def serve(self, lsock: socket.socket) -> None:
        while True:
            conn, peer = lsock.accept()
            self.stats.add(connections=1)
            if self.stats.as_dict()["active"] >= self.args.max_connections:
                threading.Thread(target=self.refuse, args=(conn, peer), daemon=True).start()
                continue
            self.stats.add(active=1)
            threading.Thread(target=self.handle, args=(conn, peer), daemon=True).start()

    def refuse(self, conn: socket.socket, peer: tuple) -> None:
        err = ConvertError(E_RESOURCE_EXCEEDED, detail=f"{self.args.max_connections} connections already")
        send_error(conn, err)
        close(conn)
        self.stats.error(err.name)
        self.write_log({"t": round(time.time(), 6), "client": fmt(peer), "error": err.name,
                        "error_code": err.code, "detail": err.detail})

    def handle(self, conn: socket.socket, peer: tuple) -> None:
        start = time.monotonic()
        rec: dict = {"t": round(time.time(), 6), "client": fmt(peer), "mptcp": is_mptcp(conn),
                     "syn_data": syn_data(conn), "tlvs": [], "destination": None, "error": None}
        self.stats.add(mptcp_connections=int(bool(rec["mptcp"])), syn_data_connections=int(bool(rec["syn_data"])))
        upstream = None
        try:
            conn.settimeout(self.args.read_timeout)
            tlvs = read_message(conn)
            rec["tlvs"] = [TLV_NAMES.get(t, t) for t, _ in tlvs]
            connect, info = self.examine(tlvs)
            reply: list[tuple[int, bytes]] = []
            if info:
                self.stats.add(info_requests=1)
                reply.append((TLV_SUPPORTED_TCP_EXTENSIONS, supported_value(self.supported)))
            if connect is None:
                rec["ack_wait_seconds"] = answer(conn, encode_message(reply))
                rec["seconds"] = round(time.monotonic() - start, 6)
                return
            host, port = connect
            rec["destination"] = f"{host}:{port}"
            self.stats.add(connect_requests=1)
            t_up = time.monotonic()
            try:
                upstream = socket.create_connection((host, port), timeout=self.args.connect_timeout)
            except OSError as exc:
                rec["upstream_seconds"] = round(time.monotonic() - t_up, 6)
                raise upstream_error(exc) from None
            rec["upstream_seconds"] = round(time.monotonic() - t_up, 6)
            rec["upstream"] = fmt(upstream.getsockname())
            options = tcp_info_options(upstream)
            rec["ack_wait_seconds"] = answer(
                conn, encode_message([(TLV_EXTENDED_TCP_HEADER, extended_header_value(options)), *reply]))
            self.stats.add(converted=1)
            up, down = relay(conn, upstream)
            rec.update(bytes_to_server=up, bytes_to_client=down)
            self.stats.add(bytes_to_server=up, bytes_to_client=down)
        except ConvertError as err:
            rec.update(error=err.name, error_code=err.code, detail=err.detail)
            self.stats.error(err.name)
            send_error(conn, err)
        except (OSError, ValueError) as exc:
            rec.update(error="client", detail=str(exc))
        finally:
            rec.setdefault("seconds", round(time.monotonic() - start, 6))
            close(upstream)
            close(conn)
            self.stats.add(active=-1)
            self.write_log(rec)

    def examine(self, tlvs: list[tuple[int, bytes]]) -> tuple[tuple[str, int] | None, bool]:
        """(destination or None, info requested); ConvertError for what the converter refuses."""
        connect = None
        info = False
        for tlv_type, value in tlvs:
            if tlv_type == TLV_CONNECT:
                if connect is not None:
                    raise ConvertError(E_MALFORMED, detail="two Connect TLVs")
                host, port, options = decode_connect(value)
                for kind in option_kinds(options):
                    if kind not in ACCEPTED_CONNECT_OPTIONS:
                        raise ConvertError(E_UNSUPPORTED_TCP_OPTION, bytes([kind]), f"TCP option {kind}")
                check_destination(host, port)
                connect = (host, port)
            elif tlv_type == TLV_INFO:
                info = True
            elif tlv_type == TLV_COOKIE:
                continue  # cookies are not required here
            else:
                raise ConvertError(E_UNSUPPORTED_MESSAGE, bytes([tlv_type]), f"TLV type {tlv_type} from a client")
        if connect is None and not info:
            raise ConvertError(E_MALFORMED, detail="neither a Connect nor an Info TLV")
        return connect, info


def wait_established(sock: socket.socket, timeout: float = 3.0) -> float:
    """Wait (seconds returned) until the client's handshake is complete. A TCP Fast Open child is
    accepted in SYN-RECV, and what an MPTCP socket is given before the client's third ACK arrived
    may never be sent (measured on Linux 6.18: the data sat in the send queue for good), so the
    converter writes nothing before it. The ACK normally arrives long before the server answers."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except OSError:
            break  # not TCP (a socket pair in tests)
        if state != TCP_SYN_RECV:
            break
        time.sleep(0.001)
    return round(time.monotonic() - start, 6)


def answer(conn: socket.socket, data: bytes) -> float:
    """Send the converter's Convert message once the client may receive it; the wait in seconds."""
    waited = wait_established(conn)
    conn.sendall(data)
    return waited


def send_error(conn: socket.socket, err: ConvertError) -> None:
    """The Error TLV, then FIN; what the client still sends is read away so that close() sends no
    RST that could overtake the error on its way."""
    with contextlib.suppress(OSError):
        conn.settimeout(2)
        answer(conn, encode_message([(TLV_ERROR, error_value(err.code, err.value))]))
        conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and conn.recv(65536):
            pass


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConvertError(E_MALFORMED, detail=f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_message(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Exactly one Convert message from the stream (nothing after it is consumed)."""
    header = read_exact(sock, 4)
    total = parse_header(header)
    return parse_tlvs(read_exact(sock, total - 4))


def relay(client: socket.socket, server: socket.socket) -> tuple[int, int]:
    """Copy both ways until both sides have closed; (bytes client→server, bytes server→client)."""
    client.settimeout(None)
    server.settimeout(None)
    counts = [0, 0]

    def pump(src: socket.socket, dst: socket.socket, slot: int) -> None:
        buf = bytearray(262144)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(view[:n])
                counts[slot] += n
        except OSError:
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=pump, args=(server, client, 1), daemon=True)
    back.start()
    pump(client, server, 0)
    back.join()
    return counts[0], counts[1]


def close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def fmt(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def is_mptcp(sock: socket.socket) -> bool | None:
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP))
    except OSError:
        return None


def syn_data(sock: socket.socket) -> bool | None:
    """Did the client's SYN carry data that was accepted (TCP Fast Open)?"""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return None
    return bool(raw[5] & TCPI_OPT_SYN_DATA)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="convertd.py", description="RFC 8803 Transport Converter")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=5124)
    p.add_argument("--protocol", choices=("mptcp", "tcp"), default="mptcp", help="towards clients")
    p.add_argument("--tfo-qlen", type=int, default=64, help="TCP Fast Open queue on the listener; 0: off")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--read-timeout", type=float, default=10.0, help="for the client's Convert message")
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--log", help="JSON line per connection")
    p.add_argument("--stats", help="JSON counters written at exit")
    args = p.parse_args(argv)
    daemon = Converter(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        raise SystemExit(0)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    try:
        lsock, mptcp = daemon.listen()
    except OSError as exc:
        print(f"convertd: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    print("ready " + json.dumps({"port": args.port, "mptcp": mptcp, "tfo_qlen": args.tfo_qlen,
                                 "supported": daemon.supported}), flush=True)
    try:
        daemon.serve(lsock)
    except SystemExit:
        pass
    finally:
        close(lsock)
        if args.stats:
            with open(args.stats, "w") as f:
                json.dump(daemon.stats.as_dict(), f, indent=1)
        if daemon.log is not None:
            daemon.log.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # relay threads may still block in recv(); the process ends here
