"""report.html opened in a real browser (headless Chromium): it renders, its script runs without
console errors, and every cell is in the page with its verdict and links."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium is installed by scripts/install-deps.sh"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url],
                          capture_output=True, text=True, timeout=90)


def test_report_renders_in_chromium_without_console_errors(tmp_path):
    r = run_cli("matrix", str(ROOT / "experiments/suites/hackathon.yaml"), "--clients", "host,tcp,linux-6.1",
                "--servers", "host", "--scenarios", "subflow-join", "--jobs", "2", "--results", str(tmp_path / "res"),
                timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p for p in (tmp_path / "res").iterdir() if p.is_dir() and not p.name.startswith("."))
    report = run_dir / "report.html"
    matrix = json.loads((run_dir / "matrix.json").read_text())
    dom = chromium(report.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="yes"' in dom.stdout  # the filter script ran to its end
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    for cell in matrix["cells"].values():
        assert f'data-client="{cell["client"]}" data-server="{cell["server"]}" data-verdict="{cell["verdict"]}"' \
            in dom.stdout
    assert dom.stdout.count('class="plot"') >= 1  # throughput per path for the cells that moved data
    shot = tmp_path / "report.png"
    chromium(report.as_uri(), tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.stat().st_size > 10_000
