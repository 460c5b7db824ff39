"""What a run has created, written down as it is created, so a killed run can be cleaned up.

One JSON file per run under STATE_DIR. Processes are recorded with their start time (so a reused
pid is never killed) and their network-namespace inode (so everything else living in that namespace
is found too). Root-namespace interfaces (switch bridges and their ports) are recorded by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = Path(os.path.abspath(os.environ.get("TESTBED_STATE_DIR", "/run/testbed")))  # cells share it
_SAVE_LOCK = threading.Lock()


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def netns_inode(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


@dataclass
class RunState:
    run_id: str
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None
    processes: list[dict] = field(default_factory=list)  # {pid, start, netns, what}
    links: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # netns inodes of our nodes
    dirs: list[str] = field(default_factory=list)  # temporary directories (a QEMU guest's sockets and logs)
    archive: str | None = None  # the run's partial archive directory, finalized by clean() if killed
    # Processes that tear themselves down on SIGTERM (a matrix's cells): signalled and awaited first.
    children: list[dict] = field(default_factory=list)
    # Hosts on remote machines (ssh.node.RemoteNode.record()): their namespaces there, for `testbed clean`.
    remotes: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.owner_start is None:
            self.owner_start = proc_start_time(self.owner_pid)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def save(self) -> None:
        # Workloads and functions register processes from several threads at once.
        with _SAVE_LOCK:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(asdict(self)))
            os.replace(tmp, self.path)

    def add_process(self, pid: int, what: str, node_namespace: bool = False) -> None:
        ns = netns_inode(pid)
        self.processes.append({"pid": pid, "start": proc_start_time(pid), "netns": ns, "what": what})
        if node_namespace and ns and ns not in self.namespaces:
            self.namespaces.append(ns)
        self.save()

    def add_processes(self, entries: list[tuple[int, str]], node_namespace: bool = False) -> None:
        """Several processes, written down in one save (a thousand node shells, one file write)."""
        for pid, what in entries:
            ns = netns_inode(pid)
            self.processes.append({"pid": pid, "start": proc_start_time(pid), "netns": ns, "what": what})
            if node_namespace and ns and ns not in self.namespaces:
                self.namespaces.append(ns)
        self.save()

    def add_child(self, pid: int, what: str) -> None:
        self.children.append({"pid": pid, "start": proc_start_time(pid), "what": what})
        self.save()

    def add_link(self, name: str) -> None:
        self.links.append(name)
        self.save()

    def add_remote(self, entry: dict) -> None:
        with _SAVE_LOCK:
            self.remotes.append(entry)
        self.save()

    def drop_remote(self, netns: str) -> None:
        with _SAVE_LOCK:
            self.remotes = [r for r in self.remotes if r.get("netns") != netns]
        self.save()

    def add_dir(self, path: str) -> None:
        self.dirs.append(path)
        self.save()

    def owner_alive(self) -> bool:
        # A killed owner stays a zombie until its parent reaps it: that is not alive.
        return proc_start_time(self.owner_pid) == self.owner_start and not _zombie(self.owner_pid)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls(**json.loads(path.read_text()))


def pids_in_namespaces(namespaces: set[str]) -> list[int]:
    """Every process whose network namespace is one of ours (found by inode, never by name)."""
    found = []
    own = netns_inode(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ns = netns_inode(int(entry))
        if ns in namespaces and ns != own:
            found.append(int(entry))
    return found


def anchored_namespaces(namespaces: list[str], live: list[dict]) -> set[str]:
    """Those of `namespaces` that are still ours: a recorded process (same pid and start time) is
    still in it. An inode alone is not enough: the kernel gives a freed namespace's inode number to
    the next one made, and with runs side by side that is another run's node, whose processes a
    sweep by inode would kill (seen: a concurrent run's delay lines killed 0.3 s after they started)."""
    wanted = set(namespaces)
    return {ns for p in live if (ns := netns_inode(p["pid"])) in wanted}


def sweep_orphans(state: RunState) -> int:
    """Kill what the run did not record but left in its namespaces (a hung tool, a workload's child),
    while its node shells still anchor them; the recorded processes are left to their own teardown.
    Done before the network stops: once the shells are gone, an inode alone cannot tell our
    namespace from another run's (see anchored_namespaces)."""
    live = [p for p in state.processes if proc_start_time(p["pid"]) == p["start"]]
    namespaces = anchored_namespaces(state.namespaces, live)
    recorded = {p["pid"] for p in live}
    orphans = [pid for pid in pids_in_namespaces(namespaces) if pid not in recorded and pid != os.getpid()]
    kill_all(orphans)
    return len(orphans)


def kill_all(pids: list[int], grace: float = 1.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sweep(state: RunState) -> dict[str, int]:
    """Remove everything `state` lists: processes (and all others in our namespaces), then links."""
    import subprocess

    live = [p for p in state.processes if proc_start_time(p["pid"]) == p["start"]]
    namespaces = anchored_namespaces(state.namespaces, live)
    pids = set(pids_in_namespaces(namespaces)) if namespaces else set()
    pids.update(p["pid"] for p in live)
    pids.discard(os.getpid())
    kill_all(sorted(pids))
    removed_links = 0
    if state.links:
        # One listing and one batch, not a process per name: a large run lists thousands of ports.
        listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30).stdout
        present = {line.split(": ")[1].split("@")[0] for line in listing.splitlines() if ": " in line}
        left = [name for name in state.links if name in present]
        if left:
            subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"link del {n}\n" for n in left),
                           capture_output=True, text=True, timeout=120)
            listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30).stdout
            still = {line.split(": ")[1].split("@")[0] for line in listing.splitlines() if ": " in line}
            removed_links = sum(name not in still for name in left)
    import shutil
    import tempfile

    if state.remotes:
        from testbed.emulation.ssh.node import clean_recorded

        for entry in list(state.remotes):
            clean_recorded(entry)
    for path in state.dirs:  # only ever temporary directories
        if Path(path).parent == Path(tempfile.gettempdir()):
            shutil.rmtree(path, ignore_errors=True)
    return {"processes": len(pids), "links": removed_links}


