"""Shaped links measured against what they promise, per shaping backend, through `testbed run`.

Every row is one `testbed run` of a generated experiment over bench/fidelity-path.yaml.j2 (client →
router → server, the client's link shaped) or topologies/dual-homed.yaml.j2 (MPTCP aggregation), and
is judged from the archive it leaves: the ping workload's raw replies, iperf3's report, the
interface byte counters, the bulk transfer's goodput. So it measures the product, not a side script.

Rows and targets:

* rtt 10/50/200 ms (half the delay each way): ping median and p95 within ±5 % or ±1 ms.
* loss 1/5/20 % (client → router only): lost echo requests over many pings, with a Wilson 95 %
  interval; pass when the configured loss lies inside it.
* rate 1/10/100 Mbit (client → router): one iperf3 TCP upload; the framed rate (TCP goodput with
  each segment's Ethernet/IP/TCP headers added back, what htb counts) within ±5 %. The client
  interface's counters over the steady part are printed too (they count a GSO burst's headers once).
* jitter: 50 ms RTT with 5 ms jitter one way, pings spaced wider than twice the jitter: the RTT's
  standard deviation within ±25 % of the backend's jitter model, and p1..p99 within the configured
  RTT ± (jitter + 1 ms).
* aggregate 10/10, 15/5, 25/1 Mbit: one MPTCP bulk upload over both paths of the dual-homed topology
  (5 ms each way): goodput at least 0.9 of the sum (the bound of the kernel's MPTCP selftests).

Backends: `fallback` (this kernel, no sch_netem: htb + nftables + the NFQUEUE delay line),
`netem` (this kernel's sch_netem; n/a where it has none), `guest` (the client on a QEMU guest,
default linux-6.1, shaped by netem in the guest's kernel). Needs root.

    sudo .venv/bin/python bench/shaping_fidelity.py [--backends fallback,netem,guest] [--rows rtt,loss,...]
                                                    [--quick] [--guest-image linux-6.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import benchjson  # noqa: E402

BACKENDS = ("fallback", "netem", "guest")
ROWS = ("rtt", "loss", "rate", "jitter", "aggregate")
RTTS_MS = (10, 50, 200)
LOSSES = (1.0, 5.0, 20.0)
RATES_MBIT = (1, 10, 100)
AGGREGATES = ((10, 10), (15, 5), (25, 1))
JITTER = (50, 5)  # RTT ms, one-way jitter ms
_RTT = re.compile(r"time=([0-9.]+) ms")


# ----------------------------------------------------------------------------------------------
# Statistics (pure, unit-tested)


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95 %), as fractions in [0, 1]."""
    if trials <= 0:
        raise ValueError("no trials")
    if not 0 <= successes <= trials:
        raise ValueError("successes must lie between 0 and the number of trials")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def within(measured: float, target: float, rel: float = 0.05, abs_: float = 0.0) -> bool:
    """Whether `measured` is within ±rel of `target` or within ±abs_ of it, whichever is wider."""
    return abs(measured - target) <= max(rel * abs(target), abs_)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of unsorted values."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def jitter_sd(model: str, jitter: float) -> float:
    """Standard deviation of one direction's delay under a backend's jitter model.

    netem: uniform in delay ± jitter, sd = jitter/√3. fallback: normal with sd jitter/2 clipped to
    ± jitter (± 2 sd); clipping moves the tails onto the bounds: Var = σ²[(2Φ(a) − 1) − 2aφ(a) + 2a²(1 − Φ(a))].
    """
    if model == "netem":
        return jitter / math.sqrt(3)
    a, sigma = 2.0, jitter / 2
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    return sigma * math.sqrt((2 * cdf - 1) - 2 * a * phi + 2 * a * a * (1 - cdf))


def steady_rate(series: list[list[float]], column: int = 2, trim: float = 0.2) -> float | None:
    """Bits per second over the middle of the active part of a byte-counter series [[t, rx, tx], ...]:
    the samples where the counter moves, with `trim` of that span cut at each end (slow start, the
    queue filling, the last partial interval)."""
    moving = [i for i in range(1, len(series)) if series[i][column] > series[i - 1][column]]
    if len(moving) < 3:
        return None
    first, last = series[moving[0] - 1][0], series[moving[-1]][0]
    lo, hi = first + trim * (last - first), last - trim * (last - first)
    window = [row for row in series if lo <= row[0] <= hi]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None
    return 8 * (window[-1][column] - window[0][column]) / (window[-1][0] - window[0][0])


