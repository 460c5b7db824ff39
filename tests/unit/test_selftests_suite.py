"""experiments/suites/selftests.yaml: mptcp_join.sh cases, each citing its title, with the script's checks."""

from __future__ import annotations

import re

from testbed.matrix.expect import Side, expect_cell, scenario_facts
from testbed.matrix.features import upstream_for_version
from testbed.spec.load import load_experiment
from testbed.spec.matrix import load_suite
from tests.conftest import ROOT

SUITE = ROOT / "experiments" / "suites" / "selftests.yaml"
TITLE = re.compile(r'^mptcp_join\.sh "([^"]+)"$')
JOIN = ("server.MPTcpExtMPJoinSynRx", "client.MPTcpExtMPJoinSynAckRx", "server.MPTcpExtMPJoinAckRx",
        "server.MPTcpExtMPJoinRejected", "client.MPTcpExtMPJoinSynTx")


def test_every_case_cites_its_title_and_carries_chk_join_nr():
    suite = load_suite(SUITE)
    titles = []
    for s in suite.suite.scenarios:
        m = TITLE.match(s.description)
        assert m, s.name
        titles.append(m.group(1))
        exp = load_experiment(suite.experiments[s.name]).experiment
        assert f'mptcp_join.sh "{m.group(1)}"' in exp.description, s.name
        assert set(JOIN) <= set(exp.expect.counters), s.name   # every case of the script calls chk_join_nr
        assert exp.expect.outcome == "mptcp", s.name
        if any(w.type == "bulk" for w in exp.workloads):  # the script checks both files (check_transfer)
            assert exp.expect.transfer_intact, s.name
    assert len(titles) >= 14 and len(set(titles)) == len(titles)
    for title in ("no JOIN", "single subflow, limited by client", "single subflow, limited by server",
                  "single subflow", "multiple subflows", "unused signal address", "signal address",
                  "subflow and signal", "single subflow, backup", "single address, switch to backup",
                  "single subflow allow join id0 ns1", "single subflow allow join id0 ns2",
                  "fastclose test", "fastclose server test"):
        assert title in titles, title


def test_the_scripts_numbers():
    suite = load_suite(SUITE)

    def counters(name: str) -> dict[str, tuple[float | None, float | None]]:
        exp = load_experiment(suite.experiments[name]).experiment
        return {k: (b.min, b.max) for k, b in exp.expect.counters.items()}

    limited = counters("limited-by-server")     # chk_join_nr 1 1 0 with join_syn_rej=1
    assert limited["server.MPTcpExtMPJoinSynRx"] == (1, 1) and limited["server.MPTcpExtMPJoinAckRx"] == (0, 0)
    assert limited["server.MPTcpExtMPJoinRejected"] == (1, 1)
    switch = counters("switch-to-backup")       # chk_prio_nr 1 1 0 0: both read on the server (ns1)
    assert switch["server.MPTcpExtMPPrioTx"] == (1, 1) and switch["server.MPTcpExtMPPrioRx"] == (1, 1)
    assert switch["client.MPTcpExtAddAddr"] == (1, None)  # chk_add_nr tolerates retransmitted ADD_ADDRs
    fclose = counters("fastclose-server")       # chk_fclose_nr 1 1 invert; chk_rst_nr 1 1
    assert fclose["server.MPTcpExtMPFastcloseTx"] == (1, 1) and fclose["client.MPTcpExtMPFastcloseRx"] == (1, 1)
    assert fclose["server.MPTcpExtMPRstTx"] == (1, None) and fclose["client.MPTcpExtMPRstRx"] == (1, None)
    denies = load_experiment(suite.experiments["join-id0-server-denies"]).experiment
    assert denies.stacks["server"].sysctls == {"allow_join_initial_addr_port": 0}


def test_a_kernel_without_some_of_the_scripts_counters_runs_them_skipped():
    # the script skips a check whose counter the kernel lacks; so does a cell (counters_absent: skip)
    from testbed.verdict import Measurements, judge

    suite = load_suite(SUITE)
    name = "single-subflow"
    loaded = load_experiment(suite.experiments[name])
    f = scenario_facts(suite.scenario(name), loaded)
    v61 = Side("linux-6.1", upstream_for_version("linux-6.1", (6, 1), "6.1"))
    assert expect_cell(f, v61, v61, {}).status == "run"
    assert not any(r.startswith("mib:MPJoinSynTx") for r in f.requires["client"])
    counters = {"client": {"MPTcpExtMPCapableSYNACKRX": 1, "MPTcpExtMPJoinSynAckRx": 1},
                "server": {"MPTcpExtMPJoinSynRx": 1, "MPTcpExtMPJoinAckRx": 1}}
    present = {n: {"MPTcpExtMPCapableSYNACKRX", "MPTcpExtMPJoinSynRx", "MPTcpExtMPJoinSynAckRx",
                   "MPTcpExtMPJoinAckRx"} for n in ("client", "server")}  # no MPJoinSynTx, MPJoinRejected, ...
    checks = {c.name: c for c in judge(loaded.experiment, Measurements({}, {}, counters, None, {}, present=present),
                                       "mptcp")}
    assert checks["counter client.MPTcpExtMPJoinSynTx"].verdict == "info"
    assert checks["counter client.MPTcpExtMPJoinSynTx"].measured == "absent"
    assert "skipped" in checks["counter client.MPTcpExtMPJoinSynTx"].detail
    assert checks["counter server.MPTcpExtMPJoinAckRx"].verdict == "pass"
    counters["server"]["MPTcpExtMPJoinAckRx"] = 0   # a present counter is still judged
    checks = {c.name: c for c in judge(loaded.experiment, Measurements({}, {}, counters, None, {}, present=present),
                                       "mptcp")}
    assert checks["counter server.MPTcpExtMPJoinAckRx"].verdict == "fail"
