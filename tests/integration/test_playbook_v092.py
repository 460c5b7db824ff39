"""kernel-mptcp-v0.92.yml in check mode through `testbed provision` against sshd hosts, on a
fixture source tree (tests/fixtures/mptcp-v0.92-tree): the tree is identified, its Kconfig
checked for every option, the .config lines that differ reported (and not written), a tree that
lacks an option refused with its name; and the verify step, which runs the v0.92 driver's
detection on the controller, tells an upstream kernel apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli

pytestmark = [requires_root, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "tests" / "fixtures" / "mptcp-v0.92-tree"
PLAYBOOK = "playbooks/kernel-mptcp-v0.92.yml"


def _tree(dest: Path, drop_binder: bool = False) -> Path:
    shutil.copytree(TREE, dest)
    shutil.copyfile(dest / "dot-config", dest / ".config")
    if drop_binder:
        kconfig = dest / "net" / "mptcp" / "Kconfig"
        kconfig.write_text(kconfig.read_text().replace("config MPTCP_BINDER", "config MPTCP_BINDER_GONE"))
    return dest


def _run_dir(stdout: str) -> Path:
    return Path(next(line for line in stdout.splitlines() if line.startswith("archive: ")).split(": ", 1)[1])


def test_v092_check_mode_on_a_fixture_tree(ssh_hosts, tmp_path):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    hosts = ssh_hosts(2)
    good = _tree(hosts[0].root / "mptcp")  # /srv/mptcp on h1
    _tree(hosts[1].root / "mptcp", drop_binder=True)  # /srv/mptcp on h2
    before = (good / ".config").read_bytes()
    inv = hosts.inventory()
    inv["all"]["children"]["testbed_hosts"]["vars"] = {
        "mptcp_v092_source": "tree", "mptcp_v092_src_dir": "/srv/mptcp",
        "kernel_reboot": False,  # never reboot the machine the tests run on
        # This machine's gcc is too new for Linux 4.4; the fixture tree compiles nothing.
        "mptcp_v092_cc_max_version": "99",
        # apt's simulation of the toolchain took 35 s of a 134 s run here and is apt's, not ours.
        "mptcp_v092_toolchain_packages": [],
    }
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps(inv))
    results = tmp_path / "results"
    done = run_cli("provision", str(inventory), PLAYBOOK, "--check", "--results", str(results), timeout=400)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    manifest = json.loads((_run_dir(done.stdout) / "manifest.json").read_text())
    h1, h2 = manifest["hosts"]["h1"], manifest["hosts"]["h2"]
    assert h1["status"] == "changed" and h1["failed"] == 0, h1
    assert h2["status"] == "failed" and h2["task"] == "Require a Linux 4.4 MPTCP tree that has every requested option"
    assert "its Kconfig has no CONFIG_MPTCP_BINDER" in h2["message"], h2
    assert manifest["inputs"]["check"] is True and "mptcp_v092" in manifest["inputs"]["roles"]

    events = json.loads((_run_dir(done.stdout) / "events.json").read_text())
    items = {}
    for e in events:
        data = e.get("event_data") or {}
        if e.get("event") == "runner_item_on_ok" and data.get("host") == "h1" \
                and data.get("task") == "Set the MPTCP config options":
            res = data["res"]
            items[res["item"]["key"]] = res["changed"]
    assert len(items) == 22, items  # every option of the fragment was looked at
    assert items["CONFIG_MPTCP"] and items["CONFIG_IPV6"] and items["CONFIG_TCP_CONG_LIA"]  # would change
    assert not items["CONFIG_TCP_CONG_ADVANCED"] and not items["CONFIG_LOCALVERSION_AUTO"]  # already so
    assert (good / ".config").read_bytes() == before  # check mode wrote nothing
    tasks = {(e["event_data"].get("task"), e["event_data"].get("host")): e["event"] for e in events
             if e.get("event", "").startswith("runner_on_")}
    assert tasks[("Read the tree's kernel version", "h1")] == "runner_on_ok"
    assert tasks[("Build the kernel packages", "h1")] == "runner_on_skipped"  # check mode builds nothing


def test_v092_verify_tells_an_upstream_kernel_apart(ssh_hosts, tmp_path):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    hosts = ssh_hosts(1)
    inventory = hosts.write_inventory(tmp_path / "hosts.json")
    done = run_cli("provision", str(inventory), PLAYBOOK, "-e", "mptcp_v092_verify_only=true",
                   "--results", str(tmp_path / "results"), timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    manifest = json.loads((_run_dir(done.stdout) / "manifest.json").read_text())
    h1 = manifest["hosts"]["h1"]
    assert h1["task"] == "Require MPTCP v0.92", h1
    assert "is not an MPTCP v0.9x kernel: no /proc/sys/net/mptcp/mptcp_enabled" in h1["message"], h1
    assert "it has upstream MPTCP" in h1["message"]
