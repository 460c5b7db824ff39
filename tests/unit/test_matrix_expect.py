"""Feature sets → expected outcome of a matrix cell; suite files; verdicts from attempts (no root)."""

from __future__ import annotations

import re
import textwrap
import threading
from pathlib import Path

import pytest

from testbed.errors import SpecError
from testbed.matrix.expect import ScenarioFacts, Side, expect_cell, scenario_facts
from testbed.matrix.features import (
    UPSTREAM,
    available,
    feature_set,
    tcp_features,
    upstream_for_version,
)
from testbed.matrix.runner import Attempt, MatrixRunner, cell_name, combine
from testbed.matrix.verdicts import change
from testbed.spec.load import load_experiment
from testbed.spec.matrix import load_registry, load_suite
from tests.conftest import ROOT

SUITE = ROOT / "experiments" / "suites" / "hackathon.yaml"
REGISTRY = ROOT / "experiments" / "implementations.yaml"
LINE = re.compile(r"^[^:\n]+:\d+:\d+: [^:\n]*: .+$")


def v1(name: str = "up", version: tuple[int, int] = (6, 18)) -> Side:
    return Side(name, upstream_for_version(name, version, f"{version[0]}.{version[1]}"))


def plain(name: str = "tcp") -> Side:
    return Side(name, tcp_features(name))


def v0(name: str = "mptcp-v0.92") -> Side:
    impl = load_registry(REGISTRY).registry.implementations["mptcp-v0.92"]
    return Side(name, feature_set(name, impl))


def facts(outcome: str = "mptcp", **kw) -> ScenarioFacts:
    f = ScenarioFacts("s", {"client": "client", "server": "server"}, outcome=outcome)
    for key, value in kw.items():
        setattr(f, key, value)
    return f


NO_CAPS: dict[str, tuple[bool, str]] = {}


def test_tcp_client_against_upstream_server_falls_back():
    e = expect_cell(facts(), plain(), v1(), NO_CAPS)
    assert (e.status, e.expected_outcome, e.mode) == ("run", "fallback", "fallback")
    assert "client tcp is plain TCP" in e.reason


def test_upstream_client_against_tcp_server_falls_back():
    e = expect_cell(facts(), v1(), plain(), NO_CAPS)
    assert (e.status, e.expected_outcome, e.mode) == ("run", "fallback", "fallback")


def test_v0_against_v1_falls_back_both_ways():
    for client, server in ((v0(), v1()), (v1(), v0())):
        e = expect_cell(facts(), client, server, NO_CAPS)
        assert (e.status, e.expected_outcome, e.mode) == ("run", "fallback", "fallback")
        assert "RFC 8684 §3.1" in e.reason


def test_v0_against_tcp_falls_back_and_v0_pairs_are_unsupported():
    assert expect_cell(facts(), v0(), plain(), NO_CAPS).expected_outcome == "fallback"
    e = expect_cell(facts(), v0(), v0(), NO_CAPS)
    assert e.status == "unsupported" and "RFC 6824" in e.reason


def test_upstream_pair_takes_the_scenarios_own_outcome():
    for outcome in ("mptcp", "fallback", None):
        e = expect_cell(facts(outcome), v1(), v1(), NO_CAPS)
        assert (e.status, e.expected_outcome, e.mode) == ("run", outcome, "scenario")


def test_a_side_missing_a_required_feature_is_unsupported():
    f = facts(requires={"client": {"syn_fallback": "required by the scenario"}, "server": {}})
    e = expect_cell(f, v1("linux-6.1", (6, 1)), v1("host"), NO_CAPS)
    assert e.status == "unsupported" and e.expected_outcome is None
    assert "client linux-6.1 lacks syn_fallback" in e.reason and "6.12" in e.reason
    # the same requirement on the other side does not matter
    assert expect_cell(f, v1("host"), v1("linux-6.1", (6, 1)), NO_CAPS).status == "run"


