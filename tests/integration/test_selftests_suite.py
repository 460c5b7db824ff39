"""A few mptcp_join.sh cases of experiments/suites/selftests.yaml, host × host, through `testbed matrix`."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]

SUITE = str(ROOT / "experiments" / "suites" / "selftests.yaml")
CASES = "limited-by-server,switch-to-backup,fastclose-server"


def test_selftest_cases_measure_the_scripts_counters(tmp_path):
    r = run_cli("matrix", SUITE, "--clients", "host", "--servers", "host", "--scenarios", CASES,
                "--jobs", "2", "--results", str(tmp_path), timeout=150)
    m = re.search(r"^archive: (.+)$", r.stdout, re.M)
    assert m, r.stdout + r.stderr
    cells = json.loads((tmp_path / m.group(1).rsplit("/", 1)[-1] / "matrix.json").read_text())["cells"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert {c["verdict"] for c in cells.values()} == {"as-expected"}, {k: c["reason"] for k, c in cells.items()}

    def counters(case: str) -> dict[str, dict[str, int]]:
        """node → counter → delta, as each check measured it (the cell's counter deltas leave out zeros)."""
        out: dict[str, dict[str, int]] = {}
        for check in cells[f"{case}/host/host"]["measured"]["checks"]:
            node, _, counter = check["name"].removeprefix("counter ").partition(".")
            if check["name"].startswith("counter "):
                out.setdefault(node, {})[counter] = check["measured"]
        return out

    limited = counters("limited-by-server")           # chk_join_nr 1 1 0, join_syn_rej=1
    assert limited["server"]["MPTcpExtMPJoinSynRx"] == 1 and limited["client"]["MPTcpExtMPJoinSynAckRx"] == 1
    assert limited["server"]["MPTcpExtMPJoinAckRx"] == 0 and limited["server"]["MPTcpExtMPJoinRejected"] == 1
    switch = counters("switch-to-backup")             # chk_join_nr 1 1 1; chk_add_nr 1 1; chk_prio_nr 1 1 0 0
    assert switch["server"]["MPTcpExtMPJoinAckRx"] == 1 and switch["server"]["MPTcpExtEchoAdd"] == 1
    assert switch["server"]["MPTcpExtMPPrioTx"] == 1 and switch["server"]["MPTcpExtMPPrioRx"] == 1
    # the client's MP_PRIO is the one the server counted (not a check of the script: from the raw deltas)
    assert cells["switch-to-backup/host/host"]["measured"]["counters"]["client"]["MPTcpExtMPPrioTx"] == 1
    fclose = counters("fastclose-server")             # chk_fclose_nr 1 1 invert; chk_rst_nr 1 1
    assert fclose["server"]["MPTcpExtMPFastcloseTx"] == 1 and fclose["client"]["MPTcpExtMPFastcloseRx"] == 1
    assert fclose["server"]["MPTcpExtMPRstTx"] >= 1 and fclose["client"]["MPTcpExtMPRstRx"] >= 1
    for cell in cells.values():                       # and every check behind the verdict was a counter read
        checks = cell["measured"]["checks"]
        assert all(c["verdict"] == "pass" for c in checks)
        assert sum(c["name"].startswith("counter ") for c in checks) >= 18
