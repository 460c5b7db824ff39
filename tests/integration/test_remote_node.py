"""The ssh node backend: a topology host on a remote machine (a real sshd in a namespace of its own,
tests/sshhosts.py), its links VXLAN tunnels to this machine, driven with paramiko."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.root]

TOPOLOGY = ROOT / "topologies" / "dual-homed.yaml.j2"


def inventory(tmp_path: Path, host) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps({"all": {"hosts": {"lab1": host.inventory_vars()}}}))
    return path


def experiment(tmp_path: Path, inv: Path, **extra) -> Path:
    doc = {
        "name": "remote-join",
        "topology": {"file": str(TOPOLOGY), "set": {"paths": 2, "wifi_rate": "20Mbit", "cell_rate": "20Mbit",
                                                    "wifi_delay": "5ms", "cell_delay": "10ms"}},
        "stacks": {"client": {"limits": {"subflows": 2, "add_addr_accepted": 2},
                              "endpoints": [{"interface": "cell0", "flags": ["subflow"]}]},
                   "server": {"limits": {"subflows": 2, "add_addr_accepted": 2},
                              "remote": {"inventory": str(inv), "host": "lab1"}}},
        "workloads": [{"type": "bulk", "size": "8MB", "direction": "upload"},
                      {"type": "ping", "count": 10, "interval": "0.1s"}],
        "expect": {"outcome": "mptcp", "transfer_intact": True, "subflows": {"min": 2},
                   "counters": {"server.MPTcpExtMPJoinAckRx": 1}},
        **extra,
    }
    path = tmp_path / "remote.yaml"
    path.write_text(json.dumps(doc))
    return path


def remote_leftovers(host) -> tuple[list[str], str]:
    """The namespaces and VXLAN devices of ours still on the machine."""
    netns = host.run("ip", "netns", "list").stdout
    links = host.run("ip", "-o", "link", "show", "type", "vxlan").stdout
    return [n for n in netns.split() if re.match(r"tb[0-9a-f]+-", n)], links


def test_a_host_on_a_remote_machine_joins_the_topology(ssh_hosts, tmp_path):
    (h1,) = ssh_hosts(1)
    inv = inventory(tmp_path, h1)
    exp = experiment(tmp_path, inv)
    r = run_cli("run", str(exp), "--results", str(tmp_path / "results"), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = Path(re.findall(r"archive: (.+)", r.stdout)[-1].strip())
    m = json.loads((run_dir / "manifest.json").read_text())
    node = m["nodes"]["server"]
    assert node["backend"] == "ssh" and node["host"]["name"] == "lab1" and node["mptcp"] == "upstream"
    assert set(node["interfaces"]) == {"eth0"} and node["interfaces"]["eth0"]["local_end"] == "gw:srv0"
    # the server's counters were read on the machine: it accepted the join the client sent
    checks = {c["name"]: c for c in m["checks"]}
    assert checks["counter server.MPTcpExtMPJoinAckRx"]["verdict"] == "pass", checks
    assert m["outcome"] == "mptcp"
    # the path to it carries the shaped delay: 2 × 5 ms at least on the Wi-Fi path
    assert m["workloads"]["ping"]["rtt"]["min"] >= 0.010, m["workloads"]["ping"]
    assert m["workloads"]["bulk"]["intact"] and m["workloads"]["bulk"]["is_mptcp"]
    # link bytes of the remote host's interface come from its tunnel's local end: the 8 MB went in
    series = json.loads((run_dir / "linkbytes.json").read_text())["series"]["server:eth0"]
    assert series[-1][1] >= 8_000_000, series[-1]
    assert remote_leftovers(h1) == ([], "")


def test_an_unknown_host_key_is_refused_and_nothing_is_left(ssh_hosts, tmp_path):
    (h1,) = ssh_hosts(1)
    inv = inventory(tmp_path, h1)
    data = json.loads(inv.read_text())
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    data["all"]["hosts"]["lab1"]["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={empty}"
    inv.write_text(json.dumps(data))
    r = run_cli("run", str(experiment(tmp_path, inv)), "--results", str(tmp_path / "results"), timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "not in" in r.stderr and "ssh-keyscan" in r.stderr, r.stderr
    assert empty.read_text() == ""
    assert remote_leftovers(h1) == ([], "")
    local = subprocess.run(["ip", "-o", "link", "show", "type", "vxlan"], capture_output=True, text=True).stdout
    assert "tb" not in local


def test_bad_remote_fields_are_one_line_errors(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"hosts": {"lab1": {"ansible_host": "10.0.0.1"}}}}))
    exp = experiment(tmp_path, inv)
    text = exp.read_text().replace('"host": "lab1"', '"host": "lab2"')
    exp.write_text(text)
    r = run_cli("run", str(exp), timeout=60)
    assert r.returncode == 2 and "no host 'lab2'" in r.stderr and "did you mean" in r.stderr.lower(), r.stderr
    exp.write_text(text.replace(str(inv), str(tmp_path / "missing.yml")))
    r = run_cli("run", str(exp), timeout=60)
    assert r.returncode == 2 and "no inventory file" in r.stderr, r.stderr


def test_an_ssh_implementation_serves_matrix_cells(ssh_hosts, tmp_path):
    """A registry row `backend: ssh` is available when its machine answers with the kernel it says;
    its cells put the server node on the machine. One that cannot be reached is `unavailable`."""
    (h1,) = ssh_hosts(1)
    inv = inventory(tmp_path, h1)
    data = json.loads(inv.read_text())
    data["all"]["hosts"]["lab-unknown"] = {**data["all"]["hosts"]["lab1"],
                                           "ansible_ssh_common_args": f"-o UserKnownHostsFile={tmp_path / 'none'}"}
    inv.write_text(json.dumps(data))
    release = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout
    kernel = ".".join(release.split(".")[:2])
    (tmp_path / "implementations.yaml").write_text(json.dumps({
        "inventory": "hosts.yml",
        "implementations": {
            "host": {"driver": "upstream", "backend": "netns"},
            "lab": {"driver": "upstream", "backend": "ssh", "host": "lab1", "kernel": kernel},
            "lab-v0": {"driver": "v0.92", "backend": "ssh", "host": "lab1", "kernel": kernel},
            "lab-x": {"driver": "upstream", "backend": "ssh", "host": "lab-unknown", "kernel": kernel}}}))
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({"name": "remote", "implementations": "implementations.yaml", "timeout": "120s",
                                 "scenarios": [{"name": "basic-handshake", "requires": ["mptcp"],
                                                "experiment": str(ROOT / "experiments" / "basic-handshake.yaml")}]}))
    r = run_cli("matrix", str(suite), "--clients", "host", "--servers", "lab,lab-v0,lab-x", "--results",
                str(tmp_path / "results"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = Path(re.findall(r"archive: (.+)", r.stdout)[-1].strip())
    cells = json.loads((run_dir / "matrix.json").read_text())["cells"]
    ok = cells["basic-handshake/host/lab"]
    assert ok["verdict"] == "as-expected" and ok["outcome"] == "mptcp", ok
    m = json.loads((run_dir / ok["dir"] / "manifest.json").read_text())
    assert m["nodes"]["server"]["backend"] == "ssh" and m["nodes"]["server"]["host"]["name"] == "lab1"
    v0 = cells["basic-handshake/host/lab-v0"]
    assert v0["verdict"] == "unavailable" and "not MPTCP v0.92" in v0["reason"], v0
    x = cells["basic-handshake/host/lab-x"]
    assert x["verdict"] == "unavailable" and "ssh-keyscan" in x["reason"], x
    assert remote_leftovers(h1) == ([], "")


def test_clean_removes_what_a_killed_run_left_on_the_machine(ssh_hosts, tmp_path):
    import os
    import signal
    import sys
    import time

    (h1,) = ssh_hosts(1)
    inv = inventory(tmp_path, h1)
    exp = experiment(tmp_path, inv)
    doc = json.loads(exp.read_text())
    doc["workloads"] = [{"type": "bulk", "size": "2GB", "direction": "upload", "timeout": "100s"}]
    exp.write_text(json.dumps(doc))
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--results", str(tmp_path / "r")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not remote_leftovers(h1)[0]:
            time.sleep(0.3)
        assert remote_leftovers(h1)[0], "the run made no namespace on the machine"
        time.sleep(3)  # its workload is running there
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert remote_leftovers(h1)[0]  # a killed run cleans nothing up itself
    r = run_cli("clean", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert remote_leftovers(h1) == ([], "")
    # the agent it ran there is gone (the test machine shares this one's process table)
    assert not subprocess.run(["pgrep", "-f", "/tmp/testbed-remote-"], capture_output=True, text=True).stdout.strip()


def test_several_hosts_share_one_machine(ssh_hosts, tmp_path):
    """Eight topology hosts on the same machine: each its own namespace and tunnels there (their
    devices are made side by side in the machine's root namespace first), all reach the router."""
    (h1,) = ssh_hosts(1)
    inv = inventory(tmp_path, h1)
    nodes = {"r": {"kind": "router"},
             **{f"h{i}": {"kind": "host", "remote": {"inventory": str(inv), "host": "lab1"}} for i in range(8)}}
    topo = tmp_path / "star.yaml"
    topo.write_text(json.dumps({"name": "star", "nodes": nodes, "links": [[f"h{i}:eth0", f"r:eth{i}"] for i in range(8)]}))
    exp = tmp_path / "star-exp.yaml"
    exp.write_text(json.dumps({"name": "star", "topology": {"file": str(topo)}, "workloads": [
        {"type": "ping", "name": f"ping{i}", "client": f"h{i}", "server": "r", "count": 3, "interval": "0.1s"}
        for i in range(8)]}))
    r = run_cli("run", str(exp), "--results", str(tmp_path / "results"), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((Path(re.findall(r"archive: (.+)", r.stdout)[-1].strip()) / "manifest.json").read_text())
    assert all(m["workloads"][f"ping{i}"]["received"] == 3 for i in range(8)), m["workloads"]
    assert {m["nodes"][f"h{i}"]["netns"] for i in range(8)} == {f"tb{m['nodes']['h0']['netns'][2:].split('-')[0]}-h{i}"
                                                                for i in range(8)}
    assert remote_leftovers(h1) == ([], "")
