"""MPTCP stack drivers and kernel flavour/version detection."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def stack_driver(node: Any) -> ModuleType:
    """The driver for a node's kernel: testbed.stacks.v092 for a node that says it runs the
    out-of-tree v0.9x stack (`mptcp_flavour`), testbed.stacks.upstream otherwise. Both have the same
    functions (check_supported, configure, add_endpoint, remove_endpoint, set_backup)."""
    from testbed.stacks import upstream, v092

    return v092 if getattr(node, "mptcp_flavour", None) == "v0.9x" else upstream