def clean(force: bool = False) -> list[tuple[str, str]]:
    """Sweep every recorded run whose owner is gone (or all of them with force)."""
    results = []
    if not STATE_DIR.exists():
        return results
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            state = RunState.load(path)
        except (OSError, ValueError, TypeError):
            results.append((path.stem, "unreadable state file left in place"))
            continue
        if state.owner_alive() and not force:
            results.append((state.run_id, f"still running (pid {state.owner_pid}); left alone"))
            continue
        stop_children(state)
        counts = sweep(state)
        saved = salvage_archive(state)
        state.remove()
        results.append((state.run_id, f"removed {counts['processes']} processes, {counts['links']} links"
                        + (f"; archive kept as {saved}" if saved else "")))
    return results


def stop_children(state: RunState, grace: float = 90.0) -> None:
    """SIGTERM to the children still alive, then wait: each tears down and archives itself."""
    alive = [c["pid"] for c in state.children if proc_start_time(c["pid"]) == c["start"]]
    for pid in alive:
        try:
            os.killpg(pid, signal.SIGTERM)  # cells run in their own sessions
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.1)
    kill_all(alive)


def salvage_archive(state: RunState) -> str | None:
    """A killed run's partial archive, finalized as 'interrupted' so nothing it recorded is lost."""
    import json
    from datetime import datetime, timezone

    from testbed.archive.store import MANIFEST, RunDir

    if not state.archive or not Path(state.archive).is_dir():
        return None
    tmp = Path(state.archive)
    try:
        manifest = json.loads((tmp / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {"run_id": state.run_id}
    manifest.update(status="interrupted", finished=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    error="the run was killed (SIGKILL or power loss); this archive was finalized by 'testbed clean'")
    run_dir = RunDir.adopt(tmp)
    return str(run_dir.finalize(manifest))
