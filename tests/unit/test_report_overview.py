"""report.html's overview grid in headless Chromium: scenarios × client→server pairs, one letter per
cell, for 3 implementations × 25 scenarios (+ probes), laid out within a 1400 px wide window."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest

from testbed.matrix.html import VERDICT_LETTERS, render
from testbed.spec.matrix import load_suite
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMPLS = ("host", "linux-6.1", "tcp")  # the demo's three
WIDTH = 1400
# Appended to a copy of the page: the measured layout goes into the DOM that --dump-dom prints.
MEASURE = """<script>
const grid = document.getElementById("overview").getBoundingClientRect();
document.body.dataset.scrollWidth = document.documentElement.scrollWidth;
document.body.dataset.clientWidth = document.documentElement.clientWidth;
document.body.dataset.gridRight = Math.ceil(grid.right);
document.body.dataset.gridBottom = Math.ceil(grid.bottom);
document.body.dataset.viewport = window.innerWidth;
</script>"""


def synthetic_matrix() -> dict:
    """25 scenarios (the hackathon suite's names) and its probes, every verdict, cells with long
    reasons and eight captures each: what the demo's report holds, without running it."""
    suite = load_suite(ROOT / "experiments" / "suites" / "hackathon.yaml").suite
    scenarios = [s.name for s in suite.scenarios]
    assert len(scenarios) == 25
    verdicts = itertools.cycle(VERDICT_LETTERS)
    cells = {}

    def cell(scenario: str, client: str, server: str) -> None:
        name = f"{scenario}--{client}--{server}".replace(".", "_").replace(":", "_")
        d = f"cells/20261203T000000Z-{name}-abcdef"
        cells[f"{scenario}/{client}/{server}"] = {
            "scenario": scenario, "client": client, "server": server, "verdict": next(verdicts), "name": name,
            "reason": "counter client.MPTcpExtMPJoinSynAckRx: expected = 3, measured 4; " * 2,
            "outcome": "mptcp", "expected_outcome": "mptcp", "dir": d,
            "files": {"archive": d, "manifest": f"{d}/manifest.json", "counters": f"{d}/counters.json",
                      "pcaps": {f"{n}:{i}": f"{d}/pcaps/{n}-{i}.pcap" for n in ("client", "server")
                                for i in ("eth0", "eth1", "wlan0", "cell0")}},
            "attempts": [{"log": f"logs/cells/{name}.1.log"}]}

    for s, cl, sv in itertools.product(scenarios, IMPLS, IMPLS):
        cell(s, cl, sv)
    for probe, sv in itertools.product(suite.probes, IMPLS):
        cell("probes", f"probe:{probe}", sv)
    summary = {v: sum(c["verdict"] == v for c in cells.values()) for v in VERDICT_LETTERS}
    return {"suite": {"name": "hackathon"}, "run_id": "synthetic", "status": "complete", "started": "t",
            "testbed_version": "0", "git_sha": None, "summary": summary, "cells": cells,
            "scenarios": {"probes": {"kind": "probes"}}}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/install-deps.sh installs it)")
def test_overview_grid_fits_1400px_and_links_every_cell(tmp_path):
    matrix = synthetic_matrix()
    page = render(matrix, tmp_path).replace("</body>", MEASURE + "</body>")
    (tmp_path / "report.html").write_text(page)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},900", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    measured = {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body)}
    assert measured["viewport"] == WIDTH, measured
    assert measured["grid-right"] <= WIDTH, measured      # the grid itself fits …
    # … and nothing below it widens the page (the detail tables' links once made it 2900 px wide)
    assert measured["scroll-width"] <= measured["client-width"] <= WIDTH, measured
    assert measured["grid-bottom"] > 25 * 20, measured    # the rows are laid out, not collapsed
    grid = dom.stdout[dom.stdout.index('id="overview"'):dom.stdout.index("</table>", dom.stdout.index('id="overview"'))]
    rows = re.findall(r'<tr data-scenario="([^"]+)"', grid)
    assert len(rows) == 25 + 5 and rows.count("probes") == 5  # a row per scenario and per probe
    links = re.findall(r'<td class="([a-z-]+)"[^>]*><a href="#([^"]+)"[^>]*>([^<]+)</a>', grid)
    assert len(links) == len(matrix["cells"]) == 25 * 9 + 5 * 3
    by_name = {c["name"]: c for c in matrix["cells"].values()}
    for verdict, target, letter in links:
        assert by_name[target]["verdict"] == verdict and VERDICT_LETTERS[verdict] == letter
        assert f'id="{target}"' in dom.stdout  # the letter links to that cell's entry in the page
    assert {v for v, _, _ in links} == set(VERDICT_LETTERS)  # known has its own class (and colour)
    legend = dom.stdout[dom.stdout.index('class="legend"'):]
    assert all(f'class="key {v}"' in legend for v in VERDICT_LETTERS)
