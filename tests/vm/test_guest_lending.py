"""A booted guest lent to other processes (matrix cells run as `testbed run` subprocesses): a
borrower drives it through the inherited control channel and gives it back clean; a borrower that is
killed mid-use costs a reset, not the guest; one that loses a TAP costs the guest. Then a real matrix
whose guest cells boot each guest once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.vm.test_guest_nodes import guests  # noqa: F401 - the fixture: skips naming what is missing

SUITE = str(ROOT / "experiments" / "suites" / "hackathon.yaml")

# The borrower: what a cell's network does with a lent guest (qemu.node.LentGuests), then an action.
BORROWER = textwrap.dedent("""
    import json, os, signal, subprocess, sys
    from testbed.emulation.qemu import images, node
    lent = node.lent_guests_from_environment()
    guest = lent.take(images.find("linux-6.1"), 1)
    node.rename_nics(guest, ["wlan0"])
    rc, out = guest.run(["ip", "-br", "link", "show"])
    print(json.dumps({"name": guest.name, "links": out, "uname": guest.run(["uname", "-r"])[1].strip()}), flush=True)
    action = sys.argv[1]
    if action == "die":  # killed with a process running in the guest and addresses set
        guest.run(["ip", "addr", "add", "10.9.9.9/24", "dev", "wlan0"], check=True)
        guest.start(["sleep", "300"])
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "lose-tap":  # as if the cell's namespace took the TAP with it
        subprocess.run(["ip", "link", "del", guest.nics[0].tap], check=True)
        os.kill(os.getpid(), signal.SIGKILL)
    guest.run(["ip", "addr", "add", "10.9.9.9/24", "dev", "wlan0"], check=True)
    print("given back:", lent.give(guest))
""")


def borrow(lender, cell: str, action: str):
    from testbed.matrix.guests import GuestNeed, cell_env

    with lender.lend(cell, [GuestNeed("linux-6.1", 1)]) as lease:
        assert lease is not None
        r = subprocess.run([sys.executable, "-c", BORROWER, action], env=cell_env(lease), pass_fds=lease.fds,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        (guest,) = lease.guests
    return r, guest


@pytest.mark.usefixtures("guests", "no_leaks")
def test_a_lent_guest_comes_back_clean_or_is_replaced(tmp_path):
    from testbed.matrix.guests import GuestLender
    from testbed.state import RunState

    state = RunState(f"lender-{tmp_path.name}"[:40])
    (tmp_path / "work").mkdir()
    lender = GuestLender(state, tmp_path / "work", tmp_path / "logs", "abcdef")
    try:
        r, first = borrow(lender, "one", "give")
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout.splitlines()[0])
        assert seen["name"] == first.name and seen["uname"].startswith("6.1.")
        assert re.search(r"^wlan0\s", seen["links"], re.M), seen["links"]
        assert "given back: True" in r.stdout
        returned = json.loads((tmp_path / "work" / "one.returned.json").read_text())[first.name]
        assert returned["clean"] and returned["reset"]["network"]["links_down"] == 1 and not returned["reset"]["network"]["errors"]
        # the lender reads the channel again: the address the borrower set is gone (reset), the NIC
        # keeps the name it was left with
        assert "10.9.9.9" not in first.run(["ip", "-br", "addr"])[1]
        assert first.nics[0].ifname == "wlan0"

        r, second = borrow(lender, "two", "die")
        assert r.returncode == -9, r.stderr
        assert second is first  # no report from the cell: checked and reset here, then kept
        rc, out = first.run(["sh", "-c", "pgrep -x sleep; ip -br addr show dev wlan0"])
        assert "10.9.9.9" not in out and not re.search(r"^\d+$", out, re.M), out

        r, third = borrow(lender, "three", "lose-tap")
        assert third is first and r.returncode == -9
        stats = lender.stats.as_dict()
        assert stats | {"boot_seconds": None, "reset_seconds": None, "reset_step_median_seconds": None} == {
            "booted": 1, "lent": 3, "reused": 2, "discarded": 1, "boot_seconds": None, "reset_seconds": None,
            "reset_step_median_seconds": None}
        # the one cell that gave its guest back clean reported its reset, step by step
        assert len(stats["reset_seconds"]) == 1 and stats["reset_seconds"][0] > 0
        assert set(stats["reset_step_median_seconds"]) == {"kill", "network", "sysctls"}
        assert first.proc is None  # shut down: a guest with a lost NIC cannot serve another cell
        r, fourth = borrow(lender, "four", "give")
        assert r.returncode == 0 and fourth is not first and lender.stats.booted == 2
    finally:
        lender.close()
        state.remove()


@pytest.mark.usefixtures("guests", "no_leaks")
def test_the_matrix_boots_each_guest_once(tmp_path):
    r = run_cli("matrix", SUITE, "--clients", "linux-6.1", "--servers", "host,linux-6.1",
                "--scenarios", "basic-handshake,tcp-server", "--results", str(tmp_path), timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = Path(re.search(r"^archive: (.+)$", r.stdout, re.M).group(1))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    matrix = json.loads((run_dir / "matrix.json").read_text())
    # 4 cells, 6 guest hosts: two guests booted (a 6.1 × 6.1 cell needs both at once), lent 6 times
    assert manifest["guests"]["booted"] == 2 and manifest["guests"]["lent"] == 6, manifest["guests"]
    assert manifest["guests"]["reused"] == 4 and manifest["guests"]["discarded"] == 0
    names = set()
    for key, cell in matrix["cells"].items():
        assert cell["verdict"] == "as-expected", (key, cell["reason"])
        nodes = json.loads((run_dir / cell["dir"] / "manifest.json").read_text())["nodes"]
        for role in ("client", "server"):
            if nodes[role]["backend"] == "qemu":
                assert nodes[role]["reused"] and nodes[role]["kernel"].startswith("6.1."), nodes[role]
                names.add(nodes[role]["guest"])
    assert len(names) == 2
    consoles = sorted(p.name for p in (run_dir / "logs" / "guests").iterdir())
    assert len(consoles) == 4 and all(n.endswith(("-console.log", "-qemu.log")) for n in consoles), consoles
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # nothing written after finalize
