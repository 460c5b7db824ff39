"""The command line as other tools use it: exit codes, one-line errors, render, graph, verify, clean."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.conftest import ROOT, requires_root, run_cli

ERROR_LINE = re.compile(r"^[^:\n]+(:\d+)?(:\d+)?: [^:\n]*: .+$")


def test_bad_set_value_exits_2_with_one_line_per_problem(tmp_path):
    r = run_cli("run", str(ROOT / "experiments/basic-handshake.yaml"), "--set", "wifi_loss=150%",
                "--results", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["--set: wifi_loss: a percentage must be between 0% and 100%, got '150%'"]
    assert not list(tmp_path.iterdir()), "nothing may be created for bad input"


def test_bad_file_exits_2_with_positions(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("name: e\ntopology: nowhere.yaml\nworkloads: [{type: bluk}]\nexpect: {outcome: mtcp}\n")
    r = run_cli("run", str(exp), "--results", str(tmp_path / "res"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert all(ERROR_LINE.match(line) for line in lines), lines
    assert any(":3:" in line and "unknown type 'bluk'" in line and "'bulk'" in line for line in lines)
    assert any(":4:" in line and "expect.outcome" in line and "did you mean 'mptcp'" in line for line in lines)
    assert not (tmp_path / "res").exists()


def test_unknown_flag_is_usage_error():
    r = run_cli("run", "--no-such-flag")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_missing_file():
    r = run_cli("render", "nope.yaml")
    assert r.returncode == 2 and r.stderr.strip() == "nope.yaml: file not found"


def test_render_shows_assigned_interfaces_addresses_and_routes():
    from ruamel.yaml import YAML

    r = run_cli("render", str(ROOT / "topologies/dual-homed.yaml.j2"), "--set", "paths=3", "--set", "wifi_loss=2%")
    assert r.returncode == 0, r.stderr
    data = YAML(typ="safe").load(r.stdout)
    client = data["nodes"]["client"]
    assert set(client["interfaces"]) == {"wlan0", "cell0", "cell1"}
    assert client["source_rules"] == [f"from {client['interfaces'][i]['address'].split('/')[0]} table {t}"
                                      for i, t in (("wlan0", 100), ("cell0", 101), ("cell1", 102))]
    assert data["links"][0]["impairment"]["loss"] == "2%"
    assert data["parameters"]["paths"] == 3


def test_graph_svg_and_mermaid(tmp_path):
    out = tmp_path / "g.svg"
    r = run_cli("graph", str(ROOT / "topologies/dual-homed.yaml.j2"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().lstrip().startswith(("<svg", "<?xml"))
    r = run_cli("graph", str(ROOT / "topologies/dual-homed.yaml.j2"), "--format", "mermaid")
    assert r.returncode == 0 and "graph LR" in r.stdout and "wifi" in r.stdout


@requires_root
def test_doctor_exits_0_where_local_mode_works():
    r = run_cli("doctor", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MPTCP" in r.stdout and "upstream" in r.stdout


@requires_root
@pytest.mark.usefixtures("no_leaks")
def test_verify_reports_tampering(tmp_path):
    r = run_cli("run", str(ROOT / "experiments/basic-handshake.yaml"), "--results", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert run_cli("verify", str(run_dir)).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "counters.json").write_text("{}")
    (copy / "extra.txt").write_text("x")
    (copy / "events.json").unlink()
    r = run_cli("verify", str(copy))
    assert r.returncode == 1
    assert "altered: counters.json" in r.stdout and "extra: extra.txt" in r.stdout
    assert "missing: events.json" in r.stdout
    assert json.loads((run_dir / "manifest.json").read_text())["files"]["counters.json"]


def test_clean_with_nothing_to_clean_is_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE_DIR", str(tmp_path / "state"))
    r = run_cli("clean", env={**__import__("os").environ, "TESTBED_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 0 and "nothing to clean" in r.stdout
