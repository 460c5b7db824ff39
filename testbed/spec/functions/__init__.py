"""Node kinds that are network functions. Each kind's model lives in its own module here and is
listed below; `testbed.emulation.functions.registry` maps the same kinds to their implementations."""

from __future__ import annotations

MODULES: tuple[str, ...] = (
    "nat64",
    "middlebox",
    "nat44",
    "lb",
    "converter",
    "socks",
)  # each names the module testbed.spec.functions.<name>

FUNCTION_MODELS: tuple[type, ...] = ()
for _module in MODULES:
    _mod = __import__(f"testbed.spec.functions.{_module}", fromlist=["MODEL"])
    FUNCTION_MODELS += (_mod.MODEL,)
FUNCTION_KINDS: tuple[str, ...] = tuple(m.model_fields["kind"].annotation.__args__[0] for m in FUNCTION_MODELS)
