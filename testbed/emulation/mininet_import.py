"""Importing Mininet quickly and quietly.

Mininet imports `distutils.version`; in a venv with setuptools, setuptools' distutils shim makes that
cost about 125 ms per start. Python < 3.12 still has the standard library's distutils, so the shim
is removed first there.
"""

from __future__ import annotations

import sys
import warnings


def mininet_modules():
    if sys.version_info < (3, 12) and "distutils" not in sys.modules:
        try:
            import _distutils_hack  # type: ignore[import-not-found]

            _distutils_hack.remove_shim()
        except ImportError:
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mininet import log, net, node, nodelib
    log.setLogLevel("error")
    return net, node, nodelib
