"""Interop matrix files: the implementation registry and scenario suites.

An *implementation* is an MPTCP stack on a kernel: a stack driver (`upstream`, `v0.92`, `tcp`) on a
backend (`netns`: this machine's kernel in network namespaces; `qemu`: a guest kernel; `ssh`: a
remote machine). A *suite* is a list of scenarios, each naming an experiment file, the node that
gets the client implementation and the node that gets the server implementation, and what the
scenario needs (`requires`). A matrix cell is implementation A on the client node and B on the
server node, over one scenario.

Only the shape of the files is checked here; what the requirement names mean (kernel features,
testbed capabilities) is `testbed.matrix`'s business and is checked with `check_suite`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from testbed.errors import Problem, SpecError
from testbed.spec.deviations import LoadedDeviations, load_deviations
from testbed.spec.experiment import ProbeName
from testbed.spec.model import Model
from testbed.spec.names import NodeName, RunName
from testbed.spec.source import Document, absolute, parse_yaml, read_text, suggest, validate
from testbed.spec.units import Duration

IMPL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,23}$")
KERNEL_VERSION = re.compile(r"^\d+\.\d+$")
REQUIREMENT = re.compile(r"^(?:(client|server):)?([a-z0-9][a-z0-9_.:-]{0,47})$")
ROLES = ("client", "server")
PROBE_SCENARIO = "probes"  # the scenario of probe cells (client 'probe:NAME' × every server)

Driver = Literal["upstream", "v0.92", "tcp"]
Backend = Literal["netns", "qemu", "ssh"]


def _impl_name(value: str) -> str:
    if not IMPL_NAME.match(value):
        raise PydanticCustomError("name", f"'{value}' is not a valid implementation name: up to 24 lower-case "
                                          "letters, digits, '.', '-' and '_'")
    return value


ImplName = Annotated[str, AfterValidator(_impl_name)]


class KernelSource(Model):
    """Where a guest kernel comes from (documentation for `testbed images` and for people)."""

    type: Literal["host", "debian", "user"] = Field(description="host: this machine's kernel; debian: a Debian "
                                                                "kernel package; user: an image the user supplies")
    suite: str | None = Field(None, description="debian: the Debian suite the package is fetched from")
    package: str | None = Field(None, description="debian: the kernel package (apt-get download)")
    note: str = ""


class Implementation(Model):
    description: str = ""
    driver: Driver = Field(description="MPTCP stack driver: upstream (RFC 8684), v0.92 (RFC 6824) or tcp")
    backend: Backend = Field(description="netns: this machine's kernel; qemu: a guest kernel; ssh: a remote host")
    kernel: str | None = Field(None, description="guest kernel version 'X.Y' (netns: detected)")
    image: str | None = Field(None, description="qemu: boot image name (built by `testbed images`) or a path, "
                                                "relative to the registry file")
    mptcp: bool = Field(True, description="upstream driver: whether the kernel is built with MPTCP "
                                          "(CONFIG_MPTCP=y); one without is a plain-TCP implementation")
    source: KernelSource | None = None
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                             description="ssh: the machine's name in the registry's inventory")

    @model_validator(mode="after")
    def _consistent(self) -> Implementation:
        if self.kernel is not None and not KERNEL_VERSION.match(self.kernel):
            raise PydanticCustomError("kernel", f"kernel '{self.kernel}' should be a version such as 6.1")
        if self.backend == "netns" and self.driver == "v0.92":
            raise PydanticCustomError("driver", "a v0.92 stack needs its own kernel: use backend qemu or ssh")
        if self.backend == "netns" and (self.kernel or self.image):
            raise PydanticCustomError("backend", "netns implementations run on this machine's kernel: "
                                                 "no kernel or image")
        if self.backend == "ssh" and self.host is None:
            raise PydanticCustomError("host", "an ssh implementation names its machine (host:, as in the "
                                              "registry's inventory)")
        if self.backend != "ssh" and self.host is not None:
            raise PydanticCustomError("host", "only ssh implementations run on a named machine")
        if self.backend in ("qemu", "ssh") and self.driver == "upstream" and self.kernel is None:
            raise PydanticCustomError("kernel", "an upstream guest needs its kernel version (e.g. kernel: '6.1'): "
                                                "its feature set is derived from it")
        return self

    @property
    def version(self) -> tuple[int, int] | None:
        if self.kernel is None:
            return None
        major, minor = self.kernel.split(".")
        return int(major), int(minor)


class Registry(Model):
    inventory: str | None = Field(None, description="Ansible inventory of the ssh implementations' machines, "
                                                    "relative to the registry file")
    implementations: dict[ImplName, Implementation] = Field(min_length=1)

    @model_validator(mode="after")
    def _inventory_for_ssh(self) -> Registry:
        if self.inventory is None and any(i.backend == "ssh" for i in self.implementations.values()):
            raise PydanticCustomError("inventory", "ssh implementations need the registry's inventory (the "
                                                   "Ansible inventory that names their hosts)")
        return self


class Scenario(Model):
    name: RunName
    description: str = ""
    experiment: str = Field(description="experiment file, relative to the suite file")
    client: NodeName = Field("client", description="node that runs the client implementation")
    server: NodeName = Field("server", description="node that runs the server implementation")
    requires: list[str] = Field(default_factory=list,
                                description="features both sides need ('fullmesh'), one side needs "
                                            "('server:checksum'), or testbed capabilities ('middlebox')")
    fallback_requires: list[str] = Field(
        default_factory=list, description="requirements that hold even when the peer is plain TCP (e.g. "
                                          "'client:syn_fallback' where a middlebox drops MP_CAPABLE SYNs)")
    pin: dict[Literal["client", "server"], Literal["tcp"]] = Field(
        default_factory=dict, description="a side that stays plain TCP whatever implementation the cell puts there")
    fallback: Literal["fallback", "failed"] = Field(
        "fallback", description="what a cell with a plain-TCP side (or v0 against v1) expects: 'fallback' (plain "
                                "TCP, data intact) or 'failed' where the scenario takes the initial path away, "
                                "which a single TCP connection cannot survive")
    timeout: Duration | None = Field(None, gt=0, description="cell timeout (default: the suite's)")
    workloads: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fields of the experiment's workloads, by workload name, that the "
                                          "matrix changes (e.g. {bulk: {size: 8MB}}: the same scenario, shorter)")

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.client == self.server:
            raise PydanticCustomError("roles", "client and server must be different nodes")
        for req in [*self.requires, *self.fallback_requires]:
            if not REQUIREMENT.match(req):
                raise PydanticCustomError("requires", f"'{req}' is not a requirement: a name such as 'fullmesh', "
                                                      "optionally 'client:' or 'server:' before it")
        return self


class Suite(Model):
    name: RunName
    description: str = ""
    implementations: str = Field("../implementations.yaml", description="registry file, relative to the suite")
    known_deviations: str | None = Field(None, description="known-deviations file (testbed.spec.deviations), "
                                                           "relative to the suite: cells that reproduce one are "
                                                           "'known'")
    clients: list[ImplName] | None = Field(None, description="default client implementations (default: all)")
    servers: list[ImplName] | None = Field(None, description="default server implementations (default: all)")
    timeout: Duration = Field(180.0, gt=0, description="default cell timeout: the cell's process group is killed")
    scenarios: list[Scenario] = Field(min_length=1)
    probes: list[ProbeName] = Field(
        default_factory=list, description="conformance probes (testbed/probes) run against every server "
                                          f"implementation: the '{PROBE_SCENARIO}' scenario, client 'probe:NAME'")
    probe_experiment: str = Field("../probes.yaml", description="experiment the probe cells are made from "
                                                                "(its probe workloads), relative to the suite")

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        names = [s.name for s in self.scenarios]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PydanticCustomError("names", f"scenario names must be unique: {', '.join(dup)}")
        if self.probes and PROBE_SCENARIO in names:
            raise PydanticCustomError("names", f"a scenario may not be called '{PROBE_SCENARIO}' when the suite "
                                               "has probes: that is the probe cells' scenario")
        dup = sorted({n for n in self.probes if self.probes.count(n) > 1})
        if dup:
            raise PydanticCustomError("probes", f"probes are listed twice: {', '.join(dup)}")
        return self


@dataclass
class LoadedRegistry:
    path: Path
    registry: Registry
    doc: Document
    text: str

    def inventory_path(self) -> Path | None:
        inv = self.registry.inventory
        if inv is None:
            return None
        p = Path(inv).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def image_path(self, name: str) -> Path | None:
        """The image of a qemu implementation when it is given as a path (contains '/')."""
        image = self.registry.implementations[name].image
        if image is None or "/" not in image:
            return None
        p = Path(image)
        return p if p.is_absolute() else (self.path.parent / p).resolve()


@dataclass
class LoadedSuite:
    path: Path
    suite: Suite
    doc: Document
    text: str
    registry: LoadedRegistry
    experiments: dict[str, Path] = field(default_factory=dict)  # scenario → experiment file
    probe_experiment: Path | None = None  # when the suite has probes
    deviations: LoadedDeviations | None = None  # the suite's known deviations

    def scenario(self, name: str) -> Scenario:
        return next(s for s in self.suite.scenarios if s.name == name)


def _load(path: Path, model: type, display: str | None = None) -> tuple[Document, object, str]:
    text = read_text(path, display)
    doc = parse_yaml(text, display or str(path))
    return doc, validate(model, doc), text


def load_registry(path: Path, display: str | None = None) -> LoadedRegistry:
    display = display or str(path)
    path = absolute(path)
    doc, registry, text = _load(path, Registry, display)
    assert isinstance(registry, Registry)
    return LoadedRegistry(path, registry, doc, text)


def load_suite(path: Path, display: str | None = None) -> LoadedSuite:
    """The suite and its registry, validated; experiment files must exist (their content is checked
    by `check_suite`, which knows which failures a missing testbed capability excuses)."""
    shown = display or str(path)
    path = absolute(path)  # every experiment and image path below is derived from it
    doc, suite, text = _load(path, Suite, shown)
    assert isinstance(suite, Suite)
    reg_path = path.parent / suite.implementations
    if not reg_path.is_file():
        raise SpecError([doc.problem(("implementations",), f"no registry file {reg_path}")])
    registry = load_registry(reg_path, str(reg_path))
    problems: list[Problem] = []
    names = list(registry.registry.implementations)
    for key in ("clients", "servers"):
        for i, name in enumerate(getattr(suite, key) or []):
            if name not in names:
                problems.append(doc.problem((key, i), f"no implementation '{name}' in {reg_path.name}"
                                                      f"{suggest(name, names)}"))
    experiments = {}
    for i, s in enumerate(suite.scenarios):
        exp = path.parent / s.experiment
        if not exp.is_file():
            problems.append(doc.problem(("scenarios", i, "experiment"), f"no experiment file {exp}"))
        experiments[s.name] = exp
    probe_experiment = None
    if suite.probes:
        probe_experiment = path.parent / suite.probe_experiment
        if not probe_experiment.is_file():
            problems.append(doc.problem(("probe_experiment",), f"no experiment file {probe_experiment}"))
    deviations = None
    if suite.known_deviations is not None:
        dev_path = path.parent / suite.known_deviations
        if not dev_path.is_file():
            problems.append(doc.problem(("known_deviations",), f"no known-deviations file {dev_path}"))
        else:
            deviations = load_deviations(dev_path, os.path.relpath(dev_path))
            deviations.check_names([s.name for s in suite.scenarios], names)
    if problems:
        raise SpecError(problems)
    return LoadedSuite(path, suite, doc, text, registry, experiments, probe_experiment, deviations)


def split_requirement(req: str) -> tuple[str | None, str]:
    """'server:checksum' → ('server', 'checksum'); 'fullmesh' → (None, 'fullmesh')."""
    m = REQUIREMENT.match(req)
    if m is None:
        raise ValueError(req)
    return m.group(1), m.group(2)


def check_suite(loaded: LoadedSuite, known: dict[str, str]) -> None:
    """Requirement names against `known` (name → what it means), with file positions."""
    problems = []
    for i, s in enumerate(loaded.suite.scenarios):
        for key in ("requires", "fallback_requires"):
            for j, req in enumerate(getattr(s, key)):
                _, name = split_requirement(req)
                if name not in known:
                    problems.append(loaded.doc.problem(("scenarios", i, key, j),
                                                       f"unknown requirement '{name}'{suggest(name, known)}"))
    if problems:
        raise SpecError(problems)


def scenario_problem(loaded: LoadedSuite, name: str, field_name: str, message: str) -> Problem:
    i = next(i for i, s in enumerate(loaded.suite.scenarios) if s.name == name)
    return loaded.doc.problem(("scenarios", i, field_name), message)
