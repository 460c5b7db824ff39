"""Drawings of resolved topologies: Mermaid text and a standalone SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbed import graph
from testbed.spec.load import LoadedTopology, load_topology
from testbed.spec.template import parse_set

ROOT = Path(__file__).resolve().parents[2]
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def dual_homed() -> LoadedTopology:
    return load_topology(ROOT / "topologies" / "dual-homed.yaml.j2", parse_set(["paths=3", "wifi_loss=5%"]))


def _svg_texts(svg: str) -> list[str]:
    tree = ET.fromstring(svg.encode())
    assert tree.tag == f"{SVG_NS}svg"
    return [el.text or "" for el in tree.iter(f"{SVG_NS}text")]


def _inline(tmp_path: Path, text: str) -> LoadedTopology:
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return load_topology(path)


def test_mermaid_names_every_node_and_link(dual_homed: LoadedTopology) -> None:
    text = graph.mermaid(dual_homed.resolved)
    assert text.startswith("graph LR\n")
    topo = dual_homed.topology
    assert set(topo.nodes) == {"client", "ap0", "ap1", "ap2", "gw", "server"}
    for name in topo.nodes:
        assert f'"{name}"' in text
    for link in topo.links:
        if link.name:
            assert f"<b>{link.name}</b>" in text
    for intfs in dual_homed.resolved.interfaces.values():
        for intf in intfs:
            assert f"{intf.name} {intf.address}" in text
    wifi = next(line for line in text.splitlines() if "<b>wifi</b>" in line)
    assert "50Mbit 10ms 5%" in wifi
    cell = next(line for line in text.splitlines() if "<b>cell0</b>" in line)
    assert "20Mbit 30ms" in cell and "%" not in cell  # 0% loss is not shown
    # One edge per link, shapes by kind.
    assert sum(" --- " in ln or " ---|" in ln for ln in text.splitlines()) == len(topo.links)
    assert 'n_client("client")' in text and 'n_gw{{"gw"}}' in text


def test_svg_is_well_formed_and_names_everything(dual_homed: LoadedTopology) -> None:
    svg = graph.svg(dual_homed.resolved)
    texts = _svg_texts(svg)
    for name in dual_homed.topology.nodes:
        assert name in texts
    for link in dual_homed.topology.links:
        if link.name:
            assert link.name in texts
    assert "50Mbit 10ms 5%" in texts
    assert "10.0.0.1/24" in texts and "wlan0" in texts
    root = ET.fromstring(svg.encode())
    x, y, w, h = (float(v) for v in root.attrib["viewBox"].split())
    assert w > 0 and h > 0
    # Every node sits inside the viewBox.
    for rect in root.iter(f"{SVG_NS}rect"):
        rx, ry = float(rect.attrib["x"]), float(rect.attrib["y"])
        assert x <= rx <= x + w and y <= ry <= y + h
    # Routers are drawn as hexagons, hosts as rounded boxes.
    assert sum(1 for _ in root.iter(f"{SVG_NS}polygon")) == 4
    assert sum(1 for r in root.iter(f"{SVG_NS}rect") if r.attrib.get("rx") == "12") == 2


PER_DIRECTION = """\
name: per-direction
description: 'escaping <&> "here"'
nodes:
  a: {kind: host}
  r: {kind: router}
  sw: {kind: switch}
  b: {kind: host}
links:
  - endpoints: ["a:up0", "r:eth0"]
    name: lossy <&> "up"
    impairment: {delay: 10ms, forward: {loss: 1%}}
  - [r, sw]
  - [sw, b]
"""


def test_per_direction_labels(tmp_path: Path) -> None:
    lt = _inline(tmp_path, PER_DIRECTION)
    text = graph.mermaid(lt.resolved)
    assert "→ 10ms 1%" in text and "← 10ms" in text
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("%%"))
    assert "<&>" not in body and "#60;#38;#62;" in body  # markup in labels is escaped
    assert 'n_sw["sw"]' in text
    svg = graph.svg(lt.resolved)
    texts = _svg_texts(svg)
    # a is the first host, so it is drawn on the left: `→` reads from a to r.
    assert "→ 10ms 1%" in texts and "← 10ms" in texts
    assert 'lossy <&> "up"' in texts
    assert "<&>" not in svg
    for name in ("a", "r", "sw", "b"):
        assert name in texts


def test_same_impairment_both_ways_is_one_line(tmp_path: Path) -> None:
    lt = _inline(tmp_path, PER_DIRECTION.replace("forward: {loss: 1%}", "jitter: 2ms, loss: 1%"))
    assert graph.direction_texts(lt.resolved, 0) == ["10ms±2ms 1%"]
    assert "→" not in graph.mermaid(lt.resolved)


def test_arrows_follow_drawing_direction(tmp_path: Path) -> None:
    # The link's first endpoint is the router, which is drawn right of the host: the SVG's `→`
    # (left to right) is then the reverse direction, and its `←` the forward one.
    lt = _inline(tmp_path, PER_DIRECTION.replace('["a:up0", "r:eth0"]', '["r:eth0", "a:up0"]'))
    texts = _svg_texts(graph.svg(lt.resolved))
    assert "← 10ms 1%" in texts and "→ 10ms" in texts
    assert "→ 10ms 1%" in graph.mermaid(lt.resolved)  # Mermaid: first endpoint → second


def test_parallel_links_and_disconnected_nodes(tmp_path: Path) -> None:
    lt = load_topology(ROOT / "topologies" / "dual-homed.yaml.j2", parse_set(["paths=2", "server_interfaces=3"]))
    root = ET.fromstring(graph.svg(lt.resolved).encode())
    # Of the three gw–server links, the outer two bend away from the straight middle one.
    assert sum(1 for _ in root.iter(f"{SVG_NS}polyline")) == 2
    lone = _inline(tmp_path, "name: lone\nnodes:\n  a: {kind: host}\n  b: {kind: router}\n")
    assert {"a", "b"} <= set(_svg_texts(graph.svg(lone.resolved)))
    assert graph.mermaid(lone.resolved).count("---") == 0
