"""Boot images for QEMU guests: one Debian kernel + a small initramfs per implementation, cached.

An image is a kernel (the uncompressed ``vmlinux`` when it can be unpacked from ``vmlinuz``: it boots
much faster under TCG than a self-decompressing bzImage) and an initramfs holding busybox-static, the
kernel modules the guest needs (virtio PCI/net/console/rng, the 9p chain, sch_netem and friends,
with every dependency, in load order) and an ``/init`` script. The guest's userspace is the host's
root filesystem, shared read-only over virtio-9p (see guest.py), so python3, iproute2 and the
testbed's workload agent in the guest are the host's own.

Kernels come from Debian's archive with ``apt-get download`` under a private apt configuration per
image (its own sources list, lists and cache under the image cache), so the system's apt state is
never touched. The cache (default ``/var/cache/testbed/images``, env ``TESTBED_IMAGE_CACHE``) holds
``<name>/`` (kernel, ``initramfs.cpio.gz``, ``config``, ``manifest.json``), ``.debs/`` and ``.apt/``.

An image can also be built from a kernel the user gives (build_from_file): a kernel .deb (what
``make deb-pkg`` or the multipath-tcp.org apt repository makes, e.g. ``linux-image-4.4.x-mptcp``) or a
bzImage with an optional ``lib/modules/<release>`` tree. Its first boot records which MPTCP the kernel
has (upstream, the out-of-tree v0.9x, or none) in its manifest (``detected``, see Image.flavour).

    python -m testbed.emulation.qemu.images build linux-6.1 [--refresh] [--force]
    python -m testbed.emulation.qemu.images list
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import Problem
from testbed.spec.source import absolute

DEFAULT_CACHE = Path("/var/cache/testbed/images")
MIRROR = os.environ.get("TESTBED_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("TESTBED_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BUSYBOX = Path("/bin/busybox")
MANIFEST = "manifest.json"
COUNTERS_FILE = "mptcp-counters.json"  # written at the first boot (Image.record_counters)
INITRAMFS = "initramfs.cpio.gz"
# Bumped whenever what build() puts into an image changes: cached images of another recipe are rebuilt.
RECIPE = 1

# Modules the guest loads (with their dependencies, found from each module's own .modinfo).
# Required ones must exist as a module or be built in; optional ones are skipped when absent.
REQUIRED_MODULES = ("virtio_pci", "virtio_net", "virtio_console", "9pnet_virtio", "9p")
# Loaded first, before the host's root is mounted: what the control channel and 9p need.
EARLY_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p")
OPTIONAL_MODULES = ("virtio_rng", "sch_netem", "sch_htb", "sch_tbf", "sch_ingress", "sch_prio",
                    "cls_u32", "cls_matchall", "act_mirred", "ifb")
# Parameters given to insmod (ifb would otherwise make ifb0 and ifb1 in every guest).
MODULE_PARAMS = {"ifb": "numifbs=0"}
# The Kconfig symbol of each required module: what a kernel given without a modules tree must have =y.
MODULE_CONFIG = {"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_net": "CONFIG_VIRTIO_NET",
                 "virtio_console": "CONFIG_VIRTIO_CONSOLE", "9pnet_virtio": "CONFIG_NET_9P_VIRTIO",
                 "9p": "CONFIG_9P_FS"}
# What INIT_SCRIPT and the way qemu starts the guest need built in, whatever the modules: the gzip
# initramfs, devtmpfs for /dev, tmpfs for /run and /tmp over the read-only host root.
INIT_CONFIG = ("CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_DEVTMPFS", "CONFIG_TMPFS")
# Symbols only the multipath-tcp.org tree has (net/mptcp/Kconfig of mptcp_v0.92): a config with one of
# them is a v0.9x kernel, whose CONFIG_MPTCP=y is not upstream MPTCP.
V0_CONFIG = ("CONFIG_MPTCP_PM_ADVANCED", "CONFIG_MPTCP_FULLMESH", "CONFIG_MPTCP_SCHED_ADVANCED")
# An image name given by the user (a directory name in the cache).
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Kernel:
    """Where an implementation's kernel comes from: Debian suites and the binary package's name."""

    suites: tuple[str, ...]
    package: str  # a regular expression over binary package names (fullmatch)
    doc: str


KERNELS: dict[str, Kernel] = {
    "linux-5.10": Kernel(("bullseye", "bullseye-security"), r"linux-image-5\.10\.0-\d+-amd64",
                         "Debian 11 (bullseye) 5.10; built without MPTCP (CONFIG_MPTCP is not set)"),
    "linux-6.1": Kernel(("bookworm", "bookworm-security"), r"linux-image-6\.1\.0-\d+-amd64",
                        "Debian 12 (bookworm) 6.1"),
    "linux-6.12": Kernel(("bookworm-backports", "bookworm-security"),
                         r"linux-image-6\.12\.\d+\+deb\d+(?:\.\d+)?-amd64",
                         "Debian 12 backports/security 6.12 (the trixie kernel)"),
}


class ImageError(RuntimeError):
    """An image could not be resolved, downloaded or built (the message says what is missing)."""


class DownloadError(ImageError):
    """Debian's archive could not be reached (apt-get update or download failed)."""


