"""The stdlib-only workload agent: pure helpers in-process, and real transfers on loopback as root.

The agent is a package of stdlib-only modules (testbed/workloads/agent/), run as the drivers run it,
``python -S AGENT ...`` with AGENT its ``__main__.py``; in-process, its modules are imported under
``testbed.workloads.agent`` (the same files and relative imports). Every subprocess has a timeout and
is killed in a ``finally``.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import hashlib
import importlib
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from testbed.workloads import agent_path

AGENT = agent_path()
AGENT_DIR = AGENT.parent
MODULES = ("common", "sockets", "relay", "abort", "bulk", "rr", "cli")
PY = sys.executable
RUN_TIMEOUT = 60.0


def _load() -> SimpleNamespace:
    """The names of every agent module in one namespace (they were one module before the split)."""
    names: dict[str, object] = {}
    for name in MODULES:
        module = importlib.import_module(f"testbed.workloads.agent.{name}")
        names.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return SimpleNamespace(**names)


agent = _load()


def _mptcp_available() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
    except OSError:
        return False
    return True


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_mptcp = pytest.mark.skipif(not _mptcp_available(), reason="MPTCP sockets unavailable here")


# ------------------------------------------------------------------------------------ pure helpers


def test_parse_size_units() -> None:
    assert agent.parse_size("1000") == 1000
    assert agent.parse_size("8M") == 8_000_000
    assert agent.parse_size("8MiB") == 8 << 20
    assert agent.parse_size("1.5k") == 1500
    assert agent.parse_size("2Gi") == 2 << 30
    assert agent.parse_size("0") == 0
    for bad in ("", "x", "-1", "1.2.3M"):
        with pytest.raises(Exception):  # noqa: B017 - argparse.ArgumentTypeError
            agent.parse_size(bad)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert agent.nearest_rank(values, 50) == 50.0
    assert agent.nearest_rank(values, 95) == 95.0
    assert agent.nearest_rank(values, 99) == 99.0
    assert agent.nearest_rank([3.0], 99) == 3.0
    # n = 10: p95 -> rank ceil(9.5) = 10, p50 -> rank 5
    ten = [float(v) for v in range(10)]
    assert agent.nearest_rank(ten, 95) == 9.0
    assert agent.nearest_rank(ten, 50) == 4.0
    summary = agent.summarize([0.5, 0.1, 0.3])
    assert summary == {"p50": 0.3, "p95": 0.5, "p99": 0.5, "mean": 0.3, "max": 0.5, "min": 0.1}
    assert agent.summarize([]) == dict.fromkeys(("p50", "p95", "p99", "mean", "max", "min"))


def test_digest_comparison_detects_corruption() -> None:
    good = hashlib.sha256(b"payload").hexdigest()
    corrupted = hashlib.sha256(b"paylaod").hexdigest()
    assert agent.digests_match(good, good)
    assert agent.digests_match(good, good.upper())
    assert not agent.digests_match(good, corrupted)
    flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert not agent.digests_match(good, flipped)
    assert not agent.digests_match(good, None)
    assert not agent.digests_match(None, None)
    assert not agent.digests_match("", "")
    assert not agent.digests_match(good, good[:-1])
    assert not agent.digests_match("z" * 64, "z" * 64)


def test_stream_is_deterministic_rotated_and_hashes_like_its_bytes() -> None:
    size = 3 * agent.BLOCK_SIZE + 12345
    data = b"".join(bytes(c) for c in agent.iter_stream(7, size))
    assert len(data) == size
    assert data == b"".join(bytes(c) for c in agent.iter_stream(7, size))
    assert data != b"".join(bytes(c) for c in agent.iter_stream(8, size))
    block = agent.pattern_block(7)
    assert data[:agent.BLOCK_SIZE] == block
    step = agent.ROTATE_STEP % agent.BLOCK_SIZE
    assert data[agent.BLOCK_SIZE:2 * agent.BLOCK_SIZE] == block[step:] + block[:step]  # rotated pass
    assert agent.stream_digest(7, size) == hashlib.sha256(data).hexdigest()
    assert agent.stream_digest(7, 0) == hashlib.sha256(b"").hexdigest()


def test_stream_generation_is_fast() -> None:
    size = 2 << 30
    start = time.perf_counter()
    total = sum(len(chunk) for chunk in agent.iter_stream(1, size))
    elapsed = time.perf_counter() - start
    assert total == size
    assert size / elapsed >= 1e9, f"{size / elapsed / 1e9:.2f} GB/s"


class _CMptcpInfo(ctypes.Structure):
    """struct mptcp_info as in include/uapi/linux/mptcp.h (6.10+), laid out by the C rules."""

    _fields_ = [  # noqa: RUF012
        ("subflows", ctypes.c_uint8), ("add_addr_signal", ctypes.c_uint8),
        ("add_addr_accepted", ctypes.c_uint8), ("subflows_max", ctypes.c_uint8),
        ("add_addr_signal_max", ctypes.c_uint8), ("add_addr_accepted_max", ctypes.c_uint8),
        ("flags", ctypes.c_uint32), ("token", ctypes.c_uint32), ("write_seq", ctypes.c_uint64),
        ("snd_una", ctypes.c_uint64), ("rcv_nxt", ctypes.c_uint64), ("local_addr_used", ctypes.c_uint8),
        ("local_addr_max", ctypes.c_uint8), ("csum_enabled", ctypes.c_uint8),
        ("retransmits", ctypes.c_uint32), ("bytes_retrans", ctypes.c_uint64),
        ("bytes_sent", ctypes.c_uint64), ("bytes_received", ctypes.c_uint64),
        ("bytes_acked", ctypes.c_uint64), ("subflows_total", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 3), ("last_data_sent", ctypes.c_uint32),
        ("last_data_recv", ctypes.c_uint32), ("last_ack_recv", ctypes.c_uint32),
    ]


def test_mptcp_info_layout_matches_c_alignment() -> None:
    assert ctypes.sizeof(_CMptcpInfo) == agent.MPTCP_INFO_SIZE == 96
    for name, offset, code, _needed in agent.MPTCP_INFO_FIELDS:
        field = getattr(_CMptcpInfo, name)
        assert (field.offset, field.size) == (offset, struct.calcsize(code)), name


def _sample_info() -> tuple[_CMptcpInfo, bytes]:
    info = _CMptcpInfo()
    for i, (name, _offset, code, _needed) in enumerate(agent.MPTCP_INFO_FIELDS):
        setattr(info, name, (i + 1) * 3 if code == "B" else (i + 1) * 1_000_003 + (1 << 33 if code == "Q" else 0))
    info.flags = 2
    return info, ctypes.string_at(ctypes.addressof(info), ctypes.sizeof(info))


def test_parse_mptcp_info_full_and_by_kernel_size() -> None:
    info, raw = _sample_info()
    parsed = agent.parse_mptcp_info(raw)
    for name, *_ in agent.MPTCP_INFO_FIELDS:
        assert parsed[name] == getattr(info, name), name
    assert parsed["fallback"] is False and parsed["remote_key_received"] is True
    # Older kernels return their (shorter) struct: only the fields it really has.
    expected_last = {40: "rcv_nxt", 48: "csum_enabled", 80: "bytes_acked", 88: "subflows_total", 96: "last_ack_recv"}
    for length, last in expected_last.items():
        names = list(agent.parse_mptcp_info(raw[:length]))
        fields = [n for n in names if n not in ("fallback", "remote_key_received")]
        assert fields[-1] == last, length
    assert "retransmits" not in agent.parse_mptcp_info(raw[:48])
    assert agent.parse_mptcp_info(raw[:7]) == {name: getattr(info, name) for name, *_ in agent.MPTCP_INFO_FIELDS[:6]}
    assert agent.parse_mptcp_info(b"") == {}
    info.flags = 1
    fallen = agent.parse_mptcp_info(ctypes.string_at(ctypes.addressof(info), 96))
    assert fallen["fallback"] is True


def test_is_mptcp_of_a_plain_tcp_socket_is_false() -> None:
    with socket.socket() as s:
        assert agent.mptcp_state(s, {"mptcp_socket": False}) == (False, "plain-tcp-socket", None)


def test_agent_is_standalone_stdlib_only_and_starts_fast() -> None:
    imported: set[str] = set()
    files = sorted(AGENT_DIR.glob("*.py"))
    assert {f.stem for f in files} == {"__init__", "__main__", *MODULES}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # only its own modules, relatively
                    assert node.level == 1 and node.module in MODULES, (path.name, node.module)
                else:
                    imported.add((node.module or "").split(".")[0])
    imported.discard("__future__")
    assert "testbed" not in imported
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        proc = subprocess.run([PY, "-S", "-I", str(AGENT), "--help"], capture_output=True, text=True,
                              timeout=30, check=False)
        times.append(time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr
    assert "bulk-server" in proc.stdout and "rr-client" in proc.stdout
    print(f"agent --help wall time: min {min(times) * 1000:.1f} ms")
    assert min(times) < 0.5
    # The directory runs too (`python -S DIR`), through the same __main__.py.
    proc = subprocess.run([PY, "-S", "-I", str(AGENT_DIR), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "rr-client" in proc.stdout, proc.stderr


def _imports(*args: str) -> dict[str, str]:
    """The agent modules a run of ``python -S -I -v AGENT ARGS`` loaded: name -> how (its bytecode
    "matches" its source, or it was compiled)."""
    proc = subprocess.run([PY, "-S", "-I", "-v", str(AGENT), *args], capture_output=True, text=True, timeout=30)
    loaded: dict[str, str] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"# (\S+) matches (\S+)$", line)
        if m and Path(m.group(2)).parent == AGENT_DIR:
            loaded[Path(m.group(2)).stem] = "cached"
        m = re.match(r"# code object from '?(\S+?\.py)'?$", line)
        if m and Path(m.group(1)).parent == AGENT_DIR:
            loaded.setdefault(Path(m.group(1)).stem, "compiled")
    return loaded


def test_agent_loads_only_its_modes_module_from_cached_bytecode() -> None:
    """A guest sees the checkout read-only: what it cannot load from bytecode it compiles at every
    start. agent_path() compiled it all; a mode loads only its own module (and what that uses)."""
    server = _imports("rr-server", "--bind", "127.0.0.1", "--port", str(_free_port()), "--timeout", "0.01")
    assert set(server) == {"__init__", "cli", "common", "sockets", "relay", "rr"}, server
    client = _imports("bulk-client", "--connect", "127.0.0.1", "--port", "9", "--size", "1",
                      "--connect-retries", "0", "--timeout", "2")
    assert set(client) == {"__init__", "cli", "common", "sockets", "relay", "abort", "bulk"}, client
    assert set(server.values()) == set(client.values()) == {"cached"}, (server, client)
    assert len(AGENT.read_text().splitlines()) < 30  # the script itself is compiled at every start: tiny


# ----------------------------------------------------------------------------------- subprocesses


def _free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _one_json(stdout: str, ready: bool = False) -> dict:
    """The output must be exactly one JSON line (after the ``ready`` line for servers, after the
    ``connected`` line of a bulk client that connected)."""
    lines = stdout.splitlines()
    if ready:
        assert lines and lines[0] == "ready", stdout
        lines = lines[1:]
    if lines and lines[0] == "connected":
        assert '"mode": "bulk-client"' in lines[-1], stdout  # only bulk clients say so
        lines = lines[1:]
    assert len(lines) == 1, stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


@contextlib.contextmanager
def _server(*args: str, ready_timeout: float = 15.0) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([PY, "-S", str(AGENT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], ready_timeout)
        first = proc.stdout.readline() if readable else b""
        if first != b"ready\n":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"server not ready: {first!r} {err.decode(errors='replace')}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


def _server_result(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[int, dict]:
    """The rest of a ready server's output (its JSON) and exit status."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, _one_json(out.decode(), ready=False) if out.strip() else {"stderr": err.decode()}


