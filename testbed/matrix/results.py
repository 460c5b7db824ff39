"""What a matrix run leaves besides its manifest: matrix.json, report.md and junit.xml.

matrix.json is the one file a report generator needs: named keys everywhere (no positional
arrays), the axes of the table, every implementation's feature set and availability, every
scenario's requirements, and per cell its verdict, the reason, its attempts and the measured values
behind the verdict (the checks and MPTcpExt counters of the cell run), with links (paths relative
to the run directory) to the cell's archive, counters, per-link byte series, captures and logs.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from testbed.matrix.verdicts import MEANING, SYMBOL, change, summary

MATRIX_SCHEMA = "testbed-matrix"
MATRIX_SCHEMA_VERSION = 1


def _cell_files(rel: str | None, manifest: dict | None) -> dict[str, Any]:
    if rel is None or manifest is None:
        return {}
    files = set(manifest.get("files", {}))
    out: dict[str, Any] = {"archive": rel, "manifest": f"{rel}/manifest.json"}
    for key, name in (("counters", "counters.json"), ("linkbytes", "linkbytes.json"), ("sockets", "sockets.json"),
                      ("events", "events.json"), ("experiment", "inputs/experiment.yaml"),
                      ("topology", "inputs/topology.yaml")):
        if name in files:
            out[key] = f"{rel}/{name}"
    out["pcaps"] = {ref: f"{rel}/pcaps/{cap['file']}" for ref, cap in (manifest.get("captures") or {}).items()
                    if isinstance(cap, dict) and cap.get("file")}
    out["logs"] = sorted(f"{rel}/{f}" for f in files if f.startswith(("logs/", "workloads/", "functions/"))
                         and f.endswith((".log", ".stderr", ".stdout")))
    out["workloads"] = {f.split("/")[1]: f"{rel}/{f}" for f in sorted(files)
                        if f.startswith("workloads/") and f.endswith("/result.json")}
    return out


def _measured(manifest: dict | None) -> dict[str, Any]:
    if manifest is None:
        return {}
    counters = {node: {k: v for k, v in c.items() if v} for node, c in (manifest.get("counters") or {}).items()}
    workloads = {}
    for name, w in (manifest.get("workloads") or {}).items():
        workloads[name] = {k: w.get(k) for k in ("type", "protocol", "ok", "intact", "is_mptcp", "goodput_bps",
                                                  "seconds", "bytes", "aborted", "peer_reset", "error") if k in w}
        for k in ("ttfb", "completion", "rtt"):
            if isinstance(w.get(k), dict):
                workloads[name][k] = w[k]
    return {"status": manifest.get("status"), "outcome": manifest.get("outcome"), "seed": manifest.get("seed"),
            "checks": manifest.get("checks", []), "counters": {n: c for n, c in counters.items() if c},
            "workloads": workloads, "timing": manifest.get("timing"), "error": manifest.get("error")}


def not_reproduced(deviations: Any, dev_id: str, cell: str, recent: list[str]) -> dict[str, Any]:
    """A listed deviation a cell did not show. For an intermittent one that the cell did show in
    one of its recent runs, not showing now is no sign of a fix: `fixed` is False, with the count."""
    entry = next(d for d in deviations.deviations if d.id == dev_id)
    shown = recent.count("known")
    fixed = not (entry.intermittent and shown)
    return {"id": dev_id, "cell": cell, "where": deviations.where(dev_id), "intermittent": entry.intermittent,
            "fixed": fixed, "recent": f"known in {shown} of the last {len(recent)} runs"}


def not_reproduced_line(n: dict[str, Any]) -> str:
    if n.get("fixed", True):
        return f"fixed upstream? {n['id']} ({n['where']}): not reproduced in {n['cell']}"
    return f"intermittent {n['id']} ({n['where']}): not shown in {n['cell']} this time, {n['recent']}"


def matrix_json(runner: Any, previous: dict[str, dict] | None,
                recent: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The matrix's JSON document. `recent`: each cell's verdicts in the suite's last complete runs,
    newest first (history.verdicts), which tell an intermittent deviation's miss from a fix."""
    from testbed.matrix import probes as probe_cells
    from testbed.spec.matrix import PROBE_SCENARIO

    suite = runner.suite
    cells: dict[str, Any] = {}
    changes: dict[str, str] = {}
    for c in runner.cells:
        final = c.final
        entry: dict[str, Any] = {
            "scenario": c.scenario, "client": c.client, "server": c.server, "verdict": c.verdict,
            "reason": c.reason, "expected_outcome": c.expectation.expected_outcome,
            "expectations": c.expectation.mode, "outcome": final.outcome if final else None,
            "name": c.name, "timeout": c.timeout,
            "experiment": f"inputs/cells/{c.name}.yaml" if c.yaml is not None else None,
            "attempts": [a.as_dict() for a in c.attempts],
            "dir": final.dir if final else None,
            "files": _cell_files(final.dir if final else None, final.manifest if final else None),
            "measured": _measured(final.manifest if final else None),
            "deviation": final.deviation if final else None,
            "evidence": final.evidence if final else "",
            "not_reproduced": list(c.not_reproduced),
        }
        if previous is not None:
            before = previous.get(c.key, {}).get("verdict")
            entry["previous_verdict"] = before
            entry["change"] = change(before, c.verdict)
            if entry["change"] in ("regression", "fix"):
                changes[c.key] = entry["change"]
        cells[c.key] = entry
    impls = {}
    for name in dict.fromkeys([*runner.clients, *runner.servers]):
        impl = runner.impls[name]
        ok, why = runner.availability[name]
        impls[name] = {"driver": impl.driver, "backend": impl.backend, "kernel": impl.kernel, "image": impl.image,
                       "description": impl.description, "available": ok, "availability": why,
                       "feature_set": runner.features[name].as_dict()}
    scenarios = {}
    for name in runner.scenarios:
        if name == PROBE_SCENARIO:
            scenarios[name] = probe_cells.scenario_info(runner.probes, runner.loaded.probe_experiment)
            continue
        s = runner.loaded.scenario(name)
        facts = runner.facts[name]
        scenarios[name] = {"description": s.description, "experiment": s.experiment,
                           "nodes": {"client": s.client, "server": s.server}, "pin": dict(s.pin),
                           "requires": list(s.requires), "fallback_requires": list(s.fallback_requires),
                           "fallback": s.fallback, "requirements": facts.requirement_list(),
                           "capabilities": {cap: {"available": runner.capabilities[cap][0],
                                                  "why": runner.capabilities[cap][1]} for cap in facts.capabilities},
                           "outcome": facts.outcome, "timeout": float(s.timeout or suite.timeout)}
    m = runner.manifest
    deviations = runner.loaded.deviations
    known = None
    if deviations is not None:
        known = {"file": str(deviations.path), "listed": len(deviations.deviations),
                 "reproduced": sorted({c.final.deviation for c in runner.cells if c.final and c.final.deviation}),
                 "not_reproduced": [not_reproduced(deviations, d, c.key, (recent or {}).get(c.key, []))
                                    for c in runner.cells for d in c.not_reproduced]}
    return {
        "schema": MATRIX_SCHEMA, "schema_version": MATRIX_SCHEMA_VERSION,
        "run_id": m.get("run_id"), "suite": {"name": suite.name, "description": suite.description,
                                             "file": str(runner.loaded.path)},
        "status": m.get("status"), "started": m.get("started"), "finished": m.get("finished"),
        "testbed_version": m.get("testbed_version"), "git_sha": m.get("git_sha"), "host": m.get("host"),
        "options": runner.options(),
        "verdicts": dict(MEANING),
        "axes": {"scenarios": list(runner.scenarios), "clients": list(runner.clients),
                 "servers": list(runner.servers),
                 "probes": [probe_cells.client_name(p) for p in runner.probes]
                 if PROBE_SCENARIO in runner.scenarios else []},
        "summary": summary(c.verdict for c in runner.cells),
        "known_deviations": known,
        "implementations": impls, "scenarios": scenarios, "cells": cells,
        "history": {"previous_run": (next(iter(previous.values()), {}).get("run_id") if previous else None),
                    "regressions": sorted(k for k, v in changes.items() if v == "regression"),
                    "fixes": sorted(k for k, v in changes.items() if v == "fix")},
    }


