"""Names from user files that end up in interface, namespace and file names: one strict pattern each."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

NODE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,14}$")
IF_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,14}$")
RUN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


def _checker(pattern: re.Pattern[str], what: str, rule: str):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise PydanticCustomError("name", f"'{value}' is not a valid {what}: {rule}")
        return value

    return AfterValidator(check)


NodeName = Annotated[str, _checker(NODE_NAME, "node name",
                                   "1-15 characters, lower-case letters, digits and '_', starting with a letter")]
IfName = Annotated[str, _checker(IF_NAME, "interface name",
                                 "1-15 characters, lower-case letters, digits, '_' and '.', starting with a letter")]
RunName = Annotated[str, _checker(RUN_NAME, "name",
                                  "up to 48 lower-case letters, digits, '-' and '_'")]
