"""Known deviations: kernel behaviour that departs from the RFC or from later kernels, as data.

`experiments/known-deviations.yaml` (a suite names it with `known_deviations:`) lists, per entry,
which implementations it is about (a registry name or a kernel version range, per side), the
scenario, the symptom as checks on the cell's archive that must all hold (`client.MPTcpExtX = 4`,
`"share of client's bytes on client:cell0 from 2.5s" > 10%`), which of the cell's failed checks
it explains, and a citation: an upstream fix commit, a mailing-list report, or archived evidence.
An entry whose cause is `emulation` is not a kernel deviation: it records what an emulated (TCG)
guest cannot do on a small machine, and a cell that shows it is `unavailable`, not `known`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from testbed.errors import Problem, SpecError
from testbed.spec.model import Model
from testbed.spec.source import Document, absolute, parse_yaml, read_text, suggest, validate

OPS = ("==", "!=", ">=", "<=", "=", ">", "<")
SYMPTOM = re.compile(r"^\s*(?P<ref>.+?)\s*(?P<op>==|!=|>=|<=|=|>|<)\s*(?P<value>[^<>=!\s]+)\s*$")
COUNTER_REF = re.compile(r"^[a-z][a-z0-9_*?]{0,14}\.[A-Za-z][A-Za-z0-9]*$")
VERSION = re.compile(r"^(?P<op>>=|<=|==|>|<|=)?\s*(?P<major>\d+)\.(?P<minor>\d+)$")
DEVIATION_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
COMMIT = re.compile(r"^[0-9a-f]{12,40}$")


def _symptom(text: str) -> str:
    m = SYMPTOM.match(text)
    if m is None:
        raise PydanticCustomError("symptom", f"'{text}' is not 'REF OP VALUE' (REF a counter such as "
                                             "client.MPTcpExtMPJoinSynAckRx or a check's name; OP one of "
                                             f"{' '.join(OPS)}; VALUE a number with an optional unit)")
    from testbed.spec.units import QuantityError

    try:
        quantity(m.group("value"))
    except (QuantityError, ValueError):
        raise PydanticCustomError("symptom", f"'{m.group('value')}' is not a number (units: %, KB, Mbit, s)") from None
    return text.strip()


def _versions(text: str) -> str:
    for part in text.split(","):
        if not VERSION.match(part.strip()):
            raise PydanticCustomError("kernel", f"'{part.strip()}' is not a version bound such as '>=6.1' or '<6.2'")
    return text


Symptom = Annotated[str, AfterValidator(_symptom)]
KernelRange = Annotated[str, AfterValidator(_versions)]


def quantity(text: str) -> float:
    """A symptom's (or a measured check's) value as a number: 4, 17.5%, 200KB, 8.7Mbit, 1.5s."""
    from testbed.spec import units

    text = str(text).strip()
    if text.endswith("%"):
        return units.parse_percent(text)
    try:
        return float(text)
    except ValueError:
        pass
    for parse in (units.parse_size, units.parse_rate, units.parse_duration):
        try:
            return float(parse(text))
        except units.QuantityError:
            continue
    raise ValueError(text)


class SideMatch(Model):
    implementation: str | None = Field(None, description="a registry name, e.g. linux-6.1")
    kernel: KernelRange | None = Field(None, description="upstream kernel version range, e.g. '>=6.1, <6.2'")

    @model_validator(mode="after")
    def _one(self) -> SideMatch:
        if self.implementation is None and self.kernel is None:
            raise PydanticCustomError("side", "name an implementation or a kernel range")
        return self

    def matches(self, implementation: str, version: tuple[int, int] | None) -> bool:
        if self.implementation is not None and implementation != self.implementation:
            return False
        if self.kernel is not None:
            if version is None:
                return False
            for part in self.kernel.split(","):
                m = VERSION.match(part.strip())
                assert m is not None  # validated
                bound = (int(m.group("major")), int(m.group("minor")))
                op = m.group("op") or "=="
                if not {">=": version >= bound, "<=": version <= bound, ">": version > bound,
                        "<": version < bound, "==": version == bound, "=": version == bound}[op]:
                    return False
        return True


class Citation(Model):
    kind: Literal["commit", "report", "evidence"] = Field(
        description="commit: the upstream fix; report: a mailing-list or issue report; evidence: our own archive")
    ref: str = Field(min_length=1, description="commit hash, message-id / URL, or the archived cell and what it shows")
    url: str | None = None
    title: str | None = None

    @model_validator(mode="after")
    def _commit(self) -> Citation:
        if self.kind == "commit" and not COMMIT.match(self.ref):
            raise PydanticCustomError("commit", f"'{self.ref}' is not a commit hash (12 to 40 lower-case hex digits)")
        return self


class Deviation(Model):
    id: Annotated[str, Field(pattern=DEVIATION_ID.pattern)]
    scenario: str = Field(description="the suite scenario it shows in")
    client: SideMatch | None = Field(None, description="the client side it needs (default: any)")
    server: SideMatch | None = Field(None, description="the server side it needs (default: any)")
    cause: Literal["kernel", "emulation"] = Field("kernel", description="kernel: the implementation's behaviour "
                                                  "(verdict known); emulation: what a TCG guest cannot do here "
                                                  "(verdict unavailable)")
    accel: Literal["tcg", "kvm"] | None = Field(None, description="only when a side of the cell ran on a guest "
                                                                  "with this accelerator")
    outcome: Literal["mptcp", "fallback", "failed", "any"] = Field(
        "mptcp", description="the cells it can show in, by their expected outcome: a deviation of MPTCP "
        "behaviour cannot show where a side speaks plain TCP")
    intermittent: bool = Field(False, description="shows in some runs only: a run without it is no sign of a fix "
                               "until it has not shown in any of the last runs the history holds")
    symptom: list[Symptom] = Field(min_length=1, description="all must hold on the cell's archive")
    explains: list[str] = Field(default_factory=list, description="the failed checks it accounts for (names or "
                                "fnmatch patterns); default: the checks on the symptom's counters and checks")
    what: str = Field(min_length=1, description="what the implementation does, in a sentence")
    citation: list[Citation] = Field(min_length=1)


class KnownDeviations(Model):
    deviations: list[Deviation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> KnownDeviations:
        seen: set[str] = set()
        for d in self.deviations:
            if d.id in seen:
                raise PydanticCustomError("id", f"deviation id '{d.id}' is listed twice")
            seen.add(d.id)
        return self


@dataclass
class LoadedDeviations:
    path: Path
    text: str
    deviations: list[Deviation]
    lines: dict[str, int]  # id → line of its entry (for "fixed upstream?" notes)
    doc: Document

    def where(self, dev_id: str) -> str:
        return f"{self.doc.file}:{self.lines.get(dev_id) or 1}"

    def check_names(self, scenarios: list[str], implementations: list[str]) -> None:
        """Scenario and implementation names must be the suite's and the registry's (file:line if not)."""
        problems: list[Problem] = []
        for i, d in enumerate(self.deviations):
            if d.scenario not in scenarios:
                problems.append(self.doc.problem(("deviations", i, "scenario"), f"no scenario '{d.scenario}' in the "
                                                 f"suite{suggest(d.scenario, scenarios)}"))
            for role in ("client", "server"):
                side = getattr(d, role)
                if side is not None and side.implementation is not None and side.implementation not in implementations:
                    problems.append(self.doc.problem(("deviations", i, role, "implementation"),
                                                     f"no implementation '{side.implementation}' in the registry"
                                                     f"{suggest(side.implementation, implementations)}"))
        if problems:
            raise SpecError(problems)


def load_deviations(path: Path, display: str | None = None) -> LoadedDeviations:
    shown = display or str(path)
    path = absolute(path)
    text = read_text(path, shown)
    doc = parse_yaml(text, shown)
    known = validate(KnownDeviations, doc)
    assert isinstance(known, KnownDeviations)
    lines = {d.id: (doc.positions.get(("deviations", i)) or (0, 0))[0] for i, d in enumerate(known.deviations)}
    return LoadedDeviations(path, text, list(known.deviations), lines, doc)
