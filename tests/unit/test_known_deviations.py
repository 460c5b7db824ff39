"""Known deviations as data: the file is validated with positions, a cell's archive is matched
against it exactly, and the shipped list is well-formed and names real scenarios."""

from __future__ import annotations

import pytest

from testbed.errors import SpecError
from testbed.matrix import known
from testbed.spec.deviations import load_deviations
from testbed.spec.matrix import load_suite
from tests.conftest import ROOT

FULLMESH = {"counters": {"client": {"MPTcpExtMPJoinSynAckRx": 4}, "server": {"MPTcpExtMPJoinSynRx": 4,
                                                                            "MPTcpExtMPJoinAckRx": 4}},
            "checks": [{"name": "counter client.MPTcpExtMPJoinSynAckRx", "verdict": "fail", "measured": 4},
                       {"name": "counter server.MPTcpExtMPJoinSynRx", "verdict": "fail", "measured": 4},
                       {"name": "counter server.MPTcpExtMPJoinAckRx", "verdict": "fail", "measured": 4},
                       {"name": "subflows at client", "verdict": "fail", "measured": 5},
                       {"name": "transfer intact (sha256 end to end)", "verdict": "pass", "measured": "bulk: true"}]}


def shipped():
    return load_deviations(ROOT / "experiments" / "known-deviations.yaml").deviations


def test_the_shipped_list_loads_with_the_suite_and_cites_something():
    suite = load_suite(ROOT / "experiments" / "suites" / "hackathon.yaml")
    assert suite.deviations is not None and len(suite.deviations.deviations) >= 3
    for d in suite.deviations.deviations:
        assert d.citation and d.symptom and d.what
    assert {d.cause for d in suite.deviations.deviations} == {"kernel", "emulation"}


def test_a_cell_that_reproduces_the_symptom_is_known():
    listed = known.applicable(shipped(), "fullmesh", ("linux-6.1", (6, 1)), ("host", (6, 18)))
    assert [d.id for d in listed] == ["fullmesh-duplicate-join-6.1"]
    found, _ = known.match(listed, FULLMESH)
    assert found is not None and found.verdict == "known"
    assert "client.MPTcpExtMPJoinSynAckRx = 4" in found.evidence and "mptcp_net-next#435" in found.reason
    assert not known.applicable(shipped(), "fullmesh", ("host", (6, 18)), ("linux-6.1", (6, 1)))  # client side


def test_a_different_failure_stays_unexpected_and_says_why():
    listed = known.applicable(shipped(), "fullmesh", ("linux-6.1", (6, 1)), ("host", (6, 18)))
    five = {**FULLMESH, "counters": {"client": {"MPTcpExtMPJoinSynAckRx": 5}, "server": {"MPTcpExtMPJoinSynRx": 5}}}
    found, misses = known.match(listed, five)
    assert found is None and "symptom not reproduced" in misses[0] and "= 5" in misses[0]
    extra = {**FULLMESH, "checks": [*FULLMESH["checks"], {"name": "transfer intact (sha256 end to end)",
                                                          "verdict": "fail", "measured": "bulk: false"}]}
    found, misses = known.match(listed, extra)
    assert found is None and "does not account for transfer intact" in misses[0]


def test_an_emulation_limit_needs_a_tcg_guest_and_is_unavailable():
    listed = known.applicable(shipped(), "aggregate", ("linux-6.1", (6, 1)), ("host", (6, 18)))
    slow = {"checks": [{"name": "goodput of bulk", "verdict": "fail", "measured": "8.70149Mbit"}],
            "nodes": {"client": {"backend": "qemu", "accel": "tcg"}, "server": {}}}
    found, _ = known.match(listed, slow)
    assert found is not None and found.verdict == "unavailable" and "emulation limit" in found.reason
    kvm = {**slow, "nodes": {"client": {"backend": "qemu", "accel": "kvm"}}}
    assert known.match(listed, kvm)[0] is None


@pytest.mark.parametrize(("entry", "message"), [
    ("  - {id: x, scenario: s, symptom: [client.MPTcpExtA ~ 4], what: w, citation: [{kind: evidence, ref: r}]}",
     "is not 'REF OP VALUE'"),
    ("  - {id: x, scenario: s, symptom: [client.A = 4], what: w, citation: [{kind: commit, ref: abc}]}",
     "is not a commit hash"),
    ("  - {id: x, scenario: s, symptom: [client.A = 4], what: w, citation: []}", "citation"),
    ("  - {id: x, scenario: s, client: {kernel: '>=six'}, symptom: [client.A = 4], what: w,\n"
     "     citation: [{kind: evidence, ref: r}]}", "is not a version bound"),
])
def test_bad_entries_are_refused_with_their_line(tmp_path, entry, message):
    path = tmp_path / "known.yaml"
    path.write_text("# header\ndeviations:\n" + entry + "\n")
    with pytest.raises(SpecError) as exc:
        load_deviations(path)
    text = "\n".join(str(p) for p in exc.value.problems)
    assert message in text and f"{path}:3:" in text, text