# ----------------------------------------------------------------------------------------------
# Running one row through the product


@dataclass
class Row:
    backend: str
    kind: str
    configured: str
    measured: str = ""
    target: str = ""
    verdict: str = ""  # pass / FAIL / n/a (reason) / error: ...
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Runner:
    def __init__(self, work: Path, testbed: list[str], timeout: float, keep: bool) -> None:
        self.work = work
        self.testbed = testbed
        self.timeout = timeout
        self.keep = keep
        self.count = 0

    def run(self, experiment: dict[str, Any]) -> tuple[Path | None, dict[str, Any], str]:
        """`testbed run` of the experiment; (run dir, manifest, error text or '')."""
        self.count += 1
        path = self.work / f"row{self.count}.json"  # JSON is YAML: no quoting questions
        path.write_text(json.dumps(experiment, indent=1))
        results = self.work / f"results{self.count}"
        argv = [*self.testbed, "run", str(path), "--results", str(results)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return None, {}, f"testbed run timed out after {self.timeout:g} s"
        runs = sorted(p for p in results.glob("*") if p.is_dir() and not p.name.startswith("."))
        if not runs:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return None, {}, f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
        manifest = json.loads((runs[-1] / "manifest.json").read_text())
        error = ""
        if manifest.get("status") != "complete":
            error = f"run {manifest.get('status')}: {manifest.get('error') or proc.stderr.strip()[-200:]}"
        return runs[-1], manifest, error


def path_experiment(name: str, backend: str, image: str, params: dict[str, Any],
                    workloads: list[dict[str, Any]]) -> dict[str, Any]:
    topo = {"file": str(HERE / "fidelity-path.yaml.j2"), "set": dict(params)}
    if backend == "guest":
        topo["set"]["client_image"] = image
    return {"name": name, "topology": topo, "workloads": workloads, "capture": "off",
            "shaping": "fallback" if backend == "fallback" else "auto", "timeout": "240s"}


def pcap_echo_rtts(data: bytes) -> list[float]:
    """RTTs in ms of ICMP echo request/reply pairs in a pcap (Ethernet, IPv4), from the capture's own
    kernel timestamps: the time the request left the interface to the time the reply came back."""
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        raise ValueError("not a pcap file")
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    if linktype != 1:
        raise ValueError(f"pcap link type {linktype}, not Ethernet")
    sent: dict[tuple[int, int], float] = {}
    rtts: list[float] = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[pos:pos + 16])
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 1:  # IPv4, ICMP
            continue
        icmp = 14 + (frame[14] & 0x0F) * 4
        if len(frame) < icmp + 8:
            continue
        kind, ident, seq = frame[icmp], *struct.unpack("!HH", frame[icmp + 4:icmp + 8])
        t = sec + frac * scale
        if kind == 8:
            sent.setdefault((ident, seq), t)
        elif kind == 0 and (ident, seq) in sent:
            rtts.append(1000 * (t - sent.pop((ident, seq))))
    return rtts


def ping_rtts(run_dir: Path, name: str = "ping") -> list[float]:
    """Every echo reply's RTT in ms, from the ping workload's own output in the archive."""
    text = (run_dir / "workloads" / name / "ping.stdout").read_text(errors="replace")
    return [float(m) for m in _RTT.findall(text)]


def capture_for(backend: str) -> str:
    """Captures give kernel timestamps on the client's wire, free of ping's own wake-up delay on a
    busy machine; a guest's link is shaped inside the guest, behind the TAP the capture sees."""
    return "off" if backend == "guest" else "on"


def rtt_samples(run_dir: Path, backend: str) -> tuple[list[float], list[float], str]:
    """(the RTTs judged, ping's own RTTs, where the judged ones come from)."""
    ping = ping_rtts(run_dir)
    pcap = run_dir / "pcaps" / "client-eth0.pcap"
    if capture_for(backend) == "on" and pcap.exists():
        return pcap_echo_rtts(pcap.read_bytes()), ping, "capture"
    return ping, ping, "ping"


def ping_samples(r: Runner, row: Row, exp: dict, backend: str, count: int):
    """Runs a ping experiment with captures; (rtts, ping's own rtts, source), or None with the row's
    verdict saying why (the run failed, or fewer than half the replies came back)."""
    exp["capture"] = capture_for(backend)
    run_dir, _, error = r.run(exp)
    if run_dir is None or error:
        row.verdict = f"error: {error}"
        return None
    rtts, ping, source = rtt_samples(run_dir, backend)
    if len(rtts) < count // 2:
        row.verdict = f"error: {len(rtts)} of {count} replies"
        return None
    return rtts, ping, source


