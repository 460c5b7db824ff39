"""`testbed provision` for real against sshd hosts in network namespaces: kernel-upstream.yml's
sysctl, limits and verify tasks change each host's own namespace, inventory variables override
the role defaults, a second run changes nothing, and the run is archived with its inputs' hashes
and no secret. Ctrl-C stops a run within seconds (exit 130, archive 'interrupted')."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli

pytestmark = [requires_root, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "fixtures" / "playbooks" / "probe.yml"


def _netns_sysctl(netns: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", key], capture_output=True,
                          text=True, check=True).stdout.strip()


def _limits(netns: str) -> str:
    return subprocess.run(["ip", "-n", netns, "mptcp", "limits", "show"], capture_output=True, text=True,
                          check=True).stdout


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_provision_kernel_upstream_in_each_host_namespace_idempotent_and_archived(ssh_hosts, tmp_path):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    hosts = ssh_hosts(2)
    before_root = Path("/proc/sys/net/mptcp/add_addr_timeout").read_text().strip()
    wanted = "61" if before_root != "61" else "62"
    inv = hosts.inventory()
    group = inv["all"]["children"]["testbed_hosts"]
    group["vars"] = {"mptcp_limits": {"subflows": 4, "add_addr_accepted": 4}}  # group vars beat role defaults
    group["hosts"]["h2"]["mptcp_limits"] = {"subflows": 3, "add_addr_accepted": 1}  # host vars beat group vars
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps(inv))
    extra = tmp_path / "extra.yml"
    extra.write_text("kernel_reboot: false  # never reboot the machine the tests run on\n"
                     "mptcp_sysctl_file: /srv/sysctl.d/90-testbed-mptcp.conf  # the host's own directory\n"
                     f"mptcp_sysctls: {{net.mptcp.enabled: 1, net.mptcp.add_addr_timeout: {wanted}}}\n"
                     "site_password: hunter2-xyz\n")
    results = tmp_path / "results"
    runs = []
    for attempt in (1, 2):
        t0 = time.monotonic()
        done = run_cli("provision", str(inventory), "playbooks/kernel-upstream.yml", "--extra-vars", f"@{extra}",
                       "--timeout", "400", "--results", str(results), timeout=450)
        print(f"run {attempt}: {time.monotonic() - t0:.1f} s")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        run_dir = Path(done.stdout.strip().splitlines()[-1].split("archive: ", 1)[1])
        runs.append((done.stdout, run_dir, json.loads((run_dir / "manifest.json").read_text())))
    (out1, dir1, m1), (out2, _, m2) = runs
    # Live progress, then the summary.
    assert re.search(r"TASK Set the sysctl values that differ\n\s+changed\s+h[12]", out1), out1[-2000:]
    assert all(m1["hosts"][h]["status"] == "changed" for h in ("h1", "h2")), m1["hosts"]
    assert all(m2["hosts"][h]["changed"] == 0 and m2["hosts"][h]["status"] == "ok" for h in ("h1", "h2")), m2["hosts"]
    # In each host's namespace, not the root one.
    for host in hosts:
        assert _netns_sysctl(host.netns, "net.mptcp.add_addr_timeout") == wanted
        persisted = (host.root / "sysctl.d" / "90-testbed-mptcp.conf").read_text()  # under the host's /srv
        assert len(re.findall(rf"^net\.mptcp\.add_addr_timeout\s*=\s*{wanted}$", persisted, re.M)) == 1, persisted
    assert Path("/proc/sys/net/mptcp/add_addr_timeout").read_text().strip() == before_root
    assert "subflows 4" in _limits(hosts[0].netns) and "add_addr_accepted 4" in _limits(hosts[0].netns)
    assert "subflows 3" in _limits(hosts[1].netns) and "add_addr_accepted 1" in _limits(hosts[1].netns)
    # The archive: inputs hashed, events kept, secrets out, verifiable.
    assert m1["status"] == "complete" and m1["exit_code"] == 0 and m1["kind"] == "provision"
    assert m1["inputs"]["playbook"]["sha256"] == _sha256(ROOT / "playbooks" / "kernel-upstream.yml")
    assert {"kernel_upstream", "kernel_boot", "sysctl_apply"} <= set(m1["inputs"]["roles"])
    for rel, digest in m1["inputs"]["role_files"].items():
        assert digest == _sha256(ROOT / "playbooks" / rel), rel
    assert "roles/kernel_upstream/defaults/main.yml" in m1["inputs"]["role_files"]
    assert m1["inputs"]["extra_vars"]["site_password"] == "<redacted>"
    assert [h["name"] for h in m1["inputs"]["inventory"]["hosts"]] == ["h1", "h2"]
    events = json.loads((dir1 / "events.json").read_text())
    assert any(e.get("event") == "playbook_on_stats" for e in events)
    for p in dir1.rglob("*"):
        assert not p.is_file() or b"hunter2" not in p.read_bytes(), p
    assert run_cli("verify", str(dir1)).returncode == 0


def test_ctrl_c_stops_a_provision_run_within_seconds(ssh_hosts, tmp_path):
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    hosts = ssh_hosts(1)
    inventory = hosts.write_inventory(tmp_path / "hosts.json")
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "provision", str(inventory), str(PROBE),
                             "-e", "probe_sleep=300", "--results", str(results)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while "TASK Sleep a while" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "TASK Sleep a while" in seen, seen
        time.sleep(1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        print(f"exit {time.monotonic() - t0:.2f} s after SIGINT")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    (run_dir,) = results.iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["exit_code"] == 130, manifest
    assert manifest["ansible_status"] == "canceled"


def test_testbed_host_in_check_mode_installs_the_make_package_list(ssh_hosts, tmp_path):
    """testbed-host.yml in check mode on a real host: the packages it would install are
    scripts/packages.txt (the list `make` installs) plus the inventory's testbed_extra_packages, and a
    package the archive does not have fails the host naming it. Nothing is written (check mode)."""
    pytest.importorskip("ansible_runner", reason="ansible-runner (pip extra 'provision')")
    (h1,) = ssh_hosts(1)
    listed = [w for line in (ROOT / "scripts" / "packages.txt").read_text().splitlines()
              if (w := line.split("#")[0].strip())]
    archive = tmp_path / "checkout.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), "HEAD"], check=True)
    outcomes = {}
    for extra in (["iproute2"], ["testbed-no-such-package"]):
        inv = {"all": {"hosts": {"h1": {**h1.inventory_vars(), "testbed_extra_packages": extra,
                                        "testbed_dir": "/srv/testbed", "testbed_archive": str(archive)}}}}
        path = tmp_path / f"hosts-{extra[0]}.json"
        path.write_text(json.dumps(inv))
        done = run_cli("provision", str(path), "playbooks/testbed-host.yml", "--check", "--timeout", "300",
                       "--results", str(tmp_path / "results"), timeout=360)
        run_dir = Path(re.findall(r"archive: (.+)", done.stdout)[-1].strip())
        events = json.loads((run_dir / "events.json").read_text())
        apt = [e["event_data"] for e in events if e.get("event", "").startswith("runner_on_")
               and e.get("event_data", {}).get("task") == "Install the testbed's packages"]
        outcomes[extra[0]] = (done, apt)
    done, apt = outcomes["iproute2"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    asked = apt[-1]["res"]["invocation"]["module_args"]["name"]
    assert asked == [*listed, "iproute2"], asked
    assert not (h1.root / "testbed").exists()  # check mode: the checkout was not unpacked
    done, apt = outcomes["testbed-no-such-package"]
    assert done.returncode == 1 and "testbed-no-such-package" in done.stdout, done.stdout[-3000:]
