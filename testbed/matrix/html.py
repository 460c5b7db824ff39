"""report.html: an overview grid first (scenarios × client→server pairs, one coloured letter per
cell, as the QUIC Interop Runner shows its matrix), then the client × server table per scenario,
filters, links into every cell's archive, and per-path throughput over time for cells that moved
data. A static page built from matrix.json and the cells' linkbytes.json alone; no network access,
no external scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERDICT_COLOURS = {"as-expected": "#16a34a", "unexpected": "#dc2626", "known": "#0891b2", "flaky": "#d97706",
                   "error": "#7c3aed", "unsupported": "#64748b", "unavailable": "#94a3b8", "planned": "#cbd5e1"}
# One letter per verdict in the overview grid; `known` is a known kernel deviation (its own colour).
VERDICT_LETTERS = {"as-expected": "✓", "unexpected": "✕", "known": "K", "flaky": "F", "error": "E",
                   "unsupported": "U", "unavailable": "–", "planned": "·"}
PATH_COLOURS = ("#2563eb", "#ea580c", "#059669", "#db2777", "#7c3aed", "#0891b2")


def throughput_series(linkbytes: dict) -> dict[str, list[tuple[float, float]]]:
    """Per interface, (time, Mbit/s) from consecutive byte-counter samples (rx + tx)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for ref, samples in linkbytes.get("series", {}).items():
        points = []
        for (t0, rx0, tx0), (t1, rx1, tx1) in zip(samples, samples[1:], strict=False):
            if t1 > t0:
                points.append((t1, max(0, (rx1 - rx0) + (tx1 - tx0)) * 8 / (t1 - t0) / 1e6))
        if any(v > 0.01 for _, v in points):
            out[ref] = points
    # The paths are the client's interfaces; routers would only repeat them.
    client = {ref: pts for ref, pts in out.items() if ref.startswith("client:")}
    return client or out


def svg_plot(series: dict[str, list[tuple[float, float]]], width: int = 520, height: int = 170) -> str:
    """A small inline SVG line chart: one line per path, axes in seconds and Mbit/s."""
    from markupsafe import escape

    left, bottom, top, right = 44, 26, 10, 120
    xmax = max((t for pts in series.values() for t, _ in pts), default=1.0) or 1.0
    ymax = max((v for pts in series.values() for _, v in pts), default=1.0) or 1.0
    ymax *= 1.1
    pw, ph = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + pw * t / xmax

    def y(v: float) -> float:
        return top + ph * (1 - v / ymax)

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="throughput per path">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#f8fafc" stroke="#cbd5e1"/>']
    for i in range(5):
        v = ymax * i / 4
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
        t = xmax * i / 4
        parts.append(f'<text x="{x(t):.1f}" y="{height - 12}" text-anchor="middle" font-size="10">{t:.2g}</text>')
    parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 1}" text-anchor="middle" font-size="10">seconds</text>')
    parts.append(f'<text x="10" y="{top + ph / 2:.0f}" font-size="10" transform="rotate(-90 10 {top + ph / 2:.0f})" '
                 f'text-anchor="middle">Mbit/s</text>')
    for i, (ref, pts) in enumerate(sorted(series.items())):
        colour = PATH_COLOURS[i % len(PATH_COLOURS)]
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{line}"/>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 14 + 14 * i}" font-size="11" fill="{colour}">'
                     f'{escape(ref)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(matrix: dict[str, Any], run_dir: Path) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                             autoescape=True, undefined=jinja2.ChainableUndefined)  # cells lack what they never made
    cells = matrix["cells"].values() if isinstance(matrix["cells"], dict) else matrix["cells"]
    scenarios: dict[str, list[dict]] = {}
    plots: dict[str, Any] = {}
    for cell in cells:
        scenarios.setdefault(cell["scenario"], []).append(cell)
        linkbytes = (cell.get("files") or {}).get("linkbytes")
        if linkbytes and (run_dir / linkbytes).exists():
            try:
                series = throughput_series(json.loads((run_dir / linkbytes).read_text()))
            except (OSError, ValueError):
                series = {}
            if series:
                from markupsafe import Markup

                plots[cell["name"]] = Markup(svg_plot(series))
    clients = sorted({c["client"] for c in cells})
    servers = sorted({c["server"] for c in cells})
    table = {s: {(c["client"], c["server"]): c for c in lst} for s, lst in scenarios.items()}
    # probe cells (client 'probe:NAME') have their own rows; the other scenarios keep every implementation's
    kinds = {s: ((matrix.get("scenarios") or {}).get(s) or {}).get("kind") for s in scenarios}
    probe_rows = sorted({c["client"] for s, lst in scenarios.items() if kinds[s] == "probes" for c in lst})
    rows = {s: sorted({c["client"] for c in lst}) if kinds[s] == "probes" else
            [c for c in clients if c not in probe_rows] for s, lst in scenarios.items()}
    return env.get_template("report.html.j2").render(
        m=matrix, scenarios=sorted(scenarios), table=table, clients=clients, rows=rows, servers=servers,
        implementations=sorted(set(clients) | set(servers)), colours=VERDICT_COLOURS, plots=plots,
        verdicts=[v for v in VERDICT_COLOURS if any(c["verdict"] == v for c in cells)],
        letters=VERDICT_LETTERS, overview=overview(table, kinds, [c for c in clients if c not in probe_rows],
                                                   servers))


def overview(table: dict[str, dict[tuple[str, str], dict]], kinds: dict[str, str | None], clients: list[str],
             servers: list[str]) -> dict[str, Any]:
    """The overview grid: columns are client→server pairs grouped by server; a row per scenario, and
    per probe (a probe is the client, so its cell spans the clients of each server's group)."""
    rows = []
    for s in sorted(table):
        if kinds[s] == "probes":
            for probe in sorted({cl for cl, _ in table[s]}):
                rows.append({"label": probe, "scenario": s, "probe": True,
                             "cells": [table[s].get((probe, sv)) for sv in servers]})
        else:
            rows.append({"label": s, "scenario": s, "probe": False,
                         "cells": [table[s].get((cl, sv)) for sv in servers for cl in clients]})
    return {"clients": clients, "servers": servers, "rows": rows}