class ImageInputError(ImageError):
    """A kernel file the user gave is missing or is not what it should be (bad input: exit 2)."""

    def __init__(self, file: str | Path, field: str, problem: str):
        self.problem = Problem(str(file), None, None, field, problem)
        super().__init__(str(self.problem))


@dataclass
class Image:
    name: str
    dir: Path
    manifest: dict = field(repr=False)

    @property
    def kernel(self) -> Path:
        return self.dir / self.manifest["kernel"]["file"]

    @property
    def initrd(self) -> Path:
        return self.dir / self.manifest["initramfs"]["file"]

    @property
    def release(self) -> str:
        """The kernel release (``uname -r`` in the guest)."""
        return self.manifest["kernel"]["release"]

    @property
    def mptcp(self) -> bool:
        """Whether the kernel has upstream MPTCP: as its first boot found (see flavour), else from its
        config (CONFIG_MPTCP=y without the symbols of the out-of-tree v0.9x stack)."""
        if self.flavour is not None:
            return self.flavour == "upstream"
        config = self.manifest["config"]
        return config.get("CONFIG_MPTCP") == "y" and not any(config.get(k) for k in V0_CONFIG)

    @property
    def detected(self) -> dict | None:
        """What the kernel showed of its MPTCP at its first boot (testbed.stacks.features.classify:
        flavour, kernel, for v0.9x its release and sysctls), or None before that."""
        found = self.manifest.get("detected")
        return found if isinstance(found, dict) and found.get("flavour") else None

    @property
    def flavour(self) -> str | None:
        """"upstream", "v0.9x" or "none" as found at the first boot; None before it."""
        return self.detected["flavour"] if self.detected else None

    @property
    def source(self) -> dict | None:
        """The user's kernel file an image was built from (build_from_file), None for a Debian one."""
        return self.manifest.get("source")

    def record_detected(self, found: dict) -> None:
        """Write what the first boot found into the manifest (atomically; best effort, like
        record_counters: a read-only cache only loses the record)."""
        manifest = {**self.manifest, "detected": found}
        try:
            tmp = self.dir / f".{MANIFEST}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(tmp, self.dir / MANIFEST)
        except OSError:
            return
        self.manifest = manifest

    @property
    def mptcp_counters(self) -> frozenset[str] | None:
        """The MPTcpExt counter names (without the prefix) the kernel showed when it first booted, or
        None before that. Stable kernels backport counters, so a version number does not tell."""
        try:
            names = json.loads((self.dir / COUNTERS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return frozenset(names) if isinstance(names, list) and names else None

    def record_counters(self, names: Iterable[str]) -> None:
        """Remember the kernel's MPTcpExt counter names (see mptcp_counters); best effort."""
        try:
            tmp = self.dir / f".{COUNTERS_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(sorted(names)))
            os.replace(tmp, self.dir / COUNTERS_FILE)
        except OSError:
            pass

    @property
    def id(self) -> str:
        """A short identity of the image (kernel + initramfs digests)."""
        h = hashlib.sha256((self.manifest["kernel"]["sha256"] + self.manifest["initramfs"]["sha256"]).encode())
        return h.hexdigest()[:12]


def cache_dir() -> Path:
    """The image cache: $TESTBED_IMAGE_CACHE (relative to the current directory) or DEFAULT_CACHE.
    Absolute, because the image's files are handed to qemu and to cells run elsewhere."""
    return absolute(os.environ.get("TESTBED_IMAGE_CACHE") or DEFAULT_CACHE)


def names() -> list[str]:
    return list(KERNELS)


# ------------------------------------------------------------------------------------- module deps


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of an (uncompressed) ELF64 kernel module: key → values."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, stroff, strsize = section(shstrndx)
    strtab = data[stroff:stroff + strsize]
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        if strtab[name:strtab.index(b"\0", name)] != b".modinfo":
            continue
        for entry in data[offset:offset + size].split(b"\0"):
            key, sep, value = entry.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


def module_depends(data: bytes) -> list[str]:
    """A module's hard dependencies (what ``modinfo -F depends`` prints), in the order listed."""
    values = modinfo(data).get("depends", [])
    return [normalize(d) for v in values for d in v.split(",") if d.strip()]


def normalize(module: str) -> str:
    return module.strip().replace("-", "_")


def load_order(roots: Iterable[str], depends: Callable[[str], Iterable[str]]) -> list[str]:
    """Every module of `roots` and their dependencies, each after all it depends on.

    Depth first in the order given (so the result is stable); `depends(name)` returns a module's
    direct dependencies. A dependency cycle raises ValueError (the kernel could not load it either)."""
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str) -> None:
        name = normalize(name)
        if name in done:
            return
        if name in active:
            cycle = " -> ".join([*active[active.index(name):], name])
            raise ValueError(f"module dependency cycle: {cycle}")
        active.append(name)
        for dep in depends(name):
            visit(dep)
        active.pop()
        done.add(name)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def read_module(path: Path) -> bytes:
    """A module file's ELF bytes (.ko, .ko.xz, .ko.gz or .ko.zst)."""
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zst"):
        return _zstd(raw)
    return raw


def _zstd(raw: bytes) -> bytes:
    if shutil.which("zstd") is None:
        raise ImageError("zstd is not installed (needed to unpack zstd-compressed kernels or modules)")
    r = subprocess.run(["zstd", "-dcq"], input=raw, capture_output=True, timeout=120)
    if r.returncode != 0 and not r.stdout:
        raise ImageError(f"zstd failed: {r.stderr.decode(errors='replace').strip()[:200]}")
    return r.stdout


@dataclass
class ModuleSet:
    release: str
    order: list[str]  # load order
    early: list[str]  # the part of `order` loaded before the host's root is mounted (EARLY_MODULES)
    files: dict[str, bytes]  # name → uncompressed .ko
    builtin: list[str]  # requested modules the kernel has built in
    missing: list[str]  # optional modules neither built in nor shipped


def collect_modules(moddir: Path, required: Iterable[str] = REQUIRED_MODULES,
                    optional: Iterable[str] = OPTIONAL_MODULES, builtin_also: Iterable[str] = ()) -> ModuleSet:
    """The modules to load from an unpacked ``lib/modules/<release>`` tree, dependencies included.
    `builtin_also`: modules known to be built in besides those its modules.builtin lists (from the
    kernel's config, for a tree installed without that file)."""
    index: dict[str, Path] = {}
    for path in moddir.rglob("*.ko*"):
        if re.search(r"\.ko(\.xz|\.gz|\.zst)?$", path.name):
            index[normalize(path.name.split(".ko")[0])] = path
    builtin_file = moddir / "modules.builtin"
    builtin_names = {normalize(n) for n in builtin_also}
    if builtin_file.exists():
        builtin_names |= {normalize(Path(line.strip()).name.split(".ko")[0])
                          for line in builtin_file.read_text().splitlines() if line.strip()}
    files: dict[str, bytes] = {}

    def depends(name: str) -> list[str]:
        if name not in index:
            return []
        if name not in files:
            files[name] = read_module(index[name])
        return [d for d in module_depends(files[name]) if d not in builtin_names]

    roots, builtin, missing = [], [], []
    for name in [*required, *optional]:
        name = normalize(name)
        if name in index:
            roots.append(name)
        elif name in builtin_names:
            builtin.append(name)
        elif name in required:
            raise ImageError(f"{moddir.name}: required module {name} is neither shipped nor built in")
        else:
            missing.append(name)
    order = load_order(roots, depends)
    for name in order:
        if name not in index:
            raise ImageError(f"{moddir.name}: module {name} is needed but not in the package")
    early = load_order([n for n in EARLY_MODULES if n in index], depends)
    return ModuleSet(moddir.name, order, early, {n: files[n] for n in order}, builtin, missing)


# ----------------------------------------------------------------------------------------- kernel


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip"),
)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (boot protocol 2.08+: payload_offset/length)."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise ValueError("not a bzImage with boot protocol 2.08 or later")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    kind = next((k for magic, k in _MAGIC if payload.startswith(magic)), None)
    if kind is None:
        raise ValueError(f"unknown kernel compression (payload starts {payload[:6].hex()})")
    if kind == "xz":
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif kind == "gzip":
        out = zlib.decompressobj(wbits=31).decompress(payload)  # stops at the end of the gzip member
    else:
        # The kernel build appends the uncompressed size (4 bytes) after the zstd frame.
        out = _zstd(payload[:-4])
    if out[:4] != b"\x7fELF":
        raise ValueError(f"{kind} payload is not an ELF file")
    return out