def row_rtt(r: Runner, backend: str, image: str, rtt_ms: int, quick: bool) -> Row:
    count = 100 if quick else 400
    row = Row(backend, "rtt", f"{rtt_ms} ms", target="median, p95 ±5 % or ±1 ms")
    half = f"{rtt_ms / 2:g}ms"
    exp = path_experiment(f"fidelity-rtt-{rtt_ms}", backend, image, {"fwd_delay": half, "rev_delay": half},
                          [{"type": "ping", "count": count, "interval": "20ms", "protocol": "tcp"}])
    samples = ping_samples(r, row, exp, backend, count)
    if samples is None:
        return row
    rtts, ping, source = samples
    med, p95 = statistics.median(rtts), percentile(rtts, 95)
    row.measured = f"{source}: median {med:.2f} ms, p95 {p95:.2f} ms ({len(rtts)} pings)"
    if source != "ping" and ping:
        row.measured += f"; ping -U: median {statistics.median(ping):.2f}, p95 {percentile(ping, 95):.2f}"
    row.figures = {"configured_ms": rtt_ms, "median_ms": med, "p95_ms": p95, "samples": len(rtts),
                   "source": source, "ping_median_ms": statistics.median(ping) if ping else None,
                   "ping_p95_ms": percentile(ping, 95) if ping else None}
    ok = within(med, rtt_ms, 0.05, 1.0) and within(p95, rtt_ms, 0.05, 1.0)
    row.verdict = "pass" if ok else "FAIL"
    return row


def row_loss(r: Runner, backend: str, image: str, loss: float, quick: bool) -> Row:
    count = 1000 if quick else 4000
    row = Row(backend, "loss", f"{loss:g} % (one way)", target="configured inside Wilson 95 %")
    exp = path_experiment(f"fidelity-loss-{loss:g}", backend, image, {"fwd_loss": f"{loss:g}%"},
                          [{"type": "ping", "count": count, "interval": "5ms", "protocol": "tcp",
                            "timeout": "120s"}])
    run_dir, manifest, error = r.run(exp)
    if run_dir is None or error:
        row.verdict = f"error: {error}"
        return row
    received = len(ping_rtts(run_dir))
    lost = count - received
    lo, hi = wilson(lost, count)
    row.measured = f"{100 * lost / count:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}] ({lost}/{count})"
    row.figures = {"configured_percent": loss, "lost": lost, "sent": count,
                   "wilson95_percent": [100 * lo, 100 * hi]}
    row.verdict = "pass" if lo <= loss / 100 <= hi else "FAIL"
    return row


# What htb counts per TCP segment besides its payload: Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12.
# Interface counters count a GSO burst's headers once, so they read low by up to that much.
FRAME_OVERHEAD = 66


def iperf3_mss(run_dir: Path) -> int:
    """The sender's MSS from iperf3's own report (1448 on a 1500-byte MTU with timestamps)."""
    try:
        report = json.loads((run_dir / "workloads" / "iperf3" / "iperf3-client.json").read_text())
        return int(report["start"]["tcp_mss_default"]) or 1448
    except (OSError, ValueError, KeyError, TypeError):
        return 1448


def row_rate(r: Runner, backend: str, image: str, mbit: int, quick: bool) -> Row:
    duration = 4 if quick else 10
    row = Row(backend, "rate", f"{mbit} Mbit/s", target="framed rate ±5 %")
    exp = path_experiment(f"fidelity-rate-{mbit}", backend, image, {"fwd_rate": f"{mbit}Mbit"},
                          [{"type": "iperf3", "duration": f"{duration}s", "protocol": "tcp"}])
    exp["sample_interval"] = "0.1s"
    run_dir, manifest, error = r.run(exp)
    if run_dir is None or error:
        row.verdict = f"error: {error}"
        return row
    result = manifest.get("workloads", {}).get("iperf3", {})
    goodput = result.get("goodput_bps")
    series = json.loads((run_dir / "linkbytes.json").read_text()).get("series", {}).get("client:eth0", [])
    wire = steady_rate(series)
    if not result.get("ok") or wire is None:
        row.verdict = f"error: iperf3 {result.get('error') or 'no result'}; wire samples {len(series)}"
        return row
    mss = iperf3_mss(run_dir)
    framed = (goodput or 0) * (mss + FRAME_OVERHEAD) / mss
    row.measured = (f"framed {framed / 1e6:.2f} Mbit/s (TCP goodput {(goodput or 0) / 1e6:.2f} × {mss + FRAME_OVERHEAD}"
                    f"/{mss}); interface counters {wire / 1e6:.2f}")
    row.figures = {"configured_bps": mbit * 1e6, "framed_bps": framed, "goodput_bps": goodput,
                   "counters_bps": wire, "mss": mss}
    row.verdict = "pass" if within(framed, mbit * 1e6, 0.05) else "FAIL"
    return row


