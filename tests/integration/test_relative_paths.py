"""The README's commands as written: relative paths, run from a directory that holds the experiments.

Every path a user gives is resolved against the current directory where it enters the testbed; the
nat64 scenario is the one that caught it (tayga refuses a relative data-dir), so it runs here both
as an experiment and as a matrix cell, from a copy of experiments/ and topologies/ with
`--results results`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory laid out like the repository's top level (what the README's commands assume)."""
    for name in ("experiments", "topologies"):
        shutil.copytree(ROOT / name, tmp_path / name)
    return tmp_path


def test_run_with_relative_paths(checkout: Path):
    r = run_cli("run", "experiments/nat64.yaml", "--results", "results", cwd=checkout, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p for p in (checkout / "results").iterdir() if p.is_dir())
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and m["outcome"] == "mptcp"
    # what reached tayga was absolute (it refuses anything else), inside this run's archive
    conf = (run_dir / "functions/nat64/tayga.conf").read_text()
    data_dir = next(line.split(None, 1)[1] for line in conf.splitlines() if line.startswith("data-dir"))
    assert Path(data_dir).is_absolute() and data_dir.startswith(str(checkout / "results"))
    assert m["inputs"]["experiment"]["file"] == str(checkout / "experiments/nat64.yaml")


def test_matrix_with_relative_paths(checkout: Path):
    r = run_cli("matrix", "experiments/suites/hackathon.yaml", "--clients", "host", "--servers", "host",
                "--scenarios", "nat64,basic-handshake", "--results", "results", cwd=checkout, timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    archive = Path(re.search(r"^archive: (.+)$", r.stdout, re.M).group(1))
    assert archive.parent == checkout / "results"
    mx = json.loads((archive / "matrix.json").read_text())
    assert {k: c["verdict"] for k, c in mx["cells"].items()} == {
        "nat64/host/host": "as-expected", "basic-handshake/host/host": "as-expected"}
    assert (checkout / "results" / "history.sqlite").is_file()


def test_bad_relative_input_is_named_as_given(checkout: Path):
    """Resolving paths must not change what problems say: the file as the user typed it."""
    exp = checkout / "experiments" / "broken.yaml"
    exp.write_text("name: broken\ntopology: ../topologies/nope.yaml\nworkloads: [{type: bulk}]\n")
    r = run_cli("run", "experiments/broken.yaml", "--results", "results", cwd=checkout)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("experiments/broken.yaml:2:") and "topologies/nope.yaml" in r.stderr
    assert not (checkout / "results").exists()
