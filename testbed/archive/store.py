"""A run directory written under a temporary name and renamed into place when complete."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from testbed.archive.redact import TEXT_SUFFIXES, redact, redact_data

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def utc_stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunDir:
    def __init__(self, root: Path, name: str, tag: str | None = None):
        # Absolute: the run's files are named to network functions, agents and cells that do not
        # share the caller's current directory (tayga refuses a relative data-dir outright).
        root = Path(os.path.abspath(root))
        self.root = root
        self.tag = tag or secrets.token_hex(3)
        self.name = f"{utc_stamp()}-{name}-{self.tag}"
        root.mkdir(parents=True, exist_ok=True)
        self.tmp = root / f".{self.name}.partial"
        self.tmp.mkdir()
        self.final = root / self.name

    @classmethod
    def adopt(cls, tmp: Path) -> RunDir:
        """An existing partial directory (`.<name>.partial`), e.g. left by a killed run."""
        self = cls.__new__(cls)
        self.root = tmp.parent
        self.name = tmp.name.removeprefix(".").removesuffix(".partial")
        self.tag = self.name.rsplit("-", 1)[-1]
        self.tmp = tmp
        self.final = self.root / self.name
        return self

    def path(self, rel: str) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, rel: str, data: Any) -> Path:
        p = self.path(rel)
        p.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        return p

    def write_text(self, rel: str, text: str) -> Path:
        p = self.path(rel)
        p.write_text(text)
        return p

    def files(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                out[str(p.relative_to(self.tmp))] = sha256_file(p)
        return out

    def finalize(self, manifest: dict) -> Path:
        """Hash every file, write the manifest, and move the directory into place (never over another)."""
        self.redact_files()
        manifest = redact_data(json.loads(json.dumps(manifest, default=str)))
        manifest["files"] = self.files()
        self.write_json(MANIFEST, manifest)
        fsync_tree(self.tmp)
        while True:
            try:
                os.rename(self.tmp, self.final)  # fails rather than replace a non-empty directory
                break
            except OSError:
                if not self.final.exists():
                    raise
                self.final = self.root / f"{self.name}-{secrets.token_hex(2)}"
        return self.final

    def redact_files(self) -> None:
        """Secrets out of every text file (captures are headers only and stay as they are)."""
        for p in self.tmp.rglob("*"):
            is_json = p.suffix == ".json"
            if not p.is_file() or not (is_json or p.suffix in TEXT_SUFFIXES) or p.stat().st_size > 64 << 20:
                continue
            try:
                text = p.read_text()
            except UnicodeDecodeError:
                continue
            if is_json:
                try:
                    data = json.loads(text)
                except ValueError:
                    data = None
                if data is not None:
                    clean_data = redact_data(data)
                    if clean_data != data:
                        p.write_text(json.dumps(clean_data, indent=2) + "\n")
                    continue
            clean = redact(text)
            if clean != text:
                p.write_text(clean)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def verify(run_dir: Path) -> dict[str, list[str]]:
    """Missing, extra and altered files against the manifest."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    listed: dict[str, str] = manifest.get("files", {})
    present = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != MANIFEST}
    return {"missing": sorted(set(listed) - present), "extra": sorted(present - set(listed)),
            "altered": sorted(f for f in set(listed) & present if sha256_file(run_dir / f) != listed[f])}
