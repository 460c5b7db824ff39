"""The words a matrix cell is judged with, and how two runs' words compare.

A leaf module: the runner, results, history, the HTML report and the CLI all read it, and it reads
none of them, so that data flows one way (runner → results/history) with no import going back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

VERDICTS = ("as-expected", "unexpected", "known", "unsupported", "unavailable", "flaky", "error")
MEANING = {
    "as-expected": "the implementation did what its feature set and the RFC say",
    "unexpected": "an expectation was not met (the cell's checks say which)",
    "known": "an expectation was not met in exactly the way a listed, cited kernel deviation says "
             "(experiments/known-deviations.yaml)",
    "unsupported": "a side lacks a feature the scenario needs; not run",
    "unavailable": "an implementation or testbed capability is missing here; not run",
    "flaky": "reruns gave different results",
    "error": "the testbed failed; not the implementation's fault",
}
SYMBOL = {"as-expected": "✅", "unexpected": "❌", "known": "📌", "unsupported": "➖", "unavailable": "⛔",
          "flaky": "⚠️", "error": "💥"}
LETTER = {"as-expected": "✓", "unexpected": "✗", "known": "k", "flaky": "~", "error": "E", "unsupported": "-",
          "unavailable": "n"}
# Verdicts that say nothing against an implementation (a run with only these is as good as it gets).
ACCEPTABLE = ("as-expected", "known", "unsupported", "unavailable")


def summary(verdicts: Iterable[str | None]) -> dict[str, int]:
    counts = Counter(verdicts)
    return {v: counts.get(v, 0) for v in VERDICTS}


def change(before: str | None, now: str | None) -> str:
    """regression: was as-expected (or a known deviation), now unexpected; fix: the reverse (a known
    deviation no longer reproduced is a fix too); else same / changed / new."""
    if before is None:
        return "new"
    if before == now:
        return "same"
    if before in ("as-expected", "known") and now == "unexpected":
        return "regression"
    if before in ("unexpected", "known") and now == "as-expected":
        return "fix"
    return "changed"
