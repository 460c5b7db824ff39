"""The `probe` workload: a listener on the server node, the probe agent on the client node.

The probe agent asks for the server's counters at named moments (``@@counters LABEL`` on its
stdout); they are read here from the server node (its namespace's /proc, or a guest's kernel) and
written back on its stdin, so the probe judges counter changes between its own steps."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed.collect import counters as counters_mod
from testbed.emulation.nodeexec import readable
from testbed.emulation.nodeexec import run as node_run
from testbed.workloads import process
from testbed.workloads.context import Context

AGENT = Path(__file__).with_name("probe_agent.py")
COUNTER_PREFIXES = ("MPTcpExt", "TcpExt", "Tcp")


def speaks(node: Any) -> str:
    """What the server node's kernel speaks: v1 (upstream net.mptcp.enabled=1), v0 (an out-of-tree
    v0.9x kernel's net.mptcp.mptcp_enabled), else plain tcp."""
    for key, answer in (("net.mptcp.enabled", "v1"), ("net.mptcp.mptcp_enabled", "v0")):
        code, out = node_run(node, ["sysctl", "-n", key], check=False)
        if code == 0 and out.strip().splitlines() and out.strip().splitlines()[-1].strip() not in ("", "0"):
            return answer
    return "tcp"


def run(w: Any, ctx: Context) -> dict[str, Any]:
    """Run probe `w.probe` from ctx.client against ctx.server; the workload's result."""
    who = w.speaks if w.speaks != "auto" else speaks(ctx.server)
    listener = process.start(ctx.server, [sys.executable, "-S", str(AGENT), "listen", "--port", str(w.port)],
                             ctx, "probe-listener", b"ready")
    try:
        out, snapshots, error = _run_agent(w, ctx, who)
    finally:
        listened = process.json_tail(process.stop(listener))
    (ctx.log_dir / "probe.stdout").write_bytes(out)
    result = process.json_tail(out)
    if result is None:
        return {"ok": False, "probe": w.probe, "speaks": who, "error": error or "the probe gave no result",
                "listener": listened}
    result.update(speaks_source="workload" if w.speaks != "auto" else "server kernel", listener=listened,
                  counter_snapshots=list(dict.fromkeys(snapshots)),  # labels in order (a poll repeats one)
                  counter_reads=len(snapshots))
    token = (result.get("measured") or {}).get("token")
    if token and listened:  # our SHA-256 token against the one the server's kernel reports (MPTCP_INFO)
        result["measured"]["server_reported_tokens"] = [c.get("token") for c in listened.get("accepted", [])]
        result["measured"]["token_matches_server"] = token in result["measured"]["server_reported_tokens"]
    if error and result.get("ok"):
        result.update(ok=False, error=error)
    (ctx.log_dir / "probe-result.json").write_text(json.dumps(result, indent=2))
    return result


def _run_agent(w: Any, ctx: Context, who: str) -> tuple[bytes, list[str], str | None]:
    argv = [sys.executable, str(AGENT), "run", w.probe, "--target", ctx.target, "--port", str(w.port),
            "--speaks", who, "--counters"]
    with open(ctx.log_dir / "probe.stderr", "wb") as log:
        proc = ctx.client.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    process.track(ctx, proc, f"probe {w.probe}")
    assert proc.stdout is not None and proc.stdin is not None
    fd = proc.stdout.fileno()
    out, buffer, labels = b"", b"", []
    deadline = time.monotonic() + w.timeout
    error = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                error = f"the probe did not finish within {w.timeout:g} s"
                break
            if not readable(fd, left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.startswith(b"@@counters "):
                    labels.append(line[11:].decode(errors="replace").strip())
                    snap = counters_mod.of_node(ctx.server)
                    reply = {k: v for k, v in snap.items() if k.startswith(COUNTER_PREFIXES)}
                    proc.stdin.write(json.dumps(reply).encode() + b"\n")
                    proc.stdin.flush()
                else:
                    out += line + b"\n"
        out += buffer
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.stdin = None  # communicate() must not flush it
        out += process.stop(proc, timeout=5.0) if proc.poll() is None else (proc.stdout.read() or b"")
    return out, labels, error
