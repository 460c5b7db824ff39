"""`testbed sweep`: one experiment over every combination of parameter values, repeated, archived as
one run with a cell per combination and repetition, and a metric plotted against the varied
parameter with error bars (mean ± standard deviation over the repetitions)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import testbed
from testbed.archive.store import SCHEMA_VERSION, RunDir
from testbed.errors import Problem, SpecError
from testbed.state import RunState


@dataclass
class Cell:
    values: dict[str, str]
    repetition: int
    seed: int
    exit_code: int | None = None
    status: str = "planned"
    dir: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) + f" #{self.repetition}"


def parse_vary(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    problems = []
    for item in items:
        name, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not vals:
            problems.append(Problem("--vary", None, None, item, "expected name=value1,value2,..."))
        elif name.strip() in out:
            problems.append(Problem("--vary", None, None, name.strip(), "varied twice"))
        else:
            out[name.strip()] = vals
    if not out and not problems:
        problems.append(Problem("--vary", None, None, "", "give at least one --vary name=v1,v2"))
    if problems:
        raise SpecError(problems)
    return out


def metric_from_manifest(manifest: dict, ref: str) -> float | None:
    """'workload.metric' (goodput, seconds, ttfb_p95, rtt_p50, ...) or 'node.Counter' from a run."""
    head, _, tail = ref.partition(".")
    workloads = manifest.get("workloads") or {}
    if head in workloads:
        w = workloads[head]
        if tail in ("goodput", "goodput_bps"):
            return w.get("goodput_bps")
        family, _, pct = tail.partition("_")
        if family in ("ttfb", "completion", "rtt") and isinstance(w.get(family), dict):
            return w[family].get(pct)
        value = w.get(tail)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    counters = (manifest.get("counters") or {}).get(head)
    if counters is not None:
        return counters.get(tail, 0)
    return None


class Sweep:
    def __init__(self, experiment: Path, vary: dict[str, list[str]], repeat: int, metrics: list[str],
                 results: Path, jobs: int = 1, seed: int = 1, sets: list[str] | None = None):
        self.experiment = experiment
        self.vary = vary
        self.repeat = repeat
        self.metrics = metrics
        self.results = results
        self.jobs = max(1, jobs)
        self.sets = sets or []
        combos = list(itertools.product(*vary.values()))
        self.cells = [Cell(dict(zip(vary, combo, strict=True)), rep, seed + rep)
                      for combo in combos for rep in range(repeat)]
        self.running: dict[int, subprocess.Popen] = {}
        self.stopping = False

    def check(self) -> None:
        """Every combination must load (parameter names and values), before anything runs."""
        from testbed.spec.load import load_experiment
        from testbed.spec.template import parse_set

        seen = set()
        for cell in self.cells:
            key = tuple(cell.values.items())
            if key in seen:
                continue
            seen.add(key)
            overrides = parse_set([*self.sets, *(f"{k}={v}" for k, v in cell.values.items())], where="--vary")
            load_experiment(self.experiment, overrides)

    def run(self) -> tuple[Path, dict]:
        run_dir = RunDir(self.results, f"sweep-{self.experiment.stem}")
        state = RunState(run_dir.name, archive=str(run_dir.tmp))
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "testbed_version": testbed.__version__, "kind": "sweep",
            "run_id": run_dir.name, "started": _now(), "finished": None, "status": "error",
            "seed": self.cells[0].seed if self.cells else None,
            "inputs": {"experiment": str(self.experiment), "vary": self.vary, "repeat": self.repeat,
                       "set": self.sets, "metrics": self.metrics},
            "host": {"kernel": os.uname().release}, "git_sha": None,
        }
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            state.save()
            run_dir.write_json("manifest.json", manifest)
            cells_dir = run_dir.tmp / "cells"
            cells_dir.mkdir()
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                for _ in pool.map(lambda c: self._run_cell(c, cells_dir, run_dir, state), self.cells):
                    pass
            manifest["status"] = "interrupted" if self.stopping else "complete"
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            manifest["finished"] = _now()
            summary = self.summary()
            manifest["cells"] = [vars(c) for c in self.cells]
            manifest["summary"] = summary
            run_dir.write_json("sweep.json", {"schema_version": SCHEMA_VERSION, "vary": self.vary,
                                              "repeat": self.repeat, "metrics": self.metrics,
                                              "cells": manifest["cells"], "summary": summary})
            for metric in self.metrics:
                plot(summary, self.vary, metric, run_dir.path(f"plots/{_safe(metric)}.png"))
            run_dir.write_text("report.md", report_md(summary, self.vary, self.metrics))
            final = run_dir.finalize(manifest)
            state.remove()
        return final, manifest

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for proc in list(self.running.values()):
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the cell tears down and archives itself
            except ProcessLookupError:
                pass

    def _run_cell(self, cell: Cell, cells_dir: Path, run_dir: RunDir, state: RunState) -> None:
        from testbed.spec.source import absolute

        if self.stopping:
            cell.status = "skipped"
            return
        argv = [sys.executable, "-m", "testbed", "run", str(absolute(self.experiment)), "--results", str(cells_dir),
                "--seed", str(cell.seed)]
        for item in [*self.sets, *(f"{k}={v}" for k, v in cell.values.items())]:
            argv += ["--set", item]
        before = set(cells_dir.iterdir())
        started = time.monotonic()
        log = run_dir.path(f"logs/cells/{_safe(cell.label)}.log")
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            state.add_child(proc.pid, f"sweep cell {cell.label}")
            self.running[proc.pid] = proc
            cell.exit_code = proc.wait()
            self.running.pop(proc.pid, None)
        cell.seconds = round(time.monotonic() - started, 3)
        made = [p for p in set(cells_dir.iterdir()) - before if not p.name.startswith(".")]
        run_dirs = [p for p in made if p.name.split("-")[1:2] and (p / "manifest.json").exists()]
        mine = next((p for p in run_dirs if json.loads((p / "manifest.json").read_text()).get("seed") == cell.seed
                     and all(f"{k}={v}" in json.loads((p / "manifest.json").read_text())["inputs"]["set"]
                             for k, v in cell.values.items())), None)
        if mine is None:
            cell.status, cell.error = "error", f"no archive (exit {cell.exit_code}); see {log.name}"
            return
        m = json.loads((mine / "manifest.json").read_text())
        cell.dir = str(mine.relative_to(run_dir.tmp))
        cell.status = m.get("status", "error")
        cell.error = m.get("error")
        cell.metrics = {ref: metric_from_manifest(m, ref) for ref in self.metrics}

    def summary(self) -> list[dict]:
        rows = []
        for combo in itertools.product(*self.vary.values()):
            values = dict(zip(self.vary, combo, strict=True))
            cells = [c for c in self.cells if c.values == values and c.status == "complete"]
            row: dict[str, Any] = {"values": values, "n": len(cells), "metrics": {}}
            for ref in self.metrics:
                xs = [c.metrics[ref] for c in cells if isinstance(c.metrics.get(ref), int | float)]
                row["metrics"][ref] = {"mean": statistics.fmean(xs) if xs else None,
                                       "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0 if xs else None,
                                       "n": len(xs), "values": xs}
            rows.append(row)
        return rows


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:100]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _numeric(value: str) -> float:
    """Order and place parameter values such as '5%', '20ms', '10Mbit' by their number."""
    from testbed.spec import units

    for parse in (units.parse_percent, units.parse_duration, units.parse_rate, units.parse_size):
        try:
            return float(parse(value))
        except (units.QuantityError, ValueError):
            continue
    try:
        return float(value)
    except ValueError:
        return float("nan")


def plot(summary: list[dict], vary: dict[str, list[str]], metric: str, path: Path) -> None:
    """The metric against the first varied parameter, one line per combination of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name = next(iter(vary))
    others = [k for k in vary if k != x_name]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for combo in itertools.product(*(vary[k] for k in others)):
        fixed = dict(zip(others, combo, strict=True))
        rows = [r for r in summary if all(r["values"][k] == v for k, v in fixed.items())]
        points = [(r["values"][x_name], r["metrics"][metric]) for r in rows if r["metrics"][metric]["mean"] is not None]
        if not points:
            continue
        points.sort(key=lambda p: _numeric(p[0]))
        xs = [_numeric(p[0]) for p in points]
        label = ", ".join(f"{k}={v}" for k, v in fixed.items()) or metric
        ax.errorbar(xs, [p[1]["mean"] for p in points], yerr=[p[1]["stdev"] for p in points], marker="o",
                    capsize=4, label=label)
        ax.set_xticks(xs, [p[0] for p in points])
    ax.set_xlabel(x_name)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (mean ± sd over repetitions)")
    ax.grid(alpha=.3)
    if others:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report_md(summary: list[dict], vary: dict[str, list[str]], metrics: list[str]) -> str:
    head = [*vary, "n", *(f"{m} (mean ± sd)" for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        cells = [row["values"][k] for k in vary] + [str(row["n"])]
        for m in metrics:
            s = row["metrics"][m]
            cells.append("—" if s["mean"] is None else f"{s['mean']:.6g} ± {s['stdev']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    plots = "\n".join(f"![{m}](plots/{_safe(m)}.png)" for m in metrics)
    return "# Sweep\n\n" + "\n".join(lines) + "\n\n" + plots + "\n"
