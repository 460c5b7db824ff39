"""An image from a kernel .deb the user gives (`testbed images build NAME --deb PATH`), built and booted
once for real: its first boot records the kernel's MPTCP flavour, and a v0.92 registry row pointing at
it is unavailable because that kernel has upstream MPTCP. The .deb is one of Debian's (the image cache
keeps what `testbed images` downloaded): no v0.92 kernel can be had here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testbed.emulation.qemu import images
from testbed.matrix.features import available
from testbed.spec.matrix import Implementation
from tests.conftest import run_cli


def debian_kernel_deb() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: qemu guests (the first boot)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    debs = sorted((images.cache_dir() / ".debs").glob("linux-image-6.1.*.deb"))
    if not debs:
        try:
            images.build("linux-6.1")  # downloads the package into the cache's .debs/
        except images.DownloadError as exc:
            pytest.skip(f"no cached Debian kernel .deb and Debian's archive is unreachable: {exc}")
        debs = sorted((images.cache_dir() / ".debs").glob("linux-image-6.1.*.deb"))
    if not debs:
        pytest.skip(f"no linux-image-6.1 .deb in {images.cache_dir() / '.debs'}")
    return debs[-1]


def test_an_image_from_a_users_deb_boots_once_and_is_not_v092(tmp_path, no_leaks):
    deb = debian_kernel_deb()
    cache = tmp_path / "cache"
    env = {**os.environ, "TESTBED_IMAGE_CACHE": str(cache)}
    done = run_cli("images", "build", "users-kernel", "--deb", str(deb), env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    image = images.load("users-kernel", cache)
    assert image is not None and image.release.startswith("6.1.")
    assert image.source == {"type": "deb", "file": str(deb.resolve()), "sha256": images.sha256_file(deb)}
    assert image.manifest["package"]["name"] == deb.name.split("_")[0]
    assert [m["name"] for m in image.manifest["modules"]][-1:] and image.manifest["kernel"]["format"] == "elf"
    # The first boot ran (as root) and found upstream MPTCP from the guest kernel's own sysctl.
    assert "users-kernel: boots in" in done.stdout and "MPTCP: upstream" in done.stdout, done.stdout
    assert image.detected["flavour"] == "upstream" and image.detected["kernel"] == image.release, image.detected
    assert image.mptcp and image.mptcp_counters and "MPCapableSYNRX" in image.mptcp_counters

    # The same file again: the cached image, no rebuild, no second boot.
    again = run_cli("images", "build", "users-kernel", "--deb", str(deb), env=env, timeout=60)
    assert again.returncode == 0 and again.stdout.splitlines() == [
        f"users-kernel: {image.release} (mptcp=yes, flavour=upstream) in {image.dir}"], again.stdout + again.stderr
    assert images.load("users-kernel", cache).manifest["built"] == image.manifest["built"]
    listed = run_cli("images", "--list", env=env, timeout=60).stdout
    assert f"users-kernel\t{image.release}\tmptcp=yes\t{image.dir}\tflavour=upstream" in listed.splitlines()

    v092 = Implementation(driver="v0.92", backend="qemu", kernel="4.4", image=str(image.dir))
    assert available("mptcp-v0.92", v092, image.dir) == (
        False, f"image {image.dir} boots kernel {image.release} with upstream MPTCP, not v0.92")
