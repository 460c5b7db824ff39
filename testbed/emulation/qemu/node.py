"""A topology host on a QEMU guest: the node object the runner, the stack driver and the collectors
use in place of a Mininet host; and a pool of booted guests that a long-lived process may keep.

network.py boots one guest per host that names an `image:`. Each of the host's links is a TAP device
whose host side sits where the link's peer is: moved into the peer's namespace under the peer's own
interface name (a router's `eth0` *is* the TAP there), or enslaved to the switch's bridge (the TAP is
then named as that switch port). What the rest of the testbed does with a guest node:

* commands (`cmd`, `popen`): run in the guest over its control channel, so nodeexec, the stack
  driver, the workload drivers and the socket sampler work unchanged. A process's `pid` is the qemu
  process's on the host (see guest.py): the drivers do not record it, the guest is shut down whole.
* counters (`counters()`): the guest kernel's own /proc/net/netstat and snmp.
* link bytes (`read_dev()`): the host side of each TAP, read from its namespace's /proc/<pid>/net/dev
  with rx and tx swapped (what the TAP transmits, the guest receives): no round trip into the guest
  every sample. Packets the guest's own stack drops after its NIC still count as received.
* captures (`capture_point()`): tcpdump on the host side of the TAP, not inside the guest.
* link shaping: the guest shapes its own links with netem in its kernel (egress on its NIC, ingress
  through an ifb device; see shaping.py), whatever backend this machine uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.collect.linkbytes import read_dev
from testbed.emulation.qemu import images
from testbed.emulation.qemu.guest import Guest, GuestError, GuestProcess, Nic
from testbed.emulation.qemu.images import Image
from testbed.errors import CapabilityError

POPEN_ARGS = ("stdin", "stdout", "stderr", "env", "cwd")


@dataclass
class HostSide:
    """Where the host end of one guest NIC is."""

    ifname: str  # the guest's interface (the topology's name)
    tap: str  # the TAP's name as made, in the root namespace
    node: Any  # the Mininet node holding it: the peer's namespace node, or the switch (root namespace)
    name: str  # its name there: the peer's interface name, or the TAP's own name on a bridge
    pid: int | None  # a process in that namespace; None for the root namespace
    where: str  # "router ap0, as its eth0" / "switch lan" (for the manifest)

    @property
    def moved(self) -> bool:
        return self.pid is not None


@dataclass(eq=False)  # compared and hashed by identity, like Mininet nodes
class GuestNode:
    """What the runner uses of a Mininet host, backed by a QEMU guest (see the module docstring)."""

    name: str
    image: Image
    guest: Guest | None = None
    sides: dict[str, HostSide] = field(default_factory=dict)  # guest interface → host side
    reused: bool = False  # taken booted from a pool
    inNamespace = True  # noqa: N815 - Mininet's attribute name: not the root namespace
    shapes_own_links = True  # shaping.py: links to and from it are shaped in the guest's kernel

    @property
    def has_mptcp(self) -> bool:
        return self.image.mptcp

    @property
    def mptcp_flavour(self) -> str | None:
        """"v0.9x" when the image's first boot found the out-of-tree stack: testbed.stacks.stack_driver
        then configures this node with the v0.92 driver."""
        return self.image.flavour

    @property
    def kernel(self) -> str:
        return (self.guest.release if self.guest is not None else None) or self.image.release

    def _guest(self) -> Guest:
        if self.guest is None:
            raise GuestError(f"{self.name}: the guest is not booted")
        return self.guest

    def cmd(self, line: str) -> str:
        return self._guest().cmd(line)

    def run_argv(self, argv: list[str]) -> tuple[int, str]:
        """nodeexec.run for a guest: (exit code, output merged), without a shell in between."""
        return self._guest().run(argv, timeout=300)

    def popen(self, argv: Any, **kwargs: Any) -> GuestProcess:
        unknown = set(kwargs) - set(POPEN_ARGS)
        if unknown:
            raise TypeError(f"{self.name}: a guest process takes no {', '.join(sorted(unknown))}")
        return self._guest().popen(argv, **kwargs)

    def counters(self) -> dict[str, int]:
        return self._guest().counters()

    def proc_net(self, names: Any) -> dict[str, str | None]:
        """/proc/net/<name> files of the guest's kernel, read by its guestd (no process started)."""
        files = self._guest().read_files([f"/proc/net/{n}" for n in names])
        return {n: None if (data := files[f"/proc/net/{n}"]) is None else data.decode(errors="replace")
                for n in names}

    def run_many(self, commands: Any, optional: Any = None) -> list[str]:
        """nodeexec.run_many for a guest: one round trip, ip/tc commands batched (Guest.run_tools)."""
        from testbed.errors import RunError

        try:
            return self._guest().run_tools([list(c) for c in commands], optional)
        except GuestError as exc:
            raise RunError(str(exc)) from None

    def read_dev(self) -> dict[str, tuple[int, int]]:
        """{guest interface: (rx_bytes, tx_bytes)} from the host sides of its TAPs (rx/tx swapped)."""
        by_pid: dict[int, dict[str, tuple[int, int]]] = {}
        out: dict[str, tuple[int, int]] = {}
        for ifname, side in self.sides.items():
            pid = side.pid if side.pid is not None else os.getpid()
            if pid not in by_pid:
                by_pid[pid] = read_dev(pid)
            rx, tx = by_pid[pid].get(side.name, (0, 0))
            out[ifname] = (tx, rx)
        return out

    def capture_point(self, ifname: str) -> tuple[Any, str]:
        """(node, interface) where the guest interface's packets are captured: the TAP's host side."""
        side = self.sides[ifname]
        return side.node, side.name

    def describe(self) -> dict[str, Any]:
        g = self.guest
        return {"backend": "qemu", "image": self.image.name, "image_id": self.image.id,
                "package": self.image.manifest.get("package", {}).get("version"), "kernel": self.kernel,
                "mptcp": self.image.mptcp, "accel": g.accel if g else None, "guest": g.name if g else None,
                "reused": self.reused,
                "boot_seconds": g.boot_seconds if g else None, "ready_seconds": g.ready_seconds if g else None,
                "memory_mb": g.mem_mb if g else None,
                "interfaces": {n: {"tap": s.tap, "host_side": s.where} for n, s in self.sides.items()},
                "host_side_counters": "link bytes and captures of each interface are taken on its TAP's host side"}


