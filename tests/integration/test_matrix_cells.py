"""`testbed matrix --cells FILE`: bad files with their positions. The real run of listed cells (exactly
those, and the pid file) is in test_matrix_sharded.py, where the same run is the sharded one's reference."""

from __future__ import annotations

import re

from tests.conftest import ROOT, run_cli

SUITE = str(ROOT / "experiments" / "suites" / "hackathon.yaml")
# Cheap namespace cells (and one that cannot run here), not a cartesian product of their axes
# (tcp -> tcp and host -> tcp are not among them): the same list the sharded test uses.
CELLS = [{"client": "host", "server": "host", "scenario": "basic-handshake"},
         {"client": "tcp", "server": "host", "scenario": "basic-handshake"},
         {"client": "host", "server": "mptcp-v0.92", "scenario": "basic-handshake"}]


def key(c: dict) -> str:
    return f"{c['scenario']}/{c['client']}/{c['server']}"


def test_bad_cells_files_are_refused_with_positions(tmp_path):
    bad = tmp_path / "cells.json"
    bad.write_text('[\n  {"client": "host", "server": "host", "scenario": "basic-handshake"},\n'
                   '  {"client": "hots", "server": "host", "scenario": "basic-handshake"},\n'
                   '  {"client": "host", "server": "host", "scenario": "nope", "extra": 1},\n'
                   '  {"client": "host", "server": "host", "scenario": "basic-handshake"}\n]\n')
    r = run_cli("matrix", SUITE, "--cells", str(bad), "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert f"{bad}:3:4: [1].client: no implementation 'hots' (did you mean 'host'?)" in lines
    assert any(re.fullmatch(rf"{re.escape(str(bad))}:4:\d+: \[2\]\.scenario: no scenario 'nope' in suite hackathon",
                            line) for line in lines), lines
    assert any(line.startswith(f"{bad}:4:") and "[2].extra: unknown field 'extra'" in line for line in lines), lines
    assert any(line.startswith(f"{bad}:5:") and "listed twice" in line for line in lines), lines
    assert not (tmp_path / "res").exists()  # nothing half-built
    for text, message in (('{"client": "host"}', "expected a non-empty list"), ("[]", "expected a non-empty list"),
                          ("[\n  {\"client\": \"host\", \"server\": \"host\"}\n]", "[0].scenario: missing"),
                          ("[\n", "YAML syntax")):
        bad.write_text(text)
        r = run_cli("matrix", SUITE, "--cells", str(bad))
        assert r.returncode == 2 and r.stderr.startswith(f"{bad}:") and message in r.stderr, (text, r.stderr)
    r = run_cli("matrix", SUITE, "--cells", str(bad), "--clients", "host")
    assert r.returncode == 2 and "--cells" in r.stderr
