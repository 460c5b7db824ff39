"""Hostile spec files: each named limit ends the command in one `file:line: field: problem` line
naming the limit, exit code 2, no traceback and nothing left behind (testbed/spec/limits.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.errors import SpecError
from testbed.spec import limits
from testbed.spec.load import load_topology
from tests.conftest import ROOT, run_cli

# file:line[:col]: [field:] problem (limit NAME)
LINE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+)(:\d+)?: (?:[^:\n]+: )?.+\(limit (?P<limit>\w+)\)$")

LAUGHS = "name: t\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(10))


def nest(opener: str, closer: str, depth: int, inner: str = "a: 1") -> str:
    return opener * depth + inner + closer * depth


# name: (file name, text, the line the problem is reported at, --set / TESTBED_LIMITS)
CASES: dict[str, tuple[str, str, int, list[str], str]] = {
    "max_file_bytes": ("big.yaml", "name: t\n" + "# padding\n" * 120_000, 104858, [], ""),
    "max_yaml_depth": ("deep.yaml", "name: t\nnodes: " + "[" * 5000 + "]" * 5000 + "\n", 2, [], ""),
    "max_yaml_depth-block": ("deepblock.yaml", "name: t\nx:\n" + "".join(
        "  " * i + f"k{i}:\n" for i in range(1, 80)) + "  " * 80 + "v: 1\n", 65, [], ""),
    "max_yaml_nodes": ("laughs.yaml", LAUGHS, 8, [], ""),
    "max_template_recursion": ("macro.yaml.j2", "{% macro f(x) %}{{ f(x + 1) }}{% endmacro %}\n"
                               "name: t\nnodes: {a: {}}\nx: {{ f(1) }}\n", 1, [], ""),
    "max_template_recursion-include": ("self.yaml.j2", "name: t\n{% include 'self.yaml.j2' %}\n", 2, [], ""),
    "max_template_recursion-brackets": ("brackets.yaml.j2", "name: t\nx: {{ " + nest("(", ")", 3000, "1")
                                        + " }}\n", 2, [], ""),
    "max_template_loops": ("loops.yaml.j2", "name: t\n" + "".join(
        f"{{% for x{i} in [1] %}}\n" for i in range(22)) + "x: 1\n" + "{% endfor %}\n" * 22, 23, [], ""),
    "max_template_nesting": ("ifs.yaml.j2", "name: t\n" + nest("{% if true %}\n", "{% endif %}\n", 70), 71, [], ""),
    "max_render_seconds": ("slow.yaml.j2", "name: t\n{% for i in range(100000) %}{% for j in range(100000) %}"
                           "{% endfor %}{% endfor %}\n", 2, [], "max_render_seconds=1"),
    "max_render_bytes": ("wide.yaml.j2", "name: t\nx: |\n{% for i in range(100000) %}  {{ 'x' * 100 }}\n"
                         "{% endfor %}\n", 3, [], ""),
    "max_render_memory": ("huge.yaml.j2", "name: t\nx: {{ 'x' * 2 ** 34 }}\n", 2, [], ""),
    "max_set_bytes": ("set.yaml.j2", "parameters:\n  n: {type: str, default: a}\n---\nname: t\nx: {{ n }}\n",
                      0, ["--set", "n=" + "y" * 70_000], ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_limit_is_one_line_naming_it_and_exit_2(tmp_path, case):
    name, text, line, extra, env = CASES[case]
    path = tmp_path / name
    path.write_text(text)
    environment = {**os.environ, limits.ENV: env} if env else None
    r = run_cli("render", name, *extra, cwd=tmp_path, env=environment)
    assert r.returncode == 2, (r.stdout[-300:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    limit = case.split("-")[0]
    if limit == "max_set_bytes":  # a command-line value has no file behind it
        assert lines[0] == "--set: n: value is 68.36 KiB, more than 64 KiB (limit max_set_bytes)"
        return
    m = LINE.match(lines[0])
    assert m, lines[0]
    assert m["file"].startswith(name) and m["limit"] == limit, lines[0]
    assert int(m["line"]) == line, lines[0]


def test_a_hostile_topology_behind_an_experiment_fails_run_before_anything_is_built(tmp_path):
    (tmp_path / "laughs.yaml").write_text(LAUGHS)
    exp = tmp_path / "e.yaml"
    exp.write_text("name: e\ntopology: {file: laughs.yaml}\nworkloads: [{type: bulk, size: 1MB}]\n")
    results = tmp_path / "results"
    before = _netns()
    r = run_cli("run", "e.yaml", "--results", str(results), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "laughs.yaml:8:5: YAML: more than 1000000 values once aliases are expanded (limit max_yaml_nodes)"]
    assert not results.exists() or not any(results.iterdir())
    assert _netns() == before


def test_a_huge_set_value_in_an_experiment_is_reported_where_it_is_written(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ntopology:\n  file: {ROOT / 'topologies/chain.yaml.j2'}\n"
                   f"  set: {{n: '{'1' * 70_000}'}}\nworkloads: [{{type: bulk, size: 1MB}}]\n")
    r = run_cli("run", "e.yaml", "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "e.yaml:4:9: n: value is 68.36 KiB, more than 64 KiB (limit max_set_bytes)"]


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text("name: t\nnodes: &a {x: [*a]}\n")
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert [str(x) for x in exc.value.problems] == [
        f"{p}:2:16: YAML: alias *a is inside the value it names: it would expand forever"]


def test_limits_can_be_raised_and_bad_overrides_are_named(tmp_path, monkeypatch):
    p = tmp_path / "loops.yaml.j2"
    p.write_text("name: t\nnodes: {a: {}}\n" + "{% for x in [1] %}" * 3 + "\n" + "{% endfor %}" * 3 + "\n")
    monkeypatch.setenv(limits.ENV, "max_template_loops=2")
    with pytest.raises(SpecError, match=r"for loops nested 3 deep, more than 2 \(limit max_template_loops\)"):
        load_topology(p)
    monkeypatch.setenv(limits.ENV, "max_template_loops=3")
    assert load_topology(p).topology.name == "t"
    for bad, message in (("max_template_loops=21", "at most 20"), ("max_yaml_depth=0", "must be positive"),
                         ("max_yaml_dpeth=3", "expected name=value"), ("max_file_bytes=lots", "expected a number")):
        monkeypatch.setenv(limits.ENV, bad)
        with pytest.raises(SpecError, match=message):
            limits.current()


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except OSError:
        return set()


# Property tests: random nesting and sizes around the limits never end in a traceback.
openers = st.sampled_from([("[", "]"), ("{a: ", "}"), ("{% if true %}", "{% endif %}"),
                           ("{% for i in [1] %}", "{% endfor %}"), ("{{ (", ") }}"), ("- ", "")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(openers, min_size=1, max_size=120), st.integers(0, 3), st.booleans())
def test_random_deep_nesting_never_crashes_the_loader(tmp_path, layers, repeat, template):
    body = "".join(o for o, _ in layers) + "1" + "".join(c for _, c in reversed(layers))
    text = "name: t\nnodes: {a: {}}\nx: " + body + ("\ny: " + body) * repeat + "\n"
    p = tmp_path / ("n.yaml.j2" if template else "n.yaml")
    p.write_text(text)
    _loads_or_one_problem_per_line(p)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 12), st.integers(1, 12), st.sampled_from(["[{}]", "{{k: {}}}", "[{}, {}]"]))
def test_random_alias_fan_out_never_crashes_the_loader(tmp_path, levels, fan, shape):
    lines = ["name: t", "nodes: {a: {}}", "l0: &l0 lol"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*l{i - 1}"] * fan)
        lines.append(f"l{i}: &l{i} " + shape.format(refs, refs).replace("k: ", "k: "))
    p = tmp_path / "a.yaml"
    p.write_text("\n".join(lines) + "\n")
    _loads_or_one_problem_per_line(p)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 300_000), st.sampled_from(["x", "é", "\\n  - "]))
def test_random_output_sizes_never_crash_the_loader(tmp_path, count, piece):
    p = tmp_path / "o.yaml.j2"
    p.write_text(f"name: t\nnodes: {{a: {{}}}}\nx: \"{{{{ '{piece}' * {count} }}}}\"\n")
    monkey = {limits.ENV: "max_render_bytes=200000"}
    old = {k: os.environ.get(k) for k in monkey}
    os.environ.update(monkey)
    try:
        _loads_or_one_problem_per_line(p)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _loads_or_one_problem_per_line(p: Path) -> None:
    try:
        load_topology(p)
    except SpecError as exc:
        for problem in exc.problems:
            assert str(problem).startswith(str(p)), problem
            assert "\n" not in str(problem) and "Traceback" not in str(problem)
            assert "object" not in problem.message or "limit" in problem.message


def test_a_thousand_router_chain_fits_the_default_limits_and_address_pool(tmp_path):
    """No addressing section: 1001 links take /24s from the default pool; every router's table is
    a few prefixes per neighbour, and they still reach every link (checked by longest match)."""
    from testbed.errors import Problem

    n = 1000
    p = tmp_path / "chain.yaml.j2"
    p.write_text("parameters:\n  n: {type: int, default: 3}\n---\nname: chain\nnodes:\n  a: {}\n"
                 "{% for i in range(n) %}  r{{ i }}: {kind: router}\n{% endfor %}  b: {}\nlinks:\n  - [a, r0]\n"
                 "{% for i in range(n - 1) %}  - [r{{ i }}, r{{ i + 1 }}]\n{% endfor %}  - [r{{ n - 1 }}, b]\n")
    res = load_topology(p, {"n": (n, Problem("<test>", None, None, "n", ""))}).resolved
    assert len(res.segments) == n + 1
    routes = res.routes["r500"]
    assert len(routes) < 40, len(routes)
    left, right = res.interface("r500", "eth0"), res.interface("r500", "eth1")
    for seg in res.segments:
        hits = [r for r in routes if seg.subnet.network_address in r.destination]
        if seg.index in (left.segment, right.segment):
            assert not hits
            continue
        best = max(hits, key=lambda r: r.destination.prefixlen)
        assert best.interface == (left.name if seg.index <= left.segment else right.name)
