"""Run directories: atomic creation, manifest with every file's sha256, verification."""