def guest_images(topology: Any) -> dict[str, Image]:
    """The image of every host that runs on a guest, built if needed (a cached one is used as is).
    Raises CapabilityError (exit 3) naming what is missing: qemu, TAP devices, the image."""
    wanted = {n: spec.image for n, spec in topology.nodes.items() if getattr(spec, "image", None)}
    if not wanted:
        return {}
    first = next(iter(wanted))
    if shutil.which("qemu-system-x86_64") is None:
        raise CapabilityError(f"{first}: runs on a QEMU guest ({wanted[first]}), but qemu-system-x86_64 is not "
                              "installed (Debian package qemu-system-x86)")
    if not Path("/dev/net/tun").exists():
        raise CapabilityError(f"{first}: runs on a QEMU guest, but /dev/net/tun is missing (no TAP devices)")
    found: dict[str, Image] = {}
    for node, name in wanted.items():
        image = images.find(name)
        if image is None and "/" not in name:
            try:
                image = images.build(name)
            except images.ImageError as exc:
                raise CapabilityError(f"{node}: guest image {name} is not built and cannot be built here: {exc}") \
                    from None
        if image is None:
            raise CapabilityError(f"{node}: no built guest image in {name}")
        found[node] = image
    return found


# ------------------------------------------------------------------------------------------ pool


class GuestPool:
    """Booted guests kept between runs by a long-lived process (the matrix, a future `--reuse`),
    keyed by (image, NIC count). A guest given back is reset() (processes, addresses, routes, qdiscs,
    ifb devices, MPTCP endpoints, sysctls) and waits, booted, for the next network that needs one.

    Pooled guests are recorded in the pool's own `state` (a RunState of the long-lived process), never
    in a run's: a run's teardown must not kill them. Their TAPs are back in the root namespace, under
    the names they were made with, whenever they are in the pool."""

    def __init__(self, state: Any = None, max_idle: int = 4) -> None:
        self.state = state
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[Guest]] = {}
        self._lock = threading.Lock()

    def take(self, image: Image, nics: int) -> Guest | None:
        with self._lock:
            idle = self._idle.get((image.id, nics), [])
            while idle:
                guest = idle.pop()
                if guest.proc is not None and guest.proc.poll() is None:
                    return guest
                guest.shutdown()
        return None

    def give(self, guest: Guest) -> bool:
        """Reset the guest and keep it; shut it down instead when that fails or the pool is full."""
        assert guest.image is not None
        try:
            guest.reset()  # ifb devices, qdiscs, addresses, routes, endpoints, sysctls
        except GuestError:
            guest.shutdown()
            return False
        with self._lock:
            idle = self._idle.setdefault((guest.image.id, len(guest.nics)), [])
            if sum(len(v) for v in self._idle.values()) < self.max_idle:
                idle.append(guest)
                return True
        guest.shutdown()
        return False

    def close(self) -> None:
        with self._lock:
            guests = [g for v in self._idle.values() for g in v]
            self._idle.clear()
        for guest in guests:
            guest.shutdown()


