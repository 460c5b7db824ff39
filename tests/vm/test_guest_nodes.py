"""Hosts on QEMU guests inside a topology: a 6.1 client against namespaces (MP_CAPABLE and MP_JOIN
counted by the guest's kernel), a 5.10 client without MPTCP (refused for upstream, a plain-TCP peer
otherwise), a pooled guest reused by a second run; and the topology checks (no root needed)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from testbed.emulation.shaping import ifb_commands
from tests.conftest import ROOT, run_cli

TOPOLOGY = ROOT / "topologies" / "dual-homed.yaml.j2"


@pytest.fixture(scope="module")
def guests() -> None:
    """Skips (naming what is missing) unless guests can boot here with the 6.1 and 5.10 images."""
    from testbed.emulation.qemu import images

    if os.geteuid() != 0:
        pytest.skip("needs root: TAP devices, namespaces")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
    if not Path("/dev/net/tun").exists():
        pytest.skip("/dev/net/tun missing: no TAP devices")
    for name in ("linux-6.1", "linux-5.10"):
        if images.find(name) is None:
            try:
                images.build(name)
            except images.DownloadError as exc:
                pytest.skip(f"Debian's archive is unreachable, no {name} image: {exc}")


def manifest(results: Path) -> tuple[Path, dict]:
    (run,) = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run, json.loads((run / "manifest.json").read_text())


@pytest.mark.usefixtures("guests", "no_leaks")
def test_client_on_a_6_1_guest_joins_a_second_path(tmp_path):
    r = run_cli("run", "experiments/guest-handshake.yaml", "--results", str(tmp_path), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    run, m = manifest(tmp_path)
    assert m["outcome"] == "mptcp"
    assert all(c["verdict"] in ("pass", "info") for c in m["checks"]), m["checks"]
    client, server = m["nodes"]["client"], m["nodes"]["server"]
    assert client["backend"] == "qemu" and client["image"] == "linux-6.1", client
    assert client["kernel"].startswith("6.1."), client  # what the guest's kernel said at boot
    assert server == {"backend": "netns", "kernel": os.uname().release}
    assert m["counters"]["client"]["MPTcpExtMPJoinSynAckRx"] == 1
    assert m["counters"]["client"]["MPTcpExtMPCapableSYNACKRX"] == 1
    assert m["counters"]["server"]["MPTcpExtMPJoinAckRx"] == 1
    # The client's counters are the guest's: 6.1 has no MPCapableSYNTXDrop (6.12+), this machine does.
    after = json.loads((run / "counters.json").read_text())["after"]
    assert "MPTcpExtMPCapableSYNTXDrop" not in after["client"] and "MPTcpExtMPCapableSYNTXDrop" in after["server"]
    bulk = m["workloads"]["bulk"]
    assert bulk["intact"] and bulk["bytes"] == 4_000_000, bulk
    # Link bytes and captures of the guest's interfaces come from its TAPs' host sides (the routers'
    # eth0): the same counters, rx and tx swapped.
    series = json.loads((run / "linkbytes.json").read_text())["series"]
    for guest_if, peer_if in (("client:wlan0", "ap0:eth0"), ("client:cell0", "ap1:eth0")):
        _, rx, tx = series[guest_if][-1]
        assert (rx, tx) == tuple(series[peer_if][-1][1:3][::-1]) and tx > 1_000_000, (guest_if, rx, tx)
        assert m["captures"][guest_if]["packets"] > 100
    shaped = {(s["label"], s["backend"]) for s in m["shaping"]["links"]}
    assert ("wifi forward", "netem (guest kernel)") in shaped and ("wifi reverse", "netem (guest kernel)") in shaped
    assert (run / "logs" / "guests").is_dir()
    # The guest's established subflows were seen through guestd's reads of /proc/net/tcp{,6} (no
    # process started in the guest), both of them, like the namespace server's.
    peers = json.loads((run / "peers.json").read_text())["peers"]
    assert m["socket_samples"]["client"]["tcp_table_reads"] > 0 and len(peers["client"]) >= 1, peers
    assert len(peers["server"]) == 2, peers  # the client's Wi-Fi and cellular addresses


@pytest.mark.usefixtures("guests", "no_leaks")
def test_a_guest_without_mptcp_is_refused_upstream_and_falls_back_as_tcp(tmp_path):
    r = run_cli("run", "experiments/guest-handshake.yaml", "--set", "client_image=linux-5.10",
                "--results", str(tmp_path / "refused"), timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "linux-5.10" in r.stderr and "no MPTCP" in r.stderr and "stack: tcp" in r.stderr, r.stderr

    exp = tmp_path / "tcp-guest.yaml"
    exp.write_text(f"""name: tcp-guest
