"""Topology and experiment files: validation, positions in errors, templating, inheritance, addressing."""

from __future__ import annotations

import json
import re
import textwrap
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.errors import SpecError
from testbed.spec.load import load_experiment, load_topology
from testbed.spec.template import parse_set
from tests.conftest import ROOT, run_cli

LINE = re.compile(r"^[^:\n]+:\d+(:\d+)?: [^:\n]*: .+$")


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def problems(exc: pytest.ExceptionInfo) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_all_errors_in_one_pass_with_positions(tmp_path):
    p = write(tmp_path, "t.yaml", """
        name: t
        nodes:
          client: {kind: hots}
          server: {kind: host, sysctl: {}}
        links:
          - ["client:eth0", "sevrer:eth0"]
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    lines = problems(exc)
    assert any("t.yaml:3:" in line and "unknown kind 'hots'" in line and "did you mean 'host'" in line
               for line in lines), lines
    assert any("t.yaml:4:" in line and "nodes.server.sysctl" in line and "did you mean 'sysctls'" in line
               for line in lines), lines
    for line in lines:
        assert LINE.match(line), line
        assert "dict" not in line and "str'" not in line  # never a Python type name


def test_reference_errors_are_reported_after_validation(tmp_path):
    p = write(tmp_path, "t.yaml", """
        name: t
        nodes:
          client: {}
          server: {}
        links:
          - ["client:eth0", "sevrer:eth0"]
          - endpoints: ["client:eth0", "server:eth1"]
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    text = "\n".join(problems(exc))
    assert "t.yaml:6:" in text and "no node named 'sevrer' (did you mean 'server'?)" in text
    assert "interface 'eth0' of 'client' is used by another link" in text


def test_bad_values_point_at_their_field(tmp_path):
    p = write(tmp_path, "t.yaml", """
        name: t
        nodes: {a: {}, b: {}}
        links:
          - endpoints: [a, b]
            impairment: {loss: 150%, delay: -20ms, forward: {rate: fast}}
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    text = "\n".join(problems(exc))
    assert "links[0].impairment.loss: a percentage must be between 0% and 100%" in text
    assert "links[0].impairment.delay: a duration cannot be negative" in text
    assert "links[0].impairment.forward.rate: expected a rate" in text


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = write(tmp_path, "t.yaml", "name: t\nnodes: {a: {}\nlinks: []\n")
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert re.match(r"^.*t\.yaml:\d+:\d+: +YAML syntax", problems(exc)[0].replace(": :", ":"))


def test_duplicate_keys_are_refused(tmp_path):
    p = write(tmp_path, "t.yaml", "name: t\nnodes: {a: {}}\nnodes: {b: {}}\n")
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert "duplicate key" in problems(exc)[0] and ":3:" in problems(exc)[0]


def test_inheritance_defaults_kind_node(tmp_path):
    p = write(tmp_path, "t.yaml", """
        name: t
        defaults: {sysctls: {net.ipv4.tcp_ecn: 1}, mptcp: {limits: {subflows: 1}}}
        kinds:
          router: {sysctls: {net.ipv4.tcp_sack: 0}}
        nodes:
          a: {}
          r: {kind: router, mptcp: {limits: {subflows: 3}}}
          sw: {kind: switch}
        links: [[a, r], [r, sw]]
        """)
    t = load_topology(p).topology
    assert t.nodes["a"].sysctls == {"net.ipv4.tcp_ecn": 1}
    assert t.nodes["r"].sysctls == {"net.ipv4.tcp_ecn": 1, "net.ipv4.tcp_sack": 0}
    assert t.nodes["r"].mptcp.limits.subflows == 3
    assert t.nodes["a"].mptcp.limits.subflows == 1


def test_addresses_and_names_assigned_when_left_out(tmp_path):
    p = write(tmp_path, "t.yaml", """
        name: t
        addressing: {ipv4: 192.168.0.0/16, prefix: 24}
        nodes: {a: {}, b: {}, c: {}, sw: {kind: switch}}
        links:
          - endpoints: [{node: a, interface: wlan0, address: 192.168.7.10/24}, b]
            subnet: 192.168.7.0/24
          - [a, sw]
          - [b, sw]
          - [c, sw]
        """)
    r = load_topology(p).resolved
    a = {i.name: i for i in r.interfaces["a"]}
    assert a["wlan0"].address == IPv4Interface("192.168.7.10/24")
    assert r.interface("b", "eth0").address == IPv4Interface("192.168.7.1/24")
    switch_addrs = {str(r.interface(n, i).address) for n, i in (("a", "eth0"), ("b", "eth1"), ("c", "eth0"))}
    assert switch_addrs == {"192.168.0.1/24", "192.168.0.2/24", "192.168.0.3/24"}


def test_address_outside_subnet(tmp_path):
    p = write(tmp_path, "t.yaml", """
        name: t
        nodes: {a: {}, b: {}}
        links:
          - endpoints: [{node: a, address: 10.9.9.1/24}, b]
            subnet: 10.1.0.0/24
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert "is not inside the link's subnet 10.1.0.0/24" in problems(exc)[0]
    assert ":4:" in problems(exc)[0]


def test_multihomed_host_gets_source_routing():
    lt = load_topology(ROOT / "topologies/dual-homed.yaml.j2", parse_set(["paths=3"]))
    r = lt.resolved
    rules = r.rules["client"]
    assert [x.table for x in rules] == [100, 101, 102]
    for rule, intf in zip(rules, r.interfaces["client"], strict=True):
        assert rule.address == intf.address.ip
        table_routes = [x for x in r.routes["client"] if x.table == rule.table]
        assert table_routes and all(x.interface == intf.name for x in table_routes)


def test_template_parameters_and_set(tmp_path):
    lt = load_topology(ROOT / "topologies/dual-homed.yaml.j2", parse_set(["wifi_loss=5%", "paths=2"]))
    imp = lt.topology.links[0].impairment.direction(True)
    assert imp.loss == 5.0 and imp.delay == pytest.approx(0.01) and imp.rate == 50e6
    with pytest.raises(SpecError) as exc:
        load_topology(ROOT / "topologies/dual-homed.yaml.j2", parse_set(["wifi_los=5%", "paths=99"]))
    text = "\n".join(problems(exc))
    assert "--set: wifi_los: not a parameter" in text and "did you mean 'wifi_loss'" in text
    assert "--set: paths: 99 is above the maximum 6" in text
    with pytest.raises(SpecError) as exc:  # the template's own name is what --set takes
        load_topology(ROOT / "topologies/dual-homed.yaml.j2", parse_set(["topology.set.wifi_loss=5%"]))
    assert "did you mean 'wifi_loss'? a template's parameters are set by their own names" in problems(exc)[0]


def test_template_errors_have_lines(tmp_path):
    p = write(tmp_path, "t.yaml.j2", """
        parameters:
          n: {type: int, default: 1}
        ---
        name: t
        nodes:
          a: {kind: {{ nope }}}
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert "t.yaml.j2:6:" in problems(exc)[0] and "'nope' is undefined" in problems(exc)[0]


def test_template_sandbox_blocks_escape(tmp_path):
    p = write(tmp_path, "t.yaml.j2", """
        parameters: {}
        ---
        name: "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        nodes: {a: {}}
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert "t.yaml.j2" in problems(exc)[0] and "unsafe" in problems(exc)[0]


def test_template_cannot_include_outside_its_directory(tmp_path):
    (tmp_path / "secret.txt").write_text("s3cret")
    inner = tmp_path / "topos"
    inner.mkdir()
    p = write(inner, "t.yaml.j2", """
        parameters: {}
        ---
        name: t
        description: "{% include '../secret.txt' %}"
        nodes: {a: {}}
        """)
    with pytest.raises(SpecError) as exc:
        load_topology(p)
    assert "s3cret" not in "\n".join(problems(exc))


def test_experiment_references_are_checked(tmp_path):
    topo = ROOT / "topologies/dual-homed.yaml.j2"
    p = write(tmp_path, "e.yaml", f"""
        name: e
        topology: {topo}
        stacks:
          cleint: {{}}
          client:
            endpoints: [{{interface: cell9}}]
        workloads:
          - {{type: bulk, size: 1MB, target: "server:eth7"}}
        events:
          - {{at: 1s, action: link_down, link: "client:wlan1"}}
        expect:
          counters: {{ghost.MPTcpExtAddAddr: 1}}
          report: [bulk.goodputt]
        """)
    with pytest.raises(SpecError) as exc:
        load_experiment(p)
    text = "\n".join(problems(exc))
    assert "stacks.cleint: no host or router named 'cleint'" in text and "did you mean 'client'" in text
    assert "'client' has no interface 'cell9'" in text and "did you mean 'cell0'" in text
    assert "'server' has no interface 'eth7'" in text
    assert "'client' has no interface 'wlan1'" in text and "did you mean 'wlan0'" in text
    assert "no host or router named 'ghost'" in text
    assert "unknown metric 'goodputt'" in text and "did you mean 'goodput'" in text
    assert all(LINE.match(line) for line in problems(exc))


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "experiments").glob("*.yaml") if p.name not in ("implementations.yaml", "known-deviations.yaml")), ids=lambda p: p.stem)
def test_shipped_experiments_load(path):
    loaded = load_experiment(path)
    assert loaded.experiment.workloads


