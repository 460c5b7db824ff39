"""Workloads run between two nodes; each returns a structured result.

The bulk and request/response workloads use the stdlib-only agent (the agent package) started inside the
node's namespace, opening MPTCP sockets natively; iperf3 runs under `mptcpize` for MPTCP."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from testbed.emulation.nodeexec import wait_for_output
from testbed.spec.experiment import Bulk, Iperf3, Ping, Probe, RequestResponse, Workload
from testbed.workloads import agent_path
from testbed.workloads.context import Context, Via, add_path_info, route_hops
from testbed.workloads.process import NotReady, finish, json_tail, servers_result, start, start_servers, stop

__all__ = ["Context", "Via", "add_path_info", "aborted_bulk", "percentiles", "route_hops", "run", "setup_metrics"]

AGENT = agent_path()  # the agent package's __main__.py, its bytecode compiled


def _python(*args: str) -> list[str]:
    return [sys.executable, "-S", str(AGENT), *args]


def run(w: Workload, ctx: Context) -> dict:
    started = time.monotonic()
    try:
        if isinstance(w, Bulk):
            result = _bulk(w, ctx)
        elif isinstance(w, RequestResponse):
            result = _rr(w, ctx)
        elif isinstance(w, Iperf3):
            result = _iperf3(w, ctx)
        elif isinstance(w, Probe):
            from testbed.probes import driver as probe_driver  # packet-level conformance probes

            result = probe_driver.run(w, ctx)
        else:
            result = _ping(w, ctx)
    except NotReady as exc:
        result = {"ok": False, "error": str(exc)}
        if exc.silent:
            result["not_started"] = str(exc)
    except RuntimeError as exc:
        result = {"ok": False, "error": str(exc)}
    result.update(type=w.type, protocol=w.protocol, target=ctx.target,
                  wall_seconds=round(time.monotonic() - started, 4))
    if isinstance(w, Bulk | RequestResponse):
        result.update(setup_metrics(result.get("client"), ctx))
    return result


def setup_metrics(client: Any, ctx: Context) -> dict[str, Any]:
    """Connection set-up figures of a bulk or rr client, top-level for `expect` (rr: medians over its
    connections), and the same in path RTTs (`ctx.path_rtt`). See the agent for each one's span."""
    c = client if isinstance(client, dict) else {}
    out: dict[str, Any] = {}
    for key in ("connect_seconds", "setup_seconds", "established_seconds", "first_byte_seconds"):
        value = c.get(key)
        out[key] = value.get("p50") if isinstance(value, dict) else value
    error = c.get("via_error")
    out.update(via=ctx.via.node if ctx.via else None, via_error=error,
               error_seconds=error.get("seconds") if isinstance(error, dict) else None,
               path_rtt_seconds=ctx.path_rtt)
    for key in ("setup", "first_byte", "error"):
        value = out[f"{key}_seconds"]
        out[f"{key}_rtts"] = round(value / ctx.path_rtt, 3) if value is not None and ctx.path_rtt else None
    return out


def _bulk(w: Bulk, ctx: Context) -> dict:
    common = ["--port", str(w.port), "--protocol", w.protocol, "--direction", w.direction,
              "--size", str(w.size), "--seed", str(ctx.seed), "--timeout", str(w.timeout)]
    if w.abort is not None:
        common += ["--abort-after", str(w.abort.after), "--abort-side", w.abort.side, "--abort-how", w.abort.how]
    server_argv = _python("bulk-server", "--bind", "::", *common)
    if ctx.servers:
        servers = start_servers(server_argv, ctx, "bulk-server")
    else:
        server = start(ctx.server, server_argv, ctx, "bulk-server", b"ready")
    client = start(ctx.client, _python("bulk-client", "--connect", ctx.target, *common,
                                        *(ctx.via.argv() if ctx.via else [])), ctx, "bulk-client", None)
    # A client's start-up (seconds in an emulated guest) is not part of the transfer: events and
    # path windows count from its connection.
    _, early = wait_for_output(client.stdout, b"connected\n", w.timeout + 5)
    ctx.on_started()
    cout, timed_out = finish(client, w.timeout + 5)
    cout = early + cout
    if ctx.servers:
        multi = servers_result(servers, 5, lambda out: out.get("peer") is not None)
        s = multi["server"]
    else:
        multi = {}
        s = json_tail(finish(server, 5)[0])
    c = json_tail(cout)
    if timed_out or c is None:
        return {"ok": False, "error": "timed out" if timed_out else "client gave no result",
                "client": c, "server": s, **multi}
    if w.abort is not None:
        return aborted_bulk(w, c, s)
    intact = bool(c.get("intact"))
    return {"ok": intact and not c.get("errors"), "intact": intact, "bytes": c.get("bytes"),
            "seconds": c.get("seconds"), "goodput_bps": c.get("goodput_bps"),
            "is_mptcp": c.get("is_mptcp"), "client": c, "server": s, **multi,
            "error": "; ".join(c.get("errors") or []) or (None if intact else "digest mismatch")}


