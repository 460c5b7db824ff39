"""Clients through a proxy: a Transport Converter (RFC 8803, the Convert message in a TFO SYN) or a
SOCKS5 proxy (RFC 1928); see "through a proxy" in the package docstring."""

from __future__ import annotations

import os
import socket
import struct
import time

from .common import Deadline, ProtocolError, meta_into
from .sockets import close_quietly, connect, open_socket, recv_exact, resolve

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
                "connect_seconds": round6(self.timings.get("connect")),
                "established_seconds": round6(self.timings.get("established"))}


def round6(value: object) -> float | None:
    return round(value, 6) if isinstance(value, float) else None


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
    meta_into(result, meta)
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


def via_json(via: tuple[str, str, int] | None) -> dict[str, object] | None:
    return None if via is None else {"kind": via[0], "host": via[1], "port": via[2]}
