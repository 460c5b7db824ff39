"""guestd's netlink (rtnl.py) against iproute2 itself, in network namespaces of their own
(`unshare --net`): the MPTCP limits read as `ip mptcp limits show` prints them, and a reused guest's
network reset taking a namespace a cell configured back to a fresh one's state, as read by ip and tc.
Also which processes SysctlLedger trusts not to write sysctls."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.emulation.qemu import guestd

needs_ip = pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None or shutil.which("tc") is None,
                              reason="needs unshare, ip and tc")
MPTCP = Path("/proc/sys/net/mptcp/enabled").exists()


def _in_netns(script: str) -> str:
    """A shell script and then python code (after a line `---`) in one fresh network namespace."""
    shell, _, py = script.partition("\n---\n")
    r = subprocess.run(["unshare", "--net", "sh", "-c", f'set -e\n{shell}\n"$0" -c "$1"', sys.executable, py],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_ip
@pytest.mark.skipif(not MPTCP, reason="this kernel has no MPTCP")
@pytest.mark.parametrize("limits", ["", "ip mptcp limits set subflows 5 add_addr_accepted 3"])
def test_mptcp_limits_read_over_netlink_is_what_ip_prints(limits):
    out = _in_netns(f"""{limits}
ip mptcp limits show
---
from testbed.emulation.qemu import guestd
import base64
print(base64.b64decode(guestd.mptcp_limits_here(["ip", "mptcp", "limits", "show"])["out"]).decode(), end="")""")
    real, ours = out[:len(out) // 2], out[len(out) // 2:]
    assert real == ours and real.startswith("add_addr_accepted "), out
    assert guestd.mptcp_limits_here(["ip", "mptcp", "endpoint", "show"]) is None


STATE = """ip -o link | sed 's/link.ether [0-9a-f:]* brd [0-9a-f:]*//'; ip -4 -br addr; ip route show table all | grep -v '^local\\|^broadcast\\|^multicast' || true
ip rule; ip -6 rule; ip neigh show nud permanent; tc qdisc show"""


@needs_ip
def test_network_reset_over_netlink_leaves_what_a_fresh_namespace_has():
    fresh = _in_netns("ip link add tbv0 type veth peer name tbv1\n" + STATE + "\n---\npass")
    mptcp = "ip mptcp limits set subflows 4 add_addr_accepted 4; ip mptcp endpoint add 10.9.0.1 dev tbv0 subflow"
    out = _in_netns(f"""ip link add tbv0 type veth peer name tbv1
ip link add tbifb9 type ifb
ip link set tbv0 up; ip link set tbv1 up; ip link set tbv0 mtu 1400
ip addr add 10.9.0.1/24 dev tbv0; ip addr add 10.9.1.1/24 dev tbv0; ip -6 addr add fd00::1/64 dev tbv0 nodad
ip route add 10.8.0.0/16 via 10.9.0.2; ip route add default via 10.9.0.2 table 100
ip -6 route add fd01::/64 via fd00::2 table 101
ip rule add from 10.9.1.1 table 100 priority 1000; ip -6 rule add from fd00::1 table 101 priority 1001
ip rule del priority 32767
ip neigh add 10.9.0.7 lladdr 02:00:00:00:00:07 dev tbv0 nud stale
tc qdisc add dev tbv0 root handle 1: htb default 1; tc qdisc add dev tbv0 ingress
tc qdisc add dev tbv1 root handle 2: tbf rate 10mbit burst 32k latency 50ms
{mptcp if MPTCP else "true"}
---
import json, os
from socket import if_nametoindex as index
from testbed.emulation.qemu import rtnl
done = rtnl.reset({{"tbv0": index("tbv0"), "tbv1": index("tbv1")}}, {{"tbifb9": index("tbifb9")}},
                  ["add_addr_accepted", "0", "subflows", "2"], {MPTCP})
print(json.dumps(done))
os.system({STATE!r})
{'os.system("ip mptcp endpoint show; ip mptcp limits show")' if MPTCP else ''}""")
    head, _, after = out.partition("\n")
    done = json.loads(head)
    assert done["errors"] == [], done
    assert done["links_deleted"] == 1 and done["qdiscs_deleted"] == 3 and done["addresses_flushed"] == 2, done
    if MPTCP:
        after, _, limits = after.rpartition("add_addr_accepted")
        assert limits.split() == ["0", "subflows", "2"], limits
    # the links are left down with MTU 1500, as a fresh veth pair is; nothing else differs
    assert after.replace("DOWN", "down") == fresh.replace("DOWN", "down"), (after, fresh)


@pytest.mark.parametrize(("argv", "trusted"), [
    (["ip", "-force", "-batch", "/nonexistent"], False),  # cannot see what it does
    (["ip", "link", "set", "eth0", "up"], True),
    (["tc", "qdisc", "show"], True),
    (["ip", "netns", "exec", "x", "sysctl", "-w", "a=1"], False),
    (["tc", "exec", "bpf", "imp"], False),
    (["ip", "ntable", "change", "name", "arp_cache", "dev", "eth0", "queue", "8"], False),
    (["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], False),
    (["/usr/sbin/nstat", "-az"], True),
])
def test_the_ledger_trusts_only_processes_that_cannot_write_sysctls(argv, trusted):
    ledger = guestd.SysctlLedger()
    ledger.started(argv)
    assert (ledger.foreign is None) == trusted


def test_the_ledger_reads_back_what_was_written_and_what_the_kernel_changes_with_it(tmp_path):
    batch = tmp_path / "batch"
    batch.write_text("link set eth0 up\naddr add 10.0.0.1/24 dev eth0\n")
    ledger = guestd.SysctlLedger()
    ledger.started(["ip", "-force", "-batch", str(batch)])
    ledger.wrote("/proc/sys/net/ipv4/conf/all/rp_filter")
    ledger.wrote("/proc/sys/net/ipv4/ip_forward")
    assert ledger.foreign is None
    changed = [p for p in ["/proc/sys/net/ipv4/conf/wlan0/rp_filter", "/proc/sys/net/ipv4/conf/wlan0/forwarding",
                           "/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/wlan0/mtu",
                           "/proc/sys/net/ipv4/ip_forward"] if not ledger.may_have_changed(p)]
    assert changed == []
    assert not ledger.may_have_changed("/proc/sys/net/ipv4/conf/wlan0/accept_redirects")
    assert not ledger.may_have_changed("/proc/sys/net/ipv4/tcp_ecn")
    batch.write_text("netns exec x sh\n")
    ledger.started(["ip", "-batch", str(batch)])
    assert ledger.foreign == "ip"
    assert json.dumps(ledger.foreign)
