"""Is a machine running the MPTCP v0.92 kernel? The v0.92 stack driver's own detection
(testbed.stacks.v092.probe) applied to what a playbook read on that machine.

kernel-mptcp-v0.92.yml reads the files on the target and runs this on the controller:

    python -m testbed.provision.v092check --release v0.92 < facts.json

facts.json: {"kernel": "4.4.110-mptcp", "dmesg": "...", "config": "..." | null,
             "files": {"/proc/sys/net/mptcp/mptcp_enabled": "1\\n", ...}}   (absent files: null or missing)
Prints one JSON object (the probe, or why not) and exits 0 when it is the wanted release with
MPTCP enabled, 1 otherwise (the message says what is missing), 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from testbed.stacks import v092


def check(facts: dict[str, Any], release: str = "v0.92") -> tuple[bool, dict[str, Any]]:
    files = {str(k): v for k, v in (facts.get("files") or {}).items() if isinstance(v, str)}
    kernel = str(facts.get("kernel") or "")
    p = v092.probe(files.get, kernel, str(facts.get("dmesg") or ""), facts.get("config") or None)
    if p is None:
        upstream = "/proc/sys/net/mptcp/enabled" in files
        return False, {"v092": False, "kernel": kernel, "message": (
            f"kernel {kernel} is not an MPTCP v0.9x kernel: no {v092.PROC_SYS}/mptcp_enabled"
            + (" (it has upstream MPTCP, net.mptcp.enabled)" if upstream else ""))}
    out: dict[str, Any] = {"v092": True, "kernel": kernel, "release": p.release, "sysctls": p.sysctls,
                           "snmp": p.snmp, "path_managers": list(p.path_managers), "schedulers": list(p.schedulers)}
    problems = []
    if p.release != release:
        problems.append(f"the kernel log says {p.release or 'nothing'} instead of 'MPTCP: Stable release {release}'"
                        + ("" if p.release else " (is dmesg readable?)"))
    if p.sysctls.get("mptcp_enabled") != "1":
        problems.append(f"net.mptcp.mptcp_enabled is {p.sysctls.get('mptcp_enabled')!r}, not 1")
    if not p.snmp:
        problems.append(f"no {v092.SNMP}")
    out["message"] = "; ".join(problems) if problems else \
        f"MPTCP {p.release} on {kernel}: path managers {', '.join(p.path_managers)}; schedulers {', '.join(p.schedulers)}"
    return not problems, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.provision.v092check", description=__doc__.split("\n")[0])
    ap.add_argument("--release", default="v0.92")
    args = ap.parse_args(argv)
    try:
        facts = json.load(sys.stdin)
        if not isinstance(facts, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        print(json.dumps({"v092": False, "message": f"unreadable facts: {exc}"}))
        return 2
    ok, out = check(facts, args.release)
    print(json.dumps(out, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
