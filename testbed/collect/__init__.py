"""Measurements taken from the kernels: counters, socket info, link byte series, pcaps, metadata."""
