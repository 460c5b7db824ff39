"""Walks pydantic model annotations along an error location, to list the fields allowed there."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return out
    return out


def fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        matched_tag = False
        for m in candidates:
            f = m.model_fields.get(part) or next(
                (fi for fi in m.model_fields.values() if fi.alias == part), None)
            if f is not None:
                nxt.extend(_models_in(f.annotation))
        if not nxt:
            # A union tag (e.g. 'host') picks one of the candidates' nested models by kind.
            for m in candidates:
                kind = m.model_fields.get("kind")
                if kind is not None and part in typing.get_args(kind.annotation):
                    nxt.append(m)
                    matched_tag = True
            if not matched_tag:
                nxt = candidates  # dict keys such as node names
        candidates = nxt
    names: list[str] = []
    for m in candidates:
        names.extend(fi.alias or n for n, fi in m.model_fields.items())
    return sorted(set(names))
