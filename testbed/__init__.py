"""testbed: a Multipath TCP interop testbed orchestrator."""

import os

__version__ = "0.1.0"

# pydantic otherwise scans every installed distribution's entry points for plugins at first use
# (about 20 ms per start); testbed uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
