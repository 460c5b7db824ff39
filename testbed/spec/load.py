"""Entry points of the spec layer: files in, validated and resolved models out."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from testbed.errors import Problem, SpecError
from testbed.spec.experiment import Experiment
from testbed.spec.resolve import Resolved, resolve
from testbed.spec.source import Document, absolute, suggest, validate
from testbed.spec.stack import StackConfig
from testbed.spec.template import load_document
from testbed.spec.topology import Topology


@dataclass
class LoadedTopology:
    path: Path
    parameters: dict[str, Any]
    rendered: str
    topology: Topology
    resolved: Resolved


def load_topology(path: Path, overrides: dict[str, tuple[Any, Problem]] | None = None,
                  display: str | None = None) -> LoadedTopology:
    display = display or str(path)  # problems name the file as the user gave it
    path = absolute(path)
    doc, values, text = load_document(path, overrides or {}, display)
    topo = validate(Topology, doc)
    return LoadedTopology(path, values, text, topo, resolve(topo, doc))


@dataclass
class LoadedExperiment:
    path: Path
    experiment: Experiment
    topo: LoadedTopology
    stacks: dict[str, StackConfig]  # effective per L3 node: topology's, then the experiment's
    rendered: str


def load_experiment(path: Path, overrides: dict[str, tuple[Any, Problem]] | None = None,
                    display: str | None = None) -> LoadedExperiment:
    given = Path(display or path)
    path = absolute(path)
    doc, _, text = load_document(path, {}, str(given))
    exp = validate(Experiment, doc)
    topo_path = absolute(path.parent / exp.topology.file)
    # named relative to the current directory when the experiment was (as the user would type it)
    topo_display = str(topo_path) if given.is_absolute() else os.path.relpath(topo_path)
    params: dict[str, tuple[Any, Problem]] = {}
    for name, value in exp.topology.set.items():
        where = doc.problem(("topology", "set", name), "")
        params[name] = (value, where)
    params.update(overrides or {})
    if not topo_path.exists():
        raise SpecError([doc.problem(("topology", "file"), f"no topology file {topo_display}")])
    topo = load_topology(topo_path, params, topo_display)
    stacks = _effective_stacks(exp, topo.topology)
    _place_guests(exp, topo, stacks, doc)
    problems = check_references(exp, topo.resolved, doc)
    if problems:
        raise SpecError(problems)
    return LoadedExperiment(path, exp, topo, stacks, text)


def _place_guests(exp: Experiment, topo: LoadedTopology, stacks: dict[str, StackConfig], doc: Document) -> None:
    """`stacks.<node>.guest` puts that host on a QEMU guest, `stacks.<node>.remote` on a remote
    machine: the topology is re-resolved with the node's `image` or `remote`."""
    wanted: dict[str, tuple[str, dict]] = {}
    for n, cfg in stacks.items():
        given = exp.stacks.get(n)
        if given is not None and given.guest and cfg.guest:
            wanted[n] = ("guest", {"image": cfg.guest, "remote": None})
        elif given is not None and given.remote and cfg.remote:
            wanted[n] = ("remote", {"remote": cfg.remote, "image": None})
    if not wanted:
        return
    nodes = dict(topo.topology.nodes)
    problems = []
    for name, (field, update) in wanted.items():
        node = nodes.get(name)
        if node is None or node.kind != "host":
            where = "a QEMU guest" if field == "guest" else "a remote machine"
            problems.append(doc.problem(("stacks", name, field), f"only a host can run on {where}"))
            continue
        nodes[name] = node.model_copy(update=update)
    if problems:
        raise SpecError(problems)
    topo.topology = topo.topology.model_copy(update={"nodes": nodes})
    try:
        topo.resolved = resolve(topo.topology)
    except SpecError as exc:  # e.g. an unknown image: report it where the experiment named it
        placed = [(name, field) for name, (field, _) in wanted.items()]
        raise SpecError([doc.problem(("stacks", name, field), p.message) for p in exc.problems
                         for name, field in placed][:len(exc.problems)]) from None


def _effective_stacks(exp: Experiment, topology: Topology) -> dict[str, StackConfig]:
    out = {}
    for name, node in topology.nodes.items():
        if node.kind == "switch":
            continue
        base = node.mptcp.model_dump(exclude_unset=True)
        over = exp.stacks[name].model_dump(exclude_unset=True) if name in exp.stacks else {}
        merged = {**base, **over}
        if "sysctls" in base and "sysctls" in over:
            merged["sysctls"] = {**base["sysctls"], **over["sysctls"]}
        out[name] = StackConfig.model_validate(merged)
    return out