topology:
  file: {TOPOLOGY}
  set: {{paths: 2, client_image: linux-5.10, wifi_rate: 20Mbit, cell_rate: 20Mbit}}
stacks:
  client: {{stack: tcp}}
workloads:
  - {{type: bulk, size: 2MB, direction: upload}}
expect: {{outcome: fallback, transfer_intact: true}}
""")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "ran"), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    _, m = manifest(tmp_path / "ran")
    assert m["outcome"] == "fallback" and m["workloads"]["bulk"]["intact"]
    assert m["nodes"]["client"]["kernel"].startswith("5.10.") and m["stacks"]["client"]["stack"] == "tcp"
    assert m["workloads"]["bulk"]["client"]["is_mptcp"] is False


@pytest.mark.usefixtures("guests", "no_leaks")
def test_a_pooled_guest_serves_a_second_run(tmp_path, monkeypatch):
    import testbed.state
    from testbed.emulation.qemu import node as qnode
    from testbed.runner import Runner
    from testbed.spec.load import load_experiment

    pool_state = testbed.state.RunState(f"pool-{os.getpid()}")
    monkeypatch.setattr(qnode, "POOL", qnode.GuestPool(state=pool_state))
    try:
        runs = []
        for i in range(2):
            loaded = load_experiment(ROOT / "experiments" / "guest-handshake.yaml")
            runs.append(Runner(loaded, tmp_path / str(i)).run())
        assert [r.exit_code for r in runs] == [0, 0], [r.manifest.get("error") for r in runs]
        first, second = (r.manifest["nodes"]["client"] for r in runs)
        assert not first["reused"] and second["reused"] and second["kernel"] == first["kernel"]
        assert runs[1].manifest["counters"]["client"]["MPTcpExtMPJoinSynAckRx"] == 1  # a clean slate: not 2
        (idle,) = [g for guests in qnode.POOL._idle.values() for g in guests]
        assert idle.proc is not None and idle.proc.poll() is None
        assert {p["pid"] for p in pool_state.processes} == {idle.qemu_pid}  # recorded by the pool, not a run
    finally:
        qnode.POOL.close()
        pool_state.remove()


# ------------------------------------------------------------------------------- without root


def test_unknown_images_and_guest_to_guest_links_are_refused(tmp_path):
    r = run_cli("render", str(TOPOLOGY), "--set", "client_image=linux-6.2")
    assert r.returncode == 2
    assert "nodes.client.image: unknown guest image 'linux-6.2' (did you mean 'linux-6.12'?)" in r.stderr, r.stderr
    topo = tmp_path / "two.yaml"
    topo.write_text("name: two\nnodes:\n  a: {image: linux-6.1}\n  b: {image: linux-6.1}\nlinks:\n  - [a, b]\n")
    r = run_cli("render", str(topo))
    assert r.returncode == 2 and f"{topo}:3:" in r.stderr and "connect guests through a switch" in r.stderr, r.stderr
    topo.write_text("name: two\nnodes:\n  r: {kind: router, image: linux-6.1}\n")
    assert run_cli("render", str(topo)).returncode == 2  # routers stay namespaces
    r = run_cli("render", str(TOPOLOGY), "--set", "client_image=linux-6.1")
    assert r.returncode == 0 and "image: linux-6.1" in r.stdout


def test_ifb_commands_redirect_a_guest_interface_s_ingress():
    assert ifb_commands("wlan0", "tbifb1") == [
        ["ip", "link", "add", "tbifb1", "type", "ifb"], ["ip", "link", "set", "tbifb1", "up"],
        ["tc", "qdisc", "add", "dev", "wlan0", "handle", "ffff:", "ingress"],
        ["tc", "filter", "add", "dev", "wlan0", "parent", "ffff:", "matchall", "action", "mirred", "egress",
         "redirect", "dev", "tbifb1"]]
    with pytest.raises(ValueError):
        ifb_commands("wlan0; reboot", "tbifb1")
