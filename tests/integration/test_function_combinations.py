"""Network functions combined in one topology written from the README alone: a NAT64 on the Wi-Fi
path (IPv6-only) and a middlebox that drops MP_JOIN SYNs on the cellular path (IPv4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]
DATA = Path(__file__).with_name("data")


def test_nat64_on_one_path_and_a_join_dropping_middlebox_on_the_other(tmp_path):
    r = run_cli("run", str(DATA / "nat64-and-middlebox-exp.yaml"), "--results", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    m = json.loads((run_dir / "manifest.json").read_text())
    client = m["counters"]["client"]
    # MP_CAPABLE over IPv6 through the translator; the server's IPv4 ADD_ADDR arrives; the client's
    # IPv4 join towards it leaves by the cellular path and is dropped by the middlebox.
    assert client["MPTcpExtMPCapableSYNACKRX"] == 1 and client["MPTcpExtAddAddr"] == 1
    assert client["MPTcpExtMPJoinSynTx"] >= 1 and client.get("MPTcpExtMPJoinSynAckRx", 0) == 0
    drops = json.loads((run_dir / "functions/mb/counters.json").read_text())["kernel_rules"]
    assert sum(rule["packets"] for rule in drops.values()) >= 1
    assert (run_dir / "functions/nat64/tayga.conf").exists()
    assert m["workloads"]["bulk"]["intact"] is True
