"""The expected outcome of a matrix cell, from the two implementations' feature sets.

A cell puts implementation A on the scenario's client node and B on its server node. In order:

1. The testbed must be able to run the scenario (network-function node kinds, workloads it needs)
   and both implementations must be available here; otherwise the cell is `unavailable`.
2. Protocol versions. A side that is plain TCP, or a v0 (RFC 6824) side facing a v1 (RFC 8684)
   side, makes the connection a TCP fallback: RFC 8684 §3.1 — a host that does not speak the
   peer's MPTCP version answers its MP_CAPABLE SYN with a plain SYN/ACK, and the connection must
   carry on as TCP. Such cells expect `fallback` with the data intact (the scenario's own MPTCP
   expectations do not apply), or `failed` for scenarios that take the only path away. A side the
   scenario itself pins to plain TCP is part of the scenario: its own expectations (written for
   that fallback) stay. Requirements a scenario marks `fallback_requires` still apply to the MPTCP
   side (e.g. retrying without MP_CAPABLE when a middlebox drops MP_CAPABLE SYNs).
3. Two v0 sides: `unsupported` (the scenarios' expectations are RFC 8684 counters).
4. Two v1 sides: every feature the scenario requires — listed in the suite, or implied by its
   experiment (endpoint flags and sysctls a node is configured with, events acting on it, counters
   its checks read) — must be in that side's feature set; otherwise `unsupported`, naming what is
   missing. Then the scenario's own expectations apply.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

from testbed.matrix.features import EVENT_FEATURES, FLAG_FEATURES, SYSCTL_FEATURES, UPSTREAM, FeatureSet

Role = Literal["client", "server"]
ROLES: tuple[Role, Role] = ("client", "server")

# Network-function node kinds a scenario may need (its topology uses them or its suite entry says so).
FUNCTION_CAPABILITIES = {
    "middlebox": "the middlebox node kind (option stripping, drops, injection)",
    "nat64": "the nat64 node kind (tayga + NAT44)",
    "nat44": "the nat44 node kind",
    "lb": "the lb (load balancer) node kind",
    "converter": "the converter node kind (RFC 8803 0-RTT TCP convert proxy)",
    "socks": "the socks node kind",
}
OTHER_CAPABILITIES = {
    "abort-workload": "a workload that closes a connection abruptly (unread data or SO_LINGER 0), so "
                      "that MP_FASTCLOSE is sent (bulk `abort`)",
}
CAPABILITIES = {**FUNCTION_CAPABILITIES, **OTHER_CAPABILITIES}
KNOWN_REQUIREMENTS: dict[str, str] = {**{n: f.what for n, f in UPSTREAM.items()}, **CAPABILITIES}


def capability(name: str) -> tuple[bool, str]:
    """Whether this testbed has a capability a scenario needs, and if not, why."""
    if name in FUNCTION_CAPABILITIES:
        from testbed.spec.functions import FUNCTION_KINDS

        if name not in FUNCTION_KINDS:
            return False, f"the testbed has no '{name}' node kind yet"
        try:
            from testbed.emulation.functions.registry import implementation

            if implementation(name) is None:
                return False, f"the '{name}' node kind has no implementation"
        except (ImportError, AttributeError) as exc:
            return False, f"the '{name}' node kind cannot be loaded: {exc}"
        return True, ""
    if name == "abort-workload":
        from testbed.spec.experiment import Bulk

        if "abort" not in Bulk.model_fields:
            return False, "the bulk workload has no `abort` option (needed to provoke MP_FASTCLOSE)"
        return True, ""
    return False, f"unknown capability '{name}'"


@dataclass
class ScenarioFacts:
    """What the matrix needs to know about one scenario and its experiment."""

    name: str
    nodes: dict[Role, str]  # role → node name
    pins: dict[Role, str] = field(default_factory=dict)  # role → driver it is pinned to
    requires: dict[Role, dict[str, str]] = field(default_factory=lambda: {"client": {}, "server": {}})
    # what an MPTCP side needs even when its peer is plain TCP (the scenario acts before the peer does)
    fallback_requires: dict[Role, dict[str, str]] = field(default_factory=lambda: {"client": {}, "server": {}})
    capabilities: list[str] = field(default_factory=list)
    outcome: str | None = None  # the scenario's own expected outcome
    fallback: str = "fallback"  # what a cell with a plain-TCP side expects: fallback, or failed
    has_bulk: bool = True
    aborts: bool = False  # a bulk workload aborts its connection on purpose (resets it)
    load_error: str | None = None  # the experiment did not validate (excused by a missing capability)

    def requirement_list(self) -> dict[str, list[dict[str, str]]]:
        return {r: [{"feature": f, "why": why} for f, why in sorted(self.requires[r].items())] for r in ROLES}


def scenario_facts(scenario: Any, loaded: Any | None, load_error: str | None = None) -> ScenarioFacts:
    """From a suite's `Scenario` and its loaded experiment (`LoadedExperiment`, or None if it did not
    validate): explicit requirements, the ones the experiment implies, the capabilities it needs."""
    from testbed.spec.matrix import split_requirement

    facts = ScenarioFacts(scenario.name, {"client": scenario.client, "server": scenario.server},
                          dict(scenario.pin), load_error=load_error, fallback=scenario.fallback)
    for req in scenario.requires:
        role, name = split_requirement(req)
        if name in CAPABILITIES:
            if name not in facts.capabilities:
                facts.capabilities.append(name)
            continue
        for r in ROLES if role is None else (role,):
            facts.requires[r].setdefault(name, "required by the scenario")  # type: ignore[index]
    for req in scenario.fallback_requires:
        role, name = split_requirement(req)
        for r in ROLES if role is None else (role,):
            facts.fallback_requires[r].setdefault(name, "required by the scenario, even against plain TCP")  # type: ignore[index]
            facts.requires[r].setdefault(name, "required by the scenario")  # type: ignore[index]
    if loaded is None:
        return facts
    exp = loaded.experiment
    for node in loaded.topo.topology.nodes.values():
        if node.kind in FUNCTION_CAPABILITIES and node.kind not in facts.capabilities:
            facts.capabilities.append(node.kind)
    facts.outcome = exp.expect.outcome
    facts.has_bulk = any(w.type == "bulk" for w in exp.workloads)
    facts.aborts = any(getattr(w, "abort", None) is not None for w in exp.workloads)
    for role in ROLES:
        node = facts.nodes[role]
        need = facts.requires[role]
        cfg = loaded.stacks.get(node)
        if cfg is not None and cfg.stack == "upstream":
            for ep in cfg.endpoints:
                for flag in ep.flags:
                    if flag in FLAG_FEATURES:
                        need.setdefault(FLAG_FEATURES[flag], f"endpoint {ep.interface} is '{flag}'")
                if ep.port is not None:
                    need.setdefault("add_addr_port", f"endpoint {ep.interface} announces port {ep.port}")
            for sysctl in cfg.sysctls:
                if sysctl in SYSCTL_FEATURES:
                    need.setdefault(SYSCTL_FEATURES[sysctl], f"sets net.mptcp.{sysctl}")
        for ev in exp.events:
            if getattr(ev, "node", None) == node and ev.action in EVENT_FEATURES:
                need.setdefault(EVENT_FEATURES[ev.action], f"event {ev.action} at {ev.at:g} s")
        for key in exp.expect.counters if exp.expect.counters_absent == "fail" else ():  # 'skip': not needed
            pattern, _, counter = key.partition(".")
            if counter.startswith("MPTcpExt") and fnmatch.fnmatchcase(node, pattern):
                need.setdefault(f"mib:{counter.removeprefix('MPTcpExt')}", f"check on counter {key}")
    if exp.expect.outcome == "mptcp":
        facts.requires["client"].setdefault("mib:MPCapableSYNACKRX",
                                            "the outcome is read from the client's MPCapableSYNACKRX")
    return facts


@dataclass(frozen=True)
class Side:
    implementation: str
    features: FeatureSet
    available: bool = True
    why: str = ""


@dataclass(frozen=True)
class Expectation:
    status: Literal["run", "unsupported", "unavailable"]
    expected_outcome: str | None  # mptcp | fallback | failed | None (the scenario sets none)
    mode: Literal["scenario", "fallback", "probe"] | None  # which expectations the cell runs with
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "expected_outcome": self.expected_outcome, "mode": self.mode,
                "reason": self.reason}


def _compatible(a: FeatureSet, b: FeatureSet) -> bool:
    return a.protocol is not None and a.protocol == b.protocol


def expect_cell(facts: ScenarioFacts, client: Side, server: Side,
                capabilities: dict[str, tuple[bool, str]] | None = None) -> Expectation:
    """The expected outcome of one cell (see the module docstring for the rules)."""
    sides = {"client": client, "server": server}
    for cap in facts.capabilities:
        ok, why = (capabilities or {}).get(cap) or capability(cap)
        if not ok:
            return Expectation("unavailable", None, None, f"needs {cap}: {why}")
    if facts.load_error:
        return Expectation("unavailable", None, None, f"the scenario's experiment does not load: {facts.load_error}")
    for role in ROLES:
        s = sides[role]
        if not s.available:
            return Expectation("unavailable", None, None, f"{role} {s.implementation}: {s.why}")
    from testbed.matrix.features import tcp_features

    effective = {r: tcp_features(sides[r].implementation, sides[r].features.kernel) if r in facts.pins
                 else sides[r].features for r in ROLES}
    unpinned = [r for r in ROLES if r not in facts.pins]
    if facts.fallback != "fallback":
        then = "the connection falls back to one TCP path, which the scenario takes away: the transfer must fail"
    elif facts.aborts:  # TCP's abrupt close is a RST: the aborting workload checks the peer saw it
        then = ("the connection must fall back to TCP, and the workload's abort must reset it with a RST "
                "(no MP_FASTCLOSE without MPTCP), the data before it intact")
    else:
        then = "the connection must fall back to TCP with the data intact"
    plain = [r for r in unpinned if effective[r].protocol is None]
    protocols = {effective[r].protocol for r in unpinned}
    if plain or len(protocols) > 1:
        missing = _missing(facts.fallback_requires, [r for r in unpinned if effective[r].protocol is not None],
                           sides, effective)
        if missing:
            return Expectation("unsupported", None, None, "; ".join(missing))
    if plain:
        who = " and ".join(f"{r} {sides[r].implementation}" for r in plain)
        return Expectation("run", facts.fallback, "fallback", f"{who} {'is' if len(plain) == 1 else 'are'} "
                                                              f"plain TCP: {then}")
    if len(protocols) > 1:
        return Expectation("run", facts.fallback, "fallback",
                           f"RFC 6824 (v0) against RFC 8684 (v1): different MPTCP versions fall back to "
                           f"plain TCP (RFC 8684 §3.1): {then}")
    if protocols == {0} and facts.pins:
        return Expectation("run", facts.fallback, "fallback",
                           f"RFC 6824 (v0) against the scenario's plain-TCP side: {then} (the scenario's own "
                           f"checks read RFC 8684 counters)")
    if protocols == {0}:
        return Expectation("unsupported", None, None, "both sides speak RFC 6824 (v0); the scenarios' "
                                                      "expectations are written for RFC 8684 counters")
    missing = _missing(facts.requires, unpinned, sides, effective)
    if missing:
        return Expectation("unsupported", None, None, "; ".join(missing))
    pinned = ", ".join(f"{r} pinned to {facts.pins[r]}" for r in ROLES if r in facts.pins)
    return Expectation("run", facts.outcome, "scenario",
                       "both sides have what the scenario needs" + (f" ({pinned})" if pinned else ""))


def _missing(requires: dict[Role, dict[str, str]], roles: list[Role], sides: dict[str, Side],
             effective: dict[str, FeatureSet]) -> list[str]:
    out = []
    for role in roles:
        fs = effective[role]
        for feature, why in sorted(requires[role].items()):
            if not fs.has(feature):
                out.append(f"{role} {sides[role].implementation} lacks {feature} ({fs.why_missing(feature)}; {why})")
    return out


def fallback_expect(has_bulk: bool, outcome: str = "fallback") -> dict[str, Any]:
    """The expectations a fallback cell runs with instead of the scenario's MPTCP ones.

    A bulk workload that aborts on purpose keeps its meaning here: it completes only when the peer saw
    the connection reset (with plain TCP a RST), and `transfer_intact` judges the bytes that arrived
    before the abort."""
    if outcome == "failed":
        return {"outcome": "failed"}
    return {"outcome": "fallback", **({"transfer_intact": True} if has_bulk else {})}
