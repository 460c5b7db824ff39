"""`testbed matrix SUITE`: implementations × scenarios, each cell one `testbed run` subprocess.

A cell's experiment is the scenario's experiment with the client implementation's stack on the
client node and the server implementation's on the server node, written as YAML into the matrix
run's own directory (`inputs/cells/`). Each cell runs as `testbed run CELL.yaml --results
<run>/cells` in its own session, which gives isolation (a crashing cell takes nothing else down),
a hard timeout (the cell's process group is killed and whatever it left is swept) and clean
interrupts (a signal to the matrix is forwarded to running cells, which tear down and archive
themselves; cells not started are listed as not run).

Verdicts (testbed.matrix.verdicts): `as-expected`, `unexpected` (the implementation did not do what
the RFC and its feature set say), `known` (it did what a listed, cited deviation says: testbed.matrix.known),
`unsupported` (a side lacks a feature the scenario needs: not run), `unavailable` (an
implementation or testbed capability is missing here: not run), `flaky` (reruns disagreed) and
`error` (the testbed failed: never counted against an implementation).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.archive.store import SCHEMA_VERSION, RunDir
from testbed.errors import CapabilityError, RunError, SpecError, UsageError
from testbed.matrix import probes as probe_cells
from testbed.matrix.expect import (
    Expectation,
    ScenarioFacts,
    Side,
    capability,
    expect_cell,
    fallback_expect,
    scenario_facts,
)
from testbed.matrix.features import GUEST_FIELD, FeatureSet, available, feature_set
from testbed.matrix.guests import GuestLender, GuestNeed, cell_env
from testbed.spec.matrix import PROBE_SCENARIO, LoadedSuite, check_suite, scenario_problem
from testbed.state import RunState

KILL_GRACE = 15.0  # seconds a timed-out cell gets to tear down after SIGTERM before SIGKILL
NAME_LIMIT = 48
FAILED_WORKLOAD_TIMEOUT = 20.0  # seconds a workload expected to fail is given
CELL_WORKLOAD_TIMEOUT = 30.0  # at most, for any workload of a cell (the scenarios' transfers take seconds)
FAILED_AFTER_LAST_EVENT = 3.0  # ... or this long after the scenario's last event (which takes its path away for good)


@dataclass
class Attempt:
    number: int
    verdict: str  # as-expected | unexpected | error
    exit_code: int | None
    seconds: float
    status: str | None = None  # the cell run's manifest status
    outcome: str | None = None
    dir: str | None = None  # relative to the matrix run directory
    error: str | None = None
    interrupted: bool = False
    manifest: dict | None = None
    log: str | None = None  # the `testbed run` output, relative to the matrix run directory
    deviation: str | None = None  # the known deviation (or emulation limit) its failed checks reproduced
    note: str = ""  # why that verdict: the deviation, its measured symptom, its citation; or why none matched
    evidence: str = ""  # the deviation's symptoms as measured (one line, for summaries)

    def as_dict(self) -> dict[str, Any]:
        failed = [c["name"] for c in (self.manifest or {}).get("checks", []) if c.get("verdict") == "fail"]
        return {"attempt": self.number, "verdict": self.verdict, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 2), "status": self.status, "outcome": self.outcome,
                "dir": self.dir, "log": self.log, "error": self.error, "failed_checks": failed,
                "deviation": self.deviation, **({"note": self.note} if self.note else {})}


@dataclass
class Cell:
    scenario: str
    client: str
    server: str
    expectation: Expectation
    name: str = ""
    timeout: float = 180.0
    yaml: Path | None = None
    attempts: list[Attempt] = field(default_factory=list)
    verdict: str | None = None
    reason: str = ""
    guests: list[GuestNeed] = field(default_factory=list)  # its hosts that run on QEMU guests
    not_reproduced: list[str] = field(default_factory=list)  # known deviations listed for it that it did not show

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.client}/{self.server}"

    @property
    def final(self) -> Attempt | None:
        """The attempt whose archive stands for the cell: the last one that was not a testbed error."""
        real = [a for a in self.attempts if a.verdict != "error"]
        return (real or self.attempts or [None])[-1]


def cell_name(scenario: str, client: str, server: str) -> str:
    """The cell's experiment (and archive) name: readable, a valid run name, unique per cell."""
    import hashlib

    clean = lambda s: re.sub(r"[^a-z0-9_-]", "_", s)  # noqa: E731
    name = f"{scenario}--{clean(client)}--{clean(server)}"
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:NAME_LIMIT - 7]}-{digest}"


