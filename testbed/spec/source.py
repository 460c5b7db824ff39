"""YAML documents that remember where each value came from, and pydantic errors mapped back to it."""

from __future__ import annotations

import difflib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from testbed.errors import Problem, SpecError
from testbed.spec import limits

Loc = tuple[str | int, ...]


@dataclass
class Document:
    """Plain data (dicts, lists, scalars) plus the (line, col) of every key path, 1-based."""

    file: str
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    line_offset: int = 0

    def where(self, loc: Iterable[str | int]) -> tuple[Loc, int | None, int | None]:
        """The deepest known position along `loc`, and `loc` with pydantic's union tags removed."""
        clean: list[str | int] = []
        node: Any = self.data
        best = self.positions.get((), (None, None))
        for part in loc:
            if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            elif isinstance(node, dict) and part in (node.get("kind"), node.get("type"), node.get("action")):
                continue  # a discriminated union's tag
            elif isinstance(node, dict) and isinstance(part, str) and not clean_has_tag_shape(part):
                # A missing or unknown key: point at the mapping that should have had it.
                clean.append(part)
                break
            else:
                continue  # a union tag such as 'host' or 'function-after[...]'
            clean.append(part)
            best = self.positions.get(tuple(clean), best)
        line, col = best
        if line is not None:
            line += self.line_offset
        return tuple(clean), line, col

    def problem(self, loc: Iterable[str | int], message: str) -> Problem:
        clean, line, col = self.where(loc)
        return Problem(self.file, line, col, dotted(clean), message)


def absolute(path: str | Path) -> Path:
    """`path` against the current directory, once, where it enters the testbed: paths travel from here
    into child processes (cells, agents), network functions (tayga refuses a relative data-dir) and
    archives read back later, none of which share the user's current directory. Symlinks are kept
    (only `.` and `..` are collapsed) so that the path still reads as the user gave it."""
    import os

    return Path(os.path.abspath(os.path.expanduser(str(path))))


def guest_image_path(value: str | None) -> str | None:
    """A guest image given as a directory (it has a '/', e.g. `--set image=build/linux-6.1`) is
    relative to the current directory, made absolute where it is read (qemu and the matrix's cells
    do not share that directory); a bare name is an image of the cache."""
    return str(absolute(value)) if value is not None and "/" in value else value


def clean_has_tag_shape(part: str) -> bool:
    return "[" in part or part in {"function-after", "function-before", "function-wrap"}


def dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _yaml(lim: limits.Limits):
    """ruamel's pure-Python safe pipeline, only up to the node tree (see _data). The round-trip
    loader it replaces spent most of its time keeping comments, which nothing here reads: a
    1000-router chain (8000 lines) parsed in 3.6 s, ~1 s this way."""
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.Composer = _bounded_composer()
    y.testbed_limits = lim  # type: ignore[attr-defined]  # read by the composer
    return y


class YamlLimit(Exception):
    """A YAML document past one of the limits, at the mark where that became clear."""

    def __init__(self, mark: Any, message: str):
        super().__init__(message)
        self.mark = mark
        self.message = message


_COMPOSER: Any = None


def _bounded_composer() -> Any:
    """ruamel's composer, counting as it builds the node tree (before anything is constructed from
    it): nesting depth, and the number of values once every alias is expanded, because everything
    after it (plain data, validation) expands aliases: nine aliases of nine aliases of ... ("billion
    laughs") are a few hundred bytes of YAML and billions of values. An alias to a collection that
    contains it would expand forever."""
    global _COMPOSER
    if _COMPOSER is not None:
        return _COMPOSER
    from ruamel.yaml.composer import Composer
    from ruamel.yaml.events import AliasEvent, CollectionStartEvent
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    class BoundedComposer(Composer):  # type: ignore[misc]
        def compose_document(self) -> Any:
            self._tb_sizes: dict[int, int] = {}
            self._tb_open: set[str] = set()
            self._tb_depth = 0
            return super().compose_document()

        def compose_node(self, parent: Any, index: Any) -> Any:
            lim: limits.Limits = self.loader.testbed_limits
            event = self.parser.peek_event()
            if isinstance(event, AliasEvent):
                if event.anchor in self._tb_open:
                    raise YamlLimit(event.start_mark, f"alias *{event.anchor} is inside the value it names: "
                                                      "it would expand forever")
                return super().compose_node(parent, index)
            self._tb_depth += 1
            if self._tb_depth > lim.max_yaml_depth:
                raise YamlLimit(event.start_mark, limits.hit(
                    "max_yaml_depth", f"values nested more than {lim.max_yaml_depth} deep"))
            anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
            if anchor is not None:
                self._tb_open.add(anchor)
            node = super().compose_node(parent, index)
            if anchor is not None:
                self._tb_open.discard(anchor)
            self._tb_depth -= 1
            sizes = self._tb_sizes
            if isinstance(node, SequenceNode):
                n = 1 + sum(sizes.get(id(child), 1) for child in node.value)
            elif isinstance(node, MappingNode):
                n = 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
            else:
                n = 1
            if n > lim.max_yaml_nodes:
                raise YamlLimit(node.start_mark, limits.hit(
                    "max_yaml_nodes", f"more than {lim.max_yaml_nodes} values once aliases are expanded"))
            if n > 1:
                sizes[id(node)] = n
            return node

    _COMPOSER = BoundedComposer
    return _COMPOSER


