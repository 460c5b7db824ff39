"""Workloads run between testbed nodes: the stdlib-only agent and the drivers that start it."""
