"""What the nodes' sockets looked like while workloads ran: `ss -M` / `ss -ti` snapshots (one a
second, one every two in a guest; archived as they are), and the remote addresses of established TCP sockets (subflows
included) read from /proc/net/tcp and tcp6 four times a second.

The second exists because the first is slow where it matters: an emulated (TCG) guest that is busy
moving data takes a second or more to start two `ss` processes, and a transfer of a few seconds
then got one snapshot, or none. Reading /proc starts no process (a guest's guestd reads the file,
a namespace's is read from here), so it keeps up. Each node is sampled by its own threads, and every
attempt is counted (`stats`), so that a check can tell "no such socket was seen" (an observation)
from "nothing was looked at" (none).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

COMMANDS = (("mptcp", ["ss", "-MniH"]), ("tcp", ["ss", "-tniH", "state", "established"]))
TIMEOUT = 5.0  # seconds one `ss` may take (a loaded TCG guest needs more than a namespace's few ms)
PEER_INTERVAL = 0.25  # seconds between reads of /proc/net/tcp{,6}
# A guest's ss snapshot costs it two process starts (measured 0.25 s each in a 6.1 TCG guest on a
# loaded 2-core host; reading /proc/net/tcp{,6} through guestd took 12 ms): fewer of them there.
GUEST_SS_FACTOR = 2
TCP_TABLES = ("tcp", "tcp6")
ESTABLISHED = "01"


@dataclass
class NodeStats:
    attempts: int = 0  # ss snapshots started
    failures: int = 0  # `ss` runs that timed out, failed or could not start
    slowest: float = 0.0  # seconds the slowest ss snapshot took
    last_error: str = ""  # of ss
    table_error: str = ""  # of the /proc/net/tcp reads
    answered: list[float] = field(default_factory=list)  # when (end, from t0) an ss or /proc listing came back
    table_reads: int = 0  # /proc/net/tcp reads that came back

    def as_dict(self) -> dict[str, Any]:
        return {"ss_attempts": self.attempts, "ss_failures": self.failures, "ss_slowest_seconds": round(self.slowest, 3),
                "tcp_table_reads": self.table_reads, "answered": len(self.answered),
                **({"ss_error": self.last_error} if self.last_error else {}),
                **({"table_error": self.table_error} if self.table_error else {})}


def established_peers(table: str) -> set[str]:
    """Remote addresses of the ESTABLISHED sockets in a /proc/net/tcp or tcp6 listing."""
    out = set()
    for line in table.splitlines()[1:]:
        words = line.split()
        if len(words) < 4 or words[3] != ESTABLISHED:
            continue
        hexaddr = words[2].partition(":")[0]
        try:
            raw = bytes.fromhex(hexaddr)
        except ValueError:
            continue
        # the kernel prints each 32-bit word in host (little-endian) order
        words32 = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        if len(words32) == 4:
            out.add(str(IPv4Address(words32)))
        elif len(words32) == 16:
            addr = IPv6Address(words32)
            out.add(str(addr.ipv4_mapped or addr))
    return out


def read_tcp_tables(node: Any) -> dict[str, str | None]:
    """/proc/net/tcp and tcp6 of a node: a guest's through its control channel (no process started),
    a namespace's from /proc/<pid>/net here."""
    own = getattr(node, "proc_net", None)
    if callable(own):
        return own(TCP_TABLES)
    out: dict[str, str | None] = {}
    for name in TCP_TABLES:
        try:
            out[name] = Path(f"/proc/{node.pid}/net/{name}").read_text()
        except OSError:
            out[name] = None
    return out


