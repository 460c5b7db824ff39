"""Jinja2 templates with declared, typed parameters.

A template file may start with a YAML header that declares its parameters, ended by a `---` line:

    parameters:
      paths: {type: int, default: 2, min: 1, max: 8, doc: number of client paths}
      wifi_loss: {type: percent, default: 0%}
    ---
    name: dual-homed
    ...

The body is rendered in Jinja2's immutable sandbox with StrictUndefined; includes resolve only
inside the template's own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from testbed.errors import Problem, SpecError
from testbed.spec import bounded, limits, units
from testbed.spec.model import Model
from testbed.spec.source import Document, parse_yaml, read_text, suggest, validate

ParamType = Literal["int", "float", "bool", "str", "percent", "duration", "rate", "size"]

_PARSERS = {"percent": (units.parse_percent, units.format_percent),
            "duration": (units.parse_duration, units.format_duration),
            "rate": (units.parse_rate, units.format_rate),
            "size": (units.parse_size, units.format_size)}


class Parameter(Model):
    type: ParamType = "str"
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: list[Any] | None = None
    doc: str = ""

    def coerce(self, value: Any) -> Any:
        """A raw value (from YAML or a `--set` string) as the typed value templates see."""
        if self.type in _PARSERS:
            parse, fmt = _PARSERS[self.type]
            try:
                number = parse(value)
            except units.QuantityError as exc:
                raise ValueError(str(exc)) from None
            result: Any = units.Quantity(number, fmt)
        elif self.type == "int":
            if isinstance(value, bool):
                raise ValueError(f"expected a whole number, got {value!r}")
            try:
                result = int(str(value), 0) if isinstance(value, str) else int(value)
            except (TypeError, ValueError):
                raise ValueError(f"expected a whole number, got {value!r}") from None
            if isinstance(value, float) and value != result:
                raise ValueError(f"expected a whole number, got {value!r}")
        elif self.type == "float":
            try:
                result = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"expected a number, got {value!r}") from None
        elif self.type == "bool":
            if isinstance(value, bool):
                result = value
            elif str(value).lower() in {"true", "yes", "on", "1"}:
                result = True
            elif str(value).lower() in {"false", "no", "off", "0"}:
                result = False
            else:
                raise ValueError(f"expected true or false, got {value!r}")
        else:
            result = str(value)
        if self.min is not None and float(result) < self.min:
            raise ValueError(f"{value} is below the minimum {self._show(self.min)}")
        if self.max is not None and float(result) > self.max:
            raise ValueError(f"{value} is above the maximum {self._show(self.max)}")
        if self.choices is not None and result not in self.choices:
            raise ValueError(f"{value!r} is not one of {self.choices}{suggest(str(value), map(str, self.choices))}")
        return result

    def _show(self, bound: float) -> str:
        return _PARSERS[self.type][1](bound) if self.type in _PARSERS else f"{bound:g}"


class Header(Model):
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    description: str = ""


class Template:
    """A parsed template file: its parameter header and its Jinja2 body."""

    def __init__(self, path: Path, display: str | None = None):
        self.path = path
        self.display = display or str(path)
        text = read_text(path, self.display)
        self.header = Header()
        self.body = text
        self.body_offset = 0
        lines = text.splitlines(keepends=True)
        split = next((i for i, line in enumerate(lines) if line.rstrip() == "---"), None)
        if split is not None and any(line.startswith("parameters:") for line in lines[:split]):
            head = parse_yaml("".join(lines[:split]), self.display)
            self.header = validate(Header, head)
            self.body = "".join(lines[split + 1:])
            self.body_offset = split + 1
            self._header_doc: Document | None = head
        else:
            self._header_doc = None

    @property
    def parameters(self) -> dict[str, Parameter]:
        return self.header.parameters

    def values(self, overrides: dict[str, tuple[Any, Problem]]) -> dict[str, Any]:
        """Defaults, then overrides; each override carries the Problem to report it as."""
        problems: list[Problem] = []
        values: dict[str, Any] = {}
        for name, param in self.parameters.items():
            if param.default is None:
                continue
            try:
                values[name] = param.coerce(param.default)
            except ValueError as exc:
                loc = ("parameters", name, "default")
                assert self._header_doc is not None
                problems.append(self._header_doc.problem(loc, str(exc)))
        max_set = limits.current().max_set_bytes
        for name, (raw, where) in overrides.items():
            length = _value_bytes(raw)
            if length > max_set:
                problems.append(Problem(where.file, where.line, where.col, name, limits.hit(
                    "max_set_bytes", f"value is {limits.size(length)}, more than {limits.size(max_set)}")))
                continue
            param = self.parameters.get(name)
            if param is None:
                known = ", ".join(self.parameters) or "none"
                tail = name.rpartition(".")[2]  # `--set topology.set.n=...` for the template's `n`
                hint = (f" (did you mean '{tail}'? a template's parameters are set by their own names)"
                        if tail != name and tail in self.parameters else suggest(name, self.parameters))
                problems.append(Problem(where.file, where.line, where.col, name,
                                        f"not a parameter of {self.display}{hint}"
                                        f" (parameters: {known})"))
                continue
            try:
                values[name] = param.coerce(raw)
            except ValueError as exc:
                problems.append(Problem(where.file, where.line, where.col, name, str(exc)))
        for name in self.parameters:
            if name not in values and not any(p.path == name for p in problems):
                problems.append(Problem(self.display, None, None, f"parameters.{name}",
                                        "has no default; give it with --set"))
        if problems:
            raise SpecError(problems)
        return values

    def render(self, values: dict[str, Any]) -> str:
        """The body rendered with `values`, in a child process bounded by the limits (see bounded.py)."""
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        lim = limits.current()
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.path.parent)),
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        try:
            return bounded.run(lambda: _render_here(env, self.body, values, lim), lim)
        except bounded.RenderFailure as exc:
            line = exc.line + self.body_offset if exc.line else None
            raise SpecError([Problem(self.display, line, None, "", exc.message)]) from None


def _value_bytes(value: Any) -> int:
    """What a parameter value weighs: a --set string as given, anything else from a YAML file as
    JSON (a value of the experiment's topology.set may be a list or a mapping)."""
    import json

    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value, default=str))


