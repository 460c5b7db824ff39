"""User-given paths are resolved against the current directory where they enter the testbed."""

from __future__ import annotations

from pathlib import Path

from testbed.archive.store import RunDir
from testbed.emulation.qemu import images
from testbed.spec.source import absolute
from testbed.spec.stack import StackConfig
from tests.conftest import run_cli


def test_absolute_keeps_the_path_as_given_but_anchored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("results") == tmp_path / "results"
    assert absolute("a/../b/./c") == tmp_path / "b" / "c"
    assert absolute("/srv/results") == Path("/srv/results")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert absolute("link/x") == tmp_path / "link" / "x"  # not resolved to real/: reads as the user gave it


def test_run_directories_and_the_image_cache_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir(Path("results"), "x")
    assert run.root == tmp_path / "results" and run.tmp.is_absolute() and run.final.is_absolute()
    monkeypatch.setenv("TESTBED_IMAGE_CACHE", "cache")
    assert images.cache_dir() == tmp_path / "cache"
    assert StackConfig.model_validate({"guest": "build/linux-6.1"}).guest == str(tmp_path / "build/linux-6.1")
    assert StackConfig.model_validate({"guest": "linux-6.1"}).guest == "linux-6.1"  # a name of the cache


def test_a_relative_image_directory_is_found_from_the_current_directory(tmp_path):
    image = tmp_path / "build" / "mine"
    image.mkdir(parents=True)
    (image / images.MANIFEST).write_text("{}")
    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nnodes:\n  a: {image: build/mine}\n  s: {kind: switch}\n  b: {}\n"
                    "links: [[a, s], [s, b]]\n")
    r = run_cli("render", "t.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"image: {image}" in r.stdout  # what qemu and the cells get: absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("render", str(topo), cwd=elsewhere)
    assert r.returncode == 2 and f"no built guest image in {elsewhere}/build/mine" in r.stderr, r.stderr
