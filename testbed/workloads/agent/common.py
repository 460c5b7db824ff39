"""Shared by every mode: constants, errors and signals, argument types, the time bound, the
deterministic payload stream, and what a mode prints (``ready``, ``connected``, its JSON)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator



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


class ProtocolError(Exception):
    """The peer broke the agent's wire protocol."""


class Stop(BaseException):
    """Raised (once) from the SIGTERM/SIGINT handler in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_stop_signum: int | None = None


def on_signal(signum: int, _frame: object) -> None:
    global _stop_signum
    if _stop_signum is None:
        _stop_signum = signum
        raise Stop(signum)


def signal_name(signum: int) -> str:
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


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def parse_via(text: str) -> tuple[str, str, int]:
    """``converter:ADDR:PORT`` or ``socks5:ADDR:PORT`` (IPv6 in brackets)."""
    kind, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("converter", "socks5") or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected converter:ADDR:PORT or socks5:ADDR:PORT, got {text!r}")
    return kind, host.strip("[]"), int(port)


def receiver(direction: str) -> str:
    return "client" if direction == "download" else "server"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, Stop):
        return f"terminated by {signal_name(exc.signum)}"
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


_blocks: dict[int, bytes] = {}


def pattern_block(seed: int) -> bytes:
    """The 1 MiB block of ``seed``, made once per process: a transfer's side makes it to send or
    check the stream and again for its digest (under TCG a block costs a tenth of a second)."""
    if seed not in _blocks:
        import random

        _blocks[seed] = random.Random(seed).randbytes(BLOCK_SIZE)
    return _blocks[seed]


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



def base_result(mode: str, protocol: str) -> dict[str, object]:
    return {"mode": mode, "protocol_requested": protocol, "mptcp_socket": None, "mptcp_socket_error": None,
            "is_mptcp": None, "is_mptcp_method": None, "mptcp_info": None}


def meta_into(result: dict[str, object], meta: dict[str, object]) -> None:
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
