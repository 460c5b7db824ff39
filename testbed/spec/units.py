"""Quantities with units as users write them (`5%`, `20ms`, `10Mbit`, `20MB`) and back.

Values are stored as floats in base units (percent, seconds, bits/s, bytes). A bare number means the
base unit, so that template arithmetic (`{{ rate * 2 }}`) still parses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+"
_QUANTITY = re.compile(rf"^\s*(?P<sign>-)?(?P<num>{_NUMBER})\s*(?P<unit>[A-Za-z%/]*)\s*$")

DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9,
                  "m": 60.0, "min": 60.0}
RATE_UNITS = {"": 1.0, "bit": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6,
              "gbit": 1e9, "gbps": 1e9}
SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
              "kib": 1024, "mib": 1024**2, "gib": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3}
PERCENT_UNITS = {"": 1.0, "%": 1.0}


class QuantityError(ValueError):
    pass


def _parse(value: Any, units: dict[str, float], what: str, example: str) -> float:
    if isinstance(value, bool):
        raise QuantityError(f"expected a {what} such as {example}, got {value!r}")
    if isinstance(value, int | float):
        number, unit, negative = float(value), "", value < 0
    elif isinstance(value, str):
        m = _QUANTITY.match(value)
        if not m:
            raise QuantityError(f"expected a {what} such as {example}, got {value!r}")
        number, unit, negative = float(m["num"]), m["unit"], bool(m["sign"])
    else:
        raise QuantityError(f"expected a {what} such as {example}, got {value!r}")
    if not math.isfinite(number):
        raise QuantityError(f"expected a finite {what}, got {value!r}")
    key = unit if unit in units else unit.lower()
    if key not in units:
        known = ", ".join(u for u in units if u)
        raise QuantityError(f"unknown unit {unit!r} in {value!r} for a {what} (use one of {known})")
    if negative:
        raise QuantityError(f"a {what} cannot be negative: {value!r}")
    return abs(number) * units[key]


def parse_duration(value: Any) -> float:
    return _parse(value, DURATION_UNITS, "duration", "'20ms' or '1.5s'")


def parse_rate(value: Any) -> float:
    return _parse(value, RATE_UNITS, "rate", "'10Mbit' or '500kbit'")


def parse_size(value: Any) -> int:
    return int(_parse(value, SIZE_UNITS, "size", "'20MB' or '64KiB'"))


def parse_percent(value: Any) -> float:
    result = _parse(value, PERCENT_UNITS, "percentage", "'5%' or '0.5%'")
    if result > 100:
        raise QuantityError(f"a percentage must be between 0% and 100%, got {value!r}")
    return result


def _trim(x: float) -> str:
    text = f"{x:.6g}"
    return text


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0ms"
    if seconds >= 1:
        return f"{_trim(seconds)}s"
    if seconds >= 1e-3:
        return f"{_trim(seconds * 1e3)}ms"
    return f"{_trim(seconds * 1e6)}us"


def format_rate(bps: float) -> str:
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{_trim(bps / scale)}{unit}"
    return f"{_trim(bps)}bit"


def format_size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale and (nbytes / scale) * 1000 == int((nbytes / scale) * 1000):
            return f"{_trim(nbytes / scale)}{unit}"
    return f"{int(nbytes)}B"


def format_percent(pct: float) -> str:
    return f"{_trim(pct)}%"


def _field(parse: Callable[[Any], float], fmt: Callable[[float], str], kind: str, pattern: str) -> Any:
    def validate(value: Any) -> float:
        try:
            return parse(value)
        except QuantityError as exc:
            raise PydanticCustomError("quantity", str(exc)) from None

    schema = {"anyOf": [{"type": "string", "pattern": pattern}, {"type": "number", "minimum": 0}],
              "description": kind}
    return (BeforeValidator(validate), PlainSerializer(fmt, return_type=str), WithJsonSchema(schema))


Duration = Annotated[(float, *_field(parse_duration, format_duration,
                                    "duration, e.g. 20ms, 1.5s (bare number: seconds)",
                                    r"^[0-9.]+\s*(s|sec|ms|us|ns|min)?$"))]
Rate = Annotated[(float, *_field(parse_rate, format_rate,
                                "rate, e.g. 10Mbit, 500kbit (bare number: bit/s)",
                                r"^[0-9.]+\s*([kKmMgG]?(bit|bps))?$"))]
Size = Annotated[(int, *_field(parse_size, format_size,
                              "size, e.g. 20MB, 64KiB (bare number: bytes)",
                              r"^[0-9.]+\s*([kKmMgG]i?[bB]?|[bB])?$"))]
Percent = Annotated[(float, *_field(parse_percent, format_percent,
                                   "percentage, e.g. 5%, 0.5%", r"^[0-9.]+\s*%?$"))]


class Quantity(float):
    """A number that prints with its unit, handed to templates so `{{ loss }}` renders as `5%`."""

    def __new__(cls, value: float, fmt: Callable[[float], str]) -> Quantity:
        obj = super().__new__(cls, value)
        obj._fmt = fmt  # type: ignore[attr-defined]
        return obj

    def __str__(self) -> str:
        return self._fmt(float(self))  # type: ignore[attr-defined]

    __repr__ = __str__
