"""Probe cells of a matrix: conformance probe × server implementation.

A suite's `probes:` list makes the scenario `probes`; its cells put client `probe:NAME` against every
server implementation. A cell's experiment is the suite's `probe_experiment` (by default
experiments/probes.yaml) with only that probe's workload, the server implementation's stack on the
workload's server node, and `speaks` set from the server's feature set, so the probe judges the
server against what the RFC says for that protocol version:

- a server that speaks RFC 8684 (v1) gets the probe's v1 expectation if it has every feature the
  probe `requires` (e.g. MP_PRIO ≥ 5.12, the counter a check reads); else the cell is `unsupported`;
- a plain-TCP server (tcp, a kernel without MPTCP) must answer without MPTCP options;
- an RFC 6824 (v0) server gets the probe's v0 expectation where it has one, else `unsupported`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testbed.matrix.expect import Expectation, Side
from testbed.probes.conformance import PROBES, catalog
from testbed.spec.matrix import PROBE_SCENARIO

PREFIX = "probe:"
SPEAKS = {1: "v1", 0: "v0", None: "tcp"}
SPEAKS_TEXT = {"v1": "RFC 8684 (v1)", "v0": "RFC 6824 (v0)", "tcp": "plain TCP"}


def client_name(probe: str) -> str:
    return f"{PREFIX}{probe}"


def probe_of(client: str) -> str | None:
    return client[len(PREFIX):] if client.startswith(PREFIX) else None


def speaks(side: Side) -> str:
    return SPEAKS[side.features.protocol]


def expect_probe(probe: str, server: Side) -> Expectation:
    """The expected outcome of probe × server (see the module docstring)."""
    if not server.available:
        return Expectation("unavailable", None, None, f"server {server.implementation}: {server.why}")
    cls = PROBES[probe]
    who = speaks(server)
    exp = cls().expectation(who)
    if exp is None:
        return Expectation("unsupported", None, None, f"probe {probe} has no expectation for a server that speaks "
                                                      f"{SPEAKS_TEXT[who]}")
    if who == "v1":
        fs = server.features
        missing = [f"server {server.implementation} lacks {f} ({fs.why_missing(f)}; required by probe {probe})"
                   for f in cls.requires if not fs.has(f)]
        if missing:
            return Expectation("unsupported", None, None, "; ".join(missing))
    return Expectation("run", exp.outcome, "probe",
                       f"server {server.implementation} speaks {SPEAKS_TEXT[who]}: {exp.text} ({exp.rfc})")


def probe_document(data: dict[str, Any], experiment: Path, probe: str, name: str, who: str,
                   server_entry: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The cell's experiment from the probe experiment's parsed YAML `data` (read from `experiment`)."""
    from testbed.spec.units import parse_duration

    topo = data.get("topology")
    if isinstance(topo, str):
        topo = {"file": topo}
    topo["file"] = str((experiment.parent / topo["file"]).resolve())
    data["topology"] = topo
    data["name"] = name
    workloads = [w for w in data.get("workloads") or [] if w.get("type") == "probe" and w.get("probe") == probe]
    workload = dict(workloads[0]) if workloads else {"type": "probe", "name": probe, "probe": probe}
    workload["speaks"] = who
    data["workloads"] = [workload]
    server = workload.get("server", "server")
    data["description"] = (f"Matrix probe cell: probe {probe} against {server_entry.get('stack')} on node "
                           f"'{server}' ({SPEAKS_TEXT[who]}). {PROBES[probe].description}.")
    stacks = data.get("stacks") or {}
    stacks[server] = {**dict(stacks.get(server) or {}), **server_entry}
    data["stacks"] = stacks
    data.pop("expect", None)  # the probe judges itself (a `probe NAME` check)
    own = parse_duration(data["timeout"]) if data.get("timeout") is not None else 300.0
    if own > timeout - 20:
        data["timeout"] = max(10.0, timeout - 20)
    return data


def observed(manifest: dict[str, Any] | None) -> str | None:
    """A probe cell's outcome: what its probe observed (plain, mp-capable-v1, rst, ignored, ...)."""
    for w in ((manifest or {}).get("workloads") or {}).values():
        if isinstance(w, dict) and w.get("type") == "probe":
            return w.get("observed") or ("error" if not w.get("ok") else None)
    return None


def scenario_info(probes: list[str], experiment: Path | None) -> dict[str, Any]:
    """The `probes` scenario's entry in matrix.json."""
    info = catalog()
    return {"kind": "probes", "description": "conformance probes (scapy): crafted segments no available peer "
                                             "sends, each judged against the RFC for what the server speaks",
            "experiment": str(experiment) if experiment else None, "probes": {p: info[p] for p in probes},
            "nodes": {"client": "client", "server": "server"}, "pin": {}, "requires": [], "fallback_requires": [],
            "fallback": None, "requirements": {"client": [], "server": []}, "capabilities": {}, "outcome": None,
            "timeout": None}


__all__ = ["PROBE_SCENARIO", "client_name", "expect_probe", "observed", "probe_document", "probe_of",
           "scenario_info"]
