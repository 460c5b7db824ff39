"""A QEMU guest running another kernel, driven over a virtio-serial control channel.

The guest boots an image from images.py: its /init loads the modules, mounts the host's root
filesystem read-only over virtio-9p (with fresh /proc, /sys, /dev, /run, /tmp inside) and starts
guestd.py from it, chrooted, with the host's python3. So every command the guest runs (iproute2,
tc, nstat, the workload agent) is the host's own binary on the guest's kernel.

    guest = Guest("g1", state=run_state)
    guest.boot(images.build("linux-6.1"), [Nic("tbab12s1g0", "52:54:00:12:34:56", "eth0")])
    rc, out = guest.run(["ip", "-br", "addr"])
    proc = guest.popen([sys.executable, "-S", AGENT, "bulk-server", ...], stdout=subprocess.PIPE)
    guest.counters()        # /proc/net/netstat + snmp inside the guest, parsed
    guest.reset()           # back to the state right after boot, for the next cell
    guest.shutdown()        # poweroff, then kill; TAPs removed

A booted guest can be lent to another process (a matrix cell runs as a `testbed run` subprocess):
``lease = guest.detach()`` stops reading the control channel and describes the guest (its socket's
descriptor included); the borrower, given that descriptor, calls ``Guest.attach(lease)``, drives the
guest, and detaches it again before it exits; the lender then calls ``guest.resume()``.

KVM is used when it really boots this kernel (tried once per host boot and kernel, remembered in
the image cache); otherwise TCG. Each NIC is a TAP device made here (``ip tuntap add``) and removed
on shutdown; the caller puts it on a bridge. The qemu process and the TAPs are recorded in the
RunState given, so ``testbed clean`` removes them after a crash.

``popen`` returns a ``GuestProcess`` that behaves like ``subprocess.Popen`` for the testbed's drivers
(``stdout``/``stderr`` are real pipes on the host, ``poll``/``wait``/``communicate``/``send_signal``).
Its ``pid`` is the *qemu* process's pid on the host (what must be killed if the run dies); the
process's own pid inside the guest is ``guest_pid``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import queue
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from testbed.emulation.pipes import drain
from testbed.emulation.qemu import images
from testbed.emulation.qemu.images import Image

QEMU = "qemu-system-x86_64"
GUESTD = Path(__file__).resolve().with_name("guestd.py")
# The guest mounts fresh filesystems over these host directories: code that lives under one of
# them (a checkout or venv in /tmp, as CI clones may be) is made visible again after boot.
MASKED = (Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/dev"))


def _masked(path: Path) -> bool:
    return any(path == m or m in path.parents for m in MASKED)


def _runtime_dir() -> Path:
    """Beside the image cache, unless that is masked too (a cache in /tmp): then the default's."""
    beside = Path(os.path.abspath(os.environ.get("TESTBED_IMAGE_CACHE", "/var/cache/testbed/images"))).parent
    return (Path("/var/cache/testbed") if _masked(beside) else beside) / "runtime"


RUNTIME_DIR = _runtime_dir()


GUESTD_MODULES = ("rtnl.py",)  # what guestd.py imports from its own directory


def guestd_path() -> Path:
    """guestd.py where the guest can see it at boot (before anything is bound into place), with
    the modules it imports from its directory beside it."""
    if not _masked(GUESTD):
        return GUESTD
    RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    for name in (*GUESTD_MODULES, GUESTD.name):  # guestd.py last: a copy of it finds its modules
        copy = RUNTIME_DIR / name
        data = GUESTD.with_name(name).read_bytes()
        if not copy.exists() or copy.read_bytes() != data:
            tmp = copy.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, copy)
    return RUNTIME_DIR / GUESTD.name


def code_roots() -> list[Path]:
    """The testbed checkout and the Python environment the guest runs host commands from."""
    import sys

    roots = {Path(__file__).resolve().parents[3], Path(sys.prefix).resolve(), Path(sys.executable).parent}
    return sorted(r for r in roots if _masked(r))
PORT_NAME = "testbed.ctl"
_BATCH_TOKEN = re.compile(r"^[A-Za-z0-9_.:/+=@%,-]+$")  # an argument `ip -batch` reads back unchanged
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]+$")
KVM_GET_API_VERSION = 0xAE00
PCI_NIC_SLOT = 0x10  # NIC i sits in PCI slot 0x10 + i, so the kernel names them eth0, eth1, ... in order


class GuestError(RuntimeError):
    """The guest failed to boot, died, or a control request failed."""


@dataclass(frozen=True)
class Nic:
    """One guest NIC: the host TAP device, the guest's MAC and (optionally) its name in the guest."""

    tap: str
    mac: str
    ifname: str | None = None


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))


