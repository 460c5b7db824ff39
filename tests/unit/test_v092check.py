"""The v0.92 check the kernel-mptcp-v0.92 playbook runs after boot, and doctor's summary: both are
the v0.92 stack driver's detection (testbed.stacks.v092.probe) on fixtures of that kernel's formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed import doctor
from testbed.provision import v092check
from testbed.stacks import v092

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "v092"


def _facts(**change) -> dict:
    files = {f"{v092.PROC_SYS}/mptcp_enabled": "1\n", f"{v092.PROC_SYS}/mptcp_path_manager": "fullmesh\n",
             f"{v092.PROC_SYS}/mptcp_scheduler": "default\n", v092.SNMP: (FIX / "snmp").read_text()}
    facts = {"kernel": "4.4.110.mptcp", "dmesg": (FIX / "dmesg").read_text(), "config": (FIX / "config").read_text(),
             "files": files}
    facts.update(change)
    return facts


def test_a_v092_kernel_passes_with_what_its_build_has():
    ok, out = v092check.check(_facts())
    assert ok, out
    assert out["release"] == "v0.92" and out["path_managers"] == ["default", "fullmesh", "ndiffports", "binder"]
    assert out["schedulers"] == ["default", "roundrobin"] and out["snmp"]


def test_what_is_missing_is_named():
    facts = _facts(dmesg="[0.0] Linux version 4.4.110\n")
    facts["files"][f"{v092.PROC_SYS}/mptcp_enabled"] = "0\n"
    del facts["files"][v092.SNMP]
    ok, out = v092check.check(facts)
    assert not ok
    assert "instead of 'MPTCP: Stable release v0.92'" in out["message"]
    assert "mptcp_enabled is '0'" in out["message"] and "no /proc/net/mptcp_net/snmp" in out["message"]
    ok, out = v092check.check(_facts(), release="v0.95")
    assert not ok and "says v0.92 instead of 'MPTCP: Stable release v0.95'" in out["message"]


def test_an_upstream_kernel_is_not_v092():
    ok, out = v092check.check({"kernel": "6.18.0", "files": {"/proc/sys/net/mptcp/enabled": "1\n"}})
    assert not ok and out["v092"] is False and "upstream MPTCP" in out["message"]


def test_the_command_reads_stdin_and_sets_the_exit_code():
    cmd = [sys.executable, "-m", "testbed.provision.v092check", "--release", "v0.92"]
    done = subprocess.run(cmd, input=json.dumps(_facts()), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["release"] == "v0.92", done
    done = subprocess.run(cmd, input="[1]", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unreadable facts" in done.stdout


def test_doctor_describes_a_v092_kernel_through_the_driver():
    files = _facts()["files"]
    text = doctor.oot_summary(files.get, "4.4.110.mptcp", (FIX / "dmesg").read_text(), (FIX / "config").read_text())
    assert text is not None and text.startswith("out-of-tree v0.92 (RFC 6824 v0), kernel 4.4.110.mptcp")
    assert "net.mptcp.mptcp_enabled=1" in text and "counters in /proc/net/mptcp_net/snmp" in text
    assert "path managers: default, fullmesh, ndiffports, binder; schedulers: default, roundrobin" in text
    assert doctor.oot_summary({}.get, "6.18.0", "", None) is None
    no_log = doctor.oot_summary(files.get, "4.4.110.mptcp", "", None)
    assert no_log is not None and no_log.startswith("out-of-tree v0.9x")