def _has_interp(elf: bytes) -> bool:
    """Whether an ELF64 file asks for a dynamic loader (PT_INTERP): a static binary does not."""
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def bzimage_release(bzimage: bytes) -> str:
    """The kernel release a bzImage says it is: the first word of the setup header's kernel_version
    string (boot protocol 2.00+), e.g. "4.4.110.mptcp". ValueError when it is not an x86 bzImage."""
    if len(bzimage) < 0x210 or bzimage[0x202:0x206] != b"HdrS":
        raise ValueError("not an x86 kernel image (no 'HdrS' boot header at 0x202)")
    if bzimage[0x1FE:0x200] != b"\x55\xaa" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x200:
        raise ValueError("not an x86 bzImage (boot sector signature or boot protocol < 2.00)")
    pointer = struct.unpack_from("<H", bzimage, 0x20E)[0]
    start = 0x200 + pointer
    if not pointer or start >= len(bzimage):
        raise ValueError("the boot header has no kernel_version string")
    text = bzimage[start:start + 256].split(b"\0")[0].decode(errors="replace").split()
    if not text or not re.match(r"\d+\.\d+", text[0]):
        raise ValueError(f"the boot header's kernel_version is not a release ({' '.join(text)[:60]!r})")
    return text[0]


def has_pvh_note(elf: bytes) -> bool:
    """Whether an ELF kernel has the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, CONFIG_PVH, Linux 4.19+)
    that qemu needs to boot it uncompressed; older kernels (a 4.4 one) boot only as a bzImage."""
    try:
        phoff = struct.unpack_from("<Q", elf, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
        for i in range(phnum):
            p_type, _flags, offset, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
            if p_type != 4:  # PT_NOTE
                continue
            pos, end = offset, offset + filesz
            while pos + 12 <= end:
                namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
                name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
                if name == b"Xen" and n_type == 18:
                    return True
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    except struct.error:
        return False
    return False


def embedded_config(vmlinux: bytes) -> str:
    """The .config a kernel built with CONFIG_IKCONFIG carries (gzip between IKCFG_ST and IKCFG_ED),
    or "" when it has none."""
    start = vmlinux.find(b"IKCFG_ST")
    if start < 0:
        return ""
    try:
        return zlib.decompressobj(wbits=31).decompress(vmlinux[start + 8:start + 8 + (4 << 20)]).decode(errors="replace")
    except zlib.error:
        return ""


def parse_config(text: str) -> dict[str, str]:
    """A kernel .config as symbol → value ("y", "m", a string or number; "n" for `# X is not set`)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            out[m.group(1)] = "n"
            continue
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------ cpio


class Cpio:
    """A newc ("070701") archive writer, deterministic (mtime 0, root-owned)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if mode & 0o170000 == 0o040000 else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self.buf.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, 0o040000 | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self.ino = 0
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


INIT_SCRIPT = r"""#!/bin/busybox sh
# testbed guest init. The modules the control channel needs first (virtio PCI, console, 9p); the
# host's root over 9p, read-only, with fresh /proc /sys /dev /run /tmp inside; then the other modules
# in the background while the control daemon (tb_guestd=PATH run by tb_python=PATH, chrooted into
# the host's root) starts; it says hello once /run/testbed/modules-loaded exists. Restarted forever.
/bin/busybox mkdir -p /bin /proc /sys /dev /host
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log=/init.log
say() { read -r t _ < /proc/uptime; echo "init: $t $1"; echo "$t $1" >> "$log"; }
load() {
  while read -r m args; do
    insmod "/lib/modules/$m.ko" $args || say "insmod $m failed"
  done < "$1"
}
say "started"
load /lib/modules/load-early
say "early modules loaded"
tb_python=/usr/bin/python3
tb_guestd=
tb_hostname=guest
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    tb_python=*) tb_python="${arg#tb_python=}" ;;
    tb_guestd=*) tb_guestd="${arg#tb_guestd=}" ;;
    tb_hostname=*) tb_hostname="${arg#tb_hostname=}" ;;
  esac
done
hostname "$tb_hostname"
ip link set lo up
fallback() {
  say "$1; loading the other modules and starting a shell on the console"
  load /lib/modules/load-late
  while true; do setsid cttyhack sh; done
}
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host \
  || fallback "cannot mount the host's root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=755 tmpfs /host/run
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null
[ -n "$tb_guestd" ] || fallback "no tb_guestd= on the kernel command line"
[ -x "/host$tb_python" ] || fallback "no $tb_python on the host's root"
mkdir -p /host/run/testbed
cat "$log" > /host/run/testbed/init.log
log=/host/run/testbed/init.log
say "host root mounted; starting $tb_guestd"
( load /lib/modules/load-late; say "late modules loaded"; : > /host/run/testbed/modules-loaded ) &
while true; do
  chroot /host "$tb_python" -S "$tb_guestd"
  say "guestd exited with $?; restarting"
  sleep 1
done
"""


# ----------------------------------------------------------------------------------------- apt


class Apt:
    """apt-get/apt-cache with a private configuration for one image (system apt state untouched)."""

    def __init__(self, root: Path, suites: Iterable[str]):
        self.root = root
        self.suites = tuple(suites)

    def options(self) -> list[str]:
        return [f"-oDir::Etc::SourceList={self.root / 'sources.list'}", "-oDir::Etc::SourceParts=/nonexistent",
                f"-oDir::State::Lists={self.root / 'lists'}", f"-oDir::Cache={self.root / 'cache'}",
                "-oDir::State::status=/dev/null", "-oAPT::Architectures=amd64", "-oAcquire::Languages=none",
                "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1", "-qq"]

    def prepare(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = []
        for suite in self.suites:
            mirror = SECURITY_MIRROR if suite.endswith("-security") else MIRROR
            signed = f"[signed-by={KEYRING}] " if KEYRING.exists() else ""
            lines.append(f"deb {signed}{mirror} {suite} main")
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")

    def run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed (Debian's apt is needed to fetch guest kernels)")
        r = subprocess.run([tool, *self.options(), *args], capture_output=True, text=True, cwd=cwd,
                           timeout=timeout)
        if r.returncode != 0:
            error = DownloadError if tool == "apt-get" else ImageError
            raise error(f"`{tool} {' '.join(args)}` failed: {(r.stderr or r.stdout).strip()[-600:]}")
        return r.stdout

    def update(self) -> None:
        self.prepare()
        self.run("apt-get", "update")

    def resolve(self, pattern: str) -> tuple[str, str]:
        """The newest binary package whose name fullmatches `pattern`: (name, version)."""
        pkgs = [p for p in self.run("apt-cache", "pkgnames", "linux-image-").split() if re.fullmatch(pattern, p)]
        if not pkgs:
            raise ImageError(f"no package matching {pattern} in {', '.join(self.suites)}")
        for name in sorted(pkgs, key=natural_key, reverse=True):
            versions = [line.split("|")[1].strip() for line in self.run("apt-cache", "madison", name).splitlines()
                        if line.count("|") >= 2]
            if versions:
                return name, versions[0]
        raise ImageError(f"no downloadable version of {pattern} in {', '.join(self.suites)}")

    def download(self, package: str, version: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        self.run("apt-get", "download", f"{package}={version}", cwd=dest)
        after = [p for p in dest.glob(f"{package}_*.deb") if p not in before] or sorted(dest.glob(f"{package}_*.deb"))
        if not after:
            raise ImageError(f"apt-get download {package} left no .deb in {dest}")
        return after[0]


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key comparing digit runs as numbers: 6.12.117 > 6.12.95, 5.10.0-46 > 5.10.0-9."""
    return [(1, int(part)) if part.isdigit() else (0, part) for part in re.split(r"(\d+)", text) if part]


# ----------------------------------------------------------------------------------------- build


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(name: str, cache: Path | None = None) -> Image | None:
    """The cached image `name`, or None when there is none (or it is of an older recipe or damaged)."""
    d = (cache or cache_dir()) / name
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("recipe") != RECIPE:
        return None
    image = Image(name, d, manifest)
    if not image.kernel.exists() or not image.initrd.exists():
        return None
    return image


def find(name: str, cache: Path | None = None) -> Image | None:
    """The built image `name` (an implementation name, or a path to an image directory), or None when
    none is built yet. Never builds or downloads anything (see build() for that)."""
    if "/" in name:
        path = absolute(name)
        return load(path.name, path.parent)
    return load(name, cache)


def list_images(cache: Path | None = None) -> list[Image]:
    """The images in the cache: Debian's in KERNELS order, then those built from the user's kernels
    (build_from_file) by name. Names without a usable image are left out."""
    root = cache or cache_dir()
    others = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                    and d.name not in KERNELS) if root.is_dir() else []
    return [img for n in [*KERNELS, *others] if (img := load(n, root)) is not None]


def verify(image: Image) -> list[str]:
    """Files of the image whose sha256 differs from its manifest (empty when intact)."""
    bad = []
    for key in ("kernel", "initramfs"):
        entry = image.manifest[key]
        if sha256_file(image.dir / entry["file"]) != entry["sha256"]:
            bad.append(entry["file"])
    return bad


def build(name: str, refresh: bool = False, force: bool = False, cache: Path | None = None,
          log: Callable[[str], None] | None = None) -> Image:
    """The boot image of implementation `name`, built (and cached) if needed.

    A cached image is returned without any network access unless `refresh` (look for a newer kernel
    package and rebuild when there is one) or `force` (rebuild from the newest package)."""
    if name not in KERNELS:
        raise ImageError(f"unknown guest kernel {name!r} (known: {', '.join(KERNELS)})")
    cache = cache or cache_dir()
    say = log or (lambda _msg: None)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".writable-"):
            pass
    except OSError as exc:
        cached = load(name, cache)
        if cached is not None and not refresh and not force:
            return cached
        raise ImageError(f"cannot write the image cache {cache} ({exc.strerror}): run as root or set "
                         "TESTBED_IMAGE_CACHE to a writable directory") from None
    with _locked(cache / f".lock-{name}"):
        cached = load(name, cache)
        if cached is not None and not refresh and not force:
            return cached
        spec = KERNELS[name]
        apt = Apt(cache / ".apt" / name, spec.suites)
        say(f"{name}: updating package lists ({', '.join(spec.suites)})")
        apt.update()
        package, version = apt.resolve(spec.package)
        if cached is not None and not force and cached.manifest["package"]["name"] == package \
                and cached.manifest["package"]["version"] == version:
            return cached
        debs = cache / ".debs"
        existing = sorted(debs.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
        if existing:
            deb = existing[0]
        else:
            say(f"{name}: downloading {package} {version}")
            deb = apt.download(package, version, debs)
        say(f"{name}: building the image from {deb.name}")
        image = _build_from_deb(name, deb, package, version, cache)
        for old in debs.glob("linux-image-*.deb"):  # older packages of this implementation
            if old != deb and re.fullmatch(spec.package, old.name.split("_")[0]):
                old.unlink()
        return image


def _tree_digest(moddir: Path) -> str:
    """sha256 over a modules tree's module files and modules.builtin (names and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for p in moddir.rglob("*") if p.is_file() and not p.is_symlink()
                       and (re.search(r"\.ko(\.xz|\.gz|\.zst)?$", p.name) or p.name == "modules.builtin")):
        h.update(f"{path.relative_to(moddir)}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def _modules_tree(given: Path) -> Path:
    """`lib/modules/<release>` itself, or a root (an install prefix) holding exactly one of them."""
    under = given / "lib" / "modules"
    if under.is_dir():
        found = [d for d in under.iterdir() if d.is_dir()]
        if len(found) != 1:
            raise ImageInputError(given, "modules", f"expected one lib/modules/<release> under it, found {len(found)}")
        return found[0]
    return given


def _is_deb(path: Path) -> bool:
    """An ar archive whose first member is debian-binary (what dpkg-deb reads)."""
    with path.open("rb") as f:
        head = f.read(8 + 16)
    return head[:8] == b"!<arch>\n" and head[8:].rstrip(b" /").startswith(b"debian-binary")


def _given_file(path: Path, field: str) -> Path:
    if not path.exists():
        raise ImageInputError(path, field, "no such file")
    if not path.is_file():
        raise ImageInputError(path, field, "not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ImageInputError(path, field, f"cannot be read ({exc.strerror})") from None
    return path.resolve()


def check_name(name: str) -> None:
    """The name of an image built from the user's kernel: a cache directory name, not a Debian image's."""
    if not IMAGE_NAME.fullmatch(name):
        raise ImageInputError("images", "name", f"{name!r}: 1-64 of letters, digits, '.', '_', '-' "
                              "(starting with a letter or digit)")
    if name in KERNELS:
        raise ImageInputError("images", "name", f"{name} is the Debian image `testbed images {name}` builds: "
                              "choose another name")


def build_from_file(name: str, *, deb: Path | None = None, kernel: Path | None = None,
                    modules: Path | None = None, config: Path | None = None, cache: Path | None = None,
                    log: Callable[[str], None] | None = None) -> Image:
    """The image `name` of a kernel the user gives: a kernel .deb, or a bzImage with an optional modules
    tree (``lib/modules/<release>``, or the root above it) and .config. Cached: the same files (by
    sha256) give the cached image back without rebuilding; other files rebuild it.

    ImageInputError (bad input, exit 2) names the file, the field and the problem: a missing file, not
    a .deb, not a bzImage, modules of another release, drivers the guest needs neither shipped nor
    built in."""
    check_name(name)
    if (deb is None) == (kernel is None):
        raise ImageInputError("images", "kernel", "give either --deb PATH or --kernel BZIMAGE")
    if deb is not None and (modules is not None or config is not None):
        raise ImageInputError("images", "modules", "--modules and --config go with --kernel (a .deb has its own)")
    say = log or (lambda _msg: None)
    cache = cache or cache_dir()
    source: dict = {}
    bz = b""
    release = ""
    moddir: Path | None = None
    config_text = ""
    if deb is not None:
        deb = _given_file(deb, "deb")
        if not _is_deb(deb):
            raise ImageInputError(deb, "deb", "not a Debian package (.deb): no ar archive with debian-binary")
        source = {"type": "deb", "file": str(deb), "sha256": sha256_file(deb)}
    else:
        assert kernel is not None
        kernel = _given_file(kernel, "kernel")
        bz = kernel.read_bytes()
        try:
            release = bzimage_release(bz)
        except ValueError as exc:
            raise ImageInputError(kernel, "kernel", str(exc)) from None
        source = {"type": "bzimage", "file": str(kernel), "sha256": hashlib.sha256(bz).hexdigest(), "release": release}
        if modules is not None:
            if not modules.is_dir():
                raise ImageInputError(modules, "modules", "no such directory" if not modules.exists() else "not a directory")
            moddir = _modules_tree(modules.resolve())
            if moddir.name != release:
                raise ImageInputError(moddir, "modules", f"modules of release {moddir.name}, but the kernel is "
                                      f"{release} (its modules would not load)")
            source.update(modules=str(moddir), modules_sha256=_tree_digest(moddir))
        if config is not None:
            config = _given_file(config, "config")
            config_text = config.read_text(errors="replace")
            if "CONFIG_" not in config_text:
                raise ImageInputError(config, "config", "not a kernel .config (no CONFIG_ symbol)")
            source.update(config=str(config), config_sha256=sha256_file(config))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".writable-"):
            pass
    except OSError as exc:
        raise ImageError(f"cannot write the image cache {cache} ({exc.strerror}): run as root or set "
                         "TESTBED_IMAGE_CACHE to a writable directory") from None
    with _locked(cache / f".lock-{name}"):
        cached = load(name, cache)
        same = ("type", "sha256", "modules_sha256", "config_sha256")
        if cached is not None and cached.source is not None \
                and all(cached.source.get(k) == source.get(k) for k in same):
            return cached
        if deb is not None:
            _need_dpkg_deb()
            r = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True,
                               text=True, timeout=60)
            if r.returncode != 0:
                raise ImageInputError(deb, "deb", f"dpkg-deb cannot read it: {r.stderr.strip()[:200]}")
            fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
            package, version = fields.get("Package", ""), fields.get("Version", "")
            return _build_from_deb(name, deb, package, version, cache, source, say)
        return _build_from_kernel(name, bz, release, moddir, config_text, source, cache, say)


def _busybox() -> bytes:
    if not BUSYBOX.exists():
        raise ImageError(f"{BUSYBOX} is missing: install busybox-static")
    busybox = BUSYBOX.read_bytes()
    if _has_interp(busybox):
        raise ImageError(f"{BUSYBOX} is dynamically linked: install busybox-static")
    return busybox


def _need_dpkg_deb() -> None:
    if shutil.which("dpkg-deb") is None:
        raise ImageError("dpkg-deb is not installed")


def unpack_deb(deb: Path, dest: Path) -> tuple[Path, Path, str]:
    """Unpack a kernel .deb into `dest`: (its lib/modules/<release>, its boot/vmlinuz-<release>, the
    text of its boot/config-<release> or ""). ImageError naming what the package lacks."""
    _need_dpkg_deb()
    r = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise ImageError(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()[:300]}")
    moddirs = [d for d in (dest / "lib/modules").iterdir() if d.is_dir()] if (dest / "lib/modules").is_dir() else []
    if len(moddirs) != 1:
        raise ImageError(f"{deb.name}: expected one lib/modules/<release>, found {len(moddirs)} "
                         "(is it a linux-image package?)")
    release = moddirs[0].name
    vmlinuz = dest / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.exists():
        raise ImageError(f"{deb.name}: no boot/vmlinuz-{release}")
    config_file = dest / "boot" / f"config-{release}"
    return moddirs[0], vmlinuz, config_file.read_text() if config_file.exists() else ""


def _kernel_file(bz: bytes) -> tuple[bytes, str, str, bytes | None]:
    """(what qemu boots, its file name, its format, the uncompressed ELF or None). The uncompressed
    vmlinux boots much faster under TCG, but only a kernel with the PVH note can boot that way."""
    try:
        elf = extract_vmlinux(bz)
    except (ValueError, ImageError):
        return bz, "vmlinuz", "bzImage", None
    if not has_pvh_note(elf):
        return bz, "vmlinuz", "bzImage", elf
    return elf, "vmlinux", "elf", elf


def _modules_for(moddir: Path | None, release: str, config: dict[str, str], label: str) -> ModuleSet:
    """The modules an image of this kernel loads; ImageInputError when its config shows that the
    guest's /init cannot work, or when the modules it needs are neither in `moddir` nor built in."""
    if config:
        lacking = [f"{k} ({'not set' if config.get(k, 'n') == 'n' else '=' + config[k]})"
                   for k in INIT_CONFIG if config.get(k) != "y"]
        if lacking:
            raise ImageInputError(label, "kernel", f"the guest's /init needs {', '.join(lacking)} built in (=y)")
    builtin = [m for m, k in MODULE_CONFIG.items() if config.get(k) == "y"]
    if moddir is not None:
        return collect_modules(moddir, builtin_also=builtin)
    required = [m for m in REQUIRED_MODULES if m not in builtin]
    if not required:
        return ModuleSet(release, [], [], {}, builtin, list(OPTIONAL_MODULES))
    if not config:
        raise ImageInputError(label, "kernel", "no modules tree, and no config to tell whether "
                              f"{', '.join(required)} are built in (the kernel has no CONFIG_IKCONFIG): "
                              "give --modules lib/modules/<release> or --config its .config")
    why = [f"{m} ({MODULE_CONFIG[m]}={config[MODULE_CONFIG[m]]}, a module)" if config.get(MODULE_CONFIG[m]) == "m"
           else f"{m} ({MODULE_CONFIG[m]} is not set)" for m in required]
    raise ImageInputError(label, "kernel", f"the guest needs {', '.join(why)}: without --modules they must "
                          "be built in (=y)")


def _build_from_deb(name: str, deb: Path, package: str, version: str, cache: Path,
                    source: dict | None = None, say: Callable[[str], None] | None = None) -> Image:
    """An image from a kernel .deb (Debian's, or the user's with `source` saying which file it was)."""
    started = time.monotonic()
    busybox = _busybox()
    with tempfile.TemporaryDirectory(prefix=f".unpack-{name}-", dir=cache) as tmp:
        try:
            moddir, vmlinuz, config_text = unpack_deb(deb, Path(tmp) / "deb")
        except ImageError as exc:
            if source is None:
                raise
            raise ImageInputError(source["file"], "deb", str(exc).removeprefix(f"{deb.name}: ")) from None
        bz = vmlinuz.read_bytes()
        kernel = _kernel_file(bz)
        config_text = config_text or (embedded_config(kernel[3]) if kernel[3] else "")
        label = source["file"] if source else deb.name
        try:
            mods = _modules_for(moddir, moddir.name, parse_config(config_text), label)
        except ImageInputError:
            raise
        except ImageError as exc:
            if source is None:
                raise
            raise ImageInputError(label, "deb", str(exc)) from None
        if say is not None:  # (after the checks: bad input gets its one line only)
            say(f"{name}: building the image from {deb.name} ({package} {version})")
        provenance: dict = {"package": {"name": package, "version": version, "file": deb.name,
                                        "sha256": source["sha256"] if source else sha256_file(deb)}}
        if source is not None:
            provenance["source"] = source
        return _assemble(name, bz, kernel, moddir.name, mods, config_text, provenance, busybox, cache, started)


def _build_from_kernel(name: str, bz: bytes, release: str, moddir: Path | None, config_text: str,
                       source: dict, cache: Path, say: Callable[[str], None]) -> Image:
    """An image from a bzImage and an optional lib/modules/<release> tree (the user's)."""
    started = time.monotonic()
    busybox = _busybox()
    kernel = _kernel_file(bz)
    config_text = config_text or (embedded_config(kernel[3]) if kernel[3] else "")
    try:
        mods = _modules_for(moddir, release, parse_config(config_text), source["file"])
    except ImageInputError:
        raise
    except ImageError as exc:
        raise ImageInputError(source.get("modules") or source["file"], "modules", str(exc)) from None
    say(f"{name}: building the image from {source['file']} ({release})")
    return _assemble(name, bz, kernel, release, mods, config_text, {"source": source}, busybox, cache, started)


def _assemble(name: str, bz: bytes, kernel: tuple[bytes, str, str, bytes | None], release: str, mods: ModuleSet,
              config_text: str, provenance: dict, busybox: bytes, cache: Path, started: float) -> Image:
    """Write the image (kernel, initramfs, config, manifest) under a temporary name, then rename it
    into place: an interrupted build leaves nothing half-built under `name`."""
    kernel_bytes, kernel_file, kernel_format, _ = kernel
    out = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache))
    try:
        (out / kernel_file).write_bytes(kernel_bytes)
        (out / "config").write_text(config_text)
        cpio = Cpio()
        for d in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules", "etc"):
            cpio.dir(d)
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", busybox, 0o755)
        cpio.symlink("bin/sh", "busybox")
        cpio.file("init", INIT_SCRIPT.encode(), 0o755)
        for mod in mods.order:
            cpio.file(f"lib/modules/{mod}.ko", mods.files[mod])
        for phase, names in (("early", mods.early), ("late", [m for m in mods.order if m not in mods.early])):
            cpio.file(f"lib/modules/load-{phase}",
                      "".join(f"{m} {MODULE_PARAMS.get(m, '')}".strip() + "\n" for m in names).encode())
        (out / INITRAMFS).write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
        wanted = ("CONFIG_MPTCP", "CONFIG_MPTCP_IPV6", "CONFIG_NET_SCH_NETEM", "CONFIG_NET_9P_VIRTIO",
                  "CONFIG_PVH", "CONFIG_MODULE_COMPRESS_XZ", "CONFIG_MODULE_COMPRESS_ZSTD", *V0_CONFIG)
        parsed = parse_config(config_text)
        config = {key: parsed[key] for key in wanted if key in parsed}
        manifest = {
            "name": name, "recipe": RECIPE,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 2),
            **provenance,
            "kernel": {"release": release, "file": kernel_file, "format": kernel_format,
                       "sha256": sha256_file(out / kernel_file), "vmlinuz_sha256": hashlib.sha256(bz).hexdigest()},
            "initramfs": {"file": INITRAMFS, "sha256": sha256_file(out / INITRAMFS)},
            "modules": [{"name": m, "sha256": hashlib.sha256(mods.files[m]).hexdigest(),
                         "early": m in mods.early, "params": MODULE_PARAMS.get(m, "")} for m in mods.order],
            "modules_builtin": mods.builtin, "modules_missing": mods.missing,
            "busybox": {"path": str(BUSYBOX), "sha256": hashlib.sha256(busybox).hexdigest(),
                        "version": _busybox_version()},
            "init_sha256": hashlib.sha256(INIT_SCRIPT.encode()).hexdigest(),
            "config": config,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        out.chmod(0o755)
        final = cache / name
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=cache))
            final.rename(trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        out.rename(final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    image = load(name, cache)
    if image is None:
        raise ImageError(f"{name}: the image just built in {cache / name} cannot be read back")
    return image


def _busybox_version() -> str | None:
    try:
        out = subprocess.run([str(BUSYBOX)], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    first = out.splitlines()[0] if out else ""
    m = re.search(r"BusyBox v(\S+)", first)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m testbed.emulation.qemu.images",
                                     description="build and list cached QEMU guest boot images")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) images")
    b.add_argument("names", nargs="*", help=f"default: all ({', '.join(KERNELS)})")
    b.add_argument("--refresh", action="store_true", help="rebuild when a newer kernel package exists")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("list", help="cached images")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for img in list_images():
            print(f"{img.name:12} {img.release:28} {img.manifest['kernel']['format']:8} mptcp={img.mptcp} "
                  f"{img.dir}")
        return 0
    code = 0
    for name in args.names or list(KERNELS):
        try:
            img = build(name, refresh=args.refresh, force=args.force, log=lambda m: print(m, file=sys.stderr))
        except ImageError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            code = 3
            continue
        print(f"{img.name}: {img.release} ({img.manifest['package']['version']}) in {img.dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
