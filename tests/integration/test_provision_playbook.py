"""testbed.provision.playbook against real sshd hosts in namespaces: per-host results and failing
task messages, host keys checked (unknown refused, accept-new recorded), stop within seconds."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import requires_root

pytestmark = [requires_root, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "fixtures" / "playbooks" / "probe.yml"


@pytest.fixture
def playbook_mod():
    from testbed.provision import playbook

    why = playbook.missing_capability()
    if why:
        pytest.skip(why)
    return playbook


def _ssh_processes(address: str, control_marker: str = "tbcp-") -> list[str]:
    """ssh clients of run_playbook (by their ControlPath) to `address`: other runs may be live."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ssh") and control_marker in cmd and address in cmd:
                found.append(cmd)
    return found


def test_per_host_results_and_the_failing_tasks_message(ssh_hosts, tmp_path, playbook_mod):
    hosts = ssh_hosts(2)
    inv = hosts.inventory()
    inv["all"]["children"]["testbed_hosts"]["hosts"]["h2"]["probe_fail"] = True
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inv))
    before = set(_ssh_processes(hosts[0].address)) | set(_ssh_processes(hosts[1].address))
    run = playbook_mod.run_playbook(PROBE, path, extravars={"probe_value": "v1"}, timeout=300,
                                    data_dir=tmp_path / "pdd")
    assert run.status == "failed", run.stdout[-2000:]
    h1, h2 = run.hosts["h1"], run.hosts["h2"]
    assert h1.status == "changed" and h1.changed == 1 and h1.failed == 0, h1
    assert h2.status == "failed" and h2.task == "Fail on request", h2
    assert "probe asked to fail on h2" in (h2.message or ""), h2
    assert (hosts[0].root / "probe-marker").read_text() == "v1\n"  # written on the host, under its /srv
    assert not run.ok
    assert any(e.get("event") == "playbook_on_stats" for e in run.events)
    assert oct((tmp_path / "pdd" / "env" / "extravars").stat().st_mode & 0o777) == "0o600"
    after = set(_ssh_processes(hosts[0].address)) | set(_ssh_processes(hosts[1].address))
    assert after <= before, after  # connection masters told to exit


def test_host_keys_unknown_refused_accept_new_recorded_changed_refused(ssh_hosts, tmp_path, playbook_mod):
    host = ssh_hosts(1)[0]
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    hvars = host.inventory_vars()
    hvars["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=no"
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"all": {"hosts": {"h1": hvars}}}))
    refused = playbook_mod.run_playbook(PROBE, path, timeout=120)
    assert refused.hosts["h1"].status == "unreachable", refused.hosts
    assert "Host key verification failed" in (refused.hosts["h1"].message or ""), refused.hosts["h1"]
    assert not (host.root / "probe-marker").exists()

    accepted = playbook_mod.run_playbook(PROBE, path, timeout=120, accept_new_host_keys=True)
    assert accepted.ok, accepted.hosts
    key_b64 = host.host_key_pub.read_text().split()[1]
    assert f"[{host.address}]:{host.port} ssh-ed25519 {key_b64}" in known.read_text()
    # A key different from the recorded one is refused, even with accept-new.
    other_key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known.write_text(f"[{host.address}]:{host.port} ssh-ed25519 {other_key}\n")
    changed = playbook_mod.run_playbook(PROBE, path, timeout=120, accept_new_host_keys=True)
    assert changed.hosts["h1"].status == "unreachable", changed.hosts
    assert "HOST IDENTIFICATION HAS CHANGED" in (changed.hosts["h1"].message or "").upper(), changed.hosts["h1"]


def test_stop_cancels_within_seconds(ssh_hosts, tmp_path, playbook_mod):
    hosts = ssh_hosts(1)
    path = hosts.write_inventory(tmp_path / "hosts.json")
    stop = threading.Event()
    seen: list[str] = []
    stopped_at: list[float] = []

    def on_event(event):
        described = playbook_mod.describe(event)
        if described and described.kind == "task" and described.task == "Sleep a while":
            seen.append("sleep")
            threading.Timer(0.5, lambda: (stopped_at.append(time.monotonic()), stop.set())).start()

    t0 = time.monotonic()
    run = playbook_mod.run_playbook(PROBE, path, extravars={"probe_sleep": 120}, timeout=300, stop=stop,
                                    on_event=on_event)
    elapsed = time.monotonic() - t0
    latency = time.monotonic() - stopped_at[0] if stopped_at else float("nan")
    assert seen and run.status == "canceled" and run.interrupted, (run.status, run.stdout[-1000:])
    print(f"run returned {latency:.2f} s after stop, {elapsed:.1f} s after start (the remote sleep was 120 s)")
    for _ in range(50):  # a killed client's exit may still be under way
        if not _ssh_processes(hosts[0].address):
            break
        time.sleep(0.1)
    assert not _ssh_processes(hosts[0].address), _ssh_processes(hosts[0].address)