def kvm_device_usable() -> bool:
    """/dev/kvm opens and answers KVM_GET_API_VERSION with 12 (cheap; it does not prove a boot works)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def qemu_version() -> str | None:
    if shutil.which(QEMU) is None:
        return None
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class _Probes:
    """Whether KVM booted a given kernel on this host boot, remembered in the image cache."""

    def __init__(self) -> None:
        self.path = images.cache_dir() / ".kvm-probes.json"

    def key(self, release: str) -> str:
        return f"{_boot_id()} {qemu_version()} {release}"

    def get(self, release: str) -> bool | None:
        try:
            return json.loads(self.path.read_text()).get(self.key(release))
        except (OSError, ValueError):
            return None

    def put(self, release: str, ok: bool) -> None:
        try:
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            boot = _boot_id()
            data = {k: v for k, v in data.items() if k.startswith(boot)}  # older host boots are moot
            data[self.key(release)] = ok
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except (OSError, ValueError):
            pass


# ------------------------------------------------------------------------------------ processes


class _Sink:
    """Where one output stream of a guest process goes on the host: a pipe end or a file, fed by a thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: queue.Queue[bytes | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while True:
            data = self.queue.get()
            if data is None:
                break
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:  # reader closed its end: drop the rest, keep draining
                continue
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Stdin:
    def __init__(self, proc: GuestProcess) -> None:
        self.proc = proc
        self.closed = False

    def write(self, data: bytes) -> int:
        self.proc.guest._request("stdin", h=self.proc.handle, data=_b64(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(GuestError):
                self.proc.guest._request("stdin", h=self.proc.handle, close=True)


class GuestProcess:
    """A process started in the guest, shaped like subprocess.Popen (see the module docstring)."""

    def __init__(self, guest: Guest, argv: list[str], handle: int, guest_pid: int,
                 sinks: dict[int, _Sink], stdout: IO[bytes] | None, stderr: IO[bytes] | None,
                 stdin: bool) -> None:
        self.guest = guest
        self.args = argv
        self.handle = handle
        self.guest_pid = guest_pid
        self.pid = guest.qemu_pid  # the host process carrying it (see the module docstring)
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = _Stdin(self) if stdin else None
        self.returncode: int | None = None
        self._sinks = sinks
        self._done = threading.Event()
        self._collected: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    # called by the guest's reader thread
    def _feed(self, fdno: int, data: bytes) -> None:
        sink = self._sinks.get(fdno)
        if sink is not None:
            sink.queue.put(data)

    def _finish(self, rc: int) -> None:
        if self.returncode is None:
            self.returncode = rc
        for sink in self._sinks.values():
            sink.queue.put(None)
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(GuestError):
                self.guest._request("signal", h=self.handle, sig=int(sig))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        if input and self.stdin is not None:
            self.stdin.write(input)
        if self.stdin is not None:
            self.stdin.close()
        drain(self.args, {1: self.stdout, 2: self.stderr}, self._collected, deadline, timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return (bytes(self._collected[1]) if self.stdout is not None else None,
                bytes(self._collected[2]) if self.stderr is not None else None)

    def __repr__(self) -> str:
        return f"<GuestProcess {self.guest.name}:{self.guest_pid} {shlex.join(self.args)[:60]!r} rc={self.returncode}>"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Pending:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict | None = None


class _BorrowedQemu:
    """The qemu process of a guest lent by another process: not our child, so polled through /proc.
    Shaped like the part of subprocess.Popen that Guest uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._start = _start_time(pid)

    def poll(self) -> int | None:
        if self.returncode is None and (self._start is None or _start_time(self.pid) != self._start):
            self.returncode = -signal.SIGKILL  # gone (or its pid reused): its exit status is its parent's
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["qemu"], timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


# ---------------------------------------------------------------------------------------- guest


class Guest:
    """One QEMU guest. Boot it, drive it, reset it between uses, shut it down."""

    def __init__(self, name: str, state: Any = None, mem_mb: int = 256, smp: int = 1, accel: str = "auto",
                 python: str = "/usr/bin/python3", log_dir: Path | None = None,
                 kvm_probe_timeout: float = 12.0, cmdline: Sequence[str] = ()) -> None:
        """`state`: a RunState (or anything with add_process/add_link) recording the qemu pid and TAPs.
        `accel`: "auto" (KVM when it really boots this kernel, else TCG), "kvm" or "tcg"; the
        environment variable TESTBED_QEMU_ACCEL overrides "auto". `log_dir`: where the console and
        qemu logs are copied on shutdown."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
            raise ValueError(f"guest name {name!r}: letters, digits, '_' and '-', at most 32")
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel {accel!r}: auto, kvm or tcg")
        self.name = name
        self.state = state
        self.mem_mb = mem_mb
        self.smp = smp
        self.accel_wanted = accel
        self.python = python
        self.log_dir = log_dir
        self.kvm_probe_timeout = kvm_probe_timeout
        self.extra_cmdline = list(cmdline)
        self.image: Image | None = None
        self.nics: list[Nic] = []
        self.accel: str | None = None  # what the running guest uses: "kvm" or "tcg"
        self.kvm_error: str | None = None  # why KVM was given up for TCG at the last boot
        self.release: str | None = None
        self.init_log = ""  # the guest /init's own log: uptime stamps, modules that failed to load
        self.boot_seconds: float | None = None  # qemu start → control channel ready
        self.ready_seconds: float | None = None  # ... → interfaces named, state snapshot taken
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self._taps: list[str] = []
        self._sock: socket.socket | None = None
        self._wlock = threading.Lock()
        # Request ids start at random so that a late answer to a borrower's request cannot be taken
        # for the answer to one of ours.
        self._ids = itertools.count(random.randrange(1, 1 << 40))
        self._pending: dict[int, _Pending] = {}
        self._procs: dict[int, GuestProcess] = {}
        self._early: dict[int, list[dict]] = {}  # events of a process not registered yet
        self._plock = threading.Lock()
        self._hello: dict | None = None
        self._hello_event = threading.Event()
        self._reader: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe that tells the reader to stop (detach)
        self._detaching = False
        self._dead = False
        self._mptcp_limits: list[str] | None = None
        self.spare_nics: list[Nic] = []  # a borrowed guest's NICs the borrower's topology does not use

    # --------------------------------------------------------------------------------- boot
    @property
    def qemu_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def interfaces(self) -> list[str]:
        """The NICs' names inside the guest, in NIC order."""
        return [n.ifname or f"eth{i}" for i, n in enumerate(self.nics)]

    def boot(self, image: Image, nics: Sequence[Nic | tuple[str, str] | tuple[str, str, str]] = (),
             timeout: float = 90.0) -> None:
        """Create the TAPs, start qemu and wait until the control channel answers.

        `nics`: Nic objects or (tap, mac) / (tap, mac, guest ifname) tuples; TAP names are the
        caller's (at most 15 characters). Raises GuestError (with the console's tail) on failure."""
        if self.proc is not None:
            raise GuestError(f"{self.name}: already booted; shutdown() first")
        self.image = image
        self.nics = [n if isinstance(n, Nic) else Nic(*n) for n in nics]
        self._check_inputs()
        if shutil.which(QEMU) is None:
            raise GuestError(f"{QEMU} is not installed (Debian package qemu-system-x86)")
        started = time.monotonic()
        try:
            self._make_taps()
            accel = self._choose_accel()
            if accel == "kvm":
                self._start(image, "kvm", timeout)
            elif accel == "probe":  # KVM if it really boots this kernel, remembered either way
                try:
                    self._start(image, "kvm", min(timeout, self.kvm_probe_timeout))
                    _Probes().put(image.release, True)
                except GuestError as exc:
                    self.kvm_error = str(exc)
                    _Probes().put(image.release, False)
                    self._stop_qemu(kill=True)
                    accel = "tcg"
            if accel == "tcg":
                self._start(image, "tcg", timeout)
            self.boot_seconds = round(time.monotonic() - started, 3)
            self._bind_code_roots()
            self._after_boot()
            self.ready_seconds = round(time.monotonic() - started, 3)
        except BaseException:
            self.shutdown()
            raise

    def _check_inputs(self) -> None:
        for nic in self.nics:
            if not IFNAME.match(nic.tap):
                raise ValueError(f"TAP name {nic.tap!r}: 1-15 of letters, digits, '_', '.', '-'")
            if not MAC.match(nic.mac):
                raise ValueError(f"MAC {nic.mac!r}: six lower-case hex pairs")
            if nic.ifname is not None and not IFNAME.match(nic.ifname):
                raise ValueError(f"guest interface name {nic.ifname!r}: 1-15 of letters, digits, '_', '.', '-'")
        if len({n.tap for n in self.nics}) != len(self.nics) or len({n.mac for n in self.nics}) != len(self.nics):
            raise ValueError("TAP names and MACs must be unique")
        for path in (str(GUESTD), self.python):
            if not SAFE_PATH.match(path):
                raise GuestError(f"{path!r} cannot be passed on a kernel command line")

    def _choose_accel(self) -> str:
        """"kvm" or "tcg" when told so, else "tcg" when KVM is known not to work, else "probe"."""
        wanted = self.accel_wanted
        if wanted == "auto":
            wanted = os.environ.get("TESTBED_QEMU_ACCEL", "auto")
        if wanted == "tcg":
            return "tcg"
        if wanted == "kvm":
            return "kvm"
        if not kvm_device_usable():
            return "tcg"
        assert self.image is not None
        return "tcg" if _Probes().get(self.image.release) is False else "probe"

    def _make_taps(self) -> None:
        for nic in self.nics:
            r = subprocess.run(["ip", "tuntap", "add", "dev", nic.tap, "mode", "tap"], capture_output=True,
                               text=True, timeout=10)
            if r.returncode != 0:
                raise GuestError(f"{self.name}: cannot create TAP {nic.tap}: {r.stderr.strip()}")
            self._taps.append(nic.tap)
            if self.state is not None:
                self.state.add_link(nic.tap)
            subprocess.run(["ip", "link", "set", nic.tap, "up"], capture_output=True, timeout=10, check=True)

    def _bind_code_roots(self) -> None:
        """The host root seen again without the guest's own mounts over it (a non-recursive bind of the
        9p root), and the checkout/venv bound back into place from there."""
        roots = code_roots()
        if not roots:
            return
        mnt = "/run/tb-hostroot"
        rc, out = self.run(["/bin/sh", "-c", f"mkdir -p {mnt} && mount --bind / {mnt}"], timeout=20)
        if rc != 0:
            raise GuestError(f"{self.name}: cannot bind the host root a second time: {out.strip()[-300:]}")
        for root in roots:
            rc, out = self.run(["/bin/sh", "-c", 'mkdir -p "$1" && mount --bind "$2$1" "$1"', "sh", str(root), mnt],
                               timeout=20)
            if rc != 0:
                raise GuestError(f"{self.name}: cannot make {root} visible in the guest: {out.strip()[-300:]}")

    def qemu_argv(self, image: Image, accel: str, workdir: Path) -> list[str]:
        cmdline = ["console=ttyS0", "panic=-1", "quiet", "loglevel=4", "random.trust_cpu=on",
                   f"tb_guestd={guestd_path()}", f"tb_python={self.python}", f"tb_hostname={self.name}",
                   *self.extra_cmdline]
        # TCG's translation cache defaults to 1 GiB and a guest that runs cells fills it: 256 MB holds
        # what a cell runs (the guest kernel's network paths and the host's python/iproute2).
        argv = [QEMU, "-name", f"testbed-{self.name}", "-accel", "tcg,tb-size=256" if accel == "tcg" else accel,
                "-cpu", "host" if accel == "kvm" else "max", "-M", "pc", "-m", str(self.mem_mb),
                "-smp", str(self.smp), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", " ".join(cmdline),
                "-chardev", f"file,id=con,path={workdir / 'console.log'}", "-serial", "chardev:con",
                "-device", "virtio-serial-pci,id=vser",
                "-chardev", f"socket,id=ctl,path={workdir / 'ctl.sock'}",
                "-device", f"virtserialport,bus=vser.0,chardev=ctl,name={PORT_NAME}",
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-rng-pci"]
        for i, nic in enumerate(self.nics):
            argv += ["-netdev", f"tap,id=n{i},ifname={nic.tap},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev=n{i},mac={nic.mac},addr={PCI_NIC_SLOT + i:#x},romfile="]
        return argv

    def _start(self, image: Image, accel: str, timeout: float) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tbq-{self.name}-"))
        if self.state is not None and hasattr(self.state, "add_dir"):  # removed by `testbed clean` after a kill
            self.state.add_dir(str(self.workdir))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.workdir / "ctl.sock"))
        listener.listen(1)
        deadline = time.monotonic() + timeout
        try:
            with open(self.workdir / "qemu.log", "wb") as log:
                self.proc = subprocess.Popen(self.qemu_argv(image, accel, self.workdir), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, start_new_session=True)
            self.accel = accel
            self._dead = False
            if self.state is not None:
                self.state.add_process(self.proc.pid, f"qemu guest {self.name} ({image.name})")
            listener.settimeout(0.1)
            while self._sock is None:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise GuestError(self._failure(f"qemu ({accel}) did not connect its control channel"))
                with contextlib.suppress(socket.timeout):
                    self._sock = listener.accept()[0]
        finally:
            listener.close()
        self._sock.setblocking(True)
        self._hello_event.clear()
        self._start_reader()
        while not self._hello_event.wait(0.05):
            if self.proc.poll() is not None or self._dead or time.monotonic() > deadline:
                why = "qemu exited" if self.proc.poll() is not None else f"no answer within {timeout:g} s"
                raise GuestError(self._failure(f"the guest did not come up under {accel} ({why})"))
        assert self._hello is not None
        self.release = self._hello.get("release")
        self.init_log = self._hello.get("init_log", "")
        if not self._hello.get("modules_loaded"):
            raise GuestError(self._failure("the guest's /init did not finish loading modules"))

    def _after_boot(self) -> None:
        by_mac = self._request("ifnames")["by_mac"]
        commands = []
        for nic in self.nics:
            if nic.mac not in by_mac:
                raise GuestError(self._failure(f"no guest interface has MAC {nic.mac} (TAP {nic.tap})"))
            if nic.ifname and nic.ifname != by_mac[nic.mac]:
                commands.append(["ip", "link", "set", "dev", by_mac[nic.mac], "name", nic.ifname])
        if commands:
            self._batch(commands)
        self._request("sysctl_snapshot", wait=60)
        if self.image is not None and self.image.detected is None:  # first boot: which MPTCP is this?
            self.image.record_detected(self.detect_mptcp())
        if self.image is not None and self.image.mptcp:
            rc, out = self.run(["ip", "mptcp", "limits", "show"])
            self._mptcp_limits = out.split() if rc == 0 else None
            if self.image.mptcp_counters is None:  # what this kernel counts, for the matrix's feature sets
                self.image.record_counters(k.removeprefix("MPTcpExt") for k in self.counters()
                                           if k.startswith("MPTcpExt"))

    def detect_mptcp(self) -> dict:
        """Which MPTCP the running kernel has (testbed.stacks.features.classify): its files in one
        round trip, its kernel log (where v0.9x says its release), its image's config."""
        from testbed.stacks.features import classify, classify_paths

        files = {p: None if data is None else data.decode(errors="replace")
                 for p, data in self.read_files(classify_paths()).items()}
        rc, dmesg = self.run(["dmesg"], timeout=20)
        config = None
        if self.image is not None:
            with contextlib.suppress(OSError):
                config = (self.image.dir / "config").read_text() or None
        return {**classify(files, self.release or "", dmesg if rc == 0 else "", config),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _failure(self, what: str) -> str:
        tail = ""
        if self.workdir is not None:
            for log in ("qemu.log", "console.log"):
                with contextlib.suppress(OSError):
                    text = (self.workdir / log).read_text(errors="replace").strip()
                    if text:
                        tail += f"\n--- {log} (end) ---\n" + "\n".join(text.splitlines()[-15:])
        return f"{self.name}: {what}{tail}"

    # ------------------------------------------------------------------------------ channel
    def _start_reader(self) -> None:
        self._wake = os.pipe()
        self._detaching = False
        self._reader = threading.Thread(target=self._read_loop, name=f"guest-{self.name}", daemon=True)
        self._reader.start()

    def _stop_reader(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._reader is not None:
            self._reader.join(5)
        if self._wake is not None:
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reader = self._wake = None

    def _read_loop(self) -> None:
        assert self._sock is not None and self._wake is not None
        buf = b""
        sock, wake = self._sock, self._wake[0]
        try:
            while True:
                ready, _, _ = select.select([sock, wake], [], [])
                if wake in ready and self._detaching:
                    return  # lent to another process: the channel is its to read now
                if sock not in ready:
                    continue
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(line)
        except (OSError, ValueError):
            pass
        self._dead = True
        for pending in list(self._pending.values()):
            pending.event.set()
        with self._plock:
            procs = list(self._procs.values())
            self._procs.clear()
        for proc in procs:
            proc._finish(-signal.SIGKILL)

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        ev = msg.get("ev")
        if ev is None:
            pending = self._pending.get(msg.get("id"))
            if pending is not None:
                pending.reply = msg
                pending.event.set()
            return
        if ev == "hello":
            self._hello = msg
            self._hello_event.set()
            return
        with self._plock:
            proc = self._procs.get(msg.get("h"))
            if proc is None:
                self._early.setdefault(msg.get("h"), []).append(msg)
                return
            if ev == "exit":
                self._procs.pop(msg["h"], None)
        self._event(proc, msg)

    @staticmethod
    def _event(proc: GuestProcess, msg: dict) -> None:
        if msg["ev"] == "out":
            proc._feed(msg["fd"], base64.b64decode(msg["data"]))
        elif msg["ev"] == "exit":
            proc._finish(msg["rc"])

    def _request(self, op: str, wait: float | None = 30.0, **fields: Any) -> dict:
        if self._sock is None or self._dead:
            raise GuestError(f"{self.name}: not running")
        rid = next(self._ids)
        pending = _Pending()
        self._pending[rid] = pending
        data = (json.dumps({"id": rid, "op": op, **fields}) + "\n").encode()
        try:
            with self._wlock:
                self._sock.sendall(data)
            if not pending.event.wait(wait):
                raise GuestError(f"{self.name}: no answer to {op} within {wait} s")
        except OSError as exc:
            raise GuestError(f"{self.name}: control channel: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
        reply = pending.reply
        if reply is None:
            raise GuestError(self._failure(f"the guest died during {op}"))
        if "error" in reply:
            raise GuestError(f"{self.name}: {op}: {reply['error']}")
        return reply

    # --------------------------------------------------------------------------- commands
    def run(self, argv: Sequence[str], timeout: float = 60.0, input: bytes | None = None,
            check: bool = False) -> tuple[int, str]:
        """Run a command in the guest; (exit code, stdout and stderr merged). A timeout kills it (rc -9)."""
        reply = self._request("run", wait=timeout + 10, argv=list(argv), timeout=timeout,
                              input=_b64(input) if input else None)
        out = base64.b64decode(reply["out"]).decode(errors="replace")
        if reply.get("timed_out"):
            out += f"\n[timed out after {timeout:g} s]"
        if check and reply["rc"] != 0:
            raise GuestError(f"{self.name}: `{shlex.join(argv)}` failed ({reply['rc']}): {out.strip()[:400]}")
        return reply["rc"], out

    def _batch(self, commands: Sequence[Sequence[str]], timeout: float = 30.0,
               stop_on_error: bool = True, files: dict[str, bytes] | None = None) -> list[tuple[int, str]]:
        """Commands run one after the other in one round trip (`files` written first)."""
        reply = self._request("batch", wait=timeout * len(commands) + 10, commands=[list(c) for c in commands],
                              timeout=timeout, stop_on_error=stop_on_error,
                              files={path: _b64(data) for path, data in (files or {}).items()})
        results = [(r["rc"], base64.b64decode(r["out"]).decode(errors="replace")) for r in reply["results"]]
        if stop_on_error and results and results[-1][0] != 0:
            failed = commands[len(results) - 1]
            raise GuestError(f"{self.name}: `{shlex.join(failed)}` failed: {results[-1][1].strip()[:400]}")
        return results

    def run_tools(self, commands: Sequence[Sequence[str]], optional: Sequence[bool] | None = None) -> list[str]:
        """Several commands in one round trip, and as few processes as possible: a run of consecutive
        `ip` (or `tc`) commands with the same global options goes through one `-batch` file.
        `optional[i]`: command i may fail. Raises GuestError naming the first required command that
        failed; returns the errors of optional ones that failed."""
        optional = list(optional) if optional is not None else [False] * len(commands)
        groups: list[tuple[list[str] | None, list[int]]] = []  # (the batch's argv prefix or None, indices)
        for i, argv in enumerate(commands):
            flags = list(itertools.takewhile(lambda a: a.startswith("-"), argv[1:]))
            batchable = argv[0] in ("ip", "tc") and len(argv) > 1 + len(flags) and all(
                _BATCH_TOKEN.match(a) for a in argv)
            prefix = [argv[0], *flags] if batchable else None
            if prefix is not None and groups and groups[-1][0] == prefix:
                groups[-1][1].append(i)
            else:
                groups.append((prefix, [i]))
        requests: list[list[str]] = []
        files: dict[str, bytes] = {}  # sent with the batch: no round trip of their own
        for n, (prefix, members) in enumerate(groups):
            if prefix is None or len(members) == 1:
                requests.append(list(commands[members[0]]))
                continue
            path = f"/run/tb-batch.{os.getpid()}.{threading.get_ident()}.{n}"
            lines = [" ".join(list(commands[i])[len(prefix):]) for i in members]
            files[path] = ("\n".join(lines) + "\n").encode()
            requests.append([*prefix, "-force", "-batch", path])
        results = self._batch(requests, stop_on_error=False, files=files)
        errors: list[str] = []
        for (_, members), (rc, out) in zip(groups, results, strict=True):
            if rc == 0:
                continue
            if len(members) == 1:
                failed = {members[0]: out.strip()}
            else:  # `Command failed FILE:LINE` after each failing line's error
                failed, text = {}, ""
                for line in out.splitlines():
                    m = re.match(r"Command failed \S+:(\d+)", line)
                    if m:
                        failed[members[int(m.group(1)) - 1]] = text.strip() or line
                        text = ""
                    else:
                        text += line + "\n"
                if not failed:
                    failed = {members[0]: out.strip()}
            for i, why in sorted(failed.items()):
                if not optional[i]:
                    raise GuestError(f"{self.name}: `{shlex.join(commands[i])}` failed: {why[:400]}")
                errors.append(why)
        return errors

    def cmd(self, line: str) -> str:
        """A shell line's output (like a Mininet node's cmd(), so nodeexec.run() works on a guest)."""
        return self.run(["sh", "-c", line], timeout=300)[1]

    def popen(self, argv: Sequence[str] | str, stdin: Any = None, stdout: Any = subprocess.PIPE,
              stderr: Any = subprocess.PIPE, env: dict[str, str] | None = None,
              cwd: str | None = None) -> GuestProcess:
        """Start a process in the guest. stdout/stderr: PIPE (a pipe on the host), an open file (its
        descriptor is duplicated), DEVNULL/None (discarded), stderr=STDOUT (merged in the guest).
        stdin: PIPE (write()/close() go to the guest) or anything else (/dev/null)."""
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        argv = list(argv)
        sinks: dict[int, _Sink] = {}
        files: dict[int, IO[bytes] | None] = {1: None, 2: None}
        modes: dict[int, str] = {}
        for fdno, target in ((1, stdout), (2, stderr)):
            if fdno == 2 and target == subprocess.STDOUT:
                modes[fdno] = "stdout"
            elif target == subprocess.PIPE:
                r, w = os.pipe()
                sinks[fdno] = _Sink(w)
                files[fdno] = os.fdopen(r, "rb", buffering=0)
                modes[fdno] = "pipe"
            elif target is None or target == subprocess.DEVNULL:
                modes[fdno] = "null"
            else:
                fd = target if isinstance(target, int) else target.fileno()
                sinks[fdno] = _Sink(os.dup(fd))
                modes[fdno] = "pipe"
        try:
            reply = self._request("start", argv=argv, stdin=stdin == subprocess.PIPE, stdout=modes[1],
                                  stderr=modes[2], env=env, cwd=cwd)
        except BaseException:
            for sink in sinks.values():
                sink.queue.put(None)
            for f in files.values():
                if f is not None:
                    f.close()
            raise
        proc = GuestProcess(self, argv, reply["h"], reply["pid"], sinks, files[1], files[2], stdin == subprocess.PIPE)
        with self._plock:
            early = self._early.pop(reply["h"], [])
            if not any(m["ev"] == "exit" for m in early):
                self._procs[reply["h"]] = proc
        for msg in early:
            self._event(proc, msg)
        return proc

    def start(self, argv: Sequence[str]) -> GuestProcess:
        """A background process, stdout and stderr merged into one pipe; collect it with wait()."""
        return self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait(self, proc: GuestProcess, timeout: float | None = None) -> tuple[int, str]:
        """Wait for a process from start(): (exit code, output). Raises subprocess.TimeoutExpired."""
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode is not None
        return proc.returncode, (out or b"").decode(errors="replace")

    def read_file(self, path: str) -> bytes:
        return base64.b64decode(self._request("read_file", path=path)["data"])

    def read_files(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        """Several files in one round trip, no process started in the guest (None: unreadable)."""
        files = self._request("read_files", paths=list(paths))["files"]
        return {p: None if files.get(p) is None else base64.b64decode(files[p]) for p in paths}

    def write_file(self, path: str, data: bytes, mode: int | None = None) -> None:
        self._request("write_file", path=path, data=_b64(data), mode=mode)

    def counters(self) -> dict[str, int]:
        """The guest's SNMP/netstat counters (MPTcpExt, TcpExt, Tcp, ...), as collect.counters names them."""
        from testbed.collect.counters import parse

        files = self._request("read_files", paths=["/proc/net/netstat", "/proc/net/snmp",
                                                   "/proc/net/mptcp_net/snmp"])["files"]
        out: dict[str, int] = {}
        for path in ("/proc/net/netstat", "/proc/net/snmp"):
            if files.get(path):
                out.update(parse(base64.b64decode(files[path]).decode(errors="replace")))
        v0 = files.get("/proc/net/mptcp_net/snmp")
        if v0:
            for line in base64.b64decode(v0).decode(errors="replace").splitlines():
                words = line.split()
                if len(words) == 2 and words[1].isdigit():
                    out[f"MPTCP{words[0]}"] = int(words[1])
        return out

    # ------------------------------------------------------------------------------ reuse
    def reset(self) -> dict:
        """Back to the state right after boot, for the next cell: processes killed; links made since
        boot (ifb devices) deleted; on every NIC link down, the qdiscs a cell configured removed,
        addresses flushed, MTU 1500; routes (all tables but local), rules and neighbours flushed;
        nftables ruleset flushed; MPTCP endpoints flushed and limits restored; every net.* sysctl
        that differs from the boot snapshot restored (a NIC's own entries under its current name;
        only those that can have changed when the cell ran nothing that writes sysctls behind
        guestd's back: see guestd.SysctlLedger).
        Returns what was done, with the seconds each step took.

        Every process costs ~0.1 s in a TCG guest: guestd does the network part over netlink itself
        (rtnl.reset), starting nft only when there are nftables tables. The links go down first: a
        qdisc deleted on a running device waits for the kernel to deactivate and reactivate it (an
        RCU grace period each, slow on an emulated CPU); on a device that is down it does not."""
        clock = time.monotonic()
        seconds: dict[str, float] = {}

        def lap(step: str) -> None:
            nonlocal clock
            now = time.monotonic()
            seconds[step] = round(now - clock, 3)
            clock = now

        done: dict[str, Any] = {"killed": self._request("killall", wait=30)["killed"]}
        lap("kill")
        net = self._request("net_reset", wait=60, interfaces=list(self.interfaces),
                            mptcp=bool(self.image is not None and self.image.mptcp), mptcp_limits=self._mptcp_limits)
        lap("network")
        done["links_deleted"] = net["new_links"]
        done["qdiscs_deleted"] = net.get("qdiscs_deleted", 0)
        done["network"] = {k: v for k, v in net.items() if k not in ("id", "new_links")}
        if net.get("errors"):  # not reused half-reset: the caller shuts it down instead
            raise GuestError(f"{self.name}: reset: {'; '.join(net['errors'])}")
        restore = self._request("sysctl_restore", wait=60)
        done["sysctls_restored"] = [p.removeprefix("/proc/sys/").replace("/", ".") for p in restore["restored"]]
        done["sysctl_scan"] = {k: restore.get(k) for k in ("scan", "checked", "foreign")}
        lap("sysctls")
        done["seconds"] = seconds
        return done

    def detach(self) -> dict[str, Any]:
        """Stop reading the control channel so that another process can drive the guest; the lease
        that process needs to attach() (the channel's descriptor is `fd`: pass it to the borrower).
        Call it only when the guest is quiet: no process of ours running, no request pending."""
        if self._sock is None or self._dead or self._reader is None:
            raise GuestError(f"{self.name}: not running")
        with self._plock:
            busy = sorted(self._procs)
        if busy:
            raise GuestError(f"{self.name}: cannot lend a guest with processes running ({len(busy)})")
        self._request("ping")  # every message before its answer has been read: the channel is drained
        self._detaching = True
        self._stop_reader()
        assert self.image is not None
        return {"name": self.name, "image": str(self.image.dir), "image_id": self.image.id,
                "qemu_pid": self.qemu_pid, "fd": self._sock.fileno(), "accel": self.accel,
                "release": self.release, "boot_seconds": self.boot_seconds, "ready_seconds": self.ready_seconds,
                "mem_mb": self.mem_mb, "mptcp_limits": self._mptcp_limits,
                "nics": [{"tap": n.tap, "mac": n.mac, "ifname": n.ifname}
                         for n in (*self.nics, *self.spare_nics)]}

    def resume(self, nics: Sequence[dict] | None = None) -> None:
        """Read the control channel again after a borrower gave the guest back (`nics`: the NICs as
        it left them, names included). Raises GuestError when the guest does not answer."""
        if self._sock is None or self.proc is None or self.proc.poll() is not None:
            raise GuestError(f"{self.name}: the guest is gone")
        if nics is not None:
            self.nics = [Nic(n["tap"], n["mac"], n.get("ifname")) for n in nics]
            self.spare_nics = []
        if self._reader is None:
            self._dead = False
            self._early.clear()  # output of the borrower's processes
            self._start_reader()
        self._request("ping", wait=10)

    @classmethod
    def attach(cls, lease: dict[str, Any], nics: int | None = None) -> Guest:
        """The guest another process lent (see detach()), driven from here; `nics`: how many of its
        NICs this process uses (the first ones; the rest stay down as spare_nics)."""
        image = images.find(lease["image"])
        if image is None or image.id != lease["image_id"]:
            raise GuestError(f"{lease['name']}: the lent guest's image {lease['image']} is gone or changed")
        guest = cls(lease["name"], mem_mb=lease.get("mem_mb", 256))
        guest.image = image
        all_nics = [Nic(n["tap"], n["mac"], n.get("ifname")) for n in lease["nics"]]
        count = len(all_nics) if nics is None else nics
        guest.nics, guest.spare_nics = all_nics[:count], all_nics[count:]
        guest._taps = [n.tap for n in all_nics]
        guest.accel, guest.release = lease.get("accel"), lease.get("release")
        guest.boot_seconds, guest.ready_seconds = lease.get("boot_seconds"), lease.get("ready_seconds")
        guest._mptcp_limits = lease.get("mptcp_limits")
        guest.proc = _BorrowedQemu(int(lease["qemu_pid"]))  # type: ignore[assignment]
        if guest.proc.poll() is not None:
            raise GuestError(f"{guest.name}: the lent guest's qemu (pid {lease['qemu_pid']}) is gone")
        fd = int(lease["fd"])
        os.set_inheritable(fd, False)  # not for the processes this run starts
        guest._sock = socket.socket(fileno=fd)
        guest._sock.setblocking(True)
        guest._start_reader()
        guest._request("ping", wait=10)
        return guest

    def give_back(self) -> dict[str, Any]:
        """A borrower's last word: stop reading the channel and close our end of it, leaving the guest
        running for its lender. The NICs as left (for the lender's resume())."""
        with contextlib.suppress(GuestError):
            self._request("ping", wait=10)
        self._detaching = True
        self._stop_reader()
        if self._sock is not None:
            self._sock.close()  # our descriptor only: the lender's stays connected
        self._sock, self.proc = None, None
        self._taps = []
        return {"nics": [{"tap": n.tap, "mac": n.mac, "ifname": n.ifname} for n in (*self.nics, *self.spare_nics)]}

    # --------------------------------------------------------------------------- shutdown
    def rss_bytes(self) -> int | None:
        """Host resident memory of the qemu process."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Power the guest off (kill qemu if it does not stop within `timeout`), remove the TAPs."""
        reading = self._sock is not None and self._reader is not None and not self._dead
        if self.proc is not None and self.proc.poll() is None and reading:
            with contextlib.suppress(GuestError):
                self._request("poweroff", wait=2)
        self._stop_qemu(kill=not reading, timeout=timeout)  # a lent guest's state is unknown: no courtesy
        for tap in self._taps:
            subprocess.run(["ip", "link", "del", tap], capture_output=True, timeout=10)
        self._taps = []

    def _stop_qemu(self, kill: bool, timeout: float = 5.0) -> None:
        if self.proc is not None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self._stop_reader()
        if self.workdir is not None:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                for log in ("console.log", "qemu.log"):
                    with contextlib.suppress(OSError):
                        shutil.copy(self.workdir / log, self.log_dir / f"{self.name}-{log}")
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.proc = None
        self._sock = None
        self._reader = None
        self.workdir = None
        self._hello = None
        self._pending.clear()
        self._early.clear()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _json_list(text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