def test_schema_command_prints_json_schema():
    for kind in ("topology", "experiment"):
        r = run_cli("schema", kind)
        assert r.returncode == 0, r.stderr
        schema = json.loads(r.stdout)
        assert schema["type"] == "object" and "$defs" in schema
    assert "nodes" in json.loads(run_cli("schema", "topology").stdout)["properties"]


keys = st.sampled_from(["name", "nodes", "links", "kind", "impairment", "endpoints", "loss", "delay", "a", "b"])
values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.text(max_size=8),
                                st.sampled_from(["5%", "20ms", "host", "router", "a:eth0"])),
                      lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
                      max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, values, max_size=5))
def test_loader_never_crashes(tmp_path, data):
    from ruamel.yaml import YAML

    p = tmp_path / "fuzz.yaml"
    with p.open("w") as f:
        YAML().dump(data, f)
    try:
        load_topology(p)
    except SpecError as exc:
        for problem in exc.problems:
            assert str(problem).startswith(str(p))


workload = st.fixed_dictionaries({"type": st.sampled_from(["bulk", "rr", "iperf3", "ping", "bluk"])},
                                 optional={"size": values, "client": values, "requests": values,
                                           "protocol": st.sampled_from(["mptcp", "tcp", "sctp"]), "port": values})
experiment = st.fixed_dictionaries(
    {"name": st.sampled_from(["e", "E!", ""]), "topology": st.just(str(ROOT / "topologies/dual-homed.yaml.j2"))},
    optional={"workloads": st.lists(workload, max_size=3), "stacks": st.dictionaries(keys, values, max_size=2),
              "events": st.lists(st.dictionaries(st.sampled_from(["at", "action", "link", "node"]), values,
                                                 max_size=4), max_size=2),
              "expect": st.dictionaries(st.sampled_from(["outcome", "counters", "paths", "report"]), values,
                                        max_size=3),
              "timeout": values, "seed": values})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(experiment)
def test_experiment_loader_never_crashes(tmp_path, data):
    import json as _json

    p = tmp_path / "fuzz.yaml"
    p.write_text(_json.dumps(data))
    try:
        load_experiment(p)
    except SpecError as exc:
        for problem in exc.problems:
            assert str(problem).startswith(str(p)) or "dual-homed" in str(problem)