def test_feature_table_by_version():
    # close() with unread data sends MP_FASTCLOSE since 6.1 (d21f83485518); 5.17's xmit path served disconnect
    assert UPSTREAM["mp_prio"].since == (5, 12) and UPSTREAM["fastclose"].since == (6, 1)
    assert "fastclose" in upstream_for_version("k", (6, 1), "6.1").features
    assert "fastclose" not in upstream_for_version("k", (6, 0), "6.0").features
    fs = upstream_for_version("k", (5, 15), "5.15")
    assert {"fullmesh", "checksum", "mp_prio", "add_addr_port"} <= fs.features
    assert "fastclose" not in fs.features and "userspace_pm" not in fs.features
    assert fs.has("mib:MPPrioTx") and not fs.has("mib:MPJoinSynBackupRx")
    assert not tcp_features("t").has("mptcp")


def test_fallback_outcome_failed_for_scenarios_that_remove_the_path():
    e = expect_cell(facts(fallback="failed"), plain(), v1(), NO_CAPS)
    assert (e.status, e.expected_outcome, e.mode) == ("run", "failed", "fallback")


def test_pinned_side_keeps_the_scenarios_expectations():
    f = facts("fallback", pins={"client": "tcp"})
    e = expect_cell(f, v1(), v1(), NO_CAPS)
    assert (e.expected_outcome, e.mode) == ("fallback", "scenario")
    # ... unless the unpinned side is plain TCP itself: then the generic fallback expectations
    assert expect_cell(f, v1(), plain(), NO_CAPS).mode == "fallback"


def test_qemu_implementations_unavailable_until_wired(monkeypatch):
    import sys
    import types

    from testbed.matrix import features

    reg = load_registry(REGISTRY)
    impl = reg.registry.implementations["linux-6.1"]
    monkeypatch.setattr(features, "guest_field_supported", lambda: False)
    ok, why = available("linux-6.1", impl)
    assert not ok and "not wired into topologies" in why
    side = Side("linux-6.1", feature_set("linux-6.1", impl), ok, why)
    e = expect_cell(facts(), side, v1(), NO_CAPS)
    assert e.status == "unavailable" and "server" not in e.reason and "client linux-6.1" in e.reason
    # no v0.92 image is shipped: unavailable whatever the backend can do
    v0impl = reg.registry.implementations["mptcp-v0.92"]
    ok, why = available("mptcp-v0.92", v0impl, reg.image_path("mptcp-v0.92"))
    assert not ok and "image" in why
    # once the backend finds a built image and experiments can place a node on a guest: available
    fake = types.ModuleType("testbed.emulation.qemu.images")
    fake.find = lambda name: Path(f"/cache/{name}") if name == "linux-6.1" else None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "testbed.emulation.qemu.images", fake)
    monkeypatch.setattr(features, "guest_field_supported", lambda: True)
    assert available("linux-6.1", impl) == (True, "guest image /cache/linux-6.1")
    ok, why = available("linux-6.12", reg.registry.implementations["linux-6.12"])
    assert not ok and "no built image 'linux-6.12'" in why


def test_debian_510_has_no_mptcp_so_it_falls_back():
    reg = load_registry(REGISTRY)
    fs = feature_set("linux-5.10", reg.registry.implementations["linux-5.10"])
    assert fs.protocol is None
    assert expect_cell(facts(), Side("linux-5.10", fs), v1(), NO_CAPS).expected_outcome == "fallback"


def test_missing_testbed_capability_makes_cells_unavailable():
    f = facts(capabilities=["middlebox"])
    e = expect_cell(f, v1(), v1(), {"middlebox": (False, "no middlebox node kind")})
    assert e.status == "unavailable" and "middlebox" in e.reason
    assert expect_cell(f, v1(), v1(), {"middlebox": (True, "")}).status == "run"