def _client(*args: str, timeout: float = RUN_TIMEOUT) -> tuple[int, dict]:
    proc = subprocess.run([PY, "-S", str(AGENT), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, _one_json(proc.stdout)


def _bulk(direction: str, protocol: str, size: str = "8M", server_protocol: str | None = None,
          client_seed: str = "3", host: str = "127.0.0.1") -> tuple[int, dict, int, dict]:
    port = str(_free_port(host))
    with _server("bulk-server", "--bind", host, "--port", port, "--protocol", server_protocol or protocol,
                 "--direction", direction, "--size", size, "--seed", "3", "--timeout", "30") as server:
        crc, client = _client("bulk-client", "--connect", host, "--port", port, "--protocol", protocol,
                              "--direction", direction, "--size", size, "--seed", client_seed,
                              "--timeout", "30")
        src, srv = _server_result(server)
    return crc, client, src, srv


def _assert_intact(crc: int, client: dict, src: int, server: dict, size: int) -> None:
    assert crc == 0 and src == 0, (client["errors"], server["errors"])
    assert client["errors"] == [] and server["errors"] == []
    assert client["intact"] is True
    assert client["bytes"] == server["bytes"] == size
    assert client["sha256_local"] == client["sha256_remote"] == server["sha256"]
    assert client["goodput_bps"] > 0 and client["seconds"] > 0 and server["seconds"] > 0
    assert client["connect_seconds"] >= 0 and client["connect_attempts"] >= 1
    assert client["peer"]["port"] == server["local"]["port"]


@needs_root
@needs_mptcp
@pytest.mark.root
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bulk_mptcp(direction: str) -> None:
    crc, client, src, server = _bulk(direction, "mptcp")
    _assert_intact(crc, client, src, server, 8_000_000)
    for side in (client, server):
        assert side["protocol_requested"] == "mptcp"
        assert side["mptcp_socket"] is True and side["mptcp_socket_error"] is None
        assert side["is_mptcp"] is True
        info = side["mptcp_info"]
        assert info is not None and info["subflows"] >= 0 and info["fallback"] is False
        assert info["token"] != 0
    if "bytes_sent" in client["mptcp_info"]:  # 6.5+: counters sampled before close, subflows up
        moved = client["mptcp_info"]["bytes_sent" if direction == "upload" else "bytes_received"]
        assert moved >= 8_000_000
    if direction == "download":
        assert client["first_byte_seconds"] is not None and 0 <= client["first_byte_seconds"] <= client["seconds"]
        assert server["intact"] is True and server["sha256_peer"] == server["sha256"]
    else:
        assert client["first_byte_seconds"] is None


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bulk_tcp(direction: str) -> None:
    crc, client, src, server = _bulk(direction, "tcp")
    _assert_intact(crc, client, src, server, 8_000_000)
    for side in (client, server):
        assert side["is_mptcp"] is False and side["mptcp_socket"] is False and side["mptcp_info"] is None


@needs_root
@needs_mptcp
@pytest.mark.root
def test_bulk_mptcp_client_against_tcp_server_falls_back() -> None:
    crc, client, src, server = _bulk("upload", "mptcp", size="1M", server_protocol="tcp", host="::1")
    _assert_intact(crc, client, src, server, 1_000_000)
    assert client["mptcp_socket"] is True
    assert client["is_mptcp"] is False
    assert server["is_mptcp"] is False


@needs_root
@pytest.mark.root
def test_bulk_download_with_different_data_is_not_intact() -> None:
    # The client expects the stream of another seed: exactly what corruption in transit looks like to it.
    crc, client, src, server = _bulk("download", "tcp", size="2M", client_seed="4")
    assert crc == 1
    assert client["bytes"] == 2_000_000
    assert client["intact"] is False and client["sha256_local"] != client["sha256_remote"]
    assert client["sha256_remote"] == agent.stream_digest(4, 2_000_000)
    assert any("digest mismatch" in e for e in client["errors"])
    # The server checks the digest of what the client got against what it sent: that part is intact.
    assert src == 0 and server["intact"] is True and client["sha256_local"] == server["sha256"]


@needs_root
@pytest.mark.root
def test_bulk_server_detects_a_wrong_client_digest() -> None:
    port = _free_port()
    with _server("bulk-server", "--bind", "127.0.0.1", "--port", str(port), "--protocol", "tcp",
                 "--direction", "download", "--size", "100000", "--timeout", "30") as server:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            assert len(got) == 100_000
            sock.sendall(hashlib.sha256(got[:-1] + b"?").hexdigest().encode() + b"\n")
        rc, result = _server_result(server)
    assert rc == 1
    assert result["intact"] is False and result["sha256"] == hashlib.sha256(got).hexdigest()
    assert any("digest mismatch" in e for e in result["errors"])


@needs_root
@pytest.mark.root
def test_bulk_client_refused_reports_json() -> None:
    port = str(_free_port())
    crc, client = _client("bulk-client", "--connect", "127.0.0.1", "--port", port, "--size", "1000",
                          "--connect-retries", "2", "--timeout", "10")
    assert crc == 1
    assert client["intact"] is False and client["connect_attempts"] == 3
    assert any("ECONNREFUSED" in e for e in client["errors"])


@needs_root
@pytest.mark.root
def test_bulk_server_sigterm_prints_json() -> None:
    port = str(_free_port())
    with _server("bulk-server", "--bind", "127.0.0.1", "--port", port, "--timeout", "30") as server:
        server.send_signal(signal.SIGTERM)
        rc, result = _server_result(server)
    assert rc == 1 and result["errors"] == ["terminated by SIGTERM"]


def _rr(host: str, protocol: str, requests: int, *extra: str) -> tuple[int, dict, int, dict]:
    port = str(_free_port(host))
    with _server("rr-server", "--bind", host, "--port", port, "--protocol", protocol, "--response-size",
                 "3000", "--timeout", "60") as server:
        crc, client = _client("rr-client", "--connect", host, "--port", port, "--protocol", protocol,
                              "--requests", str(requests), "--request-size", "200", "--response-size", "3000",
                              "--timeout", "30", *extra)
        server.send_signal(signal.SIGTERM)
        src, srv = _server_result(server)
    return crc, client, src, srv


def _assert_rr(crc: int, client: dict, src: int, server: dict, n: int) -> None:
    assert crc == 0 and client["errors"] == [], client["errors"]
    assert client["count"] == n and client["ok"] == n and client["failed"] == 0
    assert len(client["samples"]) == n
    for key in ("ttfb_seconds", "completion_seconds"):
        s = client[key]
        assert 0 <= s["min"] <= s["p50"] <= s["p95"] <= s["p99"] <= s["max"], s
        assert s["min"] <= s["mean"] <= s["max"]
    assert client["ttfb_seconds"]["max"] <= client["completion_seconds"]["max"]
    assert min(client["samples"]) == client["ttfb_seconds"]["min"]
    assert src == 0 and server["stopped_by"] == "signal"
    assert server["requests"] == n and server["bytes_sent"] == n * 3004 and server["bytes_received"] == n * 204


@needs_root
@needs_mptcp
@pytest.mark.root
def test_rr_mptcp_persistent_connection() -> None:
    crc, client, src, server = _rr("127.0.0.1", "mptcp", 50)
    _assert_rr(crc, client, src, server, 50)
    assert client["connections"] == 1 and server["connections"] == 1
    assert client["is_mptcp"] is True and client["mptcp_connections"] == 1
    assert client["mptcp_info"]["subflows"] >= 0
    assert server["is_mptcp"] is True and server["mptcp_connections"] == 1


@needs_root
@needs_mptcp
@pytest.mark.root
def test_rr_new_connection_per_request_ipv6() -> None:
    crc, client, src, server = _rr("::1", "mptcp", 10, "--new-connection-per-request", "--interval", "0.005")
    _assert_rr(crc, client, src, server, 10)
    assert client["connections"] == 10 and client["mptcp_connections"] == 10
    assert client["connect_seconds"]["max"] is not None
    assert client["seconds"] >= 9 * 0.005


@needs_root
@pytest.mark.root
def test_rr_tcp() -> None:
    crc, client, src, server = _rr("127.0.0.1", "tcp", 50)
    _assert_rr(crc, client, src, server, 50)
    assert client["is_mptcp"] is False and server["is_mptcp"] is False


# Runs in a fresh network namespace: MPTCP disabled there, lo up, server in the background, client.
_NO_MPTCP_SCRIPT = """
"$1" -q -w net.mptcp.enabled=0 || exit 97
"$2" link set lo up || exit 98
"$3" -S "$4" bulk-server --bind 127.0.0.1 --port 5000 --size 2M --timeout 20 > "$5" &
"$3" -S "$4" bulk-client --connect 127.0.0.1 --port 5000 --size 2M --timeout 20
rc=$?
wait
exit $rc
"""


def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


@needs_root
@pytest.mark.root
def test_fallback_to_tcp_when_mptcp_is_disabled(tmp_path: Path) -> None:
    tools = {name: _tool(name) for name in ("sysctl", "ip")}
    if None in tools.values():
        pytest.skip(f"missing tools: {tools}")
    server_out = tmp_path / "server.out"
    rc, out, err = _in_new_netns(_NO_MPTCP_SCRIPT, str(tools["sysctl"]), str(tools["ip"]), PY, str(AGENT),
                                 str(server_out))
    assert rc == 0, err
    client = _one_json(out)
    server = _one_json(server_out.read_text(), ready=True)
    for side in (client, server):
        assert side["protocol_requested"] == "mptcp"
        assert side["mptcp_socket"] is False
        assert "ENOPROTOOPT" in side["mptcp_socket_error"]
        assert side["is_mptcp"] is False and side["mptcp_info"] is None
    assert client["intact"] is True and client["bytes"] == server["bytes"] == 2_000_000


# A fresh namespace with a second loopback address announced as an MPTCP "subflow" endpoint: the
# client opens an MP_JOIN subflow to the server (whose listener must still be open for it).
_TWO_SUBFLOWS_SCRIPT = """
"$1" link set lo up || exit 98
"$1" addr add 127.0.0.2/8 dev lo || exit 98
"$1" mptcp limits set subflow 2 add_addr_accepted 2 || exit 98
"$1" mptcp endpoint add 127.0.0.2 dev lo subflow || exit 98
"$2" -S "$3" bulk-server --bind 0.0.0.0 --port 5000 --direction download --size 256M --timeout 20 > "$4" &
"$2" -S "$3" bulk-client --connect 127.0.0.1 --port 5000 --direction download --size 256M --timeout 20
rc=$?
wait
nstat -az MPTcpExtMPJoinSynAckRx MPTcpExtMPJoinAckRx > "$4.nstat"
exit $rc
"""


def _in_new_netns(script: str, *args: str) -> tuple[int, str, str]:
    unshare = _tool("unshare")
    if unshare is None:
        pytest.skip("unshare not found")
    proc = subprocess.Popen([unshare, "-n", "sh", "-c", script, "sh", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    if proc.returncode in (97, 98):
        pytest.skip(f"cannot set up the namespace: {err}")
    return proc.returncode, out, err


@needs_root
@needs_mptcp
@pytest.mark.root
def test_bulk_mptcp_with_a_joined_subflow(tmp_path: Path) -> None:
    ip = _tool("ip")
    if ip is None:
        pytest.skip("ip not found")
    server_out = tmp_path / "server.out"
    rc, out, err = _in_new_netns(_TWO_SUBFLOWS_SCRIPT, ip, PY, str(AGENT), str(server_out))
    assert rc == 0, err
    client = _one_json(out)
    server = _one_json(server_out.read_text(), ready=True)
    assert client["intact"] is True and client["errors"] == [] and server["errors"] == []
    for side in (client, server):
        assert side["is_mptcp"] is True
        assert side["mptcp_info"]["subflows"] >= 0 and "subflows_total" in side["mptcp_info"]  # parsed
    # The join itself, from the kernel's counters (the sample at close may race with the join).
    counters = {line.split()[0]: int(line.split()[1]) for line in (tmp_path / "server.out.nstat").read_text()
                .splitlines() if line.startswith("MPTcpExt")}
    assert counters["MPTcpExtMPJoinSynAckRx"] >= 1 and counters["MPTcpExtMPJoinAckRx"] >= 1


# Every mode in a fresh network namespace, started exactly as the drivers start it (python -S AGENT):
# a bulk upload, a download the client aborts, request/response, and request/response through a
# real Transport Converter (convertd), the relay client.
_EVERY_MODE_SCRIPT = """
"$1" link set lo up || exit 98
"$1" addr add 10.77.0.1/32 dev lo || exit 98  # a converter refuses loopback destinations (RFC 8803)
py=$2 agent=$3 convertd=$4 out=$5
"$py" -S -I "$agent" bulk-server --bind 127.0.0.1 --port 5001 --size 3M --seed 5 --timeout 20 > "$out/up.server" &
"$py" -S -I "$agent" bulk-client --connect 127.0.0.1 --port 5001 --size 3M --seed 5 --timeout 20 > "$out/up.client"
wait
abort="--direction download --size 3M --abort-after 1M --timeout 20"
"$py" -S -I "$agent" bulk-server --bind 127.0.0.1 --port 5002 $abort > "$out/abort.server" &
"$py" -S -I "$agent" bulk-client --connect 127.0.0.1 --port 5002 $abort > "$out/abort.client"
wait
"$py" -S -I "$agent" rr-server --bind 10.77.0.1 --port 5003 --response-size 100 --timeout 20 > "$out/rr.server" &
rr=$!
"$py" -S "$convertd" --bind 127.0.0.1 --port 5124 --protocol tcp --tfo-qlen 0 > /dev/null 2>&1 &
cd=$!
rr_args="--connect 10.77.0.1 --port 5003 --request-size 10 --response-size 100 --timeout 20"
"$py" -S -I "$agent" rr-client $rr_args --requests 20 > "$out/rr.client"
for i in $(seq 100); do "$1" -n ss -Htln 2>/dev/null | grep -q ':5124 ' && break; sleep 0.05; done
"$py" -S -I "$agent" rr-client $rr_args --requests 3 --protocol tcp --new-connection-per-request \
    --via converter:127.0.0.1:5124 > "$out/via.client"
kill $rr $cd
wait
"""


@needs_root
@needs_mptcp
@pytest.mark.root
def test_every_mode_runs_in_a_new_namespace(tmp_path: Path) -> None:
    ip = _tool("ip")
    if ip is None or _tool("ss") is None:
        pytest.skip("ip or ss not found")
    convertd = Path(__file__).resolve().parents[2] / "testbed" / "emulation" / "functions" / "convertd.py"
    rc, out, err = _in_new_netns(_EVERY_MODE_SCRIPT, ip, PY, str(AGENT), str(convertd), str(tmp_path))
    assert rc == 0, err
    runs = {f.name: _one_json(f.read_text(), ready=f.suffix == ".server") for f in tmp_path.iterdir()}
    assert set(runs) == {"up.server", "up.client", "abort.server", "abort.client", "rr.server", "rr.client",
                         "via.client"}
    for name, run in runs.items():
        assert run["errors"] == [], (name, run["errors"])
    assert runs["up.client"]["intact"] and runs["up.client"]["sha256_local"] == runs["up.server"]["sha256"]
    assert runs["up.client"]["is_mptcp"] is True and runs["up.server"]["bytes"] == 3_000_000
    assert runs["abort.client"]["aborted"] and runs["abort.client"]["intact"]
    assert runs["abort.server"]["peer_reset"] is True
    assert runs["rr.client"]["ok"] == 20 and runs["rr.client"]["is_mptcp"] is True
    assert runs["rr.server"]["stopped_by"] == "signal" and runs["rr.server"]["requests"] == 23
    via = runs["via.client"]
    assert via["ok"] == 3 and via["connections"] == 3 and via["via"] == {"kind": "converter", "host": "127.0.0.1",
                                                                        "port": 5124}
