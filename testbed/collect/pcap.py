"""tcpdump on every host interface, headers only, started before and stopped after the workloads."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from testbed.emulation.nodeexec import wait_for_output

SNAPLEN = "160"  # enough for IP + TCP with every MPTCP option


class Captures:
    def __init__(self, out_dir: Path, state: Any):
        self.out_dir = out_dir
        self.state = state
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, targets: list[tuple[str, Any, str]], timeout: float = 5.0) -> None:
        """targets: (ref, node, interface). Returns once every tcpdump is listening."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for ref, node, intf in targets:
            path = self.out_dir / f"{ref.replace(':', '-')}.pcap"
            proc = node.popen(["tcpdump", "-i", intf, "-w", str(path), "-s", SNAPLEN, "-U", "-n",
                               "-Z", "root", "--immediate-mode"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if getattr(proc, "guest_pid", None) is None:  # a guest's process: its .pid is qemu's
                self.state.add_process(proc.pid, f"tcpdump {ref}")
            self.procs.append((ref, proc, path))
        deadline = time.monotonic() + timeout
        for ref, proc, _ in self.procs:
            found, seen = wait_for_output(proc.stderr, b"listening on", max(0.0, deadline - time.monotonic()))
            if not found:
                raise RuntimeError(f"tcpdump on {ref} did not start: {seen.decode(errors='replace').strip()}")

    def stop(self) -> dict[str, dict]:
        results: dict[str, dict] = {}
        for _, proc, _ in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for ref, proc, path in self.procs:
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            text = err.decode(errors="replace")
            captured = next((int(w.split()[0]) for w in text.splitlines() if "packets captured" in w), None)
            dropped = next((int(w.split()[0]) for w in text.splitlines() if "dropped by kernel" in w), None)
            results[ref] = {"file": path.name, "packets": captured, "dropped_by_kernel": dropped}
        self.procs = []
        return results