class SocketSampler:
    def __init__(self, nodes: dict[str, Any], interval: float, t0: float):
        self.nodes = nodes
        self.interval = interval
        self.t0 = t0
        self.snapshots: list[dict] = []
        self.peers: dict[str, dict[str, list[float]]] = {name: {} for name in nodes}  # node → addr → [first, last]
        self.stats: dict[str, NodeStats] = {name: NodeStats() for name in nodes}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=loop, args=(name,), name=f"{what}-{name}", daemon=True)
                         for name in nodes for what, loop in (("ss", self._ss_loop), ("peers", self._peer_loop))]

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def snap_node(self, name: str) -> None:
        node, stats = self.nodes[name], self.stats[name]
        start = time.monotonic()
        entry: dict[str, Any] = {"t": round(start - self.t0, 3), "node": name}
        for key, argv in COMMANDS:
            proc = None
            try:
                proc = node.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                out, _ = proc.communicate(timeout=TIMEOUT)
                entry[key] = out.decode(errors="replace").strip() if proc.returncode == 0 else None
                if proc.returncode != 0:
                    stats.last_error = f"`{' '.join(argv)}` exited {proc.returncode}"
            except subprocess.TimeoutExpired:
                proc.kill()  # type: ignore[union-attr]
                proc.communicate()  # type: ignore[union-attr]
                entry[key] = None
                stats.last_error = f"`{' '.join(argv)}` took longer than {TIMEOUT:g} s"
            except Exception as exc:  # noqa: BLE001 - a node that cannot start ss is recorded, not fatal
                entry[key] = None
                stats.last_error = f"`{' '.join(argv)}` could not run: {exc}"
            if entry[key] is None:
                stats.failures += 1
        seconds = time.monotonic() - start
        with self._lock:
            stats.attempts += 1
            stats.slowest = max(stats.slowest, seconds)
            if entry.get("tcp") is not None:
                stats.answered.append(self._now())
            if entry.get("mptcp") or entry.get("tcp"):
                self.snapshots.append(entry)

    def read_peers(self, name: str) -> None:
        try:
            tables = read_tcp_tables(self.nodes[name])
        except Exception as exc:  # noqa: BLE001 - e.g. a guest that went away: recorded, not fatal
            self.stats[name].table_error = f"/proc/net/tcp could not be read: {exc}"
            return
        if all(text is None for text in tables.values()):
            self.stats[name].table_error = "/proc/net/tcp could not be read"
            return
        now = self._now()
        seen = set().union(*(established_peers(text) for text in tables.values() if text))
        with self._lock:
            stats = self.stats[name]
            stats.table_reads += 1
            stats.answered.append(now)
            for addr in seen:
                self.peers[name].setdefault(addr, [now, now])[1] = now

    def snap(self) -> None:
        """One ss snapshot of every node, now (side by side)."""
        threads = [threading.Thread(target=self.snap_node, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _ss_loop(self, name: str) -> None:
        guest = callable(getattr(self.nodes[name], "proc_net", None))
        while not self._stop.wait(self.interval * (GUEST_SS_FACTOR if guest else 1)):
            self.snap_node(name)

    def _peer_loop(self, name: str) -> None:
        while not self._stop.wait(PEER_INTERVAL):
            self.read_peers(name)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2 * TIMEOUT + 1)
        with self._lock:
            self.snapshots.sort(key=lambda e: (e["t"], e["node"]))

    def peer_table(self) -> dict[str, dict[str, dict[str, float]]]:
        """node → remote address → when it was first and last seen established (seconds from t0)."""
        with self._lock:
            return {n: {a: {"first": f, "last": la} for a, (f, la) in sorted(p.items())} for n, p in self.peers.items()}

    def gap(self, name: str, since: float = 0.0) -> str | None:
        """Why `name`'s sockets were not observed after `since` (seconds from t0: the first connection),
        or None when at least one listing (ss or /proc) came back then."""
        s = self.stats.get(name)
        if s is None:
            return f"{name} was not sampled"
        if any(t >= since for t in s.answered):
            return None
        if not s.attempts and not s.table_reads:
            return f"no socket listing of {name} was taken (the workloads ended within {PEER_INTERVAL:g} s)"
        late = f" after the first connection ({since:.1f} s)" if since > 0 else ""
        return (f"no socket listing of {name} came back{late} ({s.attempts} ss snapshots, {s.table_reads} "
                f"/proc/net/tcp reads): {'; '.join(e for e in (s.last_error, s.table_error) if e) or 'they ended before the connection existed'}")
