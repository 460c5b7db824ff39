"""Guest images from a kernel the user gives (`testbed images build NAME --deb/--kernel`): bad input is
refused with one line and nothing built; a bzImage with its drivers built in needs no modules; the
MPTCP flavour a first boot records is classified from the kernel's files and log (v0.92 fixtures)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from testbed.emulation.qemu import images
from testbed.matrix.features import v092_image_problem
from testbed.stacks import v092
from testbed.stacks.features import classify, classify_paths
from tests.conftest import run_cli

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "v092"
BUILT_IN = "\n".join(f"{k}=y" for k in (*images.MODULE_CONFIG.values(), *images.INIT_CONFIG)) + "\n"


def fake_bzimage(version: str = "4.4.110.mptcp (root@build) #1 SMP Mon Jan 1 00:00:00 UTC 2018") -> bytes:
    """The setup header of an x86 bzImage (boot protocol 2.15) with its kernel_version string; no payload,
    so it is kept as the bzImage (a 4.4 kernel has no PVH note either)."""
    data = bytearray(0x400)
    data[0x1F1] = 1  # setup_sects
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    struct.pack_into("<H", data, 0x20E, 0x300 - 0x200)
    data[0x300:0x300 + len(version) + 1] = version.encode() + b"\0"
    return bytes(data)


def cli(cache: Path, *args: str):
    return run_cli("images", "build", *args, env={**os.environ, "TESTBED_IMAGE_CACHE": str(cache)}, timeout=60)


def test_bad_input_is_one_line_exit_2_and_builds_nothing(tmp_path):
    cache = tmp_path / "cache"
    text = tmp_path / "notes.deb"
    text.write_text("not a package\n")
    other = tmp_path / "lib/modules/6.1.0-57-amd64"
    other.mkdir(parents=True)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(fake_bzimage())
    cases = [
        (["v0", "--deb", str(tmp_path / "missing.deb")], f"{tmp_path / 'missing.deb'}: deb: no such file"),
        (["v0", "--deb", str(text)], f"{text}: deb: not a Debian package (.deb): no ar archive with debian-binary"),
        (["v0", "--kernel", str(text)], f"{text}: kernel: not an x86 kernel image (no 'HdrS' boot header at 0x202)"),
        (["v0", "--kernel", str(kernel), "--modules", str(tmp_path)],
         f"{other}: modules: modules of release 6.1.0-57-amd64, but the kernel is 4.4.110.mptcp (its modules would "
         "not load)"),
        (["linux-6.1", "--deb", str(text)],
         "images: name: linux-6.1 is the Debian image `testbed images linux-6.1` builds: choose another name"),
    ]
    for args, line in cases:
        done = cli(cache, *args)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [line], (args, done.stderr)
        assert not done.stdout
    assert not cache.exists()


def test_a_bzimage_needs_its_drivers_built_in_without_modules(tmp_path):
    cache = tmp_path / "cache"
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(fake_bzimage())
    done = cli(cache, "v0", "--kernel", str(kernel))  # no modules, no config: nothing tells
    assert done.returncode == 2 and "cannot" not in done.stderr and "give --modules" in done.stderr, done.stderr
    config = tmp_path / "config"
    config.write_text(BUILT_IN.replace("CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_NET=m")
                      .replace("CONFIG_9P_FS=y", "# CONFIG_9P_FS is not set"))
    done = cli(cache, "v0", "--kernel", str(kernel), "--config", str(config))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"{kernel}: kernel: the guest needs virtio_net (CONFIG_VIRTIO_NET=m, a module), "
                                  "9p (CONFIG_9P_FS is not set): without --modules"), done.stderr
    assert not (cache / "v0").exists()

    config.write_text(BUILT_IN + (FIX / "config").read_text())
    done = cli(cache, "v0", "--kernel", str(kernel), "--config", str(config))
    assert done.returncode == 0, done.stderr
    image = images.load("v0", cache)
    assert image is not None and image.release == "4.4.110.mptcp"
    assert image.manifest["kernel"]["format"] == "bzImage" and image.kernel.read_bytes() == kernel.read_bytes()
    assert image.manifest["modules"] == [] and set(image.manifest["modules_builtin"]) == set(images.REQUIRED_MODULES)
    assert image.source["type"] == "bzimage" and image.source["file"] == str(kernel)
    assert image.source["sha256"] == images.sha256_file(kernel) and image.source["config"] == str(config)
    # Its config says v0.9x (CONFIG_MPTCP_FULLMESH...): not upstream MPTCP, although CONFIG_MPTCP=y; not booted.
    assert image.flavour is None and not image.mptcp
    assert v092_image_problem("v0", image).startswith("image v0 has not been booted yet")
    built = image.manifest["built"]
    again = cli(cache, "v0", "--kernel", str(kernel), "--config", str(config))  # the same files: cached
    assert again.returncode == 0 and json.loads((cache / "v0/manifest.json").read_text())["built"] == built
    assert [i.name for i in images.list_images(cache)] == ["v0"]


def test_the_v092_kernel_is_told_from_its_sysctls_and_log():
    v0_files = {f"{v092.PROC_SYS}/{n}": v for n, v in (("mptcp_enabled", "1"), ("mptcp_path_manager", "fullmesh"),
                                                      ("mptcp_scheduler", "default"), ("mptcp_checksum", "1"))}
    v0_files[v092.SNMP] = (FIX / "snmp").read_text()
    assert set(v0_files) <= set(classify_paths())
    found = classify(v0_files, "4.4.110.mptcp", (FIX / "dmesg").read_text(), (FIX / "config").read_text())
    assert found["flavour"] == "v0.9x" and found["release"] == "v0.92" and found["kernel"] == "4.4.110.mptcp"
    assert found["sysctls"]["mptcp_path_manager"] == "fullmesh" and found["snmp"]
    assert found["path_managers"] == ["default", "fullmesh", "ndiffports", "binder"]
    # The log line alone (a kernel without sysctls) is enough; its sysctl alone too (the log rotated out).
    assert classify({}, "4.4.0", (FIX / "dmesg").read_text())["flavour"] == "v0.9x"
    assert classify(v0_files, "4.4.0", "")["release"] is None
    upstream = classify({"/proc/sys/net/mptcp/enabled": "1\n"}, "6.1.0-57-amd64", "MPTCP token hash table entries")
    assert upstream["flavour"] == "upstream"
    assert classify({}, "5.10.0-46-amd64", "")["flavour"] == "none"

    # What a run of a node on such a guest checks its configuration against (stacks.v092.check_supported).
    recorded = v092.from_detected(json.loads(json.dumps(found)))  # as read back from the manifest
    assert recorded == v092.features(v092.probe(v0_files.get, "4.4.110.mptcp", (FIX / "dmesg").read_text(),
                                                (FIX / "config").read_text()))
    assert recorded.flavour == "v0.9x" and recorded.release == "v0.92" and "fullmesh" in recorded.path_managers

    class Booted:  # what availability reads of a built image: its name, release and first-boot record
        name, release = "v0", "4.4.110.mptcp"
        detected = found

    assert v092_image_problem("v0", Booted()) is None
    Booted.detected = upstream
    assert v092_image_problem("img", Booted()) == "image img boots kernel 6.1.0-57-amd64 with upstream MPTCP, not v0.92"
    Booted.detected = classify({}, "5.10.0-46-amd64", "")
    assert v092_image_problem("img", Booted()) == "image img boots kernel 5.10.0-46-amd64 without MPTCP, not v0.92"


@pytest.mark.parametrize("bad", [b"", b"MZ" + bytes(0x300)])
def test_bzimage_release_refuses_what_is_not_a_kernel(bad):
    with pytest.raises(ValueError, match="not an x86"):
        images.bzimage_release(bad)
    assert images.bzimage_release(fake_bzimage()) == "4.4.110.mptcp"