def _render_here(env: Any, body: str, values: dict[str, Any], lim: limits.Limits) -> str:
    """Compile and render (in the child): every way it can fail becomes RenderFailure(line, message)."""
    import jinja2

    compiled = False
    try:
        _check_nesting(env, body, lim)
        template = env.from_string(body)
        compiled = True
        chunks = template.generate(**values)
        return bounded.stream(chunks, lim, chunks.throw)
    except jinja2.TemplateSyntaxError as exc:
        raise bounded.RenderFailure(exc.lineno or None, f"template syntax: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise bounded.RenderFailure(_template_line(exc), f"template: {exc.message or exc}") from None
    except (bounded.OutputLimit, bounded.Deadline) as exc:
        message = str(exc) or limits.hit("max_render_seconds", f"rendering takes longer than "
                                                               f"{lim.max_render_seconds:g} s")
        raise bounded.RenderFailure(_template_line(exc), f"template: {message}") from None
    except MemoryError as exc:
        raise bounded.RenderFailure(_template_line(exc), "template: " + limits.hit(
            "max_render_memory", f"rendering needs more than {limits.size(lim.max_render_memory)} of memory")) from None
    except (RecursionError, SyntaxError) as exc:
        # Jinja2's parser and Python's compiler recurse per nesting level; at render time, macros do.
        if compiled and isinstance(exc, RecursionError):
            name, what, line = "max_template_recursion", "macros or includes recurse too deep", _template_line(exc)
        else:
            depth = bounded.nesting(env.lex(body))
            name, line = "max_template_recursion", depth.total_line
            what = f"blocks and brackets nested {depth.total} deep, too deep to compile"
            if isinstance(exc, SyntaxError) and "nested blocks" in str(exc.msg):
                name, line = "max_template_loops", depth.loops_line
                what = f"for loops nested {depth.loops} deep, too deep to compile"
            elif isinstance(exc, SyntaxError) and "indentation" in str(exc.msg):
                name, line = "max_template_nesting", depth.blocks_line
                what = f"blocks nested {depth.blocks} deep, too deep to compile"
        raise bounded.RenderFailure(line, "template: " + limits.hit(name, what)) from None
    except (ArithmeticError, TypeError, ValueError) as exc:
        raise bounded.RenderFailure(_template_line(exc), f"template: {exc}") from None


def _check_nesting(env: Any, body: str, lim: limits.Limits) -> None:
    """Nesting past a limit, reported at its line before Jinja2 and Python's compiler meet it
    (and fail with their own wording: "too many statically nested blocks")."""
    import jinja2

    try:
        depth = bounded.nesting(env.lex(body))
    except jinja2.TemplateSyntaxError:
        return  # compiling reports it, with its own line
    if depth.loops > lim.max_template_loops:
        raise bounded.RenderFailure(depth.loops_line, "template: " + limits.hit(
            "max_template_loops", f"for loops nested {depth.loops} deep, more than {lim.max_template_loops}"))
    if depth.blocks > lim.max_template_nesting:
        raise bounded.RenderFailure(depth.blocks_line, "template: " + limits.hit(
            "max_template_nesting", f"blocks nested {depth.blocks} deep, more than {lim.max_template_nesting}"))


def _template_line(exc: BaseException) -> int | None:
    """The line of the innermost template frame in a Jinja2-rewritten traceback."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def parse_set(items: list[str], where: str = "--set") -> dict[str, tuple[str, Problem]]:
    """`name=value` strings from the command line."""
    out: dict[str, tuple[str, Problem]] = {}
    problems = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(Problem(where, None, None, item, "expected name=value"))
            continue
        out[name] = (value, Problem(where, None, None, name, ""))
    if problems:
        raise SpecError(problems)
    return out


def load_document(path: Path, overrides: dict[str, tuple[Any, Problem]], display: str | None = None
                  ) -> tuple[Document, dict[str, Any], str]:
    """A YAML or YAML+Jinja2 file, rendered and parsed: (document, parameter values, rendered text)."""
    tpl = Template(path, display)
    is_template = path.name.endswith(".j2") or bool(tpl.parameters)
    if not is_template:
        if overrides:
            name = next(iter(overrides))
            where = overrides[name][1]
            raise SpecError([Problem(where.file, where.line, where.col, name,
                                     f"{tpl.display} is not a template; it takes no parameters")])
        return parse_yaml(tpl.body, tpl.display), {}, tpl.body
    values = tpl.values(overrides)
    text = tpl.render(values)
    body_lines = tpl.body.count("\n")
    expanded = text.count("\n") != body_lines
    display_name = tpl.display
    if expanded:
        display_name += " (rendered)"
    doc = parse_yaml(text, display_name, line_offset=0 if expanded else tpl.body_offset)
    return doc, values, text
