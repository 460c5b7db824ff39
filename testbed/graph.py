"""Drawings of a resolved topology: a Mermaid flowchart and a standalone SVG (no Graphviz needed).

Both show every node by kind (hosts as rounded boxes, routers as hexagons, switches as rectangles)
and every link with its name, the interface name and address at each end, and its impairments. When
the two directions of a link differ, both are shown: `→` is the first endpoint towards the second.

The SVG layout is simple and deterministic: breadth-first layers from the first host, one column per
layer, nodes in a column ordered by where their neighbours sit, straight lines (bent only to keep
parallel links apart), labels written along each line so that they stay clear of the other lines.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from testbed.spec.resolve import Interface, Resolved
from testbed.spec.topology import Impairment
from testbed.spec.units import (
    format_duration,
    format_percent,
    format_rate,
    parse_duration,
    parse_percent,
    parse_rate,
)

# ---------------------------------------------------------------------------------------------------
# labels shared by both drawings


def impairment_text(imp: Impairment | None) -> str:
    """`50Mbit 10ms±2ms 5% q100`; empty for no impairment."""
    if imp is None:
        return ""
    # Merged per-direction impairments may carry fields in their written form ("10ms"): parse both.
    rate, delay, jitter, loss = (_number(getattr(imp, f), parse) for f, parse in (
        ("rate", parse_rate), ("delay", parse_duration), ("jitter", parse_duration), ("loss", parse_percent)))
    parts: list[str] = []
    if rate:
        parts.append(format_rate(rate))
    if delay:
        parts.append(format_duration(delay) + (f"±{format_duration(jitter)}" if jitter else ""))
    if loss:
        parts.append(format_percent(loss))
    if imp.queue:
        parts.append(f"q{imp.queue}")
    return " ".join(parts)


def _number(value: float | str | None, parse: Callable[[Any], float]) -> float:
    if value is None:
        return 0.0
    return parse(value) if isinstance(value, str) else float(value)


def direction_texts(resolved: Resolved, link: int, forward_glyph: str = "→",
                    reverse_glyph: str = "←") -> list[str]:
    """Impairment lines of one link: none, one (both directions alike) or `→ …` and `← …`."""
    fwd = impairment_text(resolved.link_impairment(link, True))
    rev = impairment_text(resolved.link_impairment(link, False))
    if fwd == rev:
        return [fwd] if fwd else []
    return [f"{forward_glyph} {fwd or 'none'}", f"{reverse_glyph} {rev or 'none'}"]


def _link_interfaces(resolved: Resolved) -> dict[tuple[int, int], Interface]:
    """(link index, endpoint index) → the interface at that end (switch ends have none)."""
    out: dict[tuple[int, int], Interface] = {}
    for intfs in resolved.interfaces.values():
        for intf in intfs:
            if intf.link is not None:
                out[(intf.link, 0 if intf.forward else 1)] = intf
    return out


def _interface_text(intf: Interface | None) -> tuple[str, str]:
    if intf is None:
        return "", ""
    return intf.name, " ".join(str(a) for a in (intf.address, intf.address6) if a is not None)


# ---------------------------------------------------------------------------------------------------
# Mermaid

_MERMAID_SHAPES = {"host": ('("', '")'), "router": ('{{"', '"}}'), "switch": ('["', '"]')}
_MERMAID_STYLES = {"host": "fill:#dbeafe,stroke:#1d4ed8,color:#0f172a",
                   "router": "fill:#dcfce7,stroke:#15803d,color:#0f172a",
                   "switch": "fill:#f1f5f9,stroke:#475569,color:#0f172a"}


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label (entity codes instead of markup characters)."""
    out = []
    for ch in text:
        if ch in "\r\n\t":
            out.append(" ")
        elif ch in '"#<>&|':
            out.append(f"#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def _mermaid_id(name: str) -> str:
    return f"n_{name}"  # node names are [a-z][a-z0-9_]*; the prefix avoids keywords such as `end`


def mermaid(resolved: Resolved) -> str:
    """A `graph LR` Mermaid flowchart of the topology."""
    topo = resolved.topology
    ends = _link_interfaces(resolved)
    lines = ["graph LR"]
    title = topo.name + (f": {topo.description}" if topo.description else "")
    lines.append(f"  %% {' '.join(title.split())}")
    for name, node in topo.nodes.items():
        left, right = _MERMAID_SHAPES.get(node.kind, ("[/\"", "\"/]"))  # network functions: parallelograms
        lines.append(f"  {_mermaid_id(name)}{left}{_mermaid_text(name)}{right}")
    for li, link in enumerate(topo.links):
        a, b = link.endpoints
        label: list[str] = []
        if link.name:
            label.append(f"<b>{_mermaid_text(link.name)}</b>")
        sides = [" ".join(p for p in _interface_text(ends.get((li, ei))) if p) for ei in (0, 1)]
        if any(sides):
            label.append(f"{_mermaid_text(sides[0] or a.node)} ↔ {_mermaid_text(sides[1] or b.node)}")
        label.extend(_mermaid_text(t) for t in direction_texts(resolved, li))
        arrow = f'---|"{"<br/>".join(label)}"|' if label else "---"
        lines.append(f"  {_mermaid_id(a.node)} {arrow} {_mermaid_id(b.node)}")
    for kind, style in _MERMAID_STYLES.items():
        members = [_mermaid_id(n) for n, node in topo.nodes.items() if node.kind == kind]
        if members:
            lines.append(f"  classDef {kind} {style}")
            lines.append(f"  class {','.join(members)} {kind}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# SVG

FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
SIZE_NAME = 14  # node names
SIZE_SMALL = 11  # node kinds
SIZE_LABEL = 12  # link labels
LINE = 15  # distance between label lines
PAD = 10  # space between neighbouring labels along a line
MARGIN = 30
ROW_GAP = 60  # vertical space between the boxes of one column
MIN_COL_GAP = 120  # horizontal space between the boxes of neighbouring columns
SPREAD = 2 * LINE + 10  # separation wanted between neighbouring lines where interface labels sit
MAX_SPREAD = 150.0  # ... but interface labels start at most this far from their node's centre

_FILL = {"host": ("#dbeafe", "#1d4ed8"), "router": ("#dcfce7", "#15803d"), "switch": ("#f1f5f9", "#475569")}


def _width(text: str, size: float, bold: bool = False) -> float:
    """A generous estimate of the rendered width of `text` (no font metrics at hand)."""
    narrow = sum(1 for ch in text if ch in "ilj.,:;|'!()[]1 ")
    return (len(text) - narrow * 0.45) * size * (0.66 if bold else 0.62)


@dataclass
class _Box:
    name: str
    kind: str
    w: float
    h: float
    x: float = 0.0
    y: float = 0.0


@dataclass
class _Label:
    lines_above: list[tuple[str, str]]  # (text, css class), innermost line first
    lines_below: list[tuple[str, str]]

    @property
    def width(self) -> float:
        return max((_width(t, SIZE_LABEL, c == "name") for t, c in self.lines_above + self.lines_below),
                   default=0.0)


@dataclass
class _Edge:
    index: int
    a: str  # first endpoint's node
    b: str
    mid: _Label
    end_a: _Label
    end_b: _Label
    bend: float = 0.0  # perpendicular offset of the middle (parallel links)
    points: list[tuple[float, float]] = field(default_factory=list)  # in reading direction
    flipped: bool = False  # points run from b to a
    s_start: float = 0.0  # arc lengths where the end labels start and stop
    s_stop: float = 0.0


def _layers(resolved: Resolved) -> list[list[str]]:
    topo = resolved.topology
    names = list(topo.nodes)
    adjacent: dict[str, list[str]] = {n: [] for n in names}
    for link in topo.links:
        a, b = (e.node for e in link.endpoints)
        if a in adjacent and b in adjacent:
            adjacent[a].append(b)
            adjacent[b].append(a)
    hosts = [n for n in names if topo.nodes[n].kind == "host"]
    layer: dict[str, int] = {}
    for start in [*hosts[:1], *names]:
        if start in layer:
            continue
        layer[start] = 0
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nb in adjacent[node]:
                if nb not in layer:
                    layer[nb] = layer[node] + 1
                    queue.append(nb)
    columns: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for n in names:
        columns[layer[n]].append(n)
    # Order each column by the mean position of its neighbours in the previous column (one sweep
    # each way), which removes the crossings of tree-like topologies.
    for sweep in (range(1, len(columns)), range(len(columns) - 2, -1, -1)):
        for i in sweep:
            ref = columns[i - 1] if sweep.step == 1 else columns[i + 1]
            pos = {n: k for k, n in enumerate(ref)}

            def key(n: str, pos: dict[str, int] = pos, col: list[str] = columns[i]) -> float:
                near = [pos[m] for m in adjacent[n] if m in pos]
                return sum(near) / len(near) if near else col.index(n)

            columns[i] = sorted(columns[i], key=key)
    return columns


def _edges(resolved: Resolved) -> list[_Edge]:
    topo = resolved.topology
    ends = _link_interfaces(resolved)
    edges: list[_Edge] = []
    for li, link in enumerate(topo.links):
        a, b = (e.node for e in link.endpoints)
        end_labels = []
        for ei in (0, 1):
            name, address = _interface_text(ends.get((li, ei)))
            end_labels.append(_Label([(name, "intf")] if name else [], [(address, "addr")] if address else []))
        mid = _Label([(link.name, "name")] if link.name else [], [])
        edges.append(_Edge(li, a, b, mid, end_labels[0], end_labels[1]))
    return edges


def _control(p0: tuple[float, float], p1: tuple[float, float], bend: float) -> tuple[float, float]:
    """The control point of a quadratic Bézier whose middle is `bend` away from the line p0–p1
    (for bend 0: p1, the direction a straight line leaves p0 in)."""
    if not bend:
        return p1
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / length, dx / length
    return (p0[0] + p1[0]) / 2 + 2 * bend * nx, (p0[1] + p1[1]) / 2 + 2 * bend * ny


def _curve(p0: tuple[float, float], p1: tuple[float, float], bend: float, steps: int = 24
           ) -> list[tuple[float, float]]:
    if not bend:
        return [p0, p1]
    cx, cy = _control(p0, p1, bend)
    out = []
    for k in range(steps + 1):
        t = k / steps
        out.append(((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * cx + t * t * p1[0],
                    (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * cy + t * t * p1[1]))
    return out


class _Path:
    """A polyline walked by arc length."""

    def __init__(self, points: list[tuple[float, float]]):
        self.points = points
        self.cum = [0.0]
        for p, q in zip(points, points[1:], strict=False):
            self.cum.append(self.cum[-1] + math.hypot(q[0] - p[0], q[1] - p[1]))

    @property
    def length(self) -> float:
        return self.cum[-1]

    def at(self, s: float) -> tuple[float, float, float, float]:
        """(x, y, unit dx, unit dy) at arc length s."""
        s = min(max(s, 0.0), self.length)
        for k in range(1, len(self.points)):
            if self.cum[k] >= s or k == len(self.points) - 1:
                p, q = self.points[k - 1], self.points[k]
                seg = (self.cum[k] - self.cum[k - 1]) or 1.0
                t = (s - self.cum[k - 1]) / seg
                return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]),
                        (q[0] - p[0]) / seg, (q[1] - p[1]) / seg)
        x, y = self.points[0]
        return x, y, 1.0, 0.0

    def leave(self, box: _Box, from_start: bool) -> float:
        """Arc length (from the start) where the path crosses `box`'s border, walking in from one end."""
        hw, hh = box.w / 2 + 2, box.h / 2 + 2

        def inside(s: float) -> bool:
            x, y, _, _ = self.at(s)
            return abs(x - box.x) <= hw and abs(y - box.y) <= hh

        lo, hi = (0.0, self.length) if from_start else (self.length, 0.0)
        if not inside(lo):
            return lo
        for _ in range(30):
            mid = (lo + hi) / 2
            if inside(mid):
                lo = mid
            else:
                hi = mid
        return hi


def _spread_distance(box: _Box, edges: list[_Edge], boxes: dict[str, _Box]) -> dict[int, float]:
    """How far from `box`'s centre the interface labels of its links must start so that neighbouring
    links are SPREAD apart there (links converge at the node)."""
    out: dict[int, float] = {}
    mine = [e for e in edges if box.name in (e.a, e.b) and e.a != e.b]
    angles = []
    for e in mine:
        # The direction the link leaves in: towards the other node, or a bent link's control point.
        pa, pb = boxes[e.a], boxes[e.b]
        tx, ty = _control((pa.x, pa.y), (pb.x, pb.y), e.bend)
        angles.append((math.atan2(ty - box.y, tx - box.x), e.index))
    for ang, idx in angles:
        need = 0.0
        for other_ang, other_idx in angles:
            if other_idx == idx:
                continue
            delta = abs((ang - other_ang + math.pi) % (2 * math.pi) - math.pi)
            if delta < 1e-6:
                continue  # parallel links: kept apart by their bend
            need = max(need, SPREAD / math.sin(min(delta, math.pi / 2)))
        out[idx] = min(need, MAX_SPREAD)
    return out


def _shortage(e: _Edge, length: float, start: float, stop: float) -> float:
    """How much longer the link must be for its three labels to fit between `start` and `stop`."""
    need = e.end_a.width + e.mid.width + e.end_b.width + 2 * PAD
    half_need = max(e.end_a.width, e.end_b.width) + PAD + e.mid.width / 2
    room_half = min(length / 2 - start, stop - length / 2)
    short = max(need - (stop - start), 2 * (half_need - room_half))
    return short + 4 if short > 0 else 0.0


def _place(columns: list[list[str]], boxes: dict[str, _Box], col_gaps: list[float], row_gap: float) -> None:
    col_w = [max(boxes[n].w for n in col) for col in columns]
    heights = [sum(boxes[n].h for n in col) + row_gap * (len(col) - 1) for col in columns]
    total_h = max(heights)
    x = MARGIN
    for i, col in enumerate(columns):
        cx = x + col_w[i] / 2
        y = MARGIN + (total_h - heights[i]) / 2
        for n in col:
            boxes[n].x, boxes[n].y = cx, y + boxes[n].h / 2
            y += boxes[n].h + row_gap
        if i < len(col_gaps):
            x += col_w[i] + col_gaps[i]


def _layout(resolved: Resolved) -> tuple[dict[str, _Box], list[_Edge], list[list[str]]]:
    topo = resolved.topology
    columns = _layers(resolved)
    boxes: dict[str, _Box] = {}
    for name, node in topo.nodes.items():
        w = max(_width(name, SIZE_NAME, True), _width(node.kind, SIZE_SMALL)) + 28
        if node.kind == "router":
            w += 18  # the hexagon's points
        boxes[name] = _Box(name, node.kind, max(w, 64), 44)
    edges = _edges(resolved)
    for e in edges:
        imp = direction_texts(resolved, e.index)
        e.mid.lines_below = [(t, "imp") for t in imp]

    # Parallel links between the same two nodes bend away from each other.
    groups: dict[frozenset[str], list[_Edge]] = {}
    for e in edges:
        groups.setdefault(frozenset((e.a, e.b)), []).append(e)
    for group in groups.values():
        if len(group) > 1:
            depth = max(2, *(len(x.mid.lines_above) + len(x.mid.lines_below) for x in group)) * LINE + 26
            for k, e in enumerate(group):
                sign = 1 if e.a == min(e.a, e.b) else -1  # bends are measured from the first endpoint
                e.bend = sign * (k - (len(group) - 1) / 2) * depth

    layer = {n: i for i, col in enumerate(columns) for n in col}
    col_gaps = [float(MIN_COL_GAP)] * (len(columns) - 1)
    row_gap = float(ROW_GAP)
    for _ in range(12):  # grow gaps until every link has room for its labels
        _place(columns, boxes, col_gaps, row_gap)
        grown = grow_rows = False
        col_extra = [0.0] * len(col_gaps)
        row_extra = 0.0
        spread = {n: _spread_distance(boxes[n], edges, boxes) for n in boxes}
        for e in edges:
            ba, bb = boxes[e.a], boxes[e.b]
            path = _Path(_curve((ba.x, ba.y), (bb.x, bb.y), e.bend))
            start0, stop0 = path.leave(ba, True) + PAD, path.leave(bb, False) - PAD
            start = max(start0, spread[e.a].get(e.index, 0.0) + PAD)
            stop = min(stop0, path.length - spread[e.b].get(e.index, 0.0) - PAD)
            shortage = _shortage(e, path.length, start, stop)
            if shortage <= 0:
                continue
            la, lb = layer[e.a], layer[e.b]
            span = sum(col_gaps[min(la, lb):max(la, lb)])
            plain = _shortage(e, path.length, start0, stop0)  # what the labels alone lack
            if plain <= 0 or la == lb:
                if row_gap < 0.4 * span:
                    grow_rows = True  # only the converging links are in the way: open the fan wider
                    continue
            else:
                shortage = plain
            if la == lb:
                rows = max(1, abs(columns[la].index(e.a) - columns[la].index(e.b)))
                row_extra = max(row_extra, shortage / rows)
            else:
                for i in range(min(la, lb), max(la, lb)):
                    col_extra[i] = max(col_extra[i], shortage / abs(la - lb))
            grown = True
        col_gaps = [g + x for g, x in zip(col_gaps, col_extra, strict=True)]
        row_gap += row_extra
        if grow_rows and not row_extra:
            row_gap = row_gap * 1.2 + 10
        if not (grown or grow_rows):
            break
    _place(columns, boxes, col_gaps, row_gap)
    spread = {n: _spread_distance(boxes[n], edges, boxes) for n in boxes}
    for e in edges:
        ba, bb = boxes[e.a], boxes[e.b]
        pts = _curve((ba.x, ba.y), (bb.x, bb.y), e.bend)
        (x0, y0), (x1, y1) = pts[0], pts[-1]
        # Text reads left to right (top to bottom on vertical links): the path runs that way.
        e.flipped = x1 < x0 - 0.5 or (abs(x1 - x0) <= 0.5 and y1 < y0)
        e.points = pts[::-1] if e.flipped else pts
        first, last = (bb, ba) if e.flipped else (ba, bb)
        path = _Path(e.points)
        e.s_start = max(path.leave(first, True), spread[first.name].get(e.index, 0.0)) + PAD / 2
        e.s_stop = min(path.leave(last, False), path.length - spread[last.name].get(e.index, 0.0)) - PAD / 2
    return boxes, edges, columns


def _node_svg(box: _Box) -> list[str]:
    fill, stroke = _FILL.get(box.kind, _FILL["switch"])
    x0, y0 = box.x - box.w / 2, box.y - box.h / 2
    attrs = f'fill="{fill}" stroke="{stroke}" stroke-width="2"'
    if box.kind == "router":
        k = 12.0
        pts = [(x0, box.y), (x0 + k, y0), (x0 + box.w - k, y0), (x0 + box.w, box.y),
               (x0 + box.w - k, y0 + box.h), (x0 + k, y0 + box.h)]
        shape = f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in pts)}" {attrs}/>'
    else:
        rx = 12 if box.kind == "host" else 0
        shape = (f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="{rx}" '
                 f'{attrs}/>')
    return [f'<g class="node {escape(box.kind)}">', shape,
            f'<text class="node-name" x="{box.x:.1f}" y="{box.y - 2:.1f}">{escape(box.name)}</text>',
            f'<text class="node-kind" x="{box.x:.1f}" y="{box.y + 13:.1f}">{escape(box.kind)}</text>',
            "</g>"]


