"""The statistics of bench/shaping_fidelity.py and the RESULTS.md writer of bench/run_all.py."""

from __future__ import annotations

import json
import math
import platform
import random
import statistics
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import benchjson  # noqa: E402
import run_all  # noqa: E402
import shaping_fidelity as sf  # noqa: E402

from testbed.emulation.delayline import DelayLine, Settings  # noqa: E402

# -- Wilson interval ---------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (5, 10, 0.236593, 0.763407),  # reference values (e.g. statsmodels proportion_confint, method="wilson")
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
])
def test_wilson_matches_reference_values(k: int, n: int, lo: float, hi: float) -> None:
    got = sf.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)


def test_wilson_contains_the_estimate_and_narrows_with_more_trials() -> None:
    widths = []
    for n in (100, 1000, 10000):
        lo, hi = sf.wilson(n // 20, n)
        assert lo < 0.05 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_wilson_covers_the_true_loss_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    p, n, trials = 0.05, 400, 2000
    covered = sum(_covers(rng, p, n) for _ in range(trials))
    assert 0.92 < covered / trials < 0.98


def _covers(rng: random.Random, p: float, n: int) -> bool:
    lo, hi = sf.wilson(sum(rng.random() < p for _ in range(n)), n)
    return lo <= p <= hi


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        sf.wilson(3, 0)
    with pytest.raises(ValueError):
        sf.wilson(11, 10)


# -- the other statistics ----------------------------------------------------------------------

def test_tolerance_is_the_wider_of_relative_and_absolute() -> None:
    assert sf.within(10.9, 10, 0.05, 1.0)  # 1 ms is wider than 5 % of 10 ms
    assert not sf.within(11.1, 10, 0.05, 1.0)
    assert sf.within(209, 200, 0.05, 1.0)  # 5 % of 200 ms is 10 ms
    assert not sf.within(211, 200, 0.05, 1.0)


def test_fallback_jitter_model_matches_the_delay_lines_own_draws() -> None:
    line = DelayLine(Settings(delay=0.05, jitter=0.01), seed=3)
    draws = [line.sample_delay(line.settings) for _ in range(40000)]
    assert statistics.pstdev(draws) == pytest.approx(sf.jitter_sd("fallback", 0.01), rel=0.03)
    assert min(draws) == pytest.approx(0.04) and max(draws) == pytest.approx(0.06)  # clipped, not truncated
    assert sf.jitter_sd("netem", 0.01) == pytest.approx(0.01 / math.sqrt(3))


def test_steady_rate_ignores_idle_and_ramp_samples() -> None:
    # 1 s idle, then 125 000 bytes every 0.1 s (10 Mbit/s), then idle again
    series, total = [], 0
    for i in range(60):
        t = i * 0.1
        if 10 <= i < 50:
            total += 125_000
        series.append([t, 0, total])
    assert sf.steady_rate(series) == pytest.approx(10e6, rel=1e-6)
    assert sf.steady_rate([[0.0, 0, 0], [0.1, 0, 0]]) is None


def test_echo_rtts_from_a_pcap_written_by_scapy(tmp_path: Path) -> None:
    scapy = pytest.importorskip("scapy.all")
    packets = []
    for seq, (sent, rtt) in enumerate([(1.0, 0.0105), (1.02, 0.0121), (1.04, 0.0500)]):
        request = scapy.Ether() / scapy.IP(src="10.0.0.1", dst="10.0.1.2") / scapy.ICMP(type=8, id=7, seq=seq)
        reply = scapy.Ether() / scapy.IP(src="10.0.1.2", dst="10.0.0.1") / scapy.ICMP(type=0, id=7, seq=seq)
        request.time, reply.time = sent, sent + rtt
        packets += [request, reply]
    lost = scapy.Ether() / scapy.IP(src="10.0.0.1", dst="10.0.1.2") / scapy.ICMP(type=8, id=7, seq=9)
    lost.time = 2.0
    packets.append(lost)
    path = tmp_path / "client-eth0.pcap"
    scapy.wrpcap(str(path), packets)
    assert sf.pcap_echo_rtts(path.read_bytes()) == pytest.approx([10.5, 12.1, 50.0], abs=0.002)
    with pytest.raises(ValueError):
        sf.pcap_echo_rtts(b"not a pcap file at all, just text")


# -- RESULTS.md ----------------------------------------------------------------------------------

HAND_WRITTEN = textwrap.dedent("""\
    # Benchmark results

    ## Scale, before/after (hand-written)

    | topology | N | before | after |
    |---|---|---|---|
    | chain | 100 | hung | 5.27 s |
    """)


def _outcome(tmp_path: Path, name: str, rows: list[list[object]]) -> run_all.Outcome:
    out = tmp_path / f"{name}.json"
    benchjson.write(out, name, [benchjson.table("t", ["a", "b|c"], rows)], notes=["a note"])
    bench = next(b for b in run_all.BENCHES if b.name == name)
    return run_all.Outcome(bench, 0, 1.5, json.loads(out.read_text()), "")


def test_results_writer_keeps_the_hand_written_part_and_replaces_its_own(tmp_path: Path) -> None:
    info = run_all.machine()
    assert info["kernel"] == platform.release() and info["cpus"]
    first = run_all.render([_outcome(tmp_path, "scale", [["x", 1.0]])], info, "quick", "2026-12-03 13:00 UTC",
                           "13:30 UTC")
    text = run_all.splice(HAND_WRITTEN, first)
    assert text.startswith("# Benchmark results\n")
    assert "| chain | 100 | hung | 5.27 s |" in text
    assert f"kernel {platform.release()}" in text and "pessimistic" in text
    assert "| a | b\\|c |" in text and "| x | 1 |" in text and "- a note" in text

    second = run_all.render([_outcome(tmp_path, "scale", [["y", 2.5]])], info, "full", "2026-12-04 10:00 UTC",
                            "11:00 UTC")
    again = run_all.splice(text, second)
    assert again.count(run_all.BEGIN) == 1 and again.count(run_all.END) == 1
    assert "| y | 2.5 |" in again and "| x | 1 |" not in again
    assert again.split(run_all.END)[1] == text.split(run_all.END)[1]  # the hand-written part, untouched
    assert "(full)" in again and "Quick sizes" not in again


def test_a_bench_without_a_result_is_reported_with_its_last_line(tmp_path: Path) -> None:
    bench = run_all.BENCHES[0]
    generated = run_all.render([run_all.Outcome(bench, 2, 0.1, None, "usage\nbare_netns_cell.sh not found")],
                               run_all.machine(), "quick", "d", "e")
    assert "No result: bare_netns_cell.sh not found" in generated
    timed_out = run_all.render([run_all.Outcome(bench, None, 9.0, None, "")], run_all.machine(), "quick", "d", "e")
    assert "timed out" in timed_out


def test_run_bench_runs_a_real_script_with_and_without_json(tmp_path: Path) -> None:
    with_json = tmp_path / "with_json.py"
    with_json.write_text(textwrap.dedent(f"""\
        import argparse, sys
        sys.path.insert(0, {str(BENCH)!r})
        import benchjson
        ap = argparse.ArgumentParser()
        ap.add_argument("--runs")
        ap.add_argument("--json")
        args = ap.parse_args()
        print("measuring", args.runs)
        benchjson.write(args.json, "cell_overhead", [benchjson.table("t", ["runs"], [[args.runs]])])
        """))
    plain = tmp_path / "plain.py"
    plain.write_text("import sys\nprint('figure:', sys.argv[1:])\n")
    bench = next(b for b in run_all.BENCHES if b.name == "cell_overhead")
    got = run_all.run_bench(bench, "quick", tmp_path, script=with_json)
    assert got.code == 0 and got.data is not None
    assert got.data["tables"][0]["rows"] == [[bench.quick[1]]]
    assert got.data["argv"] == list(bench.quick)  # the result file's path is not part of the command
    got = run_all.run_bench(bench, "quick", tmp_path, script=plain)
    assert got.code == 0 and got.data is None
    assert f"figure: {list(bench.quick)}" in got.tail
    assert "figure:" in run_all.render([got], run_all.machine(), "quick", "d", "e")


def test_a_run_of_some_benches_keeps_the_other_benches_sections(tmp_path: Path) -> None:
    info = run_all.machine()
    text = run_all.splice(HAND_WRITTEN, run_all.render([_outcome(tmp_path, "scale", [["x", 1.0]]),
                                                        _outcome(tmp_path, "guest_boot", [["g", 3.0]])],
                                                       info, "quick", "d1", "e1"))
    previous = run_all.previous_sections(text)
    assert set(previous) == {"scale", "guest_boot"}
    again = run_all.splice(text, run_all.render([_outcome(tmp_path, "scale", [["y", 2.0]])], info, "quick", "d2",
                                                "e2", previous))
    assert "| y | 2 |" in again and "| x | 1 |" not in again
    assert previous["guest_boot"] in again  # not run this time: kept as it was
    assert again.index("### guest_boot") < again.index("### scale")  # in BENCHES order


def test_plan_puts_the_reference_first_and_cuts_guest_rows_in_quick_mode() -> None:
    full = sf.plan(list(sf.ROWS))
    assert full[0] == ("base", None)
    assert len(full) == 1 + 3 + 3 + 3 + 1 + 3
    quick_guest = sf.plan(list(sf.ROWS), "guest", quick=True)
    assert [k for k, _ in quick_guest] == ["base", "rtt", "loss", "rate", "aggregate"]
    assert sf.plan(["loss"], "fallback", quick=True) == [("loss", 1.0), ("loss", 5.0), ("loss", 20.0)]


def test_a_guest_row_is_not_judged_when_the_guest_stalls_longer_than_its_queue_drains() -> None:
    base = sf.Row("guest", "base", "unshaped", figures={"median_ms": 1.5, "p95_ms": 48.0})
    # 10 Mbit/s, queue of 10 packets: 12 ms to drain, less than a 48 ms stall
    assert "stalls" in (sf.stalls_longer_than_queue("guest", base, "rate", 10) or "")
    # 1 Mbit/s: 120 ms of queue outlasts the stall, so the row is judged
    assert sf.stalls_longer_than_queue("guest", base, "rate", 1) is None
    assert sf.stalls_longer_than_queue("fallback", base, "rate", 10) is None
    assert sf.tolerance_ms("rtt", 200) == pytest.approx(10.0) and sf.tolerance_ms("rtt", 10) == 1.0