def test_requirements_implied_by_the_experiment():
    suite = load_suite(SUITE)
    loaded = load_experiment(ROOT / "experiments" / "scenarios" / "fullmesh.yaml")
    f = scenario_facts(suite.scenario("fullmesh"), loaded)
    assert {"fullmesh", "join", "mib:MPJoinSynAckRx", "mib:MPCapableSYNACKRX"} <= set(f.requires["client"])
    assert {"signal", "mib:MPJoinAckRx"} <= set(f.requires["server"])
    backup = scenario_facts(suite.scenario("backup-path"), load_experiment(ROOT / "experiments" / "backup-path.yaml"))
    assert "stale_loss_cnt" in backup.requires["client"] and "mib:MPJoinSynBackupRx" in backup.requires["server"]
    # a 6.1 server cannot show the backup-join counter the scenario checks: unsupported, not unexpected
    e = expect_cell(backup, v1(), v1("linux-6.1", (6, 1)), NO_CAPS)
    assert e.status == "unsupported" and "MPJoinSynBackupRx" in e.reason
    strip = scenario_facts(suite.scenario("option-strip"), load_experiment(ROOT / "experiments" / "middlebox-strip-syn.yaml"))
    assert "middlebox" in strip.capabilities and strip.outcome == "fallback"


def test_the_shipped_suite_plans_every_cell_and_drops_none(tmp_path):
    suite = load_suite(SUITE)
    runner = MatrixRunner(suite, tmp_path)
    cells = runner.plan()
    impls = list(suite.registry.registry.implementations)
    assert len(suite.suite.scenarios) >= 20
    assert len(cells) == len(suite.suite.scenarios) * len(impls) ** 2 + len(suite.suite.probes) * len(impls)
    assert len({c.name for c in cells}) == len(cells)
    for c in cells:
        assert c.verdict in (None, "unsupported", "unavailable")
        if c.expectation.status != "run":
            assert c.reason
        if not (runner.availability.get(c.client, (True, ""))[0] and runner.availability[c.server][0]):  # probe:*
            assert c.expectation.status == "unavailable"
    by_key = {c.key: c for c in cells}
    assert by_key["basic-handshake/host/host"].expectation.expected_outcome == "mptcp"
    assert by_key["basic-handshake/tcp/host"].expectation.expected_outcome == "fallback"
    # the abort workload makes fastclose runnable: MPTCP on both sides, a plain-TCP side falls back
    assert by_key["fastclose/host/host"].expectation.status == "run"
    assert by_key["fastclose/host/host"].expectation.expected_outcome == "mptcp"
    assert by_key["fastclose/tcp/host"].expectation.expected_outcome == "fallback"
    must = MatrixRunner(suite, tmp_path, must_include="tcp").plan()
    assert must and all("tcp" in (c.client, c.server) for c in must)


def test_cell_names_are_valid_run_names():
    assert cell_name("basic-handshake", "linux-6.1", "tcp") == "basic-handshake--linux-6_1--tcp"
    long = cell_name("a-very-long-scenario-name-indeed", "mptcp-v0.92", "linux-6.12")
    assert len(long) <= 48 and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", long)


def test_verdict_from_attempts():
    ok = Attempt(1, "as-expected", 0, 1.0, outcome="mptcp")
    bad = Attempt(1, "unexpected", 1, 1.0, manifest={"checks": [{"name": "outcome", "expected": "mptcp",
                                                                  "measured": "fallback", "verdict": "fail"}]})
    err = Attempt(1, "error", None, 1.0, error="timed out")
    assert combine([ok])[0] == "as-expected"
    assert combine([bad, bad])[0] == "unexpected" and "measured fallback" in combine([bad])[1]
    assert combine([bad, ok])[0] == "flaky"
    assert combine([err, ok]) == ("as-expected", "outcome mptcp, every check passed (after 1 testbed error(s): "
                                                 "timed out)")
    assert combine([err]) == ("error", "timed out")
    assert combine([])[0] == "error"