def row_jitter(r: Runner, backend: str, image: str, quick: bool) -> Row:
    rtt_ms, jit_ms = JITTER
    count = 200 if quick else 600
    model = "fallback" if backend == "fallback" else "netem"
    sd_model = jitter_sd(model, jit_ms)
    row = Row(backend, "jitter", f"{rtt_ms} ms ± {jit_ms} ms (one way, {model} model: sd {sd_model:.2f} ms)",
              target="sd ±25 %; p1..p99 in RTT ± (jitter + 1 ms)")
    half = f"{rtt_ms / 2:g}ms"
    exp = path_experiment("fidelity-jitter", backend, image,
                          {"fwd_delay": half, "rev_delay": half, "fwd_jitter": f"{jit_ms}ms"},
                          [{"type": "ping", "count": count, "interval": f"{2 * jit_ms + 5}ms", "protocol": "tcp"}])
    samples = ping_samples(r, row, exp, backend, count)
    if samples is None:
        return row
    rtts, _, source = samples
    sd = statistics.pstdev(rtts)
    p1, p99 = percentile(rtts, 1), percentile(rtts, 99)
    row.measured = f"{source}: sd {sd:.2f} ms, p1 {p1:.2f}, median {statistics.median(rtts):.2f}, p99 {p99:.2f} ms"
    row.figures = {"sd_ms": sd, "sd_model_ms": sd_model, "p1_ms": p1, "p99_ms": p99,
                   "median_ms": statistics.median(rtts), "samples": len(rtts)}
    bound = jit_ms + 1.0
    ok = within(sd, sd_model, 0.25) and rtt_ms - bound <= p1 and p99 <= rtt_ms + bound
    row.verdict = "pass" if ok else "FAIL"
    return row


def row_aggregate(r: Runner, backend: str, image: str, rates: tuple[int, int], quick: bool) -> Row:
    a, b = rates
    size = "12MB" if quick else "30MB"
    row = Row(backend, "aggregate", f"MPTCP over {a} + {b} Mbit/s", target=f"goodput ≥ {0.9 * (a + b):g} Mbit/s")
    topo = {"file": str(ROOT / "topologies" / "dual-homed.yaml.j2"),
            "set": {"paths": 2, "wifi_rate": f"{a}Mbit", "cell_rate": f"{b}Mbit", "wifi_delay": "5ms",
                    "cell_delay": "5ms"}}
    if backend == "guest":
        topo["set"]["client_image"] = image
    limits = {"subflows": 2, "add_addr_accepted": 2}
    exp = {"name": f"fidelity-aggregate-{a}-{b}", "topology": topo, "capture": "off",
           "shaping": "fallback" if backend == "fallback" else "auto", "timeout": "240s",
           "stacks": {"client": {"limits": limits, "endpoints": [{"interface": "cell0", "flags": ["subflow"]}]},
                      "server": {"limits": limits}},
           "workloads": [{"type": "bulk", "size": size, "timeout": "120s"}],
           "expect": {"outcome": "mptcp", "transfer_intact": True}}
    run_dir, manifest, error = r.run(exp)
    if run_dir is None or error:
        row.verdict = f"error: {error}"
        return row
    bulk = manifest.get("workloads", {}).get("bulk", {})
    goodput = bulk.get("goodput_bps")
    if not bulk.get("ok") or not goodput:
        row.verdict = f"error: bulk {bulk.get('error') or 'no result'}"
        return row
    row.measured = (f"{goodput / 1e6:.2f} Mbit/s = {goodput / ((a + b) * 1e6):.2f} of the sum"
                    f" ({manifest.get('outcome')})")
    row.figures = {"goodput_bps": goodput, "sum_bps": (a + b) * 1e6, "outcome": manifest.get("outcome")}
    row.verdict = "pass" if goodput >= 0.9 * (a + b) * 1e6 and manifest.get("outcome") == "mptcp" else "FAIL"
    return row


