"""A cell's archive against the suite's known deviations (testbed.spec.deviations).

An attempt whose checks failed is `known` when a deviation listed for its scenario and sides has
every symptom hold on the archive and accounts for every failed check; a deviation whose cause is
the emulation makes it `unavailable` instead (the testbed cannot measure that here). A deviation
that applies to a cell which came out as expected is reported as "fixed upstream?", so that the list
stays true. Only plain data goes in and out: the runner calls this, never the other way round."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from testbed.spec.deviations import COUNTER_REF, SYMPTOM, Deviation, quantity

Side = tuple[str, tuple[int, int] | None]  # (implementation, upstream kernel version)


@dataclass
class Match:
    deviation: Deviation
    verdict: str  # known | unavailable
    evidence: str  # the symptoms with what was measured

    @property
    def reason(self) -> str:
        d = self.deviation
        label = "known deviation" if d.cause == "kernel" else "emulation limit (not the kernel)"
        cites = "; ".join(f"{c.kind} {c.ref}" + (f" ({c.url})" if c.url else "") for c in d.citation)
        return f"{label} {d.id}: {d.what} Measured: {self.evidence}. See {cites}"


def applicable(deviations: list[Deviation], scenario: str, client: Side, server: Side,
               expected_outcome: str | None = None) -> list[Deviation]:
    """The entries that can show in a cell: its scenario, its sides, and (when given) its expected outcome."""
    out = []
    for d in deviations:
        if d.scenario != scenario:
            continue
        if expected_outcome is not None and d.outcome not in ("any", expected_outcome):
            continue
        if d.client is not None and not d.client.matches(*client):
            continue
        if d.server is not None and not d.server.matches(*server):
            continue
        out.append(d)
    return out


def measure(ref: str, manifest: dict[str, Any]) -> float | None:
    """A symptom's left-hand side on a cell's archive: a counter delta (summed over the nodes a
    pattern matches; a counter that did not move is 0), or a check's measured value."""
    if COUNTER_REF.match(ref):
        node, _, counter = ref.partition(".")
        counters = manifest.get("counters") or {}
        nodes = fnmatch.filter(counters, node) if any(c in node for c in "*?[") else [node]
        if not any(n in counters for n in nodes):
            return None  # the node's counters are not in the archive: nothing to compare
        return float(sum((counters.get(n) or {}).get(counter, 0) for n in nodes))
    for check in manifest.get("checks") or []:
        if check.get("name") == ref:
            try:
                return quantity(str(check.get("measured")))
            except ValueError:
                return None
    return None


def holds(symptom: str, manifest: dict[str, Any]) -> tuple[bool, str]:
    m = SYMPTOM.match(symptom)
    assert m is not None  # validated when the file was loaded
    ref, op, want = m.group("ref").strip().strip('"'), m.group("op"), quantity(m.group("value"))
    got = measure(ref, manifest)
    if got is None:
        return False, f"{ref}: not in the archive"
    ok = {"=": got == want, "==": got == want, "!=": got != want, ">=": got >= want, "<=": got <= want,
          ">": got > want, "<": got < want}[op]
    return ok, f"{ref} = {got:g} (symptom {op} {m.group('value')})"


def explains(d: Deviation, failed: list[str]) -> list[str]:
    """The failed checks `d` does not account for."""
    patterns = list(d.explains)
    if not patterns:
        for symptom in d.symptom:
            m = SYMPTOM.match(symptom)
            assert m is not None
            ref = m.group("ref").strip().strip('"')
            patterns.append(f"counter {ref}" if COUNTER_REF.match(ref) else ref)
    return [name for name in failed if not any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def _accel_ok(d: Deviation, manifest: dict[str, Any]) -> bool:
    if d.accel is None:
        return True
    return any(isinstance(n, dict) and n.get("accel") == d.accel for n in (manifest.get("nodes") or {}).values())


def match(deviations: list[Deviation], manifest: dict[str, Any]) -> tuple[Match | None, list[str]]:
    """The deviation that explains an attempt's failed checks, or None and why each one did not."""
    failed = [c["name"] for c in manifest.get("checks") or [] if c.get("verdict") == "fail"]
    misses = []
    for d in deviations:
        if not _accel_ok(d, manifest):
            misses.append(f"{d.id}: no side ran on a {d.accel} guest")
            continue
        results = [holds(s, manifest) for s in d.symptom]
        if not all(ok for ok, _ in results):
            misses.append(f"{d.id}: symptom not reproduced ({'; '.join(t for ok, t in results if not ok)})")
            continue
        left = explains(d, failed)
        if left:
            misses.append(f"{d.id}: does not account for {', '.join(left)}")
            continue
        return Match(d, "known" if d.cause == "kernel" else "unavailable", "; ".join(t for _, t in results)), misses
    return None, misses