def test_history_changes():
    assert change("as-expected", "unexpected") == "regression"
    assert change("unexpected", "as-expected") == "fix"
    assert change(None, "as-expected") == "new"
    assert change("as-expected", "flaky") == "changed"
    assert change("error", "error") == "same"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def test_bad_suite_files_point_at_the_line(tmp_path):
    p = write(tmp_path, "suite.yaml", f"""
        name: s
        implementations: {REGISTRY}
        scenarios:
          - name: one
            experiment: {ROOT}/experiments/basic-handshake.yaml
            requires: [fulmesh]
          - name: two
            experiment: {ROOT}/experiments/basic-handshake.yaml
            pin: {{client: upstream}}
            clinet: client
        """)
    with pytest.raises(SpecError) as exc:
        load_suite(p)
    lines = [str(x) for x in exc.value.problems]
    assert any("suite.yaml:10:" in line and "clinet" in line and "did you mean 'client'" in line for line in lines), lines
    assert any("suite.yaml:9:" in line and "pin.client" in line for line in lines), lines
    for line in lines:
        assert LINE.match(line), line
    p = write(tmp_path, "suite2.yaml", f"""
        name: s
        implementations: {REGISTRY}
        scenarios:
          - name: one
            experiment: {ROOT}/experiments/basic-handshake.yaml
            requires: [fulmesh]
        """)
    with pytest.raises(SpecError) as exc:
        MatrixRunner(load_suite(p), tmp_path)
    (line,) = [str(x) for x in exc.value.problems]
    assert "suite2.yaml:6:" in line and "unknown requirement 'fulmesh'" in line and "did you mean 'fullmesh'" in line


def test_a_missing_node_kind_excuses_an_experiment_that_does_not_load(tmp_path, monkeypatch):
    """A scenario that needs a node kind the testbed does not have yet is listed as unavailable
    with the reason, instead of failing the whole suite; without the requirement it is bad input."""
    from testbed.matrix import runner as runner_mod

    exp = write(tmp_path, "exp.yaml", f"""
        name: e
        topology: {ROOT}/topologies/dual-homed.yaml.j2
        workloads: [{{type: bulk, size: 1MB}}]
        expect: {{outcome: mptcp, counters: {{mb.MPTcpExtAddAddr: 0}}}}
        """)
    suite = write(tmp_path, "suite.yaml", f"""
        name: s
        implementations: {REGISTRY}
        scenarios:
          - name: needs-box
            experiment: {exp}
            requires: [middlebox]
        """)
    monkeypatch.setattr(runner_mod, "capability", lambda name: (False, f"the testbed has no '{name}' node kind yet"))
    cells = MatrixRunner(load_suite(suite), tmp_path, clients=["host"], servers=["host"]).plan()
    (cell,) = cells
    assert cell.verdict == "unavailable" and "needs middlebox: the testbed has no 'middlebox' node kind yet" in cell.reason
    suite.write_text(suite.read_text().replace("    requires: [middlebox]\n", ""))
    with pytest.raises(SpecError) as exc:
        MatrixRunner(load_suite(suite), tmp_path, clients=["host"], servers=["host"]).plan()
    assert "no host or router named 'mb'" in str(exc.value)


def test_fallback_requirements_still_apply_against_plain_tcp():
    """Behind a middlebox that drops MP_CAPABLE SYNs, an MPTCP client must retry without the option
    (6.12+) even when the server is plain TCP: a 6.1 client is unsupported there, not 'fallback'."""
    need = {"client": {"syn_fallback": "x"}, "server": {}}
    f = facts("fallback", requires={"client": {"syn_fallback": "x"}, "server": {}}, fallback_requires=need)
    e = expect_cell(f, v1("linux-6.1", (6, 1)), plain(), NO_CAPS)
    assert e.status == "unsupported" and "syn_fallback" in e.reason
    assert expect_cell(f, v1("host"), plain(), NO_CAPS).expected_outcome == "fallback"
    assert expect_cell(f, plain(), v1("linux-6.1", (6, 1)), NO_CAPS).expected_outcome == "fallback"
    assert expect_cell(f, v0(), v1("host"), NO_CAPS).expected_outcome == "fallback"  # v0.9x retries too


