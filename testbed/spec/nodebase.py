"""What every node that has its own network namespace shares (hosts, routers, network functions)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from testbed.spec.model import Model
from testbed.spec.stack import StackConfig


class NodeBase(Model):
    sysctls: dict[str, str | int] = Field(default_factory=dict, description="extra sysctls, full names")
    mptcp: StackConfig = Field(default_factory=StackConfig)

    @field_validator("sysctls")
    @classmethod
    def _sysctl_names(cls, values: dict[str, Any]) -> dict[str, Any]:
        for name in values:
            if not all(part.replace("_", "").replace("-", "").isalnum() for part in name.split(".")):
                raise PydanticCustomError("sysctl", f"'{name}' is not a sysctl name")
            if not name.startswith("net."):
                raise PydanticCustomError("sysctl", f"'{name}': only per-namespace net.* sysctls can be set")
        return values