def check_references(exp: Experiment, res: Resolved, doc: Document) -> list[Problem]:
    """Node, interface and workload names the experiment uses must exist in the topology."""
    problems: list[Problem] = []
    nodes = res.topology.nodes
    hosts = [n for n, s in nodes.items() if s.kind != "switch"]

    def node_ok(loc: tuple[str | int, ...], name: str) -> bool:
        if name not in hosts:
            problems.append(doc.problem(loc, f"no host or router named '{name}' in the topology{suggest(name, hosts)}"))
            return False
        return True

    def intf_ok(loc: tuple[str | int, ...], node: str, intf: str) -> None:
        names = [i.name for i in res.interfaces.get(node, [])]
        if intf not in names:
            problems.append(doc.problem(loc, f"'{node}' has no interface '{intf}'{suggest(intf, names)}"
                                              f" (it has: {', '.join(names) or 'none'})"))

    def ref_ok(loc: tuple[str | int, ...], ref: str) -> None:
        node, sep, intf = ref.partition(":")
        if not sep:
            problems.append(doc.problem(loc, f"expected 'node:interface', got '{ref}'"))
        elif node_ok(loc, node):
            intf_ok(loc, node, intf)

    for name in exp.stacks:
        if node_ok(("stacks", name), name):
            for i, ep in enumerate(exp.stacks[name].endpoints):
                intf_ok(("stacks", name, "endpoints", i, "interface"), name, ep.interface)
    for i, w in enumerate(exp.workloads):
        node_ok(("workloads", i, "client"), w.client)
        if not w.servers:
            node_ok(("workloads", i, "server"), w.server)
        for j, server in enumerate(w.servers):
            node_ok(("workloads", i, "servers", j), server)
        if w.servers and w.type not in ("bulk", "rr"):
            problems.append(doc.problem(("workloads", i, "servers"), f"only bulk and rr workloads run on several "
                                                                     f"servers, not {w.type}"))
        elif w.servers and not w.target:
            problems.append(doc.problem(("workloads", i, "servers"), "several servers need a target: the address "
                                                                     "the client connects to (e.g. a balancer's)"))
        if w.target and not is_ip(w.target):
            if ":" in w.target:
                ref_ok(("workloads", i, "target"), w.target)
            else:
                problems.append(doc.problem(("workloads", i, "target"),
                                            f"'{w.target}' is neither 'node:interface' nor an IP address"))
    for i, ev in enumerate(exp.events):
        if hasattr(ev, "link"):
            ref_ok(("events", i, "link"), ev.link)
        for key in ev.wait_for:
            node_ok(("events", i, "wait_for", key), key.partition(".")[0])
        if hasattr(ev, "node") and node_ok(("events", i, "node"), ev.node):
            intf = ev.endpoint.interface if hasattr(ev, "endpoint") else ev.interface
            intf_ok(("events", i, "interface"), ev.node, intf)
    for key in exp.expect.counters:
        node, sep, counter = key.partition(".")
        if not sep or not counter:
            problems.append(doc.problem(("expect", "counters", key), "expected 'node.CounterName'"))
        elif any(c in node for c in "*?["):
            if not fnmatch.filter(hosts, node):
                problems.append(doc.problem(("expect", "counters", key), f"'{node}' matches no host or router"))
        else:
            node_ok(("expect", "counters", key), node)
    for node, peers in exp.expect.peers.items():
        loc = ("expect", "peers", node)
        node_ok(loc, node)
        for field in ("includes", "excludes"):
            for j, ref in enumerate(getattr(peers, field)):
                if not is_ip(ref):
                    ref_ok((*loc, field, j), ref)
    for ref, p in exp.expect.paths.items():
        ref_ok(("expect", "paths", ref), ref)
        if p.after_event is not None and p.after_event >= len(exp.events):
            problems.append(doc.problem(("expect", "paths", ref, "after_event"),
                                        f"there is no event {p.after_event} (events are counted from 0; "
                                        f"this experiment has {len(exp.events)})"))
    names = exp.workload_names()
    metric_refs_extra: list[tuple[tuple[str | int, ...], str]] = []
    if exp.expect.goodput and exp.expect.goodput.workload not in (None, *names):
        w = exp.expect.goodput.workload
        problems.append(doc.problem(("expect", "goodput", "workload"), f"no workload named '{w}'{suggest(w, names)}"))
    if exp.expect.latency and exp.expect.latency.workload not in (None, *names):
        w = exp.expect.latency.workload
        problems.append(doc.problem(("expect", "latency", "workload"), f"no workload named '{w}'{suggest(w, names)}"))
    for i, ref in enumerate(exp.expect.report):
        loc = ("expect", "report", i)
        head, dot, _ = ref.partition(".")
        if ":" in ref and not dot:
            ref_ok(loc, ref)  # bytes an interface carried
        elif dot and head in hosts and head not in names:
            pass  # a counter of a node: 'node.MPTcpExtAddAddr'
        else:
            metric_refs_extra.append((loc, ref))
    for loc, ref in [*_metric_refs(exp), *metric_refs_extra]:
        wname, dot, what = ref.rpartition(".")
        if not dot:
            problems.append(doc.problem(loc, f"expected 'workload.metric', got '{ref}'"))
        elif wname not in names:
            problems.append(doc.problem(loc, f"no workload named '{wname}'{suggest(wname, names)}"))
        elif what not in METRICS:
            problems.append(doc.problem(loc, f"unknown metric '{what}'{suggest(what, METRICS)}"))
    problems += _check_via(exp, res, doc)
    return problems


