"""Booted QEMU guests a matrix keeps and lends to its cells, so that a guest boots once per matrix
rather than once per cell.

Cells run as `testbed run` subprocesses. Before a cell that puts hosts on guests starts, the lender
takes an idle guest of each image it needs (booting one when none is idle), stops reading its
control channel (Guest.detach()) and writes a lease file naming the guests; the cell inherits the
channels' descriptors and finds the file through the environment (qemu.node.LEASES_ENV). Its
network takes the lent guests instead of booting (qemu.node.LentGuests), resets them at teardown and
says so in the lease's `returned` file.

After the cell, a guest comes back idle when the cell says it left it clean. A guest the cell did
not report on (it crashed, was killed, or never reached its network) is checked here: its TAPs must
be back in the root namespace and a reset must succeed; otherwise it is shut down, and the next cell
boots a fresh one. A guest of an image is booted with the most NICs any cell of the matrix needs on
it, so every guest of an image can serve every cell; a cell's unused NICs stay down.

The qemu processes and TAPs are recorded in the matrix's RunState: `testbed clean` removes them
after the matrix is killed."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.emulation.qemu import images
from testbed.emulation.qemu.guest import Guest, GuestError, Nic, random_mac
from testbed.emulation.qemu.images import Image, ImageError
from testbed.emulation.qemu.node import LEASES_ENV


@dataclass(frozen=True)
class GuestNeed:
    """One host of a cell that runs on a guest: the image (a name or an image directory) and the
    number of NICs the topology gives it."""

    image: str
    nics: int


@dataclass
class LenderStats:
    booted: int = 0
    lent: int = 0
    reused: int = 0  # leases served by a guest that had served a cell before
    discarded: int = 0  # guests shut down because a cell did not give them back clean
    boot_seconds: list[float] = field(default_factory=list)
    resets: list[dict[str, float]] = field(default_factory=list)  # seconds per step of each cell's reset

    def as_dict(self) -> dict[str, Any]:
        steps = {step for r in self.resets for step in r}
        return {"booted": self.booted, "lent": self.lent, "reused": self.reused, "discarded": self.discarded,
                "boot_seconds": [round(s, 2) for s in self.boot_seconds],
                "reset_seconds": [round(sum(r.values()), 2) for r in self.resets],
                "reset_step_median_seconds": {s: round(statistics.median(r[s] for r in self.resets if s in r), 3)
                                              for s in sorted(steps)}}


@dataclass
class Lease:
    env: dict[str, str]
    fds: tuple[int, ...]
    guests: list[Guest]


class GuestLender:
    def __init__(self, state: Any, work_dir: Path, log_dir: Path, tag: str, max_idle: int = 4) -> None:
        """`state`: the matrix's RunState. `work_dir`: where lease files go. `tag`: a short hex string
        unique to the matrix run (names the TAPs, `tbm<tag><guest><nic>`)."""
        self.state = state
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.tag = tag[:6]
        self.max_idle = max_idle
        self.stats = LenderStats()
        self.nic_counts: dict[str, int] = {}  # image name → NICs its guests are booted with
        self._images: dict[str, Image] = {}
        self._idle: dict[str, list[Guest]] = {}  # image id → guests waiting
        self._served: set[str] = set()  # names of guests that have served a cell
        self._all: list[Guest] = []
        self._count = 0
        self._lock = threading.Lock()

    def plan(self, needs: list[list[GuestNeed]]) -> None:
        """Size the guests for every cell that will run: each image's guests get the most NICs asked."""
        for cell in needs:
            for need in cell:
                self.nic_counts[need.image] = max(self.nic_counts.get(need.image, 0), need.nics)

    # ---------------------------------------------------------------------------------- lending
    @contextlib.contextmanager
    def lend(self, cell: str, needs: list[GuestNeed]) -> Iterator[Lease | None]:
        """Guests for one cell for the duration of the block: the environment and descriptors its
        subprocess needs, or None when the guests could not be provided (the cell then boots its own
        and reports why that fails)."""
        guests: list[Guest] = []
        leases: list[dict] = []
        returned = self.work_dir / f"{cell}.returned.json"
        try:
            for need in needs:
                guest = self._take(need)
                guests.append(guest)
                leases.append(guest.detach())
        except (GuestError, ImageError, OSError, ValueError):
            for guest in guests:
                self._back(guest, None)
            yield None
            return
        path = self.work_dir / f"{cell}.lease.json"
        returned.unlink(missing_ok=True)
        path.write_text(json.dumps({"returned": str(returned), "guests": leases}, indent=1))
        with self._lock:
            self.stats.lent += len(guests)
            self.stats.reused += sum(1 for g in guests if g.name in self._served)
            self._served.update(g.name for g in guests)
        try:
            yield Lease({LEASES_ENV: str(path)}, tuple(lease["fd"] for lease in leases), guests)
        finally:
            try:
                results = json.loads(returned.read_text())
            except (OSError, ValueError):
                results = {}
            for guest in guests:
                self._back(guest, results.get(guest.name))

    def _image(self, name: str) -> Image:
        with self._lock:
            if name not in self._images:
                image = images.find(name)
                if image is None:
                    if "/" in name:
                        raise ImageError(f"no built guest image in {name}")
                    image = images.build(name)
                self._images[name] = image
            return self._images[name]

    def _take(self, need: GuestNeed) -> Guest:
        image = self._image(need.image)
        with self._lock:
            idle = self._idle.get(image.id, [])
            while idle:
                guest = idle.pop()
                if guest.proc is not None and guest.proc.poll() is None:
                    return guest
                self._shutdown(guest)
            self._count += 1
            number = self._count
        nics = max(need.nics, self.nic_counts.get(need.image, 0))
        guest = Guest(f"mx{self.tag}-{number}", state=self.state, log_dir=self.log_dir)
        with self._lock:
            self._all.append(guest)
        started = time.monotonic()
        guest.boot(image, [Nic(f"tbm{self.tag}{number:02d}{i}", random_mac(), f"tbspare{i}") for i in range(nics)])
        with self._lock:
            self.stats.booted += 1
            self.stats.boot_seconds.append(time.monotonic() - started)
        return guest

    def _back(self, guest: Guest, result: dict | None) -> None:
        """A guest after a cell: idle again when it is known clean (or can be made so), else shut down."""
        try:
            if result is not None and result.get("clean"):
                guest.resume(result.get("nics"))
                seconds = (result.get("reset") or {}).get("seconds")
                if isinstance(seconds, dict):
                    with self._lock:
                        self.stats.resets.append({str(k): float(v) for k, v in seconds.items()})
            else:
                self._check_taps(guest)
                guest.resume()
                guest.reset()
                if result is not None:  # the cell tried and failed to reset it: not trusted
                    raise GuestError(f"{guest.name}: the cell could not reset it: {result.get('error')}")
        except (GuestError, OSError, subprocess.SubprocessError):
            with self._lock:
                self.stats.discarded += 1
            self._shutdown(guest)
            return
        with self._lock:
            idle = sum(len(v) for v in self._idle.values())
            if idle < self.max_idle:
                assert guest.image is not None
                self._idle.setdefault(guest.image.id, []).append(guest)
                return
        self._shutdown(guest)

    @staticmethod
    def _check_taps(guest: Guest) -> None:
        """Every TAP of the guest is in the root namespace, on no bridge (a killed cell may have lost
        one with its namespace)."""
        for nic in (*guest.nics, *guest.spare_nics):
            r = subprocess.run(["ip", "-j", "link", "show", "dev", nic.tap], capture_output=True, text=True,
                               timeout=10)
            if r.returncode != 0:
                raise GuestError(f"{guest.name}: TAP {nic.tap} is gone")
            if any("master" in link for link in json.loads(r.stdout or "[]")):
                subprocess.run(["ip", "link", "set", nic.tap, "nomaster"], capture_output=True, timeout=10)

    def _shutdown(self, guest: Guest) -> None:
        with contextlib.suppress(Exception):
            guest.shutdown()

    def close(self) -> None:
        """Shut every guest down (idle or not: the cells are over)."""
        with self._lock:
            guests = list(self._all)
            self._all.clear()
            self._idle.clear()
        for guest in guests:
            self._shutdown(guest)


def cell_env(lease: Lease | None) -> dict[str, str] | None:
    """The environment of a cell's subprocess: ours, with the lease file named when guests are lent."""
    return {**os.environ, **lease.env} if lease is not None else None