def report_md(matrix: dict[str, Any]) -> str:
    lines = [f"# Interop matrix: {matrix['suite']['name']}", ""]
    if matrix["suite"].get("description"):
        lines += [matrix["suite"]["description"], ""]
    lines += [f"Run `{matrix['run_id']}`, status **{matrix['status']}**, {matrix['started']} → {matrix['finished']}; "
              f"testbed {matrix['testbed_version']} ({matrix.get('git_sha') or 'no git'}), host kernel "
              f"{(matrix.get('host') or {}).get('kernel')}.", ""]
    lines += ["| verdict | cells |", "|---|---|"]
    lines += [f"| {SYMBOL[v]} {v} | {n} |" for v, n in matrix["summary"].items()]
    lines += ["", "## Implementations", "", "| implementation | driver | backend | kernel | available |",
              "|---|---|---|---|---|"]
    for name, impl in matrix["implementations"].items():
        avail = "yes" if impl["available"] else f"no: {impl['availability']}"
        lines.append(f"| {name} | {impl['driver']} | {impl['backend']} | "
                     f"{impl['kernel'] or impl['feature_set'].get('kernel') or '-'} | {avail} |")
    clients, servers = matrix["axes"]["clients"], matrix["axes"]["servers"]
    for scenario in matrix["axes"]["scenarios"]:
        info = matrix["scenarios"][scenario]
        cells = {(c["client"], c["server"]): c for c in matrix["cells"].values() if c["scenario"] == scenario}
        if not cells:
            continue
        lines += ["", f"## {scenario}", ""]
        if info["description"]:
            lines += [info["description"], ""]
        lines += ["| client \\ server | " + " | ".join(servers) + " |", "|---" * (len(servers) + 1) + "|"]
        rows = matrix["axes"].get("probes", []) if info.get("kind") == "probes" else clients
        for client in rows:
            row = []
            for server in servers:
                c = cells.get((client, server))
                if c is None:
                    row.append("")
                    continue
                link = f"[{SYMBOL[c['verdict']]} {c['verdict']}]({c['dir']})" if c.get("dir") else \
                    f"{SYMBOL[c['verdict']]} {c['verdict']}"
                row.append(link + (f" ({c['outcome']})" if c.get("outcome") else ""))
            lines.append(f"| **{client}** | " + " | ".join(row) + " |")
    notable = [c for c in matrix["cells"].values() if c["verdict"] != "as-expected"]
    if notable:
        lines += ["", "## Cells not as expected, and why", ""]
        for c in notable:
            lines.append(f"- {SYMBOL[c['verdict']]} **{c['scenario']}** {c['client']} → {c['server']}: "
                         f"{c['verdict']} — {c['reason']}")
    kd = matrix.get("known_deviations") or {}
    if kd.get("not_reproduced"):
        lines += ["", "## Listed deviations not reproduced (fixed upstream?)", ""]
        lines += [f"- `{n['id']}` ({n['where']}): {n['cell']} was as expected"
                  + ("" if n.get("fixed", True) else f" (intermittent: {n['recent']})") for n in kd["not_reproduced"]]
    h = matrix.get("history") or {}
    if h.get("previous_run"):
        lines += ["", f"## Since the previous run ({h['previous_run']})", "",
                  f"- regressions: {', '.join(h['regressions']) or 'none'}",
                  f"- fixes: {', '.join(h['fixes']) or 'none'}"]
    return "\n".join(lines) + "\n"