def _check_via(exp: Experiment, res: Resolved, doc: Document) -> list[Problem]:
    """`via` names a converter or socks node between the client and the server; `expect_error`
    names an error that node can report; relays for MPTCP clients are not made plain TCP."""
    from testbed.spec.functions.converter import ERRORS, reachable_hosts
    from testbed.spec.functions.socks import REPLIES

    problems: list[Problem] = []
    nodes = res.topology.nodes
    relays = [n for n, spec in nodes.items() if spec.kind in ("converter", "socks")]
    for name in relays:
        if name in exp.stacks and exp.stacks[name].stack == "tcp" and nodes[name].mptcp_client_side:
            problems.append(doc.problem(("stacks", name, "stack"), f"'{name}' takes MPTCP clients "
                                        "(mptcp_client_side): it cannot be plain TCP"))
    for i, w in enumerate(exp.workloads):
        table: dict[int, str] = {}
        if w.via is not None:
            loc = ("workloads", i, "via")
            kind = nodes[w.via].kind if w.via in nodes else None
            if kind not in ("converter", "socks"):
                what = f"is a {kind}" if kind else "is not in the topology"
                problems.append(doc.problem(loc, f"'{w.via}' {what}: via takes a converter or socks node"
                                                 f"{suggest(w.via, relays)}"))
            elif w.type not in ("bulk", "rr"):
                problems.append(doc.problem(loc, f"only bulk and rr workloads go through a {kind}, not {w.type}"))
            elif w.via in (w.client, w.server, *w.servers):
                problems.append(doc.problem(loc, f"'{w.via}' cannot relay for itself"))
            else:
                table = ERRORS if kind == "converter" else REPLIES
                reach = reachable_hosts(w.via, res)
                for role, node in (("client", w.client), ("server", w.server)):
                    if node in nodes and nodes[node].kind == "host" and node not in reach and not w.servers:
                        problems.append(doc.problem(loc, f"the {role} '{node}' and the {kind} '{w.via}' are "
                                                         "not connected"))
        if w.expect_error is not None:
            known = ["any", *table.values()]
            if w.expect_error not in known:
                problems.append(doc.problem(("workloads", i, "expect_error"),
                                            f"'{w.expect_error}' is not an error this workload can report"
                                            f"{suggest(w.expect_error, known)} (known: {', '.join(known)})"))
    return problems


def _metric_refs(exp: Experiment):
    for i, c in enumerate(exp.expect.compare):
        yield ("expect", "compare", i, "left"), c.left
        yield ("expect", "compare", i, "right"), c.right
    for ref in exp.expect.latency_bounds:
        yield ("expect", "latency_bounds", ref), ref


METRICS = ("goodput", "seconds", "bytes", "loss_percent", "retransmits", "share", "connect_seconds",
           "setup_seconds", "established_seconds", "first_byte_seconds", "error_seconds", "path_rtt_seconds",
           "setup_rtts", "first_byte_rtts", "error_rtts",
           *(f"{f}_{p}" for f in ("ttfb", "completion", "rtt") for p in ("min", "p50", "p95", "p99", "max", "mean")))


def is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True
