"""`testbed sweep`: every combination × repetition archived as one run, the metric plotted."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, requires_root, run_cli

pytestmark = [requires_root, pytest.mark.usefixtures("no_leaks")]
EXP = str(ROOT / "experiments/basic-handshake.yaml")


def test_sweep_runs_every_combination_and_plots(tmp_path):
    r = run_cli("sweep", EXP, "--vary", "wifi_delay=2ms,30ms", "--repeat", "2", "--metric", "bulk.seconds",
                "--metric", "client.MPTcpExtMPCapableSYNACKRX", "--jobs", "2", "--results", str(tmp_path), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert len(sweep["cells"]) == 4 and all(c["status"] == "complete" for c in sweep["cells"])
    assert {c["seed"] for c in sweep["cells"]} == {1, 2}  # one seed per repetition, recorded
    rows = {row["values"]["wifi_delay"]: row["metrics"] for row in sweep["summary"]}
    assert rows["2ms"]["bulk.seconds"]["n"] == 2 and rows["30ms"]["bulk.seconds"]["n"] == 2
    # 30 ms each way costs round trips: the transfer takes longer than at 2 ms.
    assert rows["30ms"]["bulk.seconds"]["mean"] > rows["2ms"]["bulk.seconds"]["mean"]
    assert rows["2ms"]["client.MPTcpExtMPCapableSYNACKRX"]["values"] == [1, 1]
    assert (run_dir / "plots/bulk.seconds.png").stat().st_size > 5000
    assert run_cli("verify", str(run_dir)).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--vary", "wifi_dealy=2ms,3ms"], "not a parameter"),
    (["--vary", "wifi_loss=5%,150%"], "between 0% and 100%"),
    (["--vary", "wifi_delay"], "expected name=value1,value2"),
])
def test_bad_vary_is_refused_before_anything_runs(tmp_path, args, message):
    r = run_cli("sweep", EXP, *args, "--metric", "bulk.seconds", "--results", str(tmp_path / "res"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and r.stderr.startswith("--vary")
    assert not (tmp_path / "res").exists()
