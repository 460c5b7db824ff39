"""`testbed demo` ends with one screen of findings and exits 0 unless the testbed itself failed;
`testbed matrix` keeps its exit codes (tested with the matrix in tests/integration/test_matrix.py)."""

from __future__ import annotations

from pathlib import Path

from testbed.cli import _findings, demo_exit
from testbed.matrix.verdicts import summary


def cell(scenario, client, server, verdict, reason="", **kw):
    return {"scenario": scenario, "client": client, "server": server, "verdict": verdict, "reason": reason,
            "dir": f"cells/{scenario}-{client}-{server}", **kw}


def matrix(*cells, status="complete", not_reproduced=()):
    return {"status": status, "cells": {f"{c['scenario']}/{c['client']}/{c['server']}": c for c in cells},
            "summary": summary(c["verdict"] for c in cells),
            "known_deviations": {"not_reproduced": list(not_reproduced)}}


def test_findings_are_one_line_each_with_the_evidence(capsys):
    m = matrix(cell("basic-handshake", "host", "host", "as-expected"),
               cell("fullmesh", "linux-6.1", "host", "known", "long reason", deviation="fullmesh-dup",
                    evidence="client.MPTcpExtMPJoinSynAckRx = 4 (symptom = 4)"),
               cell("mp-prio", "linux-6.1", "linux-6.1", "unexpected", "share ...: expected <= 10%, measured " + "x" * 300),
               cell("aggregate", "linux-6.1", "host", "unavailable", "emulation limit"),
               not_reproduced=[{"id": "rm", "cell": "endpoint-remove/linux-6.1/linux-6.1", "where": "k.yaml:38"}])
    _findings(m, Path("/r/run"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "findings: 2 cell(s) not as expected (1 unexpected, 1 known)"
    assert lines[1].startswith("  unexpected mp-prio linux-6.1 -> linux-6.1: share") and len(lines[1]) <= 160
    assert lines[1].endswith("[cells/mp-prio-linux-6.1-linux-6.1]")
    assert "fullmesh-dup: client.MPTcpExtMPJoinSynAckRx = 4" in lines[2]
    assert lines[3] == "  fixed upstream? rm (k.yaml:38): not reproduced in endpoint-remove/linux-6.1/linux-6.1"
    assert lines[-1] == "report: /r/run/report.html" and len(lines) == 5  # unavailable is excused, not listed


def test_the_demo_fails_only_for_the_testbed(capsys):
    findings = [cell("fullmesh", "linux-6.1", "host", "known"), cell("mp-prio", "a", "b", "unexpected")]
    assert demo_exit(matrix(*findings)) == 0
    assert demo_exit(matrix(*findings, cell("nat64", "host", "host", "error", "tayga"))) == 1
    assert "failed in 1 cell(s)" in capsys.readouterr().err
    assert demo_exit(matrix(*findings, status="error")) == 1
    assert demo_exit(matrix(*findings, status="interrupted")) == 130
