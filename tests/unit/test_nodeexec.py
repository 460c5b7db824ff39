"""Node command batching: nothing long is typed into a node's shell, ip/tc runs become batch files,
and a failure names the command that failed. The node here is a local `sh` (no root needed)."""

from __future__ import annotations

import subprocess

import pytest

from testbed.emulation import nodeexec
from testbed.errors import RunError


class LocalShell:
    """A stand-in for a Mininet node: runs each line in sh and records what was typed."""

    name = "local"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def cmd(self, line: str) -> str:
        self.lines.append(line)
        return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30).stdout


def test_plan_groups_runs_of_the_same_tool_and_options(tmp_path):
    files: list = []
    commands = [["sysctl", "-q", "-w", "a=1"], ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "10.0.0.0/24",
                "dev", "lo"], ["ip", "-6", "rule", "add", "from", "2001:db8::1", "table", "100"],
                ["ip", "-6", "rule", "add", "from", "2001:db8::2", "table", "101"], ["tc", "qdisc", "show"],
                ["ip", "addr", "add", "with space", "dev", "lo"]]
    steps = nodeexec.plan(commands, files)
    try:
        assert [s.covers for s in steps] == [[0], [1, 2], [3, 4], [5], [6]]
        assert steps[1].argv[:2] == ["ip", "-batch"] and steps[2].argv[:3] == ["ip", "-6", "-batch"]
        assert steps[1].batch.read_text() == "link set lo up\nroute add 10.0.0.0/24 dev lo\n"
        assert steps[2].batch.read_text().startswith("rule add from 2001:db8::1 table 100\n")
        assert steps[3].batch is None and steps[4].batch is None  # one command; a word with a space
        assert len(files) == 2
    finally:
        for f in files:
            f.unlink()


def test_a_long_batch_is_one_short_line_and_its_failure_is_named():
    node = LocalShell()
    commands = [["ip", "link", "show", "lo"]] * 300 + [["ip", "link", "show", "nosuchdev0"], ["ip", "link", "show", "lo"]]
    with pytest.raises(RunError, match=r"`ip link show nosuchdev0` failed"):
        nodeexec.run_many(node, commands)
    assert len(node.lines) == 1 and len(node.lines[0]) < 200
    assert not list(nodeexec._scripts().iterdir()), "batch files left behind"


def test_run_many_succeeds_and_reports_a_plain_command_failure():
    node = LocalShell()
    nodeexec.run_many(node, [["true"], ["ip", "link", "show", "lo"], ["ip", "link", "show", "lo"]])
    with pytest.raises(RunError, match=r"`false` failed \(1\)"):
        nodeexec.run_many(node, [["true"], ["false"], ["true"]])


def test_a_long_command_is_not_typed_but_still_runs():
    node = LocalShell()
    word = "x" * 20_000
    code, out = nodeexec.run(node, ["printf", "%s", word])
    assert code == 0 and out == word
    assert all(len(line) <= nodeexec.LINE_MAX for line in node.lines)
    code, out = nodeexec.run(node, ["sh", "-c", "echo no; exit 3"], check=False)
    assert code == 3 and "no" in out


def test_installed_routes_merge_a_chain_into_prefixes_covering_the_same_addresses():
    from pathlib import Path

    from testbed.emulation.network import installed_routes
    from testbed.errors import Problem
    from testbed.spec.load import load_topology

    top = Path(__file__).resolve().parents[2] / "topologies" / "chain.yaml.j2"
    res = load_topology(top, {"n": (60, Problem("t", None, None, "n", ""))}).resolved
    for name in ("client", "r0", "r29", "r59", "server"):
        routes = res.routes[name]
        merged = installed_routes(routes)
        assert len(merged) <= 16 < len(routes) or len(routes) <= 16
        # every original destination is inside exactly one merged route with the same next hop
        for r in routes:
            (m,) = [m for m in merged if r.destination.subnet_of(m.destination)]
            assert (m.via, m.interface, m.table) == (r.via, r.interface, r.table)
        assert sum(m.destination.num_addresses for m in merged) == sum(r.destination.num_addresses for r in routes)


def test_installed_routes_leave_overlapping_tables_alone():
    from ipaddress import ip_address, ip_network

    from testbed.emulation.network import installed_routes
    from testbed.spec.resolve import Route

    gw_a, gw_b = ip_address("10.9.0.1"), ip_address("10.9.0.2")
    routes = [Route(ip_network("10.0.0.0/25"), gw_a, "eth0"), Route(ip_network("10.0.0.128/25"), gw_a, "eth0"),
              Route(ip_network("10.0.0.0/24"), gw_b, "eth1")]
    assert installed_routes(routes) == routes
    assert len(installed_routes(routes[:2])) == 1