def test_v0_side_against_a_pinned_plain_tcp_side_falls_back():
    f = facts("fallback", pins={"server": "tcp"})
    e = expect_cell(f, v0(), v0(), NO_CAPS)
    assert (e.status, e.expected_outcome, e.mode) == ("run", "fallback", "fallback")


def test_report_html_renders_cells_that_made_nothing():
    """An interrupted or erroring cell has no counters, captures or outcome: the page still renders."""
    from pathlib import Path

    from testbed.matrix.html import render

    matrix = {"suite": "s", "run_id": "r", "status": "interrupted", "started": "t", "testbed_version": "0",
              "git_sha": None, "summary": {"error": 1},
              "cells": {"x": {"scenario": "basic", "client": "host", "server": "tcp", "verdict": "error",
                              "name": "basic--host--tcp", "files": {"archive": "cells/x"}, "attempts": [{}]}}}
    html = render(matrix, Path("/nonexistent"))
    assert 'data-verdict="error"' in html and "manifest</a>" not in html


def test_scenario_workload_overrides_and_failed_cells_timeouts(tmp_path):
    """A suite may shorten a scenario's workloads for the matrix (an unknown workload name points at
    the suite's line); a cell expected to fail gets its workload 3 s after the last event."""
    from ruamel.yaml import YAML

    runner = MatrixRunner(load_suite(SUITE), tmp_path, clients=["host", "tcp"], servers=["host"],
                          scenarios=["backup-path", "link-failure"])
    cells = {c.key: c for c in runner.plan()}
    doc = YAML().load(runner.materialize(cells["backup-path/host/host"], tmp_path))
    assert doc["workloads"][0]["size"] == "8MB"  # the suite's override; the experiment says 12MB
    doc = YAML().load(runner.materialize(cells["link-failure/tcp/host"], tmp_path))
    assert cells["link-failure/tcp/host"].expectation.expected_outcome == "failed"
    assert doc["workloads"][0]["timeout"] == 4.5  # link down at 1.5 s, + 3 s
    doc = YAML().load(runner.materialize(cells["link-failure/host/host"], tmp_path))
    assert doc["workloads"][0]["timeout"] == 30 and doc["workloads"][0]["size"] == "10MB"  # capped for cells

    suite = write(tmp_path, "suite.yaml", f"""
        name: s
        implementations: {REGISTRY}
        scenarios:
          - name: short
            experiment: {ROOT}/experiments/aggregate.yaml
            workloads: {{blk: {{size: 1MB}}}}
        """)
    with pytest.raises(SpecError) as exc:
        MatrixRunner(load_suite(suite), tmp_path, clients=["host"], servers=["host"]).plan()
    (line,) = [str(x) for x in exc.value.problems]
    assert "suite.yaml:6:" in line and "no workload 'blk'" in line and "bulk" in line, line
    suite.write_text(suite.read_text().replace("blk: {size: 1MB}", "bulk: {size: lots}"))
    with pytest.raises(SpecError) as exc:
        MatrixRunner(load_suite(suite), tmp_path, clients=["host"], servers=["host"]).plan()
    (line,) = [str(x) for x in exc.value.problems]
    assert "suite.yaml:6:" in line and "workloads[0].size" in line and "'lots'" in line, line


def test_a_counter_the_kernel_lacks_is_absent_not_zero():
    from testbed.spec.experiment import Experiment
    from testbed.verdict import Measurements, judge

    exp = Experiment.model_validate({"name": "e", "topology": "t.yaml", "workloads": [{"type": "ping"}],
                                     "expect": {"counters": {"server.MPTcpExtAddAddrTx": {"min": 1},
                                                             "client.MPTcpExtAddAddr": {"min": 1}}}})
    m = Measurements({}, {}, {"client": {"MPTcpExtAddAddr": 1}}, None, {},
                     present={"server": {"MPTcpExtAddAddr"}, "client": {"MPTcpExtAddAddr"}})
    checks = {c.name: c for c in judge(exp, m, "none")}
    assert checks["counter server.MPTcpExtAddAddrTx"].measured == "absent"
    assert checks["counter server.MPTcpExtAddAddrTx"].verdict == "fail"
    assert "has no AddAddrTx" not in checks["counter server.MPTcpExtAddAddrTx"].detail  # full name given
    assert "MPTcpExtAddAddrTx" in checks["counter server.MPTcpExtAddAddrTx"].detail
    assert checks["counter client.MPTcpExtAddAddr"].verdict == "pass"


