"""guest-images.yml through `testbed provision` on an sshd host whose testbed checkout is this one
(the host shares this machine's filesystem): `testbed images` runs there; a cached image is
reused, so the run changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli

pytestmark = [requires_root, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]


def test_guest_images_reuses_a_cached_image_and_changes_nothing(ssh_hosts, tmp_path):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    listed = subprocess.run([sys.executable, "-m", "testbed", "images", "--list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60).stdout
    cached = [line.split("\t")[0] for line in listed.splitlines() if line.strip()]
    if not cached:
        pytest.skip("needs a cached guest image (testbed images linux-6.1)")
    hosts = ssh_hosts(1)
    inventory = hosts.write_inventory(tmp_path / "hosts.json")
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"testbed_dir": str(ROOT), "guest_images_names": [cached[0]]}))
    done = run_cli("provision", str(inventory), "playbooks/guest-images.yml", "-e", f"@{extra}",
                   "--results", str(tmp_path / "results"), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    run_dir = Path(next(line for line in done.stdout.splitlines() if line.startswith("archive: ")).split(": ", 1)[1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["hosts"]["h1"]["status"] == "ok" and manifest["hosts"]["h1"]["changed"] == 0, manifest["hosts"]
    events = json.loads((run_dir / "events.json").read_text())
    built = [e for e in events if e.get("event") == "runner_on_ok"
             and e["event_data"].get("task") == "Build the guest images"]
    assert built and built[0]["event_data"]["res"]["stdout"].startswith(f"{cached[0]}: "), built


def test_guest_images_builds_a_v092_image_from_a_deb_then_changes_nothing(ssh_hosts, tmp_path):
    """guest_images_v092_deb: `testbed images build mptcp-v0.92 --deb PATH` on the target (here a Debian
    .deb stands in for the v0.92 one); its first boot makes the first run changed, the second run is 0
    changed."""
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    from testbed.emulation.qemu import images

    debs = sorted((images.cache_dir() / ".debs").glob("linux-image-6.1.*.deb"))
    cached = images.load("linux-6.1")
    if not debs or cached is None:
        pytest.skip("needs a cached linux-6.1 image and its .deb (testbed images linux-6.1)")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "linux-6.1").symlink_to(cached.dir)  # the Debian image task finds it cached: no download
    hosts = ssh_hosts(1)
    inventory = hosts.write_inventory(tmp_path / "hosts.json")
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"testbed_dir": str(ROOT), "guest_images_names": ["linux-6.1"],
                                 "guest_images_cache": str(cache), "guest_images_v092_deb": str(debs[-1])}))
    changed = []
    for attempt in (1, 2):
        done = run_cli("provision", str(inventory), "playbooks/guest-images.yml", "-e", f"@{extra}",
                       "--results", str(tmp_path / f"results{attempt}"), timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        run_dir = Path(next(line for line in done.stdout.splitlines()
                            if line.startswith("archive: ")).split(": ", 1)[1])
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["hosts"]["h1"]["status"] == ("changed" if attempt == 1 else "ok"), manifest["hosts"]
        changed.append(manifest["hosts"]["h1"]["changed"])
    assert changed == [1, 0], changed
    image = images.load("mptcp-v0.92", cache)
    assert image is not None and image.source["file"] == str(debs[-1]) and image.flavour == "upstream"
