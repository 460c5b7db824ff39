"""QEMU guests: the image builder's pieces (no root needed) and a real Debian 6.1 guest speaking MPTCP
with a network namespace across a Linux bridge, reset and reused, then shut down without leftovers."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.collect.counters import parse as parse_counters
from testbed.emulation import nodeexec
from testbed.emulation.qemu import images
from testbed.emulation.qemu.guest import Guest, Nic, random_mac
from testbed.emulation.qemu.images import Cpio, extract_vmlinux, load_order, module_depends, natural_key
from testbed.emulation.qemu.node import rename_nics
from testbed.workloads import agent_path

AGENT = agent_path()


# ------------------------------------------------------------------------------------ unit tests


# What `modinfo -F depends` says for the virtio chain of Debian's 6.1 kernel.
VIRTIO_DEPENDS = {
    "virtio_net": ["net_failover", "virtio", "virtio_ring"],
    "net_failover": ["failover"],
    "failover": [],
    "virtio_pci": ["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio", "virtio_ring"],
    "virtio_pci_legacy_dev": [],
    "virtio_pci_modern_dev": [],
    "virtio": [],
    "virtio_ring": [],
}


def test_load_order_puts_every_module_after_its_dependencies():
    order = load_order(["virtio_ring", "virtio", "virtio_pci", "virtio_net"], VIRTIO_DEPENDS.__getitem__)
    assert order == ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                     "failover", "net_failover", "virtio_net"]
    # Any root order gives a valid order: each module after all it depends on, each once.
    for roots in (["virtio_net", "virtio_pci"], ["virtio_pci", "virtio_net"], ["virtio-net"]):
        order = load_order(roots, VIRTIO_DEPENDS.__getitem__)
        assert len(order) == len(set(order))
        for i, name in enumerate(order):
            assert set(VIRTIO_DEPENDS[name]) <= set(order[:i]), (name, order)


def test_load_order_rejects_cycles():
    deps = {"a": ["b"], "b": ["c"], "c": ["a"]}
    with pytest.raises(ValueError, match="a -> b -> c -> a"):
        load_order(["a"], deps.__getitem__)


def _elf_with_modinfo(modinfo: bytes) -> bytes:
    """A minimal ELF64 relocatable with a .modinfo section, as modpost writes it."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body = modinfo + shstrtab
    shoff = 64 + len(body)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, 64, len(modinfo), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, 64 + len(modinfo), len(shstrtab), 0, 0, 1, 0)
    return header + body + sections


def test_module_depends_reads_the_modinfo_section():
    ko = _elf_with_modinfo(b"license=GPL\0depends=net_failover,virtio,virtio_ring\0name=virtio_net\0")
    assert module_depends(ko) == ["net_failover", "virtio", "virtio_ring"]
    assert module_depends(_elf_with_modinfo(b"depends=\0name=virtio\0")) == []
    with pytest.raises(ValueError):
        module_depends(b"not an elf file at all, not even close")


def _bzimage(payload: bytes, setup_sects: int = 1) -> bytes:
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + bytes(16) + payload


def test_extract_vmlinux_unpacks_the_payload():
    elf = b"\x7fELF" + os.urandom(5000)
    size = struct.pack("<I", len(elf))  # the kernel build appends the uncompressed size
    assert extract_vmlinux(_bzimage(lzma.compress(elf, check=lzma.CHECK_CRC32) + size)) == elf
    assert extract_vmlinux(_bzimage(gzip.compress(elf) + size)) == elf
    with pytest.raises(ValueError):
        extract_vmlinux(b"\0" * 4096)