def test_a_guest_image_s_recorded_counters_decide_counter_checks(tmp_path, monkeypatch):
    """Debian's 6.1 carries MPJoinSynBackupRx (upstream 6.11) by backport: what the kernel showed at
    its first boot wins over the version table."""
    from testbed.matrix import features

    impl = load_registry(REGISTRY).registry.implementations["linux-6.1"]

    class Built:
        mptcp = True
        mptcp_counters = frozenset({"MPJoinSynBackupRx", "MPCapableSYNACKRX"})

    monkeypatch.setattr(features, "_image", lambda target: Built())
    fs = feature_set("linux-6.1", impl)
    assert fs.has("mib:MPJoinSynBackupRx") and not fs.has("mib:AddAddrTx")
    monkeypatch.setattr(features, "_image", lambda target: None)
    assert not feature_set("linux-6.1", impl).has("mib:MPJoinSynBackupRx")  # the table: 6.11+


def test_a_v0_kernel_s_counters_read_under_upstream_names():
    """A v0.92 kernel counts in /proc/net/mptcp_net/snmp (MPTCP* names): the outcome and scenario
    checks read the counters that mean the same under their upstream names."""
    from testbed.collect.counters import with_upstream_names

    v0 = {"MPTCPMPCapableSYNACKRX": 1, "MPTCPMPJoinSynAckRx": 2, "MPTCPAddAddrRx": 1, "MPTCPMPFastcloseTX": 1,
          "MPTCPMPCapableRetransFallback": 0, "TcpExtTW": 3}
    named = with_upstream_names(v0)
    assert named["MPTcpExtMPCapableSYNACKRX"] == 1 and named["MPTcpExtMPJoinSynAckRx"] == 2
    assert named["MPTcpExtAddAddr"] == 1 and named["MPTcpExtMPFastcloseTx"] == 1
    assert "MPTcpExtMPCapableRetransFallback" not in named  # no upstream counter means the same
    upstream = {"MPTcpExtMPCapableSYNACKRX": 1, "TcpExtTW": 3}
    assert with_upstream_names(upstream) == upstream


def test_guest_cells_never_outnumber_the_guest_units():
    """With 2 units: the two-guest cell goes first with host cells beside it, then one-guest cells
    two at a time; a worker waits while no pending cell fits."""
    from testbed.matrix.expect import Expectation
    from testbed.matrix.guests import GuestNeed
    from testbed.matrix.runner import Cell, _Picker

    def cell(name: str, guests: int) -> Cell:
        return Cell(name, "c", "s", Expectation("run", None, None, ""), name,
                    guests=[GuestNeed("linux-6.1", 2)] * guests)

    def take_later(picker: _Picker) -> tuple[threading.Thread, list]:
        got: list = []
        t = threading.Thread(target=lambda: got.append(picker.take()))
        t.start()
        t.join(0.3)
        assert t.is_alive()  # nothing fits: it waits
        return t, got

    a, b, both, c, host = cell("a", 1), cell("b", 1), cell("both", 2), cell("c", 1), cell("host", 0)
    picker = _Picker([a, b, both, c, host], units=2)
    assert picker.take() is both  # the widest first
    assert picker.take() is host  # no unit left: only a host cell fits beside it
    t, got = take_later(picker)
    picker.done(both)
    t.join(2)
    assert got == [a] and picker.take() is b and picker.free == 0
    t, got = take_later(picker)
    picker.done(a)
    t.join(2)
    assert got == [c]
    for done in (b, c, host):
        picker.done(done)
    assert picker.take() is None and picker.free == 2