# ----------------------------------------------------------------------------------------------
# Which backends can run here


def unavailable(backend: str, image: str) -> str | None:
    """Why the backend cannot run on this machine, or None."""
    if backend == "netem":
        from testbed.emulation.shaping import netem_available

        return None if netem_available() else "this kernel has no sch_netem"
    if backend == "guest":
        if shutil.which("qemu-system-x86_64") is None:
            return "no qemu-system-x86_64"
        from testbed.emulation.qemu import images

        try:
            images.build(image, log=lambda m: print(m, file=sys.stderr))
        except Exception as exc:  # a missing package, no network: the rows say why
            return f"no {image} image: {str(exc).splitlines()[0][:80]}"
    return None


# An emulated guest makes every row slow (about 45 s each under TCG on a loaded 2-core machine):
# quick mode keeps one row per kind for it.
QUICK_GUEST = {"rtt": (50,), "loss": (5.0,), "rate": (10,), "jitter": (), "aggregate": ((10, 10),)}


def plan(rows: list[str], backend: str = "fallback", quick: bool = False) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if "rtt" in rows or "jitter" in rows:
        out.append(("base", None))  # the unshaped path: what every RTT row carries on top
    for kind in rows:
        values: tuple[Any, ...] = {"rtt": RTTS_MS, "loss": LOSSES, "rate": RATES_MBIT, "jitter": (None,),
                                   "aggregate": AGGREGATES}[kind]
        if quick and backend == "guest":
            values = tuple(v for v in values if v in QUICK_GUEST[kind] or (kind == "jitter" and QUICK_GUEST[kind]))
        out += [(kind, v) for v in values]
    return out


def row_base(r: Runner, backend: str, image: str, quick: bool) -> Row:
    """The unshaped path's RTT: a reference, and the floor of what the RTT rows can resolve."""
    count = 100 if quick else 400
    row = Row(backend, "base", "unshaped", target="reference", verdict="info")
    exp = path_experiment("fidelity-base", backend, image, {},
                          [{"type": "ping", "count": count, "interval": "20ms", "protocol": "tcp"}])
    exp["capture"] = capture_for(backend)
    run_dir, _, error = r.run(exp)
    if run_dir is None or error:
        row.verdict = f"error: {error}"
        return row
    rtts, _, source = rtt_samples(run_dir, backend)
    if not rtts:
        row.verdict = "error: no replies"
        return row
    med, p95 = statistics.median(rtts), percentile(rtts, 95)
    row.measured = f"{source}: median {med:.2f} ms, p95 {p95:.2f} ms ({len(rtts)} pings)"
    row.figures = {"median_ms": med, "p95_ms": p95, "samples": len(rtts), "source": source}
    return row


def tolerance_ms(kind: str, value: Any) -> float:
    """How far a timing row may be off: ±5 % or ±1 ms of the RTT; 1 ms for the jitter row's bounds."""
    return max(0.05 * value, 1.0) if kind == "rtt" else 1.0


def stalls_longer_than_queue(backend: str, base: Row | None, kind: str, value: Any) -> str | None:
    """Why a guest cannot keep a shaped link busy: it stalls (its unshaped RTT p95) for longer than
    the link's queue takes to drain, so the link idles for reasons that are not the shaper's."""
    if backend != "guest" or base is None or kind not in ("rate", "aggregate") or "p95_ms" not in base.figures:
        return None
    from testbed.emulation.shaping import PACKET_BYTES, bdp_packets

    rates = [value * 1e6] if kind == "rate" else [v * 1e6 for v in value]
    delay = 0.0 if kind == "rate" else 0.005
    drain_ms = min(1000 * bdp_packets(rate, delay) * PACKET_BYTES * 8 / rate for rate in rates)
    stall_ms = base.figures["p95_ms"]
    if stall_ms <= drain_ms:
        return None
    return (f"the emulated guest stalls ~{stall_ms:.0f} ms (unshaped RTT p95), longer than the "
            f"{drain_ms:.0f} ms its link's queue drains in")


def measure(r: Runner, backend: str, image: str, kind: str, value: Any, quick: bool) -> Row:
    if kind == "base":
        return row_base(r, backend, image, quick)
    if kind == "rtt":
        return row_rtt(r, backend, image, value, quick)
    if kind == "loss":
        return row_loss(r, backend, image, value, quick)
    if kind == "rate":
        return row_rate(r, backend, image, value, quick)
    if kind == "jitter":
        return row_jitter(r, backend, image, quick)
    return row_aggregate(r, backend, image, value, quick)