def _label_svg(path: _Path, s: float, label: _Label, anchor: str, extent: list[float]) -> list[str]:
    x, y, dx, dy = path.at(s)
    angle = math.degrees(math.atan2(dy, dx))
    out = []
    rows = [(-5 - k * LINE, t, c) for k, (t, c) in enumerate(label.lines_above)]
    rows += [(LINE - 1 + k * LINE, t, c) for k, (t, c) in enumerate(label.lines_below)]
    width = label.width
    for off, text, css in rows:
        if not text:
            continue
        out.append(f'<text class="{css}" text-anchor="{anchor}" '
                   f'transform="translate({x:.1f},{y:.1f}) rotate({angle:.1f})" y="{off}">{escape(text)}</text>')
        # The label's corners, rotated, for the drawing's bounds.
        start = {"start": 0.0, "middle": -width / 2, "end": -width}[anchor]
        rad = math.radians(angle)
        for u in (start, start + width):
            for v in (off - SIZE_LABEL, off + 4):
                px, py = x + u * math.cos(rad) - v * math.sin(rad), y + u * math.sin(rad) + v * math.cos(rad)
                extent[0], extent[1] = min(extent[0], px), min(extent[1], py)
                extent[2], extent[3] = max(extent[2], px), max(extent[3], py)
    return out