def junit_xml(matrix: dict[str, Any]) -> str:
    """One testcase per cell: unexpected → failure, error → error, unsupported/unavailable → skipped."""
    s = matrix["summary"]
    suite = ET.Element("testsuite", name=f"matrix-{matrix['suite']['name']}", tests=str(len(matrix["cells"])),
                       failures=str(s.get("unexpected", 0)), errors=str(s.get("error", 0)),
                       skipped=str(s.get("unsupported", 0) + s.get("unavailable", 0) + s.get("known", 0)),
                       timestamp=str(matrix.get("started") or ""))
    for key, c in matrix["cells"].items():
        seconds = sum(a.get("seconds") or 0 for a in c["attempts"])
        case = ET.SubElement(suite, "testcase", classname=f"{matrix['suite']['name']}.{c['scenario']}",
                             name=f"{c['client']} -> {c['server']}", time=f"{seconds:.2f}")
        verdict = c["verdict"]
        props = ET.SubElement(case, "properties")
        for name, value in (("cell", key), ("verdict", verdict), ("expected_outcome", c["expected_outcome"]),
                            ("outcome", c["outcome"]), ("attempts", len(c["attempts"])), ("dir", c["dir"])):
            ET.SubElement(props, "property", name=name, value="" if value is None else str(value))
        if verdict == "unexpected":
            failed = [ch for ch in c["measured"].get("checks", []) if ch.get("verdict") == "fail"]
            el = ET.SubElement(case, "failure", message=c["reason"][:500], type="unexpected")
            el.text = "\n".join(f"{ch['name']}: expected {ch['expected']}, measured {ch['measured']}"
                                for ch in failed) or c["reason"]
        elif verdict == "error":
            ET.SubElement(case, "error", message=c["reason"][:500], type="testbed-error").text = c["reason"]
        elif verdict in ("unsupported", "unavailable", "known"):
            ET.SubElement(case, "skipped", message=f"{verdict}: {c['reason']}"[:500])
        if verdict == "flaky":
            ET.SubElement(case, "system-out").text = f"flaky: {c['reason']}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