def describe(kind: str, value: Any) -> str:
    return {"base": lambda v: "unshaped", "rtt": lambda v: f"{v} ms", "loss": lambda v: f"{v:g} %", "rate": lambda v: f"{v} Mbit/s",
            "jitter": lambda v: f"{JITTER[0]} ms ± {JITTER[1]} ms",
            "aggregate": lambda v: f"MPTCP over {v[0]} + {v[1]} Mbit/s"}[kind](value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--quick", action="store_true", help="fewer pings, shorter transfers")
    ap.add_argument("--guest-image", default="linux-6.1")
    ap.add_argument("--testbed", default=None, help="the testbed executable (default: this checkout's)")
    ap.add_argument("--row-timeout", type=float, default=300.0, help="seconds per `testbed run`")
    ap.add_argument("--keep", action="store_true", help="keep the archives (their directory is printed)")
    ap.add_argument("--json", default=None, help="also write the results to this file (for bench/run_all.py)")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    kinds = [k for k in args.rows.split(",") if k]
    bad = [b for b in backends if b not in BACKENDS] + [k for k in kinds if k not in ROWS]
    if bad:
        print(f"shaping_fidelity: unknown backend or row: {', '.join(bad)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("shaping_fidelity: needs root (network namespaces)", file=sys.stderr)
        return 3
    testbed = [args.testbed] if args.testbed else [sys.executable, "-m", "testbed"]
    work = Path(tempfile.mkdtemp(prefix="testbed-fidelity-"))
    runner = Runner(work, testbed, args.row_timeout, args.keep)
    rows: list[Row] = []
    head = f"{'backend':8} {'row':9} {'configured':26} {'target':38} {'verdict':7}  measured"
    print(head, flush=True)
    try:
        for backend in backends:
            why = unavailable(backend, args.guest_image)
            floor: str | None = None  # why timing rows cannot be judged: the unshaped path is too noisy
            base: Row | None = None
            spread = 0.0
            for kind, value in plan(kinds, backend, args.quick):
                start = time.monotonic()
                if why:
                    row = Row(backend, kind, describe(kind, value), verdict=f"n/a ({why})")
                else:
                    row = measure(runner, backend, args.guest_image, kind, value, args.quick)
                if kind == "base":
                    base = row
                if kind == "base" and "p95_ms" in row.figures:
                    spread = row.figures["p95_ms"] - row.figures["median_ms"]
                    floor = (f"unshaped RTT already varies by {spread:.1f} ms (p95 - median), more than the "
                             "row's tolerance" + (": an emulated guest's own latency" if backend == "guest" else ""))
                if floor and kind in ("rtt", "jitter") and row.verdict in ("pass", "FAIL") \
                        and spread > tolerance_ms(kind, value):
                    row.verdict = f"n/a ({floor}; measured {row.verdict})"
                stall = stalls_longer_than_queue(backend, base, kind, value)
                if stall and row.verdict == "FAIL":
                    row.verdict = f"n/a ({stall}; measured FAIL)"
                row.seconds = time.monotonic() - start
                rows.append(row)
                print(f"{row.backend:8} {row.kind:9} {row.configured:26.26} {row.target:38.38} {row.verdict:7}  "
                      f"{row.measured}", flush=True)
    finally:
        if args.keep:
            print(f"archives: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    passed = sum(r.verdict == "pass" for r in rows)
    failed = sum(r.verdict == "FAIL" for r in rows)
    info = sum(r.verdict == "info" for r in rows)
    other = len(rows) - passed - failed - info
    print(f"{passed} pass, {failed} fail, {other} n/a or error" + (" (quick)" if args.quick else ""))
    guest_note = (f"guest: the client is a {args.guest_image} QEMU guest (TCG here: emulated, so its own "
                  "processing adds to RTT and limits rate)")
    benchjson.write(args.json, "shaping_fidelity", [benchjson.table(
        "Shaping fidelity" + (" (quick)" if args.quick else ""),
        ["backend", "row", "configured", "target", "verdict", "measured", "s"],
        [[r.backend, r.kind, r.configured, r.target, r.verdict, r.measured, round(r.seconds, 1)] for r in rows])],
        notes=[f"{passed} pass, {failed} fail, {other} n/a or error", guest_note],
        figures={"rows": [r.__dict__ for r in rows]})
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
