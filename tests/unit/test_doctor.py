"""The doctor, run for real on this machine, and its local-mode logic on made-up answers."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
from rich.console import Console

from testbed import doctor
from testbed.doctor import Check

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def found() -> dict[str, Check]:
    return doctor.by_name(doctor.checks())


def _netem_independently() -> bool:
    """netem probed another way than the doctor: a named namespace, the qdisc read back, then deleted."""
    ns = f"tbtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        add = subprocess.run(["tc", "-n", ns, "qdisc", "replace", "dev", "lo", "root", "netem", "delay", "3ms"],
                             capture_output=True, text=True, timeout=10, check=False)
        shown = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", "lo"],
                               capture_output=True, text=True, timeout=10, check=True)
        return add.returncode == 0 and "netem" in shown.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True, timeout=10)


def test_structure(found: dict[str, Check]) -> None:
    all_checks = doctor.checks()
    names = [c.name for c in all_checks]
    assert len(names) == len(set(names))
    for name in (*doctor.LOCAL_MODE_REQUIRES, doctor.NETEM, *doctor.FALLBACK_SHAPING, doctor.TAYGA, doctor.QEMU,
                 doctor.KVM, doctor.TCPDUMP, doctor.IPERF3, doctor.MPTCPIZE, doctor.PING):
        assert name in names
    for c in all_checks:
        assert isinstance(c.ok, bool) and isinstance(c.required, bool)
        assert c.detail, f"{c.name}: no detail"
        if c.ok:
            assert c.disables == "", c.name
        else:
            assert c.disables, f"{c.name}: missing but says nothing about what it disables"
        assert c.required == (c.name in doctor.LOCAL_MODE_REQUIRES), c.name
    assert found[doctor.ROOT].disables == "" or "sudo" in found[doctor.ROOT].disables


def test_tool_checks_agree_with_path(found: dict[str, Check]) -> None:
    for name, binary in ((doctor.TCPDUMP, "tcpdump"), (doctor.IPERF3, "iperf3"), (doctor.QEMU, "qemu-system-x86_64"),
                         (doctor.TAYGA, "tayga"), (doctor.MPTCPIZE, "mptcpize")):
        on_path = shutil.which(binary, path=os.environ["PATH"] + ":/usr/sbin:/sbin") is not None
        assert found[name].ok == on_path, name
    if not found[doctor.QEMU].ok:
        assert found[doctor.QEMU].disables == "guest-kernel implementations (matrix)"


def test_mptcp_is_upstream_here(found: dict[str, Check]) -> None:
    mptcp = found[doctor.MPTCP]
    assert mptcp.ok
    assert "upstream" in mptcp.detail
    assert os.uname().release in mptcp.detail


@needs_root
def test_netem_answer_agrees_with_independent_probe(found: dict[str, Check]) -> None:
    expected = _netem_independently()
    assert found[doctor.NETEM].ok == expected
    assert doctor.shaping_backend_name(found.values()) == ("netem" if expected else "fallback")
    if not expected:
        assert doctor.NETEM_FALLBACK in found[doctor.NETEM].detail
        assert not found[doctor.NETEM].required


@needs_root
def test_local_mode_works_here(found: dict[str, Check]) -> None:
    assert doctor.missing_for_local_mode(found.values()) == []
    assert doctor.local_mode_ok(found.values())


@needs_root
def test_no_namespace_left_behind(found: dict[str, Check]) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
    assert "tbdoctor" not in listed.stdout and "tbtest" not in listed.stdout


def test_render(found: dict[str, Check]) -> None:
    out = io.StringIO()
    doctor.render(list(found.values()), Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    for name in found:
        assert name in text
    assert "local mode" in text


# --- local-mode logic on synthetic answers -----------------------------------------------------------

def _synthetic(**ok: bool) -> list[Check]:
    names = (*doctor.LOCAL_MODE_REQUIRES, doctor.NETEM, *doctor.FALLBACK_SHAPING, doctor.QEMU, doctor.TCPDUMP)
    return [Check(n, ok.get(n, True), "x", "" if ok.get(n, True) else "something",
                  n in doctor.LOCAL_MODE_REQUIRES) for n in names]


def test_everything_present() -> None:
    checks = _synthetic()
    assert doctor.local_mode_ok(checks)
    assert doctor.shaping_backend_name(checks) == "netem"


@pytest.mark.parametrize("name", doctor.LOCAL_MODE_REQUIRES)
def test_each_required_piece_is_needed(name: str) -> None:
    checks = _synthetic(**{name: False})
    assert not doctor.local_mode_ok(checks)
    assert doctor.missing_for_local_mode(checks) == [name]


def test_optional_pieces_do_not_matter() -> None:
    assert doctor.local_mode_ok(_synthetic(**{doctor.QEMU: False, doctor.TCPDUMP: False}))


def test_fallback_replaces_netem() -> None:
    checks = _synthetic(**{doctor.NETEM: False})
    assert doctor.local_mode_ok(checks)
    assert doctor.shaping_backend_name(checks) == "fallback"


@pytest.mark.parametrize("name", doctor.FALLBACK_SHAPING)
def test_fallback_needs_all_its_parts(name: str) -> None:
    without_netem = _synthetic(**{doctor.NETEM: False, name: False})
    assert not doctor.local_mode_ok(without_netem)
    (missing,) = doctor.missing_for_local_mode(without_netem)
    assert doctor.NETEM in missing and name in missing
    # With netem the fallback's parts are not needed.
    assert doctor.local_mode_ok(_synthetic(**{name: False}))


def test_absent_check_counts_as_missing() -> None:
    checks = [c for c in _synthetic() if c.name != doctor.MININET]
    assert not doctor.local_mode_ok(checks)
    assert doctor.missing_for_local_mode(checks) == [doctor.MININET]
    assert not doctor.local_mode_ok([])