def test_unknown_scenarios_and_implementations_are_refused(tmp_path):
    path = tmp_path / "known.yaml"
    path.write_text("deviations:\n  - id: x\n    scenario: fullmesh\n    client: {implementation: linux-6.2}\n"
                    "    symptom: [client.A = 1]\n    what: w\n    citation: [{kind: evidence, ref: r}]\n"
                    "  - id: y\n    scenario: fulmesh\n    symptom: [client.A = 1]\n    what: w\n"
                    "    citation: [{kind: evidence, ref: r}]\n")
    with pytest.raises(SpecError) as exc:
        load_deviations(path).check_names(["fullmesh"], ["linux-6.1", "host"])
    text = "\n".join(str(p) for p in exc.value.problems)
    assert f"{path}:4:" in text and "linux-6.2" in text and f"{path}:9:" in text and "did you mean 'fullmesh'" in text


def test_known_attempts_make_a_known_cell_and_unobserved_ones_name_the_gap():
    from testbed.matrix.runner import Attempt, combine

    k = Attempt(1, "known", 1, 1.0, deviation="d", note="known deviation d: ... Measured: x = 4.")
    ok = Attempt(2, "as-expected", 0, 1.0, outcome="mptcp")
    assert combine([k]) == ("known", "known deviation d: ... Measured: x = 4.")
    assert combine([k, ok])[0] == "flaky"  # an intermittent deviation is flaky, not hidden
    unobs = Attempt(1, "unexpected", 1, 1.0, manifest={"checks": [
        {"name": "peers of server", "verdict": "unobserved", "expected": "x", "measured": None},
        {"name": "outcome", "verdict": "fail", "expected": "mptcp", "measured": "fallback"}]})
    reason = combine([unobs])[1]
    assert "outcome: expected mptcp, measured fallback" in reason and "peers of server: not observed" in reason


def test_an_intermittent_miss_is_not_called_fixed_while_the_history_shows_it(tmp_path):
    from testbed.matrix import history
    from testbed.matrix.results import not_reproduced, not_reproduced_line

    listed = load_deviations(ROOT / "experiments" / "known-deviations.yaml")
    cell = "endpoint-remove/linux-6.1/host"
    db = tmp_path / "history.sqlite"
    for i, verdict in enumerate(["known", "as-expected", "known"]):  # oldest first
        history.record(db, {"run_id": f"r{i}", "suite": {"name": "hackathon"}, "started": f"2026-12-0{i + 1}",
                            "finished": f"2026-12-0{i + 1}", "status": "complete", "options": {}, "summary": {},
                            "cells": {cell: {"scenario": "endpoint-remove", "client": "linux-6.1", "server": "host",
                                             "verdict": verdict, "outcome": "mptcp", "expected_outcome": "mptcp",
                                             "attempts": [], "reason": "", "dir": None}}}, tmp_path)
    recent = history.verdicts(db, "hackathon")[cell]
    assert recent == ["known", "as-expected", "known"]
    miss = not_reproduced(listed, "remove-addr-not-sent-6.1", cell, recent)
    assert miss["intermittent"] and not miss["fixed"] and miss["recent"] == "known in 2 of the last 3 runs"
    assert not_reproduced_line(miss).startswith("intermittent remove-addr-not-sent-6.1 (")
    gone = not_reproduced(listed, "remove-addr-not-sent-6.1", cell, ["as-expected"] * 3)
    assert gone["fixed"] and not_reproduced_line(gone).startswith("fixed upstream? remove-addr-not-sent-6.1")
    steady = not_reproduced(listed, "aggregate-tcg-goodput", "aggregate/linux-6.1/host", recent)
    assert not steady["intermittent"] and steady["fixed"], "one that is not intermittent: fixed upstream?"


def test_a_deviation_of_mptcp_behaviour_does_not_apply_where_a_side_speaks_tcp():
    six_one, tcp = ("linux-6.1", (6, 1)), ("tcp", (6, 18))
    assert [d.id for d in known.applicable(shipped(), "fullmesh", six_one, tcp, "mptcp")] == \
        ["fullmesh-duplicate-join-6.1"]
    assert known.applicable(shipped(), "fullmesh", six_one, tcp, "fallback") == [], \
        "a fallback cell cannot show extra joins: it is no 'fixed upstream?' either"
