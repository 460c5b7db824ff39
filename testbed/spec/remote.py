"""Where a host runs when it runs on a remote machine (the `ssh` node backend)."""

from __future__ import annotations

from pydantic import Field, field_validator

from testbed.spec.model import Model
from testbed.spec.source import absolute


class RemoteHost(Model):
    """A remote machine that carries a topology host (the `ssh` backend): its kernel runs the host's
    MPTCP stack; its links are VXLAN tunnels to where the link's peer is on this machine."""

    inventory: str = Field(description="Ansible inventory (YAML) that names the machine; a relative path is "
                                       "taken from the current directory")
    host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="the machine's inventory name")

    @field_validator("inventory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(absolute(value))