def _edge_svg(e: _Edge, resolved: Resolved, extent: list[float]) -> list[str]:
    pts = e.points
    if len(pts) == 2:
        line = (f'<line class="link" x1="{pts[0][0]:.1f}" y1="{pts[0][1]:.1f}" '
                f'x2="{pts[1][0]:.1f}" y2="{pts[1][1]:.1f}"/>')
    else:
        line = f'<polyline class="link" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}"/>'
    out = [f'<g class="edge" data-link="{e.index}">', line]
    path = _Path(pts)
    # The path runs in reading direction; `→` must still point from the first endpoint to the second.
    texts = direction_texts(resolved, e.index, *(("←", "→") if e.flipped else ("→", "←")))
    mid = _Label(e.mid.lines_above, [(t, "imp") for t in sorted(texts, key=lambda t: not t.startswith("→"))])
    first, last = (e.end_b, e.end_a) if e.flipped else (e.end_a, e.end_b)
    out += _label_svg(path, e.s_start, first, "start", extent)
    out += _label_svg(path, path.length / 2, mid, "middle", extent)
    out += _label_svg(path, e.s_stop, last, "end", extent)
    out.append("</g>")
    return out


_STYLE = f"""
text {{ font-family: {FONT}; fill: #0f172a; }}
.node-name {{ font-size: {SIZE_NAME}px; font-weight: bold; text-anchor: middle; }}
.node-kind {{ font-size: {SIZE_SMALL}px; fill: #475569; text-anchor: middle; }}
.link {{ stroke: #94a3b8; stroke-width: 2.5; fill: none; }}
.name, .intf, .addr, .imp {{ font-size: {SIZE_LABEL}px; paint-order: stroke; stroke: #ffffff;
  stroke-width: 4px; stroke-linejoin: round; }}
.name {{ font-weight: bold; }}
.intf {{ fill: #1e3a8a; }}
.addr {{ fill: #475569; }}
.imp {{ fill: #b45309; }}
.title {{ font-size: 16px; font-weight: bold; }}
.subtitle {{ font-size: 12px; fill: #475569; }}
"""