def _data(node: Any, loc: Loc, positions: dict[Loc, tuple[int, int]], construct: Any) -> Any:
    """Plain data (dicts, lists, scalars) from a composed node, with the (line, col) of every key
    path; scalars are typed by ruamel's safe constructor, as YAML 1.2 says. Duplicate keys are an
    error; `<<` merges mappings in, as in YAML 1.1."""
    from ruamel.yaml.error import MarkedYAMLError
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    mark = node.start_mark
    if isinstance(node, MappingNode):
        positions.setdefault(loc, (mark.line + 1, mark.column + 1))
        out: dict[str, Any] = {}
        merged: list[Any] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged += value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                continue
            if isinstance(key_node, (MappingNode, SequenceNode)):
                raise MarkedYAMLError(problem="a key must be a plain value", problem_mark=key_node.start_mark)
            name = str(construct(key_node))
            if name in out:
                raise MarkedYAMLError(problem=f'duplicate key "{name}"', problem_mark=key_node.start_mark)
            km = key_node.start_mark
            positions[(*loc, name)] = (km.line + 1, km.column + 1)
            out[name] = _data(value_node, (*loc, name), positions, construct)
        for source in merged:
            if not isinstance(source, MappingNode):
                raise MarkedYAMLError(problem="<< merges only mappings", problem_mark=source.start_mark)
            for name, value in _data(source, loc, {}, construct).items():
                out.setdefault(name, value)
        return out
    if isinstance(node, SequenceNode):
        positions.setdefault(loc, (mark.line + 1, mark.column + 1))
        items = []
        for i, item in enumerate(node.value):
            im = item.start_mark
            positions[(*loc, i)] = (im.line + 1, im.column + 1)
            items.append(_data(item, (*loc, i), positions, construct))
        return items
    value = construct(node)
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    return str(value) if not isinstance(value, (bytes, bytearray)) else value


def read_text(path: Path, display: str | None = None) -> str:
    shown = display or str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SpecError([Problem(shown, None, None, "", "file not found")]) from None
    except OSError as exc:
        raise SpecError([Problem(shown, None, None, "", f"cannot read: {exc.strerror}")]) from None
    if not path.is_file():
        raise SpecError([Problem(shown, None, None, "", "not a regular file")])
    lim = limits.current().max_file_bytes
    if size > lim:
        try:  # the line where the limit is passed: where a generated file went wrong, often
            with path.open("rb") as f:
                line = f.read(lim).count(b"\n") + 1
        except OSError:
            line = None
        raise SpecError([Problem(shown, line, None, "", limits.hit(
            "max_file_bytes", f"file is {limits.size(size)}, more than {limits.size(lim)}"))])
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(shown, None, None, "", f"not UTF-8 text ({exc.reason})")]) from None


def parse_yaml(text: str, file: str, line_offset: int = 0) -> Document:
    """Parse one YAML document; syntax errors become a Problem at the reported mark."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    y = _yaml(limits.current())
    try:
        root = y.compose(io.StringIO(text))
        positions: dict[Loc, tuple[int, int]] = {}
        data = None if root is None else _data(root, (), positions, y.constructor.construct_object)
    except YamlLimit as exc:
        raise SpecError([Problem(file, exc.mark.line + 1 + line_offset, exc.mark.column + 1, "",
                                 f"YAML: {exc.message}")]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 + line_offset if mark else None
        col = mark.column + 1 if mark else None
        what = (exc.problem or exc.context or "YAML syntax error").strip()
        if "found duplicate key" in str(exc):
            what = "duplicate key " + str(exc).split('duplicate key', 1)[1].split('"')[1].join('""')
        raise SpecError([Problem(file, line, col, "", f"YAML syntax: {what}")]) from None
    except YAMLError as exc:
        raise SpecError([Problem(file, None, None, "", f"YAML syntax: {exc}")]) from None
    positions.setdefault((), (1, 1))
    return Document(file, data, positions, line_offset)


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _message(err: dict[str, Any], doc: Document, model: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(err["loc"][-1])
        allowed = _allowed_fields(model, err["loc"][:-1])
        hint = suggest(name, allowed)
        if not hint and allowed:
            hint = f" (allowed: {', '.join(sorted(allowed))})"
        return f"unknown field '{name}'{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        return f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} '{ctx.get('tag')}'{suggest(ctx.get('tag', ''), tags)}; expected one of: {', '.join(tags)}"
    if kind == "union_tag_not_found":
        return f"needs a {ctx.get('discriminator', 'kind').strip(chr(39))} field"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",")]
        return f"'{err.get('input')}' is not one of {expected}{suggest(str(err.get('input')), options)}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    # pydantic wording, translated so users never see Python type names.
    msg = (msg.replace("Input should be a valid dictionary or instance of", "expected a mapping for")
              .replace("Input should be a valid dictionary", "expected a mapping")
              .replace("Input should be a valid list", "expected a list")
              .replace("Input should be a valid integer", "expected a whole number")
              .replace("Input should be a valid number", "expected a number")
              .replace("Input should be a valid string", "expected text")
              .replace("Input should be a valid boolean", "expected true or false")
              .replace("Input should be", "should be"))
    return msg


def _allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names (by alias) of the sub-model at `loc`, for 'did you mean'."""
    from testbed.spec.modelwalk import fields_at

    return fields_at(model, loc)


def validate(model: type[BaseModel], doc: Document, context: dict[str, Any] | None = None) -> Any:
    """Validate `doc` against `model`, reporting every error in one pass with file positions."""
    try:
        return model.model_validate(doc.data, context=context)
    except ValidationError as exc:
        problems = []
        seen = set()
        for err in exc.errors(include_url=False):
            p = doc.problem(err["loc"], _message(err, doc, model))
            if (p.path, p.message) not in seen:
                seen.add((p.path, p.message))
                problems.append(p)
        raise SpecError(problems) from None
