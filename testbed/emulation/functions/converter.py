"""A Transport Converter (RFC 8803) in the node's namespace: convertd.py, beside this module.

The daemon listens with MPTCP (unless `mptcp_client_side` is off) and TCP Fast Open; the node's
`net.ipv4.tcp_fastopen` is set to serve TFO (with or without cookies). The archive gets the daemon's
configuration (`config.json`), its output (`convertd.log`), one JSON line per relayed connection
(`connections.jsonl`) and its counters at the end (`stats.json`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from testbed.emulation.functions.base import NetworkFunction
from testbed.emulation.nodeexec import run
from testbed.errors import RunError

DAEMON = Path(__file__).with_name("convertd.py")
TFO_SERVER, TFO_CLIENT, TFO_SERVER_NO_COOKIE = 0x2, 0x1, 0x200
READY_TIMEOUT = 5.0


def wait_ready(proc, log: Path, token: str, timeout: float = READY_TIMEOUT) -> str:
    """The first line of `log` starting with `token`, once the process wrote it; RunError if it died
    or stayed silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if line.startswith(token):
                return line
        if proc.poll() is not None:
            raise RunError(f"{log.stem} exited ({proc.returncode}) before it was ready: {text.strip()[-400:]}")
        time.sleep(0.02)
    raise RunError(f"{log.stem} was not ready after {timeout:g} s: {text.strip()[-400:]}")


class Converter(NetworkFunction):
    kind = "converter"

    def build(self) -> dict:
        spec, log_dir = self.spec, self.ctx.log_dir
        sysctls: dict[str, str] = {}
        if spec.tfo and "net.ipv4.tcp_fastopen" not in spec.sysctls:
            value = TFO_CLIENT | TFO_SERVER | (0 if spec.tfo_cookies else TFO_SERVER_NO_COOKIE)
            sysctls["net.ipv4.tcp_fastopen"] = str(value)
        argv = [sys.executable, "-S", str(DAEMON), "--bind", "0.0.0.0", "--port", str(spec.port),
                "--protocol", "mptcp" if spec.mptcp_client_side else "tcp",
                "--tfo-qlen", "64" if spec.tfo else "0", "--connect-timeout", f"{spec.connect_timeout:g}",
                "--max-connections", str(spec.max_connections),
                "--log", str(log_dir / "connections.jsonl"), "--stats", str(log_dir / "stats.json")]
        return {"implementation": "convertd (RFC 8803, version 1)", "port": spec.port,
                "addresses": [str(i.address.ip) for i in self.ctx.interfaces if i.address is not None],
                "client_side": "mptcp" if spec.mptcp_client_side else "tcp", "server_side": "tcp",
                "tfo": spec.tfo, "tfo_cookies": spec.tfo_cookies, "connect_timeout": spec.connect_timeout,
                "max_connections": spec.max_connections, "sysctls": sysctls, "argv": argv,
                "files": ["config.json", "convertd.log", "connections.jsonl", "stats.json"]}

    def start(self) -> dict:
        cfg = self.build()
        log_dir = self.ctx.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        if cfg["sysctls"]:
            run(self.ctx.node, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in cfg["sysctls"].items())])
        proc = self.spawn(cfg["argv"], "convertd")
        line = wait_ready(proc, log_dir / "convertd.log", "ready ")
        ready = json.loads(line.removeprefix("ready "))
        if self.spec.mptcp_client_side and not ready.get("mptcp"):
            raise RunError(f"converter {self.ctx.name}: the listening socket is not MPTCP")
        return {**cfg, "ready": ready, "pid": proc.pid}