def combine(attempts: list[Attempt]) -> tuple[str, str]:
    """One verdict from a cell's attempts. Testbed errors do not count as results; results that
    differ make the cell flaky."""
    if not attempts:
        return "error", "not run: the matrix was interrupted"
    real = [a for a in attempts if a.verdict != "error"]
    errors = [a for a in attempts if a.verdict == "error"]
    if not real:
        return "error", errors[-1].error or "the testbed failed"
    kinds = [a.verdict for a in real]
    note = f" (after {len(errors)} testbed error(s): {errors[-1].error})" if errors else ""
    if len(set(kinds)) > 1:
        return "flaky", f"attempts disagree: {', '.join(kinds)}" + note
    verdict = kinds[0]
    if verdict == "unexpected":
        checks = (real[-1].manifest or {}).get("checks", [])
        failed = [f"{c['name']}: expected {c['expected']}, measured {c['measured']}"
                  for c in checks if c.get("verdict") == "fail"]
        failed += [f"{c['name']}: not observed" for c in checks if c.get("verdict") == "unobserved"]
        misses = f" [listed deviations did not match: {real[-1].note}]" if real[-1].note else ""
        return verdict, ("; ".join(failed) or "an expectation was not met") + (
            f" ({len(real)} attempts)" if len(real) > 1 else "") + note + misses
    if verdict in ("known", "unavailable"):
        return verdict, real[-1].note + (f" ({len(real)} attempts)" if len(real) > 1 else "") + note
    outcome = real[-1].outcome
    return verdict, (f"outcome {outcome}, every check passed" if outcome else "every check passed") + note


