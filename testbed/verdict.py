"""Expectations → checks (expected, measured, verdict), and the run's outcome category."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

from testbed.spec.experiment import Bound, Experiment
from testbed.spec.units import format_duration, format_percent, format_rate, format_size

# Counters that move when an MPTCP connection falls back to TCP (at or after the handshake).
FALLBACK_COUNTERS = ("MPTcpExtMPCapableFallbackACK", "MPTcpExtMPCapableFallbackSYNACK",
                     "MPTcpExtMPFallbackTokenInit", "MPTcpExtDssFallback", "MPTcpExtInfiniteMapTx",
                     "MPTcpExtInfiniteMapRx", "MPTcpExtMPCapableDataFallback",
                     "MPTcpExtSimultConnectFallback", "MPTcpExtDSSCorruptionFallback", "MPTcpExtMD5SigFallback")
STREAM_TYPES = ("bulk", "rr", "iperf3")


@dataclass
class Check:
    name: str
    expected: str
    measured: Any
    verdict: str  # "pass" | "fail" | "info" (recorded finding) | "unobserved" (nothing was measured: detail says why)
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Measurements:
    workloads: dict[str, dict]  # name → result
    workload_specs: dict[str, Any]
    counters: dict[str, dict[str, int]]  # node → delta
    path_bytes: Any  # (ref, start, end) → bytes
    node_interfaces: dict[str, list[str]]
    sockets: list[dict] = field(default_factory=list)  # `ss` snapshots: {"t", "node", "tcp", "mptcp"}
    peers: dict[str, set[str]] = field(default_factory=dict)  # node → established remote addresses (/proc/net/tcp)
    addresses: dict[str, list[str]] = field(default_factory=dict)  # 'node:interface' → its addresses
    present: dict[str, set[str]] = field(default_factory=dict)  # node → the counters its kernel has (if known)
    # What could not be observed, and why: an empty observation must never read as the kernel's value.
    counter_gaps: dict[str, str] = field(default_factory=dict)  # node → why its counters were not read
    socket_gaps: dict[str, str] = field(default_factory=dict)  # node → why no `ss` snapshot of it answered
    link_gaps: dict[str, str] = field(default_factory=dict)  # 'node:interface' → why its bytes were not sampled
    event_done: list[float | None] = field(default_factory=list)  # per event: when it had been carried out


def outcome(m: Measurements) -> str:
    streams = [(n, r) for n, r in m.workloads.items() if r.get("type") in STREAM_TYPES
               and _expected_error(m, n) is None]  # workloads meant to fail say nothing about the outcome
    if not streams:
        return "none"
    if any(not r.get("ok") for _, r in streams):
        return "failed"
    mptcp_streams = [n for n, r in streams if r.get("protocol") == "mptcp"]
    if not mptcp_streams:
        return "fallback"
    clients = {m.workload_specs[n].client for n in mptcp_streams}
    negotiated = sum(m.counters.get(c, {}).get("MPTcpExtMPCapableSYNACKRX", 0) for c in clients)
    fell_back = sum(m.counters.get(node, {}).get(k, 0) for node in m.counters for k in FALLBACK_COUNTERS)
    return "mptcp" if negotiated > 0 and fell_back == 0 else "fallback"


UNOBSERVED = "unobserved"


def _unobserved(name: str, expected: str, why: list[str]) -> Check:
    return Check(name, expected, None, UNOBSERVED, "not observed: " + "; ".join(why))


def _bound_text(b: Any, fmt=lambda v: f"{v:g}") -> str:
    if b.min is not None and b.max is not None:
        return f"= {fmt(b.min)}" if b.min == b.max else f"{fmt(b.min)} .. {fmt(b.max)}"
    if b.min is not None:
        return f">= {fmt(b.min)}"
    if b.max is not None:
        return f"<= {fmt(b.max)}"
    return "any"


def _within(value: float | None, b: Any) -> bool:
    if value is None:
        return False
    return (b.min is None or value >= b.min) and (b.max is None or value <= b.max)


def _first(m: Measurements, types: tuple[str, ...], name: str | None) -> tuple[str | None, dict]:
    if name:
        return name, m.workloads.get(name, {})
    for n, r in m.workloads.items():
        if r.get("type") in types:
            return n, r
    return None, {}


def metric(m: Measurements, ref: str) -> float | None:
    """'workload.metric': goodput, seconds, ttfb_p95, completion_p50, rtt_p99, loss_percent, ..."""
    name, _, what = ref.rpartition(".")
    r = m.workloads.get(name, {})
    if what in ("goodput", "goodput_bps"):
        return r.get("goodput_bps")
    if what == "share":
        return _share(m, name)
    family, _, pct = what.partition("_")
    if family in ("ttfb", "completion", "rtt") and isinstance(r.get(family), dict):
        return r[family].get(pct)
    value = r.get(what)  # set-up figures (setup_seconds, first_byte_rtts, ...) are lifted by the driver
    if value is None:
        value = (r.get("client") or {}).get(what)
    return value if isinstance(value, int | float) else None


def _expected_error(m: Measurements, name: str) -> str | None:
    return getattr(m.workload_specs.get(name), "expect_error", None)


def _failure_check(name: str, r: dict, wanted: str) -> Check:
    """A workload that must fail (`expect_error`): with the error its via node reported, or any."""
    err = r.get("via_error") if isinstance(r.get("via_error"), dict) else None
    measured = err.get("name") if err else ("ok" if r.get("ok") else r.get("error"))
    passed = not r.get("ok") and (wanted == "any" or (err is not None and err.get("name") == wanted))
    detail = ""
    if err:
        est = err.get("established_seconds")
        detail = (f"{err.get('kind')} error {err.get('code')} after {err.get('seconds')} s; for a Happy-Eyeballs "
                  "race the attempt " + (f"counted as established after {est} s" if est is not None
                                         else "never counted as established"))
    return Check(f"workload {name} fails with {wanted}", wanted, measured, "pass" if passed else "fail", detail)


def judge(exp: Experiment, m: Measurements, measured_outcome: str) -> list[Check]:
    e = exp.expect
    not_started = {n: r["not_started"] for n, r in m.workloads.items() if r.get("not_started")}
    if not_started:  # nothing of the run can be judged: what it measured is not what the experiment asked
        return [_unobserved(f"workload {n} completed", "ok", [f"it never started: {why}"])
                for n, why in not_started.items()]
    checks: list[Check] = []
    if e.outcome != "failed":
        for name, r in m.workloads.items():
            if _expected_error(m, name) is not None:
                continue  # judged below: its failure is the pass
            checks.append(Check(f"workload {name} completed", "ok", "ok" if r.get("ok") else r.get("error"),
                                "pass" if r.get("ok") else "fail"))
    checks += [_failure_check(n, r, _expected_error(m, n) or "") for n, r in m.workloads.items()
               if _expected_error(m, n) is not None]
    for name, r in m.workloads.items():  # conformance probes judge themselves against the RFC
        if r.get("type") == "probe" and r.get("verdict"):
            checks.append(Check(f"probe {name}", f"{r.get('expected')}: {r.get('expected_text')}",
                                f"{r.get('observed')}: {r.get('observed_text')}",
                                "pass" if r["verdict"] == "as-expected" else "fail",
                                f"{r.get('rfc')}; server speaks {r.get('speaks')}"))
    outcome_gaps = [m.counter_gaps[n] for n in sorted(m.counter_gaps)]
    if e.outcome and outcome_gaps and measured_outcome in ("mptcp", "fallback"):  # read from the counters
        checks.append(_unobserved("outcome", e.outcome, outcome_gaps))
    elif e.outcome:
        checks.append(Check("outcome", e.outcome, measured_outcome,
                            "pass" if measured_outcome == e.outcome else "fail",
                            "from MPTcpExt counters: MP_CAPABLE SYN/ACK received and no fallback counter moved"))
    if e.transfer_intact is not None:
        bulks = {n: r for n, r in m.workloads.items() if r.get("type") == "bulk"}
        intact = bool(bulks) and all(r.get("intact") for r in bulks.values())
        measured = ", ".join(f"{n}: {str(r.get('intact')).lower()}" for n, r in bulks.items()) or "no bulk workload"
        checks.append(Check("transfer intact (sha256 end to end)", str(e.transfer_intact).lower(), measured,
                            "pass" if intact == e.transfer_intact else "fail"))
    for key, bound in e.counters.items():
        node, _, counter = key.partition(".")
        matched = fnmatch.filter(m.counters, node) if any(c in node for c in "*?[") else [node]
        gaps = [m.counter_gaps[n] for n in matched if n in m.counter_gaps]
        if gaps:
            checks.append(_unobserved(f"counter {key}", _bound_text(bound), gaps))
            continue
        absent = [n for n in matched if n in m.present and counter not in m.present[n]]
        if absent:  # a kernel without the counter proves nothing either way: never read it as 0
            skip = e.counters_absent == "skip"
            checks.append(Check(f"counter {key}", _bound_text(bound), "absent", "info" if skip else "fail",
                                f"the kernel of {', '.join(sorted(absent))} has no {counter} counter"
                                + (": skipped (counters_absent: skip)" if skip else "")))
            continue
        value = sum(m.counters.get(n, {}).get(counter, 0) for n in matched)
        checks.append(Check(f"counter {key}", _bound_text(bound), value, "pass" if _within(value, bound) else "fail",
                            f"sum over {', '.join(sorted(matched))}" if matched != [node] else ""))
    for node, p in e.peers.items():
        seen = peers_seen(m.sockets, node) | m.peers.get(node, set())
        wanted = {ref: m.addresses.get(ref, [ref]) for ref in [*p.includes, *p.excludes]}
        missing = [ref for ref in p.includes if not set(wanted[ref]) & seen]
        present = [ref for ref in p.excludes if set(wanted[ref]) & seen]
        expected = "; ".join(([f"includes {', '.join(p.includes)}"] if p.includes else []) +
                             ([f"excludes {', '.join(p.excludes)}"] if p.excludes else []))
        if node in m.socket_gaps and not present:  # nothing seen is no evidence; an excluded peer seen is
            checks.append(_unobserved(f"peers of {node}", expected, [m.socket_gaps[node]]))
            continue
        checks.append(Check(f"peers of {node}", expected, sorted(seen), "fail" if missing or present else "pass",
                            "remote addresses of its established TCP sockets (subflows too) in the ss snapshots "
                            "and /proc/net/tcp reads"
                            + (f"; never seen: {', '.join(missing)}" if missing else "")
                            + (f"; seen: {', '.join(present)}" if present else "")))
    if e.subflows is not None:
        name, _ = _first(m, STREAM_TYPES, None)
        client = m.workload_specs[name].client if name else None
        c = m.counters.get(client or "", {})
        value = 1 + c.get("MPTcpExtMPJoinSynAckRx", 0) + c.get("MPTcpExtMPJoinAckRx", 0)
        if client in m.counter_gaps:
            checks.append(_unobserved(f"subflows at {client}", _bound_text(e.subflows), [m.counter_gaps[client]]))
        else:
            checks.append(Check(f"subflows at {client}", _bound_text(e.subflows), value,
                                "pass" if _within(value, e.subflows) else "fail", "1 + MPJoinSynAckRx + MPJoinAckRx"))
    if e.goodput is not None:
        name, r = _first(m, ("bulk", "iperf3"), e.goodput.workload)
        value = r.get("goodput_bps")
        checks.append(Check(f"goodput of {name}", _bound_text(e.goodput, format_rate),
                            format_rate(value) if value else None, "pass" if _within(value, e.goodput) else "fail"))
    if e.latency is not None:
        name, r = _first(m, ("rr",), e.latency.workload)
        series = r.get(e.latency.metric) or {}
        for pct in ("p50", "p95", "p99"):
            bound: Any = getattr(e.latency, pct)
            if bound is None:
                continue
            value = series.get(pct)
            checks.append(Check(f"{e.latency.metric} {pct} of {name}", _bound_text(bound, format_duration),
                                format_duration(value) if value is not None else None,
                                "pass" if _within(value, bound) else "fail"))
    for ref, p in e.paths.items():
        node = ref.partition(":")[0]
        gaps = [m.link_gaps[r] for r in [ref, *(f"{node}:{i}" for i in m.node_interfaces.get(node, []))]
                if r in m.link_gaps]
        if gaps:
            checks.append(_unobserved(f"bytes of {node} on {ref}", "share or bytes", list(dict.fromkeys(gaps))))
            continue
        start, end, since = p.start, p.end, ""
        if p.after_event is not None:
            done = m.event_done[p.after_event] if p.after_event < len(m.event_done) else None
            if done is None:
                checks.append(_unobserved(f"bytes of {node} on {ref}", "share or bytes",
                                          [f"event {p.after_event} was not carried out: no window to count from"]))
                continue
            start, end = done + (start or 0.0), None if end is None else done + end
            since = f" (event {p.after_event} done at {format_duration(round(done, 3))})"
        own = m.path_bytes(ref, start, end)
        total = sum(m.path_bytes(f"{node}:{i}", start, end) for i in m.node_interfaces.get(node, []))
        if not total and start is not None:  # an empty window says nothing about the path (0 bytes, "0 %")
            checks.append(_unobserved(f"bytes of {node} on {ref}", "share or bytes",
                                      [f"{node} moved no bytes on any interface from {format_duration(start)}"
                                       f"{since}: the transfer ended before the window"]))
            continue
        share = 100.0 * own / total if total else 0.0
        window = "" if p.start is None and p.end is None and p.after_event is None else (
            f" from {format_duration(p.start or 0)}" + (f" to {format_duration(p.end)}" if p.end else "")
            + (f" after event {p.after_event}" if p.after_event is not None else ""))
        if p.min_share is not None or p.max_share is not None:
            b = Bound(min=p.min_share, max=p.max_share)
            checks.append(Check(f"share of {node}'s bytes on {ref}{window}", _bound_text(b, format_percent),
                                format_percent(round(share, 2)), "pass" if _within(share, b) else "fail",
                                f"{own} of {total} bytes{since}"))
        if p.min_bytes is not None or p.max_bytes is not None:
            b = Bound(min=p.min_bytes, max=p.max_bytes)
            checks.append(Check(f"bytes on {ref}{window}", _bound_text(b, format_size), own,
                                "pass" if _within(own, b) else "fail", since.strip(" ()")))
    for c in e.compare:
        left, right = metric(m, c.left), metric(m, c.right)
        ok = left is not None and right is not None and left <= c.factor * right
        checks.append(Check(f"{c.left} <= {c.factor:g} x {c.right}", f"<= {c.factor:g} x {right}", left,
                            "pass" if ok else "fail"))
    for ref, bound in e.latency_bounds.items():
        value = metric(m, ref)
        checks.append(Check(ref, _bound_text(bound, format_duration),
                            format_duration(value) if value is not None else None,
                            "pass" if _within(value, bound) else "fail"))
    for ref in e.report:
        value = _reported(m, ref)
        checks.append(Check(ref, "recorded", value, "info" if value is not None else "fail",
                            "a finding, not a pass/fail criterion"))
    return checks


def _reported(m: Measurements, ref: str) -> float | None:
    """A finding: 'node:interface' (bytes carried), 'node.Counter' (delta) or 'workload.metric'."""
    head, dot, tail = ref.partition(".")
    if ":" in ref and not dot:
        return m.path_bytes(ref, None, None)
    if dot and head in m.counters and head not in m.workloads:
        return m.counters[head].get(tail, 0)
    return metric(m, ref)


def _share(m: Measurements, name: str) -> float | None:
    """Percent of the goodput of the workloads running together with `name` (its `concurrent` group)
    that `name` had: each flow's share of a bottleneck they all crossed."""
    groups: list[list[str]] = []
    for n, spec in m.workload_specs.items():
        if getattr(spec, "concurrent", False) and groups:
            groups[-1].append(n)
        else:
            groups.append([n])
    group = next((g for g in groups if name in g), [])
    rates = {n: m.workloads.get(n, {}).get("goodput_bps") for n in group}
    total = sum(v for v in rates.values() if isinstance(v, int | float))
    own = rates.get(name)
    return round(100.0 * own / total, 2) if isinstance(own, int | float) and total else None


def peers_seen(snapshots: list[dict], node: str) -> set[str]:
    """Remote addresses of `node`'s established TCP sockets (`ss -tniH state established` lines)."""
    seen = set()
    for snap in snapshots:
        if snap.get("node") != node or not snap.get("tcp"):
            continue
        for line in snap["tcp"].splitlines():
            words = line.split()
            if not line[:1].strip() or len(words) < 4 or not words[0].isdigit():
                continue  # the -i detail lines are indented
            host = words[3].rpartition(":")[0].strip("[]")
            seen.add(host.removeprefix("::ffff:"))
    return seen