def test_cpio_newc_archive_round_trips():
    archive = Cpio()
    archive.dir("bin")
    archive.file("bin/busybox", b"\x7fELF...", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.chardev("dev/console", 5, 1)
    data = archive.finish()
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize, mode = fields[11], fields[6], fields[1]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize + (-(110 + namesize) % 4)
        body = data[pos:pos + filesize]
        pos += filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            break
        entries[name] = (mode, body, fields[9], fields[10])
    assert entries["bin/busybox"][:2] == (0o100755, b"\x7fELF...")
    assert entries["bin/sh"][:2] == (0o120777, b"busybox")
    assert entries["dev/console"] == (0o020600, b"", 5, 1)
    assert entries["bin"][0] == 0o040755
    assert pos == len(data)


def test_newest_package_name_sorts_last():
    names = ["linux-image-6.12.95+deb12-amd64", "linux-image-6.12.117+deb12-amd64",
             "linux-image-6.12.9+deb12-amd64"]
    assert max(names, key=natural_key) == "linux-image-6.12.117+deb12-amd64"
    assert max(["linux-image-5.10.0-9-amd64", "linux-image-5.10.0-46-amd64"], key=natural_key).endswith("-46-amd64")


# -------------------------------------------------------------------------------------- the VM


@pytest.fixture(scope="module")
def image():
    if os.geteuid() != 0:
        pytest.skip("needs root: TAP devices, a bridge and a network namespace")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not installed: Debian kernels cannot be fetched")
    if not Path("/dev/net/tun").exists():
        pytest.skip("/dev/net/tun missing: no TAP devices")
    try:
        return images.build("linux-6.1")
    except images.DownloadError as exc:
        pytest.skip(f"Debian's archive is unreachable, no linux-6.1 kernel: {exc}")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


def ns_counters(ns: str) -> dict[str, int]:
    return parse_counters(sh("ip", "netns", "exec", ns, "cat", "/proc/net/netstat").stdout)


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def sysctls(guest: Guest) -> dict[str, str]:
    """Every writable sysctl under /proc/sys/net in the guest, read back: path (from net/) -> value."""
    rc, out = guest.run(["find", "/proc/sys/net", "-type", "f", "-perm", "-200"], timeout=60)
    assert rc == 0, out
    files = guest.read_files(out.split())
    return {p.removeprefix("/proc/sys/"): v.decode() for p, v in files.items() if v is not None}


def qdiscs(guest: Guest) -> dict[str, list[str]]:
    """Each link's qdiscs (kind and parent), read back with tc."""
    rc, out = guest.run(["tc", "-j", "qdisc", "show"])
    assert rc == 0, out
    found: dict[str, list[str]] = {}
    for q in json.loads(out):
        found.setdefault(q["dev"], []).append(f"{q['kind']} {q.get('parent', 'root')}")
    return {dev: sorted(kinds) for dev, kinds in found.items()}


def agent(*args: str) -> list[str]:
    return ["/usr/bin/python3", "-S", str(AGENT), *args]


def last_json(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return json.loads(text.strip().splitlines()[-1])


def test_guest_speaks_mptcp_with_a_namespace(image, tmp_path, monkeypatch):
    import testbed.state

    monkeypatch.setattr(testbed.state, "STATE_DIR", tmp_path / "state")
    state = testbed.state.RunState(f"vmtest-{os.getpid()}")
    tag = os.urandom(3).hex()
    bridge, ns, veth, tap = f"tbv{tag}br", f"tbv{tag}", f"tbv{tag}h", f"tbv{tag}brg0"  # TAP named after its switch
    guest = Guest(f"vm{tag}", state=state, log_dir=tmp_path / "logs")
    common = ["--port", "5201", "--protocol", "mptcp", "--size", "4MB", "--timeout", "60"]
    qemu_pid = None
    started = time.monotonic()
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "link", "set", bridge, "up")
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", "10.251.0.1/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

        guest.boot(image, [Nic(tap, random_mac(), "eth0")])
        qemu_pid = guest.qemu_pid
        assert guest.accel in ("kvm", "tcg")
        # (a KVM attempt that failed, the first time on a host without working KVM, is recorded too)
        assert qemu_pid in {p["pid"] for p in state.processes} and state.links == [tap]
        rc, release = guest.run(["uname", "-r"])
        assert rc == 0 and release.strip() == image.release and release.startswith("6.1.")

        sh("ip", "link", "set", tap, "master", bridge)
        nodeexec.run_many(guest, [["ip", "addr", "add", "10.251.0.2/24", "dev", "eth0"],
                                  ["ip", "link", "set", "eth0", "up"]])

        # 1. client in the guest, server in the namespace
        g0, n0 = guest.counters(), ns_counters(ns)
        server = subprocess.Popen(["ip", "netns", "exec", ns, *agent("bulk-server", "--bind", "0.0.0.0", *common)],
                                  stdout=subprocess.PIPE)
        try:
            assert nodeexec.wait_for_output(server.stdout, b"ready", 15)[0]
            rc, out = guest.run(agent("bulk-client", "--connect", "10.251.0.1", *common), timeout=60)
            sout, _ = server.communicate(timeout=15)
        finally:
            server.kill()
            server.wait()
        client = last_json(out)
        assert rc == 0 and client["intact"] and client["bytes"] == 4_000_000, client
        assert last_json(sout)["sha256"] == client["sha256_local"]
        g1, n1 = guest.counters(), ns_counters(ns)
        assert changed(g0, g1).get("MPTcpExtMPCapableSYNACKRX", 0) >= 1, changed(g0, g1)
        assert changed(n0, n1).get("MPTcpExtMPCapableSYNRX", 0) >= 1, changed(n0, n1)

        # 2. server in the guest (started like the drivers start servers), client in the namespace
        with open(tmp_path / "server.stderr", "wb") as log:  # the guest process keeps its own descriptor
            gserver = guest.popen(agent("bulk-server", "--bind", "0.0.0.0", *common), stdout=subprocess.PIPE,
                                  stderr=log)
        found, seen = nodeexec.wait_for_output(gserver.stdout, b"ready", 20)
        assert found, seen
        r = subprocess.run(["ip", "netns", "exec", ns, *agent("bulk-client", "--connect", "10.251.0.2", *common)],
                           capture_output=True, text=True, timeout=90)
        gout, _ = gserver.communicate(timeout=20)
        client = last_json(r.stdout)
        assert r.returncode == 0 and client["intact"] and client["is_mptcp"], client
        assert gserver.returncode == 0 and last_json(gout)["sha256"] == client["sha256_local"]
        g2, n2 = guest.counters(), ns_counters(ns)
        assert changed(g1, g2).get("MPTcpExtMPCapableSYNRX", 0) >= 1, changed(g1, g2)
        assert changed(g1, g2).get("MPTcpExtMPCapableACKRX", 0) >= 1, changed(g1, g2)
        assert changed(n1, n2).get("MPTcpExtMPCapableSYNACKRX", 0) >= 1, changed(n1, n2)

        # 3. a cell leaves state behind; reset() takes the guest back to how it booted. As a pooled
        # guest does, the NIC takes the topology's name first, and gets sysctls and qdiscs of its own.
        guest.run(["ip", "addr", "flush", "dev", "eth0"], check=True)
        guest.run(["ip", "link", "set", "eth0", "down"], check=True)
        booted_sysctls, booted_qdiscs = sysctls(guest), qdiscs(guest)
        # `find` ran: the guest cannot know what it wrote, so this reset reads every sysctl
        assert guest.reset()["sysctl_scan"] == {"scan": "full", "checked": len(booted_sysctls), "foreign": "find"}
        rename_nics(guest, ["wlan0"])
        ecn = guest.read_file("/proc/sys/net/ipv4/tcp_ecn").decode().strip()
        limits = guest.run(["ip", "mptcp", "limits", "show"])[1].split()
        nodeexec.run_many(guest, [
            ["ip", "link", "set", "wlan0", "up"],
            ["ip", "addr", "add", "10.251.0.2/24", "dev", "wlan0"],
            ["sysctl", "-q", "-w", f"net.ipv4.tcp_ecn={'2' if ecn == '1' else '1'}"],
            ["sysctl", "-q", "-w", "net.ipv4.conf.wlan0.rp_filter=2", "net.ipv6.conf.wlan0.accept_ra=0",
             "net.ipv4.conf.all.rp_filter=2", "net.mptcp.add_addr_timeout=7"],
            ["ip", "mptcp", "endpoint", "add", "10.251.0.2", "dev", "wlan0", "signal"],
            ["ip", "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4"],
            ["tc", "qdisc", "add", "dev", "wlan0", "root", "netem", "delay", "5ms"],
            ["ip", "link", "add", "tbifb0", "type", "ifb"],
            ["ip", "link", "set", "tbifb0", "up"],
            ["tc", "qdisc", "add", "dev", "tbifb0", "root", "netem", "delay", "5ms", "loss", "1%"],
            ["tc", "qdisc", "add", "dev", "wlan0", "ingress"],
            ["tc", "filter", "add", "dev", "wlan0", "parent", "ffff:", "matchall", "action", "mirred", "egress",
             "redirect", "dev", "tbifb0"],
            ["ip", "rule", "add", "from", "10.251.0.2", "table", "100", "priority", "1000"],
            ["ip", "route", "add", "default", "via", "10.251.0.1", "table", "100"],
        ])
        dirty = guest.read_files(["/proc/sys/net/ipv4/conf/wlan0/rp_filter"])
        assert dirty["/proc/sys/net/ipv4/conf/wlan0/rp_filter"] == b"2\n" != booted_sysctls["net/ipv4/conf/eth0/rp_filter"]
        assert "netem" in guest.run(["tc", "qdisc", "show", "dev", "wlan0"])[1]
        proc = guest.popen(["sleep", "600"])
        done = guest.reset()
        assert proc.wait(5) is not None and done["killed"] == 1
        assert {"net.ipv4.tcp_ecn", "net.ipv4.conf.wlan0.rp_filter", "net.mptcp.add_addr_timeout"} <= set(
            done["sysctls_restored"]), done
        assert done["links_deleted"] == ["tbifb0"] and done["qdiscs_deleted"] == 2, done
        # Only ip, tc and sysctl (done by guestd itself) ran: only what was written was read back,
        # with rp_filter of every device (conf/all/ was written) and the IPv6 MTUs.
        assert done["sysctl_scan"]["scan"] == "written" and done["sysctl_scan"]["checked"] < len(booted_sysctls) / 4, done
        assert done["network"]["errors"] == [] and done["network"]["nft_tables"] == 0, done
        # Read back: every writable net.* sysctl as it was at boot (the NIC's under its new name), and
        # the qdiscs as they were once the next cell brings the link up (the kernel's default root
        # qdisc, no ingress, no ifb device).
        assert sysctls(guest) == {k.replace("/eth0/", "/wlan0/"): v for k, v in booted_sysctls.items()}
        guest.run(["ip", "link", "set", "wlan0", "up"], check=True)
        assert qdiscs(guest) == {k.replace("eth0", "wlan0"): v for k, v in booted_qdiscs.items()}
        guest.run(["ip", "link", "set", "wlan0", "down"], check=True)
        assert guest.read_file("/proc/sys/net/ipv4/tcp_ecn").decode().strip() == ecn
        assert "inet " not in guest.run(["ip", "-4", "addr", "show", "dev", "wlan0"])[1]
        assert guest.run(["ip", "mptcp", "endpoint", "show"])[1].strip() == ""
        assert guest.run(["ip", "mptcp", "limits", "show"])[1].split() == limits
        assert guest.run(["ip", "route", "show", "table", "100"])[1].strip() == ""
        assert [line.split(":")[0] for line in guest.run(["ip", "rule"])[1].splitlines()] == ["0", "32766", "32767"]
        # A sysctl written behind guestd's back (by a shell) is restored too: that reset reads them all.
        assert guest.reset()["sysctl_scan"]["foreign"] == "find"  # the read-back above
        guest.run(["sh", "-c", f"echo {'2' if ecn == '1' else '1'} > /proc/sys/net/ipv4/tcp_ecn"], check=True)
        done = guest.reset()
        assert done["sysctl_scan"]["scan"] == "full" and done["sysctl_scan"]["foreign"] == "sh", done
        assert done["sysctls_restored"] == ["net.ipv4.tcp_ecn"], done
        assert guest.read_file("/proc/sys/net/ipv4/tcp_ecn").decode().strip() == ecn
        rename_nics(guest, ["eth0"])

        # 4. and the guest is ready for the next cell
        guest.run(["ip", "addr", "add", "10.251.0.2/24", "dev", "eth0"], check=True)
        guest.run(["ip", "link", "set", "eth0", "up"], check=True)
        cat = guest.popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert cat.communicate(b"still here", timeout=10) == (b"still here", None)
        rc, out = guest.run(["ping", "-c", "1", "-W", "5", "10.251.0.1"], timeout=20)
        assert rc == 0, out
    finally:
        guest.shutdown()
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", bridge, check=False)
    print(f"guest boot {guest.boot_seconds} s, ready {guest.ready_seconds} s ({guest.accel}), "
          f"test {time.monotonic() - started:.1f} s")
    assert qemu_pid is not None and not Path(f"/proc/{qemu_pid}").exists(), "qemu still running"
    for link in (tap, bridge, veth):
        assert sh("ip", "link", "show", link, check=False).returncode != 0, f"{link} left behind"
    assert ns not in sh("ip", "netns", "list").stdout
    assert (tmp_path / "logs" / f"vm{tag}-console.log").exists()


def test_guest_refuses_bad_names():
    with pytest.raises(ValueError):
        Guest("bad name")
    guest = Guest("ok")
    with pytest.raises(ValueError, match="TAP name"):
        guest.nics = [Nic("x" * 16, random_mac())]
        guest._check_inputs()
    with pytest.raises(ValueError, match="MAC"):
        guest.nics = [Nic("tap0", "52:54:00:zz:00:01")]
        guest._check_inputs()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