def aborted_bulk(w: Bulk, c: dict, s: dict | None) -> dict:
    """A bulk transfer one side aborts on purpose: it completes when that side closed abruptly, the
    other saw the connection reset (ECONNRESET/EPIPE) and the payload that arrived before is the
    start of the stream. `intact` is the receiving side's check of that prefix; `bytes` what it got."""
    assert w.abort is not None
    sides = {"client": c, "server": s or {}}
    side = w.abort.side
    peer = "server" if side == "client" else "client"
    aborter, other = sides[side], sides[peer]
    receiver = sides["client" if w.direction == "download" else "server"]
    problems = [f"{name}: {e}" for name, r in sides.items() for e in r.get("errors") or []]
    if s is None:
        problems.append("the server gave no result")
    if not aborter.get("aborted"):
        problems.append(f"the {side} did not abort")
    if not other.get("peer_reset"):
        problems.append(f"the {peer} saw no reset")
    intact = receiver.get("intact")
    summary = {"side": side, "how": w.abort_how(), "after": w.abort.after, "aborted": bool(aborter.get("aborted")),
               "abort_bytes": aborter.get("abort_bytes"), "unread_bytes": aborter.get("unread_bytes"),
               "unread_at_close": aborter.get("unread_at_close"), "linger_zero": aborter.get("linger_zero"),
               "peer_reset": bool(other.get("peer_reset")), "reset_error": other.get("reset_error"),
               "reset_bytes": other.get("reset_bytes")}
    return {"ok": not problems and intact is True, "intact": intact, "bytes": receiver.get("bytes"),
            "seconds": c.get("seconds"), "goodput_bps": c.get("goodput_bps"), "is_mptcp": c.get("is_mptcp"),
            "aborted": summary["aborted"], "peer_reset": summary["peer_reset"], "abort": summary,
            "client": c, "server": s,
            "error": "; ".join(problems) or (None if intact else "the payload before the abort is not intact")}


def _rr(w: RequestResponse, ctx: Context) -> dict:
    server_argv = _python("rr-server", "--bind", "::", "--port", str(w.port), "--protocol", w.protocol,
                          "--response-size", str(w.response_size), "--timeout", str(w.timeout + 5))
    if ctx.servers:
        servers = start_servers(server_argv, ctx, "rr-server")
    else:
        server = start(ctx.server, server_argv, ctx, "rr-server", b"ready")
    argv = _python("rr-client", "--connect", ctx.target, "--port", str(w.port), "--protocol", w.protocol,
                   "--requests", str(w.requests), "--request-size", str(w.request_size),
                   "--response-size", str(w.response_size), "--interval", str(w.interval),
                   "--timeout", str(w.timeout))
    if w.new_connection:
        argv.append("--new-connection-per-request")
    if ctx.via:
        argv += ctx.via.argv()
    client = start(ctx.client, argv, ctx, "rr-client", None)
    cout, timed_out = finish(client, w.timeout + 5)
    if ctx.servers:  # rr servers serve until stopped: every one is stopped at once
        multi = servers_result(servers, 0, lambda out: bool(out.get("connections")))
        s = multi["server"]
    else:
        multi = {}
        s = json_tail(stop(server))
    c = json_tail(cout)
    if timed_out or c is None:
        return {"ok": False, "error": "timed out" if timed_out else "client gave no result", "client": c,
                "server": s, **multi}
    ok = c.get("ok") == w.requests
    return {"ok": ok, "requests": w.requests, "completed": c.get("ok"), "ttfb": c.get("ttfb_seconds"),
            "completion": c.get("completion_seconds"), "is_mptcp": c.get("is_mptcp"), "client": c,
            "server": s, **multi, "error": None if ok else f"{c.get('failed')} of {w.requests} requests failed"}


def _iperf3(w: Iperf3, ctx: Context) -> dict:
    wrap = ["mptcpize", "run"] if w.protocol == "mptcp" else []
    server = start(ctx.server, [*wrap, "iperf3", "-s", "-1", "-p", str(w.port), "--forceflush"], ctx,
                    "iperf3-server", b"listening")
    argv = [*wrap, "iperf3", "-c", ctx.target, "-p", str(w.port), "-t", f"{w.duration:g}", "-J",
            "-P", str(w.streams)]
    if w.reverse:
        argv.append("-R")
    client = start(ctx.client, argv, ctx, "iperf3-client", None)
    cout, timed_out = finish(client, w.duration + w.timeout)
    stop(server)
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
    proc = start(ctx.client, argv, ctx, "ping", None)
    out, timed_out = finish(proc, w.count * max(w.interval, 0.01) + w.timeout)
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
