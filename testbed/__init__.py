"""testbed: a Multipath TCP interop testbed orchestrator."""

__version__ = "0.1.0"
