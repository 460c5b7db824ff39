"""Workloads run between two nodes; each returns a structured result.

The bulk and request/response workloads use the stdlib-only agent (agent.py) started inside the
node's namespace, opening MPTCP sockets natively; iperf3 runs under `mptcpize` for MPTCP."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.emulation.nodeexec import wait_for_output
from testbed.spec.experiment import Bulk, Iperf3, Ping, RequestResponse, Workload

AGENT = Path(__file__).with_name("agent.py")


@dataclass
class Context:
    client: Any
    server: Any
    target: str
    log_dir: Path
    state: Any
    seed: int


def _python(*args: str) -> list[str]:
    return [sys.executable, "-S", str(AGENT), *args]


def _start(node: Any, argv: list[str], ctx: Context, what: str, wait_for: bytes | None,
           timeout: float = 10.0) -> subprocess.Popen:
    with open(ctx.log_dir / f"{what}.stderr", "wb") as log:  # the child keeps its own descriptor
        proc = node.popen(argv, stdout=subprocess.PIPE, stderr=log)
    ctx.state.add_process(proc.pid, what)
    if wait_for is None:
        return proc
    found, seen = wait_for_output(proc.stdout, wait_for, timeout)
    if not found:
        _stop(proc)
        raise RuntimeError(f"{what} did not become ready: {seen.decode(errors='replace')[-300:].strip()}")
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> bytes:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or b""


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[bytes, bool]:
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out or b"", False
    except subprocess.TimeoutExpired:
        return _stop(proc, signal.SIGKILL), True


def _json_tail(out: bytes) -> dict | None:
    for line in reversed(out.decode(errors="replace").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def run(w: Workload, ctx: Context) -> dict:
    started = time.monotonic()
    try:
        if isinstance(w, Bulk):
            result = _bulk(w, ctx)
        elif isinstance(w, RequestResponse):
            result = _rr(w, ctx)
        elif isinstance(w, Iperf3):
            result = _iperf3(w, ctx)
        else:
            result = _ping(w, ctx)
    except RuntimeError as exc:
        result = {"ok": False, "error": str(exc)}
    result.update(type=w.type, protocol=w.protocol, target=ctx.target,
                  wall_seconds=round(time.monotonic() - started, 4))
    return result


def _bulk(w: Bulk, ctx: Context) -> dict:
    common = ["--port", str(w.port), "--protocol", w.protocol, "--direction", w.direction,
              "--size", str(w.size), "--seed", str(ctx.seed), "--timeout", str(w.timeout)]
    server = _start(ctx.server, _python("bulk-server", "--bind", "::", *common), ctx,
                    "bulk-server", b"ready")
    client = _start(ctx.client, _python("bulk-client", "--connect", ctx.target, *common), ctx,
                    "bulk-client", None)
    cout, timed_out = _finish(client, w.timeout + 5)
    sout, _ = _finish(server, 5)
    c, s = _json_tail(cout), _json_tail(sout)
    if timed_out or c is None:
        return {"ok": False, "error": "timed out" if timed_out else "client gave no result",
                "client": c, "server": s}
    intact = bool(c.get("intact"))
    return {"ok": intact and not c.get("errors"), "intact": intact, "bytes": c.get("bytes"),
            "seconds": c.get("seconds"), "goodput_bps": c.get("goodput_bps"),
            "is_mptcp": c.get("is_mptcp"), "client": c, "server": s,
            "error": "; ".join(c.get("errors") or []) or (None if intact else "digest mismatch")}


def _rr(w: RequestResponse, ctx: Context) -> dict:
    server = _start(ctx.server, _python("rr-server", "--bind", "::", "--port", str(w.port),
                                        "--protocol", w.protocol, "--response-size", str(w.response_size),
                                        "--timeout", str(w.timeout + 5)), ctx, "rr-server", b"ready")
    argv = _python("rr-client", "--connect", ctx.target, "--port", str(w.port), "--protocol", w.protocol,
                   "--requests", str(w.requests), "--request-size", str(w.request_size),
                   "--response-size", str(w.response_size), "--interval", str(w.interval),
                   "--timeout", str(w.timeout))
    if w.new_connection:
        argv.append("--new-connection-per-request")
    client = _start(ctx.client, argv, ctx, "rr-client", None)
    cout, timed_out = _finish(client, w.timeout + 5)
    s = _json_tail(_stop(server))
    c = _json_tail(cout)
    if timed_out or c is None:
        return {"ok": False, "error": "timed out" if timed_out else "client gave no result", "client": c,
                "server": s}
    ok = c.get("ok") == w.requests
    return {"ok": ok, "requests": w.requests, "completed": c.get("ok"), "ttfb": c.get("ttfb_seconds"),
            "completion": c.get("completion_seconds"), "is_mptcp": c.get("is_mptcp"), "client": c,
            "server": s, "error": None if ok else f"{c.get('failed')} of {w.requests} requests failed"}


def _iperf3(w: Iperf3, ctx: Context) -> dict:
    wrap = ["mptcpize", "run"] if w.protocol == "mptcp" else []
    server = _start(ctx.server, [*wrap, "iperf3", "-s", "-1", "-p", str(w.port), "--forceflush"], ctx,
                    "iperf3-server", b"listening")
    argv = [*wrap, "iperf3", "-c", ctx.target, "-p", str(w.port), "-t", f"{w.duration:g}", "-J",
            "-P", str(w.streams)]
    if w.reverse:
        argv.append("-R")
    client = _start(ctx.client, argv, ctx, "iperf3-client", None)
    cout, timed_out = _finish(client, w.duration + w.timeout)
    _stop(server)
    (ctx.log_dir / "iperf3-client.json").write_bytes(cout)
    try:
        report = json.loads(cout)
    except ValueError:
        return {"ok": False, "error": "iperf3 gave no JSON report" + (" (timed out)" if timed_out else "")}
    if "error" in report:
        return {"ok": False, "error": f"iperf3: {report['error']}"}
    end = report.get("end", {})
    received = end.get("sum_received", {})
    return {"ok": True, "goodput_bps": received.get("bits_per_second"), "bytes": received.get("bytes"),
            "seconds": received.get("seconds"),
            "retransmits": end.get("sum_sent", {}).get("retransmits"), "report": "iperf3-client.json"}


_RTT = re.compile(rb"time=([0-9.]+) ms")


def _ping(w: Ping, ctx: Context) -> dict:
    # -U: user-to-user time; the kernel's receive timestamp predates a delay applied on ingress.
    argv = ["ping", "-n", "-U", "-c", str(w.count), "-i", f"{w.interval:g}", "-W", "2", ctx.target]
    proc = _start(ctx.client, argv, ctx, "ping", None)
    out, timed_out = _finish(proc, w.count * max(w.interval, 0.01) + w.timeout)
    (ctx.log_dir / "ping.stdout").write_bytes(out)
    rtts = sorted(float(m) / 1000 for m in _RTT.findall(out))
    received = len(rtts)
    result: dict[str, Any] = {"ok": received > 0 and not timed_out, "sent": w.count, "received": received,
                              "loss_percent": round(100 * (w.count - received) / w.count, 3)}
    if rtts:
        result["rtt"] = percentiles(rtts)
    else:
        result["error"] = "no echo replies"
    return result


def percentiles(sorted_values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles."""
    def rank(p: float) -> float:
        return sorted_values[max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))]

    return {"min": sorted_values[0], "p50": rank(50), "p95": rank(95), "p99": rank(99), "max": sorted_values[-1],
            "mean": sum(sorted_values) / len(sorted_values)}
