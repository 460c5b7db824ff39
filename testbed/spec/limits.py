"""What one spec file may cost to load: named limits, so that a message can say which one was hit.

A topology or experiment file is read, rendered (Jinja2) and parsed (YAML) before anything runs. A
file written by accident or on purpose to exhaust that machinery (a YAML alias bomb, `[[[[...`
nested thousands deep, a recursive macro, a loop printing gigabytes) must end in one
`file:line: problem (limit NAME)` line and exit code 2, never in a traceback, a hang or the
machine's memory. The defaults are generous: a 1000-node topology written as a Jinja2 loop renders
to about 100 KB and nests 6 deep. `TESTBED_LIMITS=name=value,...` raises (or lowers) any of them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from testbed.errors import Problem, SpecError

ENV = "TESTBED_LIMITS"


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 1 << 20  # one topology/experiment/suite file as written
    max_yaml_depth: int = 64  # mappings and lists inside one another
    max_yaml_nodes: int = 1_000_000  # values in one document once aliases are expanded
    max_render_bytes: int = 4 << 20  # what one template may produce
    max_render_seconds: float = 10.0  # wall time of one template's rendering
    max_render_memory: int = 1 << 30  # address space the template engine may add while rendering
    max_template_recursion: int = 1000  # Python frames the template engine may nest (macros, includes)
    max_template_nesting: int = 64  # block tags ({% if %}, {% for %}, ...) inside one another
    max_template_loops: int = 20  # {% for %} loops inside one another (in one macro)
    max_set_bytes: int = 64 << 10  # one --set / topology.set value


# Python's compiler, which runs every template, has fixed bounds of its own: at most 20 loops nested
# in one function ("too many statically nested blocks") and about 100 levels of indentation in all.
CEILINGS = {"max_template_loops": 20, "max_template_nesting": 96}


def current() -> Limits:
    """The defaults, with what `TESTBED_LIMITS` overrides."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return Limits()
    fields = {f.name: f.type for f in dataclasses.fields(Limits)}
    changes: dict[str, int | float] = {}
    problems = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            problems.append(Problem(ENV, None, None, name or item,
                                    f"expected name=value with a name among: {', '.join(fields)}"))
            continue
        try:
            number: int | float = float(value) if fields[name] == "float" else int(value, 0)
        except ValueError:
            problems.append(Problem(ENV, None, None, name, f"expected a number, got {value.strip()!r}"))
            continue
        if number <= 0:
            problems.append(Problem(ENV, None, None, name, "must be positive"))
            continue
        if name in CEILINGS and number > CEILINGS[name]:
            problems.append(Problem(ENV, None, None, name, f"at most {CEILINGS[name]}: Python's compiler, "
                                                           "which runs every template, takes no more"))
            continue
        changes[name] = number
    if problems:
        raise SpecError(problems)
    return dataclasses.replace(Limits(), **changes)  # type: ignore[arg-type]


def hit(name: str, what: str) -> str:
    """The wording every limit message ends with."""
    return f"{what} (limit {name})"


def size(n: float) -> str:
    """A byte count as people read it, in the unit the limits are given in."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.4g} {unit}"
    return f"{int(n)} bytes"


def shorten(text: str, keep: int = 60) -> str:
    """A value quoted in a message: never the whole of a huge one."""
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"
