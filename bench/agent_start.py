"""Start-up of the workload agent, here (as in a node's namespace) and in a QEMU guest (TCG).

For each place, median of --runs: `python -S -c pass` (the interpreter alone), a bulk server's
spawn → `ready` line, and a bulk client's whole run (spawn → exit) of a 1 kB upload to that
server. The agent is started exactly as the drivers start it (`python -S AGENT MODE ...`);
`--agent PATH` times another copy (e.g. an older agent.py) the same way: it must be a path the guest
sees (not under /tmp). The guest part boots the image (cached; built first when not) once, not timed.

    sudo .venv/bin/python bench/agent_start.py [--runs 5] [--agent PATH] [--image linux-6.1] [--no-guest] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchjson  # noqa: E402

from testbed.workloads import drivers  # noqa: E402

PORT = 47311


def _ready(proc: Any, timeout: float) -> None:
    """Read the server's stdout until its `ready` line."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while b"ready\n" not in buf:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ready line within {timeout} s: {buf[-200:]!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"the server exited before ready: {buf[-200:]!r}")
        buf += chunk


def measure(popen: Callable[[list[str]], Any], agent: str, runs: int, timeout: float) -> dict[str, float]:
    python = [sys.executable, "-S"]
    rows: dict[str, list[float]] = {"interpreter": [], "server ready": [], "client run": []}
    for i in range(runs):
        port = str(PORT + i)
        started = time.monotonic()
        proc = popen([*python, "-c", "pass"])
        proc.communicate(timeout=timeout)
        rows["interpreter"].append(time.monotonic() - started)

        started = time.monotonic()
        server = popen([*python, agent, "bulk-server", "--bind", "127.0.0.1", "--port", port, "--size", "1000",
                        "--timeout", "60"])
        _ready(server, timeout)
        rows["server ready"].append(time.monotonic() - started)
        started = time.monotonic()
        client = popen([*python, agent, "bulk-client", "--connect", "127.0.0.1", "--port", port, "--size", "1000",
                        "--timeout", "60"])
        out, _ = client.communicate(timeout=timeout)
        rows["client run"].append(time.monotonic() - started)
        server.communicate(timeout=timeout)
        if client.returncode != 0 or server.returncode != 0:
            raise RuntimeError(f"the transfer failed: client {client.returncode} {out!r}, server {server.returncode}")
    return {k: statistics.median(v) for k, v in rows.items()}


ROWS: list[list[object]] = []


def show(where: str, figures: dict[str, float], runs: int) -> None:
    own = figures["server ready"] - figures["interpreter"]
    ROWS.append([where, round(figures["interpreter"], 3), round(figures["server ready"], 3), round(own, 3),
                 round(figures["client run"], 3)])
    print(f"{where:<24} interpreter {figures['interpreter']:.3f} s, server ready {figures['server ready']:.3f} s "
          f"(agent's own {own:.3f} s), client run {figures['client run']:.3f} s  (median of {runs})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--agent", default=str(drivers.AGENT), help="what to start (default: the drivers' agent)")
    parser.add_argument("--image", default="linux-6.1")
    parser.add_argument("--no-guest", action="store_true", help="time only here")
    parser.add_argument("--json", default=None, help="also write the figures to this file (bench/run_all.py)")
    args = parser.parse_args()
    try:
        return _main(args)
    finally:
        benchjson.write(args.json, "agent_start", [benchjson.table(
            f"agent start-up, median of {args.runs} (seconds)",
            ["where", "interpreter", "server ready", "agent's own", "client run"], ROWS)],
            notes=[f"agent: {args.agent}", f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}"])


def _main(args: argparse.Namespace) -> int:
    agent = str(Path(args.agent).resolve())
    print(f"agent: {agent}")

    def local(argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    show("here (namespace)", measure(local, agent, args.runs, 30), args.runs)
    if args.no_guest:
        return 0
    if os.geteuid() != 0:
        print("agent_start: the guest part needs root (TAP device); --no-guest skips it", file=sys.stderr)
        return 3
    from testbed.emulation.qemu import images
    from testbed.emulation.qemu.guest import Guest, Nic, random_mac

    image = images.build(args.image, log=lambda m: print(m, file=sys.stderr))
    guest = Guest(f"bench-agent{os.getpid() % 10**6}")
    try:
        guest.boot(image, [Nic(f"tbas{os.getpid() % 10**7}", random_mac())])
        guest.run(["ip", "link", "set", "lo", "up"], check=True)

        def in_guest(argv: list[str]) -> Any:
            return guest.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        measure(in_guest, agent, 1, 120)  # warm-up: the guest's page cache and TCG's translations
        show(f"guest {args.image} ({guest.accel})", measure(in_guest, agent, args.runs, 120), args.runs)
    finally:
        guest.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
