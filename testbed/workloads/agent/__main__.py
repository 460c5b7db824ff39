"""``python -S path/to/agent/__main__.py MODE ...`` (or ``python -S path/to/agent``): Python runs this file with the agent's own directory first on
sys.path. That entry is swapped for the parent directory (at the end, so that nothing there shadows
the standard library), and the agent is imported as the package it is: its modules are then loaded
from their cached bytecode, and relative imports work as they do under ``testbed.workloads.agent``.
This file is the only one compiled at every start: keep it this small."""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
    del sys.path[0]
sys.path.append(os.path.dirname(_here))
_cli = __import__(os.path.basename(_here) + ".cli", fromlist=["main"])
_code = _cli.main()
os._exit(_code)  # stdout is flushed; do not wait for rr-server connection threads blocked in recv()
