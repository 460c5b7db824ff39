"""Errors the CLI turns into exit codes; user-facing problems carry a file position."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one place in a user's file."""

    file: str
    line: int | None
    col: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class SpecError(Exception):
    """Bad input: exit code 2, one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(SpecError):
    """Bad command-line input that has no file behind it."""

    def __init__(self, where: str, field: str, message: str):
        super().__init__([Problem(where, None, None, field, message)])


class CapabilityError(Exception):
    """This machine cannot run what was asked: exit code 3; the message names what is missing."""

    exit_code = 3


class RunError(Exception):
    """The testbed itself failed while running (not the system under test)."""

    exit_code = 1