class MatrixRunner:
    def __init__(self, loaded: LoadedSuite, results: Path, *, clients: list[str] | None = None,
                 servers: list[str] | None = None, scenarios: list[str] | None = None,
                 must_include: str | None = None, jobs: int = 1, reruns: int = 0, console: Any = None,
                 only: list[str] | None = None):
        from testbed.matrix.expect import KNOWN_REQUIREMENTS

        check_suite(loaded, KNOWN_REQUIREMENTS)
        self.loaded = loaded
        self.suite = loaded.suite
        self.results = results
        self.impls = loaded.registry.registry.implementations
        every = list(self.impls)
        probe_clients = [probe_cells.client_name(p) for p in self.suite.probes]
        # probes are clients 'probe:NAME': all of them by default, only those named when --clients is given
        chosen = self._names("--clients", clients, [], every + probe_clients) if clients is not None else None
        self.probes: list[str] = list(self.suite.probes) if chosen is None else \
            [p for p in map(probe_cells.probe_of, chosen) if p]
        impl_clients = None if chosen is None else [c for c in chosen if not probe_cells.probe_of(c)]
        self.clients = self._names("--clients", impl_clients, self.suite.clients or every, every)
        self.servers = self._names("--servers", servers, self.suite.servers or every, every)
        all_scenarios = [s.name for s in self.suite.scenarios] + ([PROBE_SCENARIO] if self.suite.probes else [])
        self.scenarios = self._names("--scenarios", scenarios, all_scenarios, all_scenarios)
        self.must_include = must_include
        self.only = only  # --cells: exactly these cell keys (scenario/client/server), in plan order
        if must_include is not None:
            self._names("--must-include", [must_include], [], list(self.impls) + probe_clients)
        self.jobs = max(1, jobs)
        self.reruns = max(0, reruns)
        self.console = console
        self.features: dict[str, FeatureSet] = {}
        self.availability: dict[str, tuple[bool, str]] = {}
        self.facts: dict[str, ScenarioFacts] = {}
        self.capabilities: dict[str, tuple[bool, str]] = {}
        self.cells: list[Cell] = []
        self._validated: dict[tuple, tuple[list, list[GuestNeed]]] = {}
        self.lender: GuestLender | None = None
        self.run_dir: RunDir | None = None
        self.lock = threading.Lock()
        self.running: dict[int, subprocess.Popen] = {}
        self.stopping: int | None = None
        self.signals = 0
        self.manifest: dict[str, Any] = {}

    @staticmethod
    def _names(option: str, given: list[str] | None, default: list[str], known: list[str] | None = None) -> list[str]:
        from testbed.spec.source import suggest

        if given is None:
            return list(default)
        known = known if known is not None else default
        for name in given:
            if name not in known:
                raise UsageError(option, option.lstrip("-"), f"unknown name '{name}'{suggest(name, known)} "
                                                             f"(known: {', '.join(known)})")
        return list(dict.fromkeys(given))

    # -- planning (nothing is run or archived) ------------------------------------------------------
    def plan(self) -> list[Cell]:
        from testbed.spec.load import load_experiment

        for name in dict.fromkeys([*self.clients, *self.servers]):
            impl = self.impls[name]
            self.features[name] = feature_set(name, impl)
            self.availability[name] = available(name, impl, self.loaded.registry.image_path(name),
                                                self.loaded.registry.inventory_path())
        for name in self.scenarios:
            if name == PROBE_SCENARIO:
                continue
            scenario = self.loaded.scenario(name)
            path = self.loaded.experiments[name]
            try:
                loaded_exp = load_experiment(path)
                names = {w.name or w.type for w in loaded_exp.experiment.workloads}
                unknown = [w for w in scenario.workloads if w not in names]
                if unknown:
                    raise SpecError([scenario_problem(self.loaded, name, "workloads", (
                        f"the experiment has no workload '{unknown[0]}' (its workloads: {', '.join(sorted(names))})"))])
                facts = scenario_facts(scenario, loaded_exp)
            except SpecError as exc:
                facts = scenario_facts(scenario, None, "; ".join(str(p) for p in exc.problems))
                missing = [c for c in facts.capabilities if not self._capability(c)[0]]
                if not missing:
                    raise  # no missing capability excuses it: bad input
            self.facts[name] = facts
            for cap in facts.capabilities:
                self._capability(cap)
        cells = []
        for scenario in self.scenarios:
            if scenario == PROBE_SCENARIO:
                cells += self._probe_cells()
                continue
            for client in self.clients:
                for server in self.servers:
                    if self.must_include and self.must_include not in (client, server):
                        continue
                    exp = expect_cell(self.facts[scenario], self._side(client), self._side(server),
                                      self.capabilities)
                    sc = self.loaded.scenario(scenario)
                    cells.append(Cell(scenario, client, server, exp, cell_name(scenario, client, server),
                                      float(sc.timeout or self.suite.timeout)))
        if self.only is not None:
            wanted = set(self.only)
            cells = [c for c in cells if c.key in wanted]
        self.cells = cells
        for c in cells:
            if c.expectation.status != "run":
                c.verdict, c.reason = c.expectation.status, c.expectation.reason
            else:
                self._check_cell(c)
        return cells

    def _probe_cells(self) -> list[Cell]:
        out = []
        for probe in self.probes:
            client = probe_cells.client_name(probe)
            for server in self.servers:
                if self.must_include and self.must_include not in (client, server):
                    continue
                exp = probe_cells.expect_probe(probe, self._side(server))
                out.append(Cell(PROBE_SCENARIO, client, server, exp, cell_name(PROBE_SCENARIO, client, server),
                                float(self.suite.timeout)))
        return out

    def _validate_once(self, key: tuple, cell: Cell) -> list:
        """Materialize and load the cell's experiment once per distinct key; the problems, if any.
        Notes which of its hosts run on guests (cell.guests)."""
        import tempfile

        from testbed.spec.load import load_experiment

        if key not in self._validated:
            with tempfile.TemporaryDirectory(prefix="testbed-cell-") as tmp:
                try:
                    loaded = load_experiment(self.materialize(cell, Path(tmp), check=False))
                    topo = loaded.topo
                    needs = [GuestNeed(str(spec.image), len(topo.resolved.interfaces[name]))
                             for name, spec in topo.topology.nodes.items() if getattr(spec, "image", None)]
                    self._validated[key] = ([], needs)
                except SpecError as exc:
                    self._validated[key] = (exc.problems, [])
        problems, cell.guests = self._validated[key]
        return problems

    def _check_cell(self, cell: Cell) -> None:
        """Validate the cell's experiment before anything runs. A scenario whose topology refuses the
        implementation's stack on its node (e.g. a converter node must speak MPTCP) makes the cell
        `unsupported`; any other problem is the testbed's (`error`)."""

        if cell.scenario == PROBE_SCENARIO:
            key = (cell.scenario, cell.client, tuple(sorted(self._probe_server_entry(cell.server).items())),
                   cell.expectation.expected_outcome)
            problems = self._validate_once(key, cell)
            if problems:
                cell.verdict, cell.reason = "error", ("the probe cell's experiment does not validate (a testbed "
                                                      "bug): " + "; ".join(f"{p.path}: {p.message}"
                                                                           for p in problems))
            return
        scenario = self.loaded.scenario(cell.scenario)
        key = (cell.scenario, self._stack(cell, "client"), self._stack(cell, "server"), cell.expectation.mode,
               cell.expectation.expected_outcome, self._image(cell.client), self._image(cell.server))
        problems = self._validate_once(key, cell)
        if not problems:
            return
        if scenario.workloads and any(p.path.startswith("workloads") for p in problems):  # the suite's change
            raise SpecError([scenario_problem(self.loaded, cell.scenario, "workloads", f"{p.path}: {p.message}")
                             for p in problems if p.path.startswith("workloads")])
        roles = {scenario.client: "client", scenario.server: "server"}
        placed = {f"stacks.{node}.{what}": (role, what) for node, role in roles.items() for what in ("stack", GUEST_FIELD)}
        if all(p.path in placed for p in problems):
            parts, verdict = [], "unsupported"
            for p in problems:
                role, what = placed[p.path]
                impl = cell.client if role == "client" else cell.server
                if what == GUEST_FIELD:  # the testbed cannot put that node on a guest kernel
                    verdict = "unavailable"
                    parts.append(f"the scenario's {role} node cannot run on {impl}'s guest kernel: {p.message}")
                else:
                    parts.append(f"the scenario cannot put {role} {impl}'s stack ({self._stack(cell, role)}) on its "
                                 f"node: {p.message}")
            cell.verdict, cell.reason = verdict, "; ".join(parts)
            cell.expectation = Expectation(verdict, None, None, cell.reason)
        else:
            cell.verdict, cell.reason = "error", ("the cell's experiment does not validate (a testbed bug): "
                                                  + "; ".join(f"{p.path}: {p.message}" for p in problems))

    def _probe_server_entry(self, server: str) -> dict[str, Any]:
        """The stacks entry a probe cell puts on its server node (plain TCP or upstream, maybe a guest)."""
        entry: dict[str, Any] = {"stack": "tcp" if self.features[server].protocol is None else "upstream"}
        image = self._image(server)
        if image is not None:
            entry[GUEST_FIELD] = image
        impl = self.impls.get(server)
        if impl is not None and impl.backend == "ssh":
            entry["remote"] = {"inventory": str(self.loaded.registry.inventory_path()), "host": impl.host}
        return entry

    def _image(self, impl_name: str) -> str | None:
        """The guest image an implementation's nodes run on; None for this machine's namespaces."""
        impl = self.impls.get(impl_name)
        if impl is None or impl.backend != "qemu":
            return None
        return str(self.loaded.registry.image_path(impl_name) or impl.image or impl_name)

    def _stack(self, cell: Cell, role: str) -> str:
        scenario = self.loaded.scenario(cell.scenario)
        pinned = scenario.pin.get(role)  # type: ignore[call-overload]
        impl = cell.client if role == "client" else cell.server
        return pinned or ("tcp" if self.features[impl].protocol is None else "upstream")

    def _capability(self, name: str) -> tuple[bool, str]:
        if name not in self.capabilities:
            self.capabilities[name] = capability(name)
        return self.capabilities[name]

    def _side(self, name: str) -> Side:
        ok, why = self.availability[name]
        return Side(name, self.features[name], ok, why)

    # -- materialising a cell ---------------------------------------------------------------------
    def cell_document(self, cell: Cell) -> dict[str, Any]:
        """The scenario's experiment with this cell's stacks (and, for fallback cells, expectations)."""
        from testbed.spec.source import parse_yaml, read_text
        from testbed.spec.units import parse_duration

        if cell.scenario == PROBE_SCENARIO:
            return self._probe_document(cell)
        scenario = self.loaded.scenario(cell.scenario)
        path = self.loaded.experiments[cell.scenario]
        data = parse_yaml(read_text(path), str(path)).data
        topo = data.get("topology")
        if isinstance(topo, str):
            topo = {"file": topo}
        topo["file"] = str((path.parent / topo["file"]).resolve())
        data["topology"] = topo
        data["name"] = cell.name
        data["description"] = (f"Matrix cell: scenario {cell.scenario}, client {cell.client} on node "
                               f"'{scenario.client}', server {cell.server} on node '{scenario.server}'. "
                               + str(data.get("description") or "")).strip()
        stacks = data.get("stacks") or {}
        for role, impl_name, node in (("client", cell.client, scenario.client), ("server", cell.server, scenario.server)):
            entry = dict(stacks.get(node) or {})
            entry["stack"] = self._stack(cell, role)  # tcp for plain-TCP implementations and kernels without MPTCP
            image = self._image(impl_name)
            if image is not None:  # the node runs on the guest kernel (pinned or not)
                entry[GUEST_FIELD] = image
            impl = self.impls.get(impl_name)
            if impl is not None and impl.backend == "ssh":  # the node runs on the remote machine
                entry["remote"] = {"inventory": str(self.loaded.registry.inventory_path()), "host": impl.host}
            stacks[node] = entry
        data["stacks"] = stacks
        for w in data.get("workloads") or []:
            w.update(scenario.workloads.get(w.get("name") or w.get("type"), {}))
        for w in data.get("workloads") or []:  # a hung cell must not hold the table up for minutes
            if parse_duration(w.get("timeout", 60)) > CELL_WORKLOAD_TIMEOUT:
                w["timeout"] = CELL_WORKLOAD_TIMEOUT
        if cell.expectation.mode == "fallback":
            data["expect"] = fallback_expect(self.facts[cell.scenario].has_bulk, cell.expectation.expected_outcome
                                             or "fallback")
            if cell.expectation.expected_outcome == "failed":  # no need to wait a whole workload timeout
                # The path goes away at the last event; a plain TCP connection on it stalls from then on.
                last = max((parse_duration(e["at"]) for e in data.get("events") or [] if "at" in e), default=None)
                limit = FAILED_WORKLOAD_TIMEOUT if last is None else min(FAILED_WORKLOAD_TIMEOUT,
                                                                        last + FAILED_AFTER_LAST_EVENT)
                for w in data.get("workloads") or []:
                    w["timeout"] = min(parse_duration(w.get("timeout", 60)), limit)
        own = parse_duration(data["timeout"]) if data.get("timeout") is not None else 300.0
        if own > cell.timeout - 20:
            data["timeout"] = max(10.0, cell.timeout - 20)  # the run archives itself before the hard kill
        return data

    def _probe_document(self, cell: Cell) -> dict[str, Any]:
        from testbed.spec.source import parse_yaml, read_text

        path = self.loaded.probe_experiment
        probe = probe_cells.probe_of(cell.client)
        assert path is not None and probe is not None  # load_suite checks the file when the suite has probes
        return probe_cells.probe_document(parse_yaml(read_text(path), str(path)).data, path, probe, cell.name,
                                          probe_cells.speaks(self._side(cell.server)),
                                          self._probe_server_entry(cell.server), cell.timeout)

    def materialize(self, cell: Cell, where: Path, check: bool = True) -> Path:
        from ruamel.yaml import YAML

        from testbed.spec.load import load_experiment

        out = io.StringIO()
        out.write(f"# Matrix cell {cell.key} (suite {self.suite.name}); expected: "
                  f"{cell.expectation.expected_outcome or 'as the scenario says'} ({cell.expectation.reason})\n")
        YAML().dump(self.cell_document(cell), out)
        path = where / f"{cell.name}.yaml"
        path.write_text(out.getvalue())
        if check:
            load_experiment(path)
        return path

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the planned cells and archive the matrix: {"manifest", "matrix" (matrix.json), "run_dir"}."""
        if not self.cells:
            self.plan()
        runnable = [c for c in self.cells if c.expectation.status == "run" and c.verdict is None]
        if runnable and os.geteuid() != 0:
            raise CapabilityError("testbed matrix runs cells in network namespaces: run it as root (sudo)")
        run_dir = RunDir(self.results, f"matrix-{self.suite.name}")
        self.run_dir = run_dir
        guard = _SignalForwarder(self)  # from here on a signal stops the matrix but never half-writes it
        guard.install()
        # After a SIGKILL, 'testbed clean' stops the cells (they archive themselves) and finalizes
        # this archive as interrupted.
        self.state = RunState(run_dir.name, archive=str(run_dir.tmp))
        try:
            self.state.save()
            run_dir.write_json("manifest.json", {**self._manifest_head(run_dir), "status": "error"})
            if any(c.guests for c in runnable):
                self.lender = self._lender(run_dir, runnable)
            return self._run(run_dir, runnable)
        finally:
            if self.lender is not None:
                self.lender.close()
            self.state.remove()
            guard.restore()

    def _lender(self, run_dir: RunDir, runnable: list[Cell]) -> GuestLender:
        """Guests booted once and lent to every cell that needs them (see testbed.matrix.guests)."""
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="testbed-leases-"))
        self.state.add_dir(str(work))
        lender = GuestLender(self.state, work, run_dir.tmp / "logs" / "guests", run_dir.tag,
                             max_idle=2 * self.jobs)
        lender.plan([c.guests for c in runnable])
        return lender

    def _run(self, run_dir: RunDir, runnable: list[Cell]) -> dict[str, Any]:
        from testbed.matrix import history, html, results

        cells_dir = run_dir.tmp / "cells"
        cells_dir.mkdir()
        self.manifest = self._manifest_head(run_dir)
        try:
            run_dir.write_json("manifest.json", self.manifest)
            self._write_inputs(run_dir)
            for cell in runnable:  # validated by plan()
                cell.yaml = self.materialize(cell, run_dir.tmp / "inputs" / "cells", check=False)
            self._schedule(runnable, cells_dir)
            if self.lender is not None:  # before the archive is finalized: the guests' console logs go in it
                self.lender.close()
            for cell in runnable:
                if cell.verdict is None:
                    cell.verdict, cell.reason = combine(cell.attempts)
                if cell.verdict == "as-expected":  # a listed kernel deviation it did not show: fixed upstream?
                    cell.not_reproduced = [d.id for d in self._deviations(cell) if d.cause == "kernel"]
            self.manifest["finished"] = _now()
            self.manifest["status"] = "interrupted" if self.stopping is not None else "complete"
            db = history.db_path(self.results)
            previous = history.previous_cells(db, self.suite.name)
            matrix = results.matrix_json(self, previous, history.verdicts(db, self.suite.name))
            run_dir.write_json("matrix.json", matrix)
            run_dir.write_text("report.md", results.report_md(matrix))
            run_dir.write_text("junit.xml", results.junit_xml(matrix))
            run_dir.write_text("report.html", html.render(matrix, run_dir.tmp))
            self.manifest["summary"] = matrix["summary"]
            if self.lender is not None:
                self.manifest["guests"] = self.lender.stats.as_dict()
            self.manifest["cells"] = [{"client": c.client, "server": c.server, "scenario": c.scenario,
                                       "outcome": c.final.outcome if c.final else None,
                                       "expected_outcome": c.expectation.expected_outcome, "verdict": c.verdict,
                                       "attempts": len(c.attempts),
                                       "dir": c.final.dir if c.final else None, "reason": c.reason}
                                      for c in self.cells]
        except Exception as exc:
            self.manifest.update(status="error", finished=_now(), error=f"the matrix failed: {exc!r}")
            final = run_dir.finalize(self.manifest)
            raise RunError(f"the matrix failed: {exc!r}; what it recorded is in {final}") from exc
        final = run_dir.finalize(self.manifest)
        self.manifest["run_dir"] = str(final)
        matrix["run_dir"] = str(final)
        try:
            history.record(db, matrix, final)
        except sqlite3.Error as exc:
            print(f"testbed: warning: the run was not added to the history index {db}: {exc}", file=sys.stderr)
        return {"manifest": self.manifest, "matrix": matrix, "run_dir": final}

    def _manifest_head(self, run_dir: RunDir) -> dict[str, Any]:
        import testbed
        from testbed.archive.provenance import git_sha
        from testbed.collect import system
        from testbed.stacks.features import detect

        try:
            from testbed.emulation.shaping import choose_backend

            backend: str | None = choose_backend(None)
        except Exception:  # noqa: BLE001 - metadata only
            backend = None
        return {"schema_version": SCHEMA_VERSION, "testbed_version": testbed.__version__, "git_sha": git_sha(),
                "kind": "matrix", "name": f"matrix-{self.suite.name}", "run_id": run_dir.name,
                "suite": self.suite.name,
                "host": {**system.host_info(), "mptcp": detect().as_dict(), "shaping_backend": backend},
                "started": _now(), "finished": None, "seed": None,
                "inputs": {"suite": {"file": str(self.loaded.path), "text": self.loaded.text},
                           "implementations": {"file": str(self.loaded.registry.path),
                                               "text": self.loaded.registry.text},
                           "options": self.options()},
                "status": "error"}

    def options(self) -> dict[str, Any]:
        return {"clients": self.clients, "servers": self.servers, "scenarios": self.scenarios,
                "probes": self.probes if PROBE_SCENARIO in self.scenarios else [],
                "must_include": self.must_include, "jobs": self.jobs, "reruns": self.reruns,
                **({"cells": list(self.only)} if self.only is not None else {})}

    def _write_inputs(self, run_dir: RunDir) -> None:
        run_dir.write_text("inputs/suite.yaml", self.loaded.text)
        run_dir.write_text("inputs/implementations.yaml", self.loaded.registry.text)
        for name in self.scenarios:
            path = self.loaded.probe_experiment if name == PROBE_SCENARIO else self.loaded.experiments[name]
            with contextlib.suppress(OSError):
                if path is not None:
                    run_dir.write_text(f"inputs/scenarios/{name}.yaml", path.read_text())
        (run_dir.tmp / "inputs" / "cells").mkdir(parents=True, exist_ok=True)

    def _schedule(self, todo: list[Cell], cells_dir: Path) -> None:
        import queue
        from concurrent.futures import ThreadPoolExecutor

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[current]}"),
                            console=self.console, transient=False)
        for cell in self.cells:
            if cell.verdict is not None:  # not runnable here, or refused before running
                self._say(progress, cell)
        picker = _Picker(todo, guest_units())
        finished: queue.Queue[tuple[Cell, BaseException | None]] = queue.Queue()

        def worker() -> None:
            while (cell := picker.take()) is not None:
                try:
                    self._run_cell(cell, cells_dir, progress, task)
                    finished.put((cell, None))
                except BaseException as exc:  # noqa: BLE001 - reported as the cell's error
                    finished.put((cell, exc))
                finally:
                    picker.done(cell)

        with progress, ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="cell") as pool:
            task = progress.add_task(f"matrix {self.suite.name}", total=len(todo), current="")
            workers = [pool.submit(worker) for _ in range(self.jobs)]
            for _ in todo:
                cell, exc = finished.get()
                if exc is not None:
                    cell.verdict, cell.reason = "error", f"the matrix failed running this cell: {exc!r}"
                elif cell.verdict is None:
                    cell.verdict, cell.reason = combine(cell.attempts)
                progress.advance(task)
                self._say(progress, cell)
            for w in workers:
                w.result()
            progress.update(task, current="")

    def _say(self, progress: Any, cell: Cell) -> None:
        colour = {"as-expected": "green", "unexpected": "red", "known": "cyan", "flaky": "yellow", "error": "magenta"}.get(
            cell.verdict or "", "dim")
        extra = ""
        if cell.attempts:
            seconds = sum(a.seconds for a in cell.attempts)
            extra = (f" expected {cell.expectation.expected_outcome or '-'}, got "
                     f"{(cell.final.outcome if cell.final else None) or '-'}; {len(cell.attempts)} attempt(s), "
                     f"{seconds:.1f} s")
        reason = "" if cell.verdict == "as-expected" else f" — {cell.reason}"
        progress.console.print(f"[{colour}]{cell.verdict:<11}[/{colour}] {cell.key}{extra}{reason}",
                               highlight=False, soft_wrap=True)

    def _run_cell(self, cell: Cell, cells_dir: Path, progress: Any, task: Any) -> None:
        for number in range(1, self.reruns + 2):
            if self.stopping is not None:
                break
            progress.update(task, current=f"{cell.key}" + (f" (attempt {number})" if number > 1 else ""))
            attempt = self._attempt(cell, number, cells_dir)
            cell.attempts.append(attempt)
            if attempt.verdict == "as-expected" or attempt.interrupted:
                break  # as expected (after an unexpected attempt, that makes it flaky): no more reruns
        cell.verdict, cell.reason = combine(cell.attempts)

    def _attempt(self, cell: Cell, number: int, cells_dir: Path) -> Attempt:
        assert self.run_dir is not None and cell.yaml is not None
        log_path = self.run_dir.path(f"logs/cells/{cell.name}.{number}.log")
        before = {p.name for p in cells_dir.iterdir()}
        argv = [sys.executable, "-m", "testbed", "run", str(cell.yaml), "--results", str(cells_dir)]
        start = time.monotonic()
        timed_out = False
        lending = self.lender.lend(cell.name, cell.guests) if self.lender and cell.guests \
            else contextlib.nullcontext()
        with lending as lease, log_path.open("w") as log:
            log.write(f"$ {' '.join(argv)}\n")
            if lease is not None:
                log.write(f"# lent guests: {', '.join(g.name for g in lease.guests)}\n")
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=cell_env(lease),
                                    pass_fds=lease.fds if lease is not None else ())
            self.state.add_child(proc.pid, f"cell {cell.key}")
            with self.lock:
                self.running[proc.pid] = proc
                stopping = self.stopping
            if stopping is not None:
                _signal_group(proc, stopping)
            try:
                rc: int | None = proc.wait(timeout=cell.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self._kill(proc)
            finally:
                with self.lock:
                    self.running.pop(proc.pid, None)
        seconds = time.monotonic() - start
        if timed_out:
            _clean_leftovers(cells_dir)
        text = log_path.read_text(errors="replace")
        archive = _archive_path(text, cells_dir, cell.name, before)
        manifest = None
        if archive is not None:
            with contextlib.suppress(OSError, ValueError):
                import json

                manifest = json.loads((archive / "manifest.json").read_text())
        rel = str(archive.relative_to(self.run_dir.tmp)) if archive is not None else None
        a = Attempt(number, "error", rc, seconds, dir=rel, manifest=manifest,
                    log=str(log_path.relative_to(self.run_dir.tmp)))
        if manifest is not None:
            a.status, a.outcome = manifest.get("status"), manifest.get("outcome")
            if cell.scenario == PROBE_SCENARIO:
                a.outcome = probe_cells.observed(manifest) or a.outcome
        tail = " | ".join(line for line in text.strip().splitlines()[-3:] if line.strip())
        checks = (manifest or {}).get("checks") or []
        failed = [c for c in checks if c.get("verdict") == "fail"]
        unobserved = [c for c in checks if c.get("verdict") == "unobserved"]
        if timed_out:
            a.error = f"timed out after {cell.timeout:g} s: the cell's process group was killed"
        elif rc == 130 or (manifest or {}).get("status") == "interrupted":
            a.error, a.interrupted = "interrupted", True
        elif manifest is None:
            a.error = f"testbed run exited {rc} without an archive: {tail}"
        elif a.status == "error":
            a.error = f"the run failed: {manifest.get('error') or tail}"
        elif rc == 0 and a.status == "complete":
            a.verdict = "as-expected"
        elif rc == 1 and a.status == "complete" and unobserved and not failed:
            # Nothing the implementation did is in question: the testbed did not look (a testbed error).
            a.error = "not observed: " + "; ".join(f"{c['name']}: {c.get('detail', '')}" for c in unobserved)
        elif rc == 1 and a.status == "complete":
            a.verdict = "unexpected"
            self._match_known(cell, a)
        else:
            a.error = f"testbed run exited {rc}: {tail}"
        return a

    def _deviations(self, cell: Cell) -> list:
        from testbed.matrix import known

        if self.loaded.deviations is None or cell.scenario == PROBE_SCENARIO:
            return []
        side = {impl: (impl, self.features[impl].version) for impl in (cell.client, cell.server)}
        return known.applicable(self.loaded.deviations.deviations, cell.scenario, side[cell.client],
                                side[cell.server], cell.expectation.expected_outcome)

    def _match_known(self, cell: Cell, a: Attempt) -> None:
        """An unexpected attempt that reproduces a listed deviation exactly is `known` (a kernel's) or
        `unavailable` (an emulation limit), with the evidence and the citation."""
        from testbed.matrix import known

        listed = self._deviations(cell)
        if not listed or a.manifest is None:
            return
        found, misses = known.match(listed, a.manifest)
        if found is not None:
            a.verdict, a.deviation, a.note, a.evidence = found.verdict, found.deviation.id, found.reason, found.evidence
        else:
            a.note = "; ".join(misses)

    def _kill(self, proc: subprocess.Popen) -> int | None:
        """SIGTERM to the cell's process group (the run tears down and archives itself), SIGKILL after
        a grace period."""
        _signal_group(proc, signal.SIGTERM)
        try:
            return proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            return proc.wait()

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.stopping is None:
            self.stopping = signum
        with self.lock:
            procs = list(self.running.values())
        for proc in procs:
            _signal_group(proc, signal.SIGKILL if self.signals >= 3 else signum)


def guest_units() -> int:
    """How many guests may run cells at once: an emulated (TCG) guest keeps a core busy while it moves
    data, so more guests than cores starve each other and their timing-sensitive cells."""
    return max(1, os.cpu_count() or 1)


class _Picker:
    """Hands the next cell to a free worker: the first pending one whose guests fit in the guest
    units left (a cell with no guest always fits; one needing more units than exist runs when all
    are free). Units never idle while a guest cell that fits is pending; host cells run beside."""

    def __init__(self, cells: list[Cell], units: int) -> None:
        # Cells that need the most units first (stable: suite order otherwise): a two-guest cell
        # left for the end would run with nothing beside it.
        self.units = units
        self.pending = sorted(cells, key=lambda c: -self._need(c))
        self.free = units
        self.cond = threading.Condition()

    def _need(self, cell: Cell) -> int:
        return min(len(cell.guests), self.units)

    def take(self) -> Cell | None:
        with self.cond:
            while self.pending:
                for i, cell in enumerate(self.pending):
                    if self._need(cell) <= self.free:
                        self.free -= self._need(cell)
                        return self.pending.pop(i)
                self.cond.wait()
            return None

    def done(self, cell: Cell) -> None:
        with self.cond:
            self.free += self._need(cell)
            self.cond.notify_all()


class _SignalForwarder:
    """SIGINT/SIGTERM to the matrix: stop starting cells and forward the signal to running ones
    (they tear down and archive themselves); a third signal kills them outright."""

    def __init__(self, runner: MatrixRunner):
        self.runner = runner
        self.old: dict[int, Any] = {}
        self.active = threading.current_thread() is threading.main_thread()

    def install(self) -> None:
        if self.active:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, lambda signum, frame: self.runner.on_signal(signum))

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _archive_path(log: str, cells_dir: Path, name: str, before: set[str]) -> Path | None:
    """The cell run's archive: the path `testbed run` printed, else a new directory with its name."""
    for line in reversed(log.splitlines()):
        if line.startswith("archive: "):
            p = Path(line.removeprefix("archive: ").strip())
            if p.is_dir():
                return p
    pattern = re.compile(rf"^\d{{8}}T\d{{6}}Z-{re.escape(name)}-[0-9a-f]{{6}}(-[0-9a-f]{{4}})?$")
    new = sorted(p for p in cells_dir.iterdir() if p.name not in before and pattern.match(p.name))
    return new[-1] if new else None


def _clean_leftovers(cells_dir: Path) -> None:
    """After a killed cell: sweep what runs archiving into `cells_dir` left (only those, and only if
    their owner is gone) and finalize their partial archives as interrupted."""
    from testbed.state import STATE_DIR, RunState, salvage_archive, sweep

    if not STATE_DIR.exists():
        return
    for path in STATE_DIR.glob("*.json"):
        try:
            state = RunState.load(path)
        except (OSError, ValueError, TypeError):
            continue
        if not state.archive or Path(state.archive).parent.resolve() != cells_dir.resolve():
            continue
        if state.owner_alive():
            continue
        sweep(state)
        with contextlib.suppress(Exception):
            salvage_archive(state)
        state.remove()


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