LEASES_ENV = "TESTBED_GUEST_LEASES"
"""Names the lease file of guests lent to a `testbed run` by its parent (the matrix)."""


class LentGuests:
    """Guests booted by the parent process (the matrix) and lent to this run: the pool a cell's
    network takes guests from. The lease file (JSON) lists each guest (see Guest.detach()) with the
    image and NIC count it was lent for; the channels' descriptors were inherited.

    A guest is given back reset, and the outcome is written to the lease's `returned` file: the
    lender keeps the guest only when that file says it is clean. A run that dies without writing it
    costs the lender the guest, never a dirty one for the next cell."""

    state = None  # the lender records the qemu processes and TAPs, not the borrowing run
    keeps_new_guests = False  # a guest this run boots itself (none lent fits) is the run's, shut down after

    def __init__(self, path: Path) -> None:
        import json

        self.path = path
        data = json.loads(path.read_text())
        self.returned = Path(data["returned"])
        self.leases: list[dict] = list(data["guests"])
        self.taken: dict[int, Guest] = {}  # lease index → guest
        self.results: dict[str, dict] = {}  # guest name → how it was given back
        self._lock = threading.Lock()

    def take(self, image: Image, nics: int) -> Guest | None:
        with self._lock:
            for i, lease in enumerate(self.leases):
                if i in self.taken or lease["image_id"] != image.id or len(lease["nics"]) < nics:
                    continue
                guest = Guest.attach(lease, nics)
                self.taken[i] = guest
                return guest
        return None

    def give(self, guest: Guest) -> bool:
        """Reset the guest and hand it back to the lender; False (the caller shuts it down) for a guest
        that was not lent or cannot be reset."""
        with self._lock:
            if guest not in self.taken.values():
                return False
        try:
            done = guest.reset()
            back = guest.give_back()
        except GuestError as exc:
            self._record(guest.name, {"clean": False, "error": str(exc)})
            return False
        self._record(guest.name, {"clean": True, "nics": back["nics"], "reset": done})
        return True

    def _record(self, name: str, result: dict) -> None:
        import json

        with self._lock:
            self.results[name] = result
            tmp = self.returned.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results))
            os.replace(tmp, self.returned)

    def close(self) -> None:
        pass


def lent_guests_from_environment() -> LentGuests | None:
    """The guests lent to this process, when its parent passed a lease file (see LentGuests)."""
    path = os.environ.get(LEASES_ENV)
    return LentGuests(Path(path)) if path else None


def rename_nics(guest: Guest, names: list[str]) -> None:
    """Give a (pooled) guest's NICs the interface names of the topology it now serves, and its spare
    NICs names out of the topology's way (links are down after reset(), as renaming needs)."""
    nics = [*guest.nics, *guest.spare_nics]
    wanted = [*names, *(f"tbspare{i}" for i in range(len(guest.spare_nics)))]
    current = [nic.ifname or f"eth{i}" for i, nic in enumerate(nics)]
    moves = [(i, old, new) for i, (old, new) in enumerate(zip(current, wanted, strict=True)) if old != new]
    commands = [["ip", "link", "set", "dev", old, "name", f"tbtmp{i}"] for i, old, _ in moves]
    commands += [["ip", "link", "set", "dev", f"tbtmp{i}", "name", new] for i, _, new in moves]
    if commands:
        guest.run_tools(commands)  # one `ip -batch` process, not one each; raises if one failed
    renamed = [Nic(n.tap, n.mac, new) for n, new in zip(nics, wanted, strict=True)]
    guest.nics, guest.spare_nics = renamed[:len(names)], renamed[len(names):]


POOL: GuestPool | None = None
"""Set by a long-lived process that wants booted guests kept between its runs; Network uses it."""


def in_namespace(pid: int | None, argv: list[str], timeout: float = 15.0) -> subprocess.CompletedProcess:
    """argv in the network namespace of `pid` (the root namespace for None), not through a node's shell."""
    prefix = ["nsenter", f"--net=/proc/{pid}/ns/net"] if pid is not None else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout)
