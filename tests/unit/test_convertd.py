"""The Transport Converter (RFC 8803) without root: the wire format against the RFC's layout, the
daemon's answers to good and malformed messages (over socket pairs and loopback), the agent's
Convert and SOCKS5 client side, and the path facts a workload through a relay is given.

convertd.py is loaded from its file and the agent's modules as a package, as they run inside namespaces."""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.spec.functions import converter as converter_spec
from testbed.spec.functions import socks as socks_spec
from tests.unit.test_agent import _load as load_agent

ROOT = Path(__file__).resolve().parents[2]
CONVERTD = ROOT / "testbed" / "emulation" / "functions" / "convertd.py"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cd = _load(CONVERTD, "convertd_under_test")
agent = load_agent()


def mapped(ip: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(ip)


# ------------------------------------------------------------------------------------ wire format


def test_connect_message_matches_the_rfc_layout_and_both_encoders_agree() -> None:
    msg = cd.encode_message([(cd.TLV_CONNECT, cd.connect_value("10.0.99.10", 5201))])
    # Version 1 | Total Length 6 words | Unassigned 0 ; Type 10 | Length 5 words | Port | IPv4-mapped address
    assert msg == bytes([1, 6, 0, 0, 10, 5]) + struct.pack("!H", 5201) + mapped("10.0.99.10")
    assert len(msg) == msg[1] * 4 == 24
    assert agent.convert_request("10.0.99.10", 5201) == msg  # the client's encoder is independent
    tlvs = cd.decode_message(msg)
    assert tlvs == [(cd.TLV_CONNECT, msg[6:])]
    assert cd.decode_connect(tlvs[0][1]) == ("10.0.99.10", 5201, b"")


def test_ipv6_connect_with_tcp_options_and_info_round_trip() -> None:
    value = cd.connect_value("2001:db8::1", 443, options=b"\x02\x04\x05\xb4")  # MSS 1460
    msg = cd.encode_message([(cd.TLV_INFO, b"\0\0"), (cd.TLV_CONNECT, value)])
    assert msg[1] == 1 + 1 + 6  # header + Info (1 word) + Connect (2 + 2 + 16 + 4 bytes = 6 words)
    assert msg[4:8] == bytes([cd.TLV_INFO, 1, 0, 0])
    tlvs = cd.decode_message(msg)
    assert [t for t, _ in tlvs] == [cd.TLV_INFO, cd.TLV_CONNECT]
    host, port, options = cd.decode_connect(tlvs[1][1])
    assert (host, port) == ("2001:db8::1", 443)
    assert cd.option_kinds(options) == [2]
    assert agent.convert_request("2001:db8::1", 443)[4:] == cd.encode_tlv(cd.TLV_CONNECT,
                                                                         cd.connect_value("2001:db8::1", 443))


def test_error_supported_and_extended_header_tlvs_are_padded_to_words() -> None:
    assert cd.encode_message([(cd.TLV_ERROR, cd.error_value(97))]) == bytes([1, 2, 0, 0, 30, 1, 97, 0])
    assert cd.encode_tlv(cd.TLV_ERROR, cd.error_value(0, b"\x01")) == bytes([30, 1, 0, 1])  # Value: version 1
    assert cd.encode_tlv(cd.TLV_SUPPORTED_TCP_EXTENSIONS, cd.supported_value([2, 3, 4, 8, 30, 34])) == \
        bytes([21, 3, 0, 0, 2, 3, 4, 8, 30, 34, 0, 0])
    opts = b"\x02\x04\x05\xb4\x04\x02\x01\x03\x03\x07"
    tlv = cd.encode_tlv(cd.TLV_EXTENDED_TCP_HEADER, cd.extended_header_value(opts))
    assert tlv[:4] == bytes([20, 4, 0, 0]) and tlv[4:14] == opts and tlv[14:] == b"\0\0"
    with pytest.raises(ValueError):
        cd.encode_tlv(cd.TLV_COOKIE, b"\0" * 1100)  # more than 255 words


def test_type_and_error_codes_are_the_iana_ones_everywhere() -> None:
    assert (cd.TLV_INFO, cd.TLV_CONNECT, cd.TLV_EXTENDED_TCP_HEADER, cd.TLV_SUPPORTED_TCP_EXTENSIONS,
            cd.TLV_COOKIE, cd.TLV_ERROR) == (1, 10, 20, 21, 22, 30)
    rfc = {0: "unsupported-version", 1: "malformed-message", 2: "unsupported-message", 3: "missing-cookie",
           32: "not-authorized", 33: "unsupported-tcp-option", 64: "resource-exceeded", 65: "network-failure",
           96: "connection-reset", 97: "destination-unreachable"}
    assert cd.ERRORS == agent.CONVERT_ERRORS == converter_spec.ERRORS == rfc
    assert agent.SOCKS_REPLIES == socks_spec.REPLIES
    assert socks_spec.REPLIES[4] == "host-unreachable" and len(socks_spec.REPLIES) == 8
    assert converter_spec.IANA_PORT == 5124


def test_upstream_failures_map_to_rfc_errors() -> None:
    import errno

    assert cd.upstream_error(ConnectionRefusedError()).code == 96
    assert cd.upstream_error(TimeoutError()).code == 97
    assert cd.upstream_error(OSError(errno.EHOSTUNREACH, "No route to host")).code == 97
    assert cd.upstream_error(OSError(errno.ENETUNREACH, "Network is unreachable")).code == 97
    assert cd.upstream_error(OSError(errno.EADDRNOTAVAIL, "Cannot assign")).code == 65


# ------------------------------------------------------------------------ the daemon's answers


def _daemon(tmp_path: Path, protocol: str = "mptcp") -> ModuleType:
    args = argparse.Namespace(bind="127.0.0.1", port=0, protocol=protocol, tfo_qlen=64, connect_timeout=2.0,
                              read_timeout=2.0, max_connections=4, log=str(tmp_path / "log.jsonl"),
                              stats=None)
    return cd.Converter(args)


def _exchange(daemon, data: bytes, half_close: bool = True) -> tuple[list, bytes]:
    """Send `data` to daemon.handle() over a socket pair; the Convert answer and what followed it."""
    ours, theirs = socket.socketpair()
    worker = threading.Thread(target=daemon.handle, args=(theirs, ("192.0.2.1", 40000)), daemon=True)
    worker.start()
    try:
        ours.sendall(data)
        if half_close:
            ours.shutdown(socket.SHUT_WR)
        ours.settimeout(5)
        tlvs = agent.read_convert_reply(ours, agent.Deadline(5))
        rest = b""
        while chunk := ours.recv(4096):
            rest += chunk
    finally:
        ours.close()
        worker.join(5)
    assert not worker.is_alive()
    return tlvs, rest


def _connect(ip: str, port: int, options: bytes = b"") -> bytes:
    return cd.encode_message([(cd.TLV_CONNECT, cd.connect_value(ip, port, options))])


MALFORMED = [
    ("version 2", bytes([2, 1, 0, 0]), 0, 1),  # Value: the version the converter speaks
    ("Total Length 0", bytes([1, 0, 0, 0]), 1, 0),
    ("header only", bytes([1, 1, 0, 0]), 1, 0),
    ("TLV of Length 0", bytes([1, 3, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0]), 1, 0),
    ("TLV past the message", bytes([1, 2, 0, 0, 10, 5, 0, 80]), 1, 0),
    ("Connect TLV too short", bytes([1, 2, 0, 0, 10, 1, 0, 80]), 1, 0),
    ("cut short", bytes([1, 6, 0, 0, 10, 5]), 1, 0),
    ("unknown TLV 99", bytes([1, 2, 0, 0, 99, 1, 0, 0]), 2, 99),
    ("Error TLV from a client", bytes([1, 2, 0, 0, 30, 1, 97, 0]), 2, 30),
    ("two Connect TLVs", cd.encode_message([(cd.TLV_CONNECT, cd.connect_value("10.0.0.1", 80)),
                                            (cd.TLV_CONNECT, cd.connect_value("10.0.0.2", 80))]), 1, 0),
    ("loopback destination", _connect("127.0.0.1", 80), 32, 0),
    ("multicast destination", _connect("224.0.0.1", 80), 32, 0),
    ("unspecified destination", _connect("0.0.0.0", 80), 32, 0),
    ("port 0", _connect("10.0.0.1", 0), 32, 0),
    ("MPTCP option asked for", _connect("10.0.0.1", 80, b"\x1e\x04\x00\x00"), 33, 30),
    ("broken option length", _connect("10.0.0.1", 80, b"\x02\x09\x05\xb4"), 1, 0),
]


@pytest.mark.parametrize("what,data,code,value", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_or_refused_messages_get_one_error_tlv(tmp_path, what, data, code, value) -> None:
    daemon = _daemon(tmp_path)
    tlvs, rest = _exchange(daemon, data)
    assert tlvs == [(cd.TLV_ERROR, bytes([code, value]))], what
    assert rest == b""  # then the converter closes
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert record["error"] == cd.ERRORS[code] and record["error_code"] == code
    assert daemon.stats.as_dict()["errors_by_name"] == {cd.ERRORS[code]: 1}


def test_info_alone_is_answered_with_the_supported_extensions(tmp_path) -> None:
    daemon = _daemon(tmp_path, protocol="mptcp")
    tlvs, rest = _exchange(daemon, cd.encode_message([(cd.TLV_INFO, b"\0\0")]))
    assert len(tlvs) == 1 and tlvs[0][0] == cd.TLV_SUPPORTED_TCP_EXTENSIONS
    kinds = set(tlvs[0][1][2:]) - {0}
    assert kinds == {2, 3, 4, 8, 30, 34}  # MSS, WS, SACK, TS, MPTCP, TFO
    assert rest == b""
    assert daemon.stats.as_dict()["info_requests"] == 1
    plain = _daemon(tmp_path, protocol="tcp")
    tlvs, _ = _exchange(plain, cd.encode_message([(cd.TLV_INFO, b"\0\0")]))
    assert 30 not in tlvs[0][1][2:]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_decode_or_raise_convert_error(data: bytes) -> None:
    daemon = cd.Converter(argparse.Namespace(protocol="tcp", tfo_qlen=0, log=None))
    try:
        total = cd.parse_header(data[:4])
        tlvs = cd.parse_tlvs(data[4:total])
        daemon.examine(tlvs)
    except cd.ConvertError as err:
        assert err.code in cd.ERRORS
        assert cd.encode_message([(cd.TLV_ERROR, cd.error_value(err.code, err.value))])[4] == cd.TLV_ERROR


def test_connect_is_relayed_both_ways_after_the_extended_header(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cd, "check_destination", lambda host, port: None)  # the server is on loopback here
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while len(data) < 5:
                data += conn.recv(5 - len(data))
            seen.append(data)
            conn.sendall(b"world")

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    daemon = _daemon(tmp_path)
    tlvs, rest = _exchange(daemon, _connect("127.0.0.1", port) + b"hello", half_close=False)
    worker.join(5)
    server.close()
    assert [t for t, _ in tlvs] == [cd.TLV_EXTENDED_TCP_HEADER]
    options = tlvs[0][1][2:]
    assert options[:2] == b"\x02\x04"  # the server's MSS first
    assert seen == [b"hello"] and rest == b"world"  # data after the Convert message reached the server
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert record["error"] is None and record["destination"] == f"127.0.0.1:{port}"
    assert record["bytes_to_server"] == 5 and record["bytes_to_client"] == 5


def test_an_unreachable_server_is_reported_as_connection_reset(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cd, "check_destination", lambda host, port: None)
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: RST
    tlvs, _ = _exchange(_daemon(tmp_path), _connect("127.0.0.1", port))
    assert tlvs == [(cd.TLV_ERROR, bytes([96, 0]))]


# ------------------------------------------------------------------- the agent's client side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_agent_through_the_daemon_process_learns_its_error(tmp_path) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-S", str(CONVERTD), "--bind", "127.0.0.1", "--port", str(port),
                             "--protocol", "tcp", "--log", str(tmp_path / "c.jsonl"),
                             "--stats", str(tmp_path / "stats.json")], stdout=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("ready ") and json.loads(ready[6:])["port"] == port
        result: dict = {}
        with pytest.raises(agent.ViaError) as info:
            # RFC 8803 forbids loopback destinations: the converter must answer with Error TLV 32.
            agent.via_connect(("converter", "127.0.0.1", port), "127.0.0.1", 9, "tcp", 0, agent.Deadline(5),
                              result)
        err = info.value.as_dict()
        assert (err["kind"], err["code"], err["name"]) == ("converter", 32, "not-authorized")
        assert err["established_seconds"] is None and err["connect_seconds"] is not None
        assert result["connect_attempts"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["connections"] == 1 and stats["errors_by_name"] == {"not-authorized": 1}


def _socks_server(reply: int) -> tuple[socket.socket, list[bytes]]:
    """A scripted SOCKS5 proxy on loopback: accepts one client, answers REP=`reply`."""
    lsock = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            got.append(conn.recv(3))
            conn.sendall(b"\x05\x00")
            got.append(conn.recv(10))
            conn.sendall(bytes([5, reply, 0, 1, 10, 0, 1, 4, 0x04, 0x38]))
            if reply == 0:
                conn.sendall(b"data")

    threading.Thread(target=serve, daemon=True).start()
    return lsock, got


def test_agent_socks5_exchange_success_and_failure() -> None:
    lsock, got = _socks_server(0)
    port = lsock.getsockname()[1]
    sock, _, timings = agent.via_connect(("socks5", "127.0.0.1", port), "10.0.99.10", 5201, "tcp", 0,
                                         agent.Deadline(5), {})
    with sock:
        assert sock.recv(4) == b"data"
    lsock.close()
    assert got == [b"\x05\x01\x00", b"\x05\x01\x00\x01" + socket.inet_aton("10.0.99.10") + struct.pack("!H", 5201)]
    assert 0 <= timings["connect"] <= timings["established"] <= timings["setup"]
    lsock, _ = _socks_server(4)
    with pytest.raises(agent.ViaError) as info:
        agent.via_connect(("socks5", "127.0.0.1", lsock.getsockname()[1]), "10.0.99.99", 5201, "tcp", 0,
                          agent.Deadline(5), {})
    lsock.close()
    err = info.value.as_dict()
    assert (err["code"], err["name"]) == (4, "host-unreachable")
    assert err["established_seconds"] is not None  # the attempt counted as connected before the error


def test_parse_via() -> None:
    assert agent.parse_via("converter:10.0.1.3:5124") == ("converter", "10.0.1.3", 5124)
    assert agent.parse_via("socks5:[2001:db8::1]:1080") == ("socks5", "2001:db8::1", 1080)
    for bad in ("http:10.0.0.1:80", "converter:10.0.0.1", "socks5:10.0.0.1:0", "converter::5124"):
        with pytest.raises(argparse.ArgumentTypeError):
            agent.parse_via(bad)


def test_a_broken_convert_answer_is_a_protocol_error() -> None:
    for data in (b"", bytes([2, 1, 0, 0]), bytes([1, 3, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0])):
        a, b = socket.socketpair()
        with a, b:
            b.sendall(data)
            b.shutdown(socket.SHUT_WR)
            with pytest.raises(agent.ProtocolError):
                agent.read_convert_reply(a, agent.Deadline(2))


# ----------------------------------------------------------------------- path facts for a workload


def test_via_address_and_configured_path_rtt() -> None:
    from testbed.spec.experiment import RequestResponse
    from testbed.spec.load import load_topology
    from testbed.workloads import drivers

    res = load_topology(ROOT / "topologies" / "converter.yaml.j2").resolved
    through = RequestResponse(type="rr", via="conv")
    ctx = drivers.Context(None, None, "10.0.99.10", Path("."), None, 1)
    drivers.add_path_info(ctx, res, through)
    conv = str(res.interface("conv", "eth0").address.ip)
    assert ctx.via == drivers.Via("conv", "converter", conv, 5124)
    assert ctx.via.argv() == ["--via", f"converter:{conv}:5124"]
    assert ctx.path_rtt == pytest.approx(0.040)  # wifi 10 ms + wan 10 ms, each way
    proxy = drivers.Context(None, None, "10.0.99.99", Path("."), None, 1)  # no host there: up to its link
    drivers.add_path_info(proxy, res, RequestResponse(type="rr", via="proxy"))
    assert proxy.via.kind == "socks5" and proxy.via.port == 1080 and proxy.path_rtt == pytest.approx(0.040)
    slow = load_topology(ROOT / "topologies" / "converter.yaml.j2",
                         {"wan_delay": ("25ms", None), "paths": (2, None)}).resolved
    direct = drivers.Context(None, None, "10.0.99.10", Path("."), None, 1)
    drivers.add_path_info(direct, slow, RequestResponse(type="rr"))
    assert direct.via is None and direct.path_rtt == pytest.approx(0.070)
    metrics = drivers.setup_metrics({"setup_seconds": {"p50": 0.035}, "first_byte_seconds": {"p50": 0.0525}},
                                    direct)
    assert metrics["setup_rtts"] == 0.5 and metrics["first_byte_rtts"] == 0.75 and metrics["error_seconds"] is None
