"""Topologies large enough to have hung: a node's configuration longer than a terminal line.

A 100-router chain gives every router a hundred routes; typed as one shell line into a node's
pseudo-terminal they were cut at 4096 bytes and the run waited forever for the shell's answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.emulation import nodeexec
from testbed.state import STATE_DIR
from tests.conftest import ROOT, links, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]
ROUTERS = 120


def shells_named(names: set[str]) -> list[str]:
    """Mininet shells (`bash ... mininet:NAME`) of these node names still running."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.startswith(b"mininet:") and a[8:].decode(errors="replace") in names for a in argv):
                found.append(entry)
    return found


def test_chain_of_120_routers_carries_a_transfer_and_is_torn_down(tmp_path):
    # Rate on every inner link; delay on every 20th only: the fallback's delay line is one process
    # (about 16 MB) per direction, and the hang was in configuration, not shaping.
    exp = tmp_path / "chain.yaml"
    exp.write_text(f"""name: scale-chain
topology: {{file: {ROOT / 'topologies' / 'chain.yaml.j2'}, set: {{n: {ROUTERS}, delay_every: 20}}}}
workloads:
  - {{type: bulk, size: 1MB}}
capture: off
timeout: 240s
expect:
  transfer_intact: true
""")
    results = tmp_path / "res"
    r = run_cli("run", str(exp), "--results", str(results), timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    (run_dir,) = [p for p in results.iterdir() if not p.name.startswith(".")]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and "teardown_errors" not in m
    bulk = next(iter(m["workloads"].values()))
    assert bulk["intact"] and bulk["bytes"] == 1_000_000
    assert f"r{ROUTERS - 1}:" in m["inputs"]["topology"]["rendered"]
    assert len(m["shaping"]["links"]) == 2 * (ROUTERS - 1)
    # nothing of the run is left: shells, the run's links, its state file
    # (r100 and up: names only a big topology has, not those of other runs on the machine)
    assert not shells_named({f"r{i}" for i in range(100, ROUTERS)})
    tag = run_dir.name.rsplit("-", 1)[-1]
    assert not [name for name in links() if tag in name]
    assert not list(STATE_DIR.glob(f"{run_dir.name}.json"))


def test_a_mininet_shell_takes_thousands_of_routes_and_a_long_command():
    from testbed.emulation.mininet_import import mininet_modules

    _, mn_node, _ = mininet_modules()
    host = mn_node.Host("tbscale0", ip=None)
    try:
        routes = [["ip", "route", "add", f"10.{i // 256}.{i % 256}.0/24", "dev", "lo"] for i in range(3000)]
        nodeexec.run_many(host, [["ip", "link", "set", "lo", "up"], *routes])
        _, out = nodeexec.run(host, ["ip", "route", "show"])
        assert len(out.strip().splitlines()) == 3000
        word = "y" * 10_000  # longer than a terminal line
        code, out = nodeexec.run(host, ["printf", "%s", word])
        assert code == 0 and out.strip() == word
    finally:
        host.terminate()
