"""guestd sets and reads sysctls itself instead of starting procps' sysctl (a process costs ~0.1 s
in an emulated guest): what it does must be what sysctl does — values written, output, messages and
exit status. Each case runs both ways in a network namespace of its own (`unshare --net`), so that
the host's sysctls are never touched, and the results are compared."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import pytest

from testbed.emulation.qemu import guestd

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("sysctl") is None,
                                reason="needs unshare and procps' sysctl")

READ_BACK = ["net.ipv4.ip_forward", "net.ipv4.tcp_ecn", "net.ipv4.tcp_rmem", "net.ipv4.conf.all.rp_filter"]

CASES = [
    ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.tcp_ecn=2"],
    ["sysctl", "-q", "-w", "net.ipv4.tcp_rmem=4096 87380 1000000"],
    ["sysctl", "-q", "-w", "net.ipv4.tcp_ecn=1", "net.no.such=2", "net.ipv4.conf.all.rp_filter=2"],
    ["sysctl", "-q", "-e", "-w", "net.no.such=1", "net.ipv4.ip_forward=1"],
    ["sysctl", "-q", "-w", "net.ipv4.ip_forward=abc"],
    ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.tcp_rmem"],
    ["sysctl", "-n", "-e", "net.ipv4.ip_forward", "net.no.such"],
    ["sysctl", "-n", "net.no.such"],
    ["sysctl", "net.mptcp", "net.ipv4.tcp_congestion_control", "net.ipv4.route"],
    ["sysctl", "-e", "net.no.such"],
]


def _both(argv: list[str]) -> tuple[dict, dict]:
    real = subprocess.run(["unshare", "--net", "sh", "-c", '"$@" 2>&1; echo "rc=$?"; sysctl -n ' + " ".join(READ_BACK),
                           "sh", *argv], capture_output=True, text=True, timeout=30, check=True).stdout
    probe = ("import base64, json, subprocess, sys; from testbed.emulation.qemu import guestd; "
             "r = guestd.sysctl_here(json.loads(sys.argv[1]), True); "
             "print(json.dumps(None if r is None else {'rc': r['rc'], 'out': base64.b64decode(r['out']).decode()})); "
             "print(subprocess.run(['sysctl', '-n', *json.loads(sys.argv[2])], capture_output=True, text=True).stdout, end='')")
    ours = subprocess.run(["unshare", "--net", sys.executable, "-c", probe, json.dumps(argv), json.dumps(READ_BACK)],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    head, _, after = ours.partition("\n")
    done = json.loads(head)
    assert done is not None, f"{argv}: not done in-process"
    out, _, values = real.rpartition("rc=")
    rc, _, values = values.partition("\n")
    return ({"rc": 0 if rc == "0" else 1, "out": sorted(out.splitlines()), "values": values},
            {"rc": done["rc"], "out": sorted(done["out"].splitlines()), "values": after})


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c[1:]) for c in CASES])
def test_sysctl_done_in_the_daemon_matches_procps(argv):
    real, ours = _both(argv)
    assert ours == real


@pytest.mark.parametrize("argv", [
    ["sysctl", "-w", "net.ipv4.ip_forward=1"],  # prints what it set: left to sysctl
    ["sysctl", "-a"],
    ["sysctl", "-q", "-w", "net.ipv4.ip_forward"],  # a syntax error: sysctl's own message
    ["sysctl", "-n", "net/ipv4/ip_forward"],
    ["sysctl", "-p", "/etc/sysctl.conf"],
    ["ip", "link"],
])
def test_other_forms_are_left_to_sysctl(argv):
    assert guestd.sysctl_here(argv, True) is None


def test_output_is_split_when_not_merged():
    done = guestd.sysctl_here(["sysctl", "-n", "net.no.such", "net.ipv4.ip_forward"], False)
    assert done is not None and done["rc"] == 1
    assert base64.b64decode(done["out"]).decode().strip() in ("0", "1")
    assert base64.b64decode(done["err"]).decode().startswith("sysctl: cannot stat /proc/sys/net/no/such")