def svg(resolved: Resolved) -> str:
    """A standalone SVG drawing of the topology (UTF-8 text, viewBox sized to the content)."""
    topo = resolved.topology
    boxes, edges, _ = _layout(resolved)
    title_h = 44 if topo.description else 28
    for box in boxes.values():
        box.y += title_h
    for e in edges:
        e.points = [(x, y + title_h) for x, y in e.points]
    extent = [math.inf, math.inf, -math.inf, -math.inf]
    for box in boxes.values():
        extent = [min(extent[0], box.x - box.w / 2), min(extent[1], box.y - box.h / 2),
                  max(extent[2], box.x + box.w / 2), max(extent[3], box.y + box.h / 2)]
    body: list[str] = []
    for e in edges:
        body += _edge_svg(e, resolved, extent)
    for box in boxes.values():
        body += _node_svg(box)
    title = [f'<text class="title" x="{MARGIN}" y="{MARGIN - 4}">{escape(topo.name)}</text>']
    extent[2] = max(extent[2], MARGIN + _width(topo.name, 16, True))
    if topo.description:
        description = " ".join(topo.description.split())
        title.append(f'<text class="subtitle" x="{MARGIN}" y="{MARGIN + 14}">{escape(description)}</text>')
        extent[2] = max(extent[2], MARGIN + _width(description, 12))
    x0, y0 = min(extent[0], MARGIN) - MARGIN / 2, 0.0
    w, h = extent[2] - x0 + MARGIN / 2, extent[3] - y0 + MARGIN / 2
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x0:.0f} {y0:.0f} {w:.0f} {h:.0f}" '
            f'width="{w:.0f}" height="{h:.0f}" role="img" aria-label={quoteattr(f"topology {topo.name}")}>')
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', head, f"<title>{escape(topo.name)}</title>",
             f"<style>{_STYLE}</style>",
             f'<rect x="{x0:.0f}" y="{y0:.0f}" width="{w:.0f}" height="{h:.0f}" fill="#ffffff"/>',
             *title, *body, "</svg>"]
    return "\n".join(parts) + "\n"
