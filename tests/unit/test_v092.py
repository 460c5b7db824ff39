"""The MPTCP v0.92 stack driver against fixtures written from that kernel's formats
(tests/fixtures/v092/README says where each comes from)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from testbed.errors import CapabilityError, RunError
from testbed.spec.stack import StackConfig
from testbed.stacks import v092

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "v092"


class FakeV092Node:
    """A node whose 'kernel' keeps net.mptcp sysctls and interface flags as v0.92 does: `ip link set
    dev X multipath MODE` sets IFF_NOMULTIPATH / IFF_MPBACKUP, /sys/class/net/X/flags shows them."""

    def __init__(self, interfaces: list[str], patched_ip: bool = True):
        self.name = "client"
        self.flags = {i: 0x1003 for i in interfaces}  # UP|BROADCAST|MULTICAST
        self.sysctls: dict[str, str] = {}
        self.patched_ip = patched_ip
        self.commands: list[list[str]] = []

    def _one(self, argv: list[str]) -> tuple[int, str]:
        self.commands.append(argv)
        if argv[:3] == ["sysctl", "-q", "-w"]:
            for kv in argv[3:]:
                k, _, v = kv.partition("=")
                self.sysctls[k] = v
            return 0, ""
        if argv[:2] == ["ip", "link"] and "multipath" in argv:
            if not self.patched_ip:
                return 255, 'Error: either "dev" is duplicate, or "multipath" is a garbage.\n'
            dev, mode = argv[argv.index("dev") + 1], argv[-1]
            f = self.flags[dev] & ~(v092.IFF_NOMULTIPATH | v092.IFF_MPBACKUP)
            self.flags[dev] = f | {"off": v092.IFF_NOMULTIPATH, "backup": v092.IFF_MPBACKUP, "on": 0}[mode]
            return 0, ""
        if argv[0] == "cat" and argv[1].startswith("/sys/class/net/"):
            return 0, f"0x{self.flags[argv[1].split('/')[4]]:x}\n"
        if argv == ["cat", v092.SNMP]:
            return 0, (FIX / "snmp").read_text()
        return 127, f"unexpected command {argv}\n"

    def cmd(self, line: str) -> str:  # what testbed.emulation.nodeexec.run sends: argv quoted, then the rc
        argv = shlex.split(line.split(" 2>&1;")[0])
        rc, out = self._one(argv)
        return f"{out}__testbed_rc={rc}\n"

    def run_many(self, commands: list[list[str]]) -> None:
        for c in commands:
            rc, out = self._one(list(c))
            if rc:
                raise RunError(out)


class Res:
    """The part of a resolved topology the driver reads: a node's interfaces by name."""

    def __init__(self, node: str, names: list[str]):
        self.interfaces = {node: [type("I", (), {"name": n})() for n in names]}


def fixture_probe() -> v092.Probe:
    files = {f"{v092.PROC_SYS}/{n}": v for n, v in (("mptcp_enabled", "1"), ("mptcp_checksum", "1"),
                                                   ("mptcp_path_manager", "fullmesh"), ("mptcp_scheduler", "default"),
                                                   ("mptcp_syn_retries", "3"), ("mptcp_version", "0"),
                                                   ("mptcp_debug", "0"))}
    files[v092.SNMP] = (FIX / "snmp").read_text()
    p = v092.probe(files.get, "4.4.110.mptcp", (FIX / "dmesg").read_text(), (FIX / "config").read_text())
    assert p is not None
    return p


def test_detection_from_the_kernel_log_sysctls_and_config():
    p = fixture_probe()
    assert p.release == "v0.92" and p.snmp and p.sysctls["mptcp_path_manager"] == "fullmesh"
    assert p.path_managers == ("default", "fullmesh", "ndiffports", "binder")  # binder=m counts
    assert p.schedulers == ("default", "roundrobin")  # redundant is not set
    f = v092.features(p)
    assert f.flavour == "v0.9x" and f.version == (4, 4) and f.release == "v0.92"
    assert f.as_dict()["release"] == "v0.92" and "mptcp_syn_retries" in f.sysctls
    assert v092.probe({}.get, "6.18.0") is None  # an upstream kernel has no mptcp_enabled
    assert v092.release_from_dmesg("MPTCP: Stable release v0.91") == "v0.91"


def test_counters_parse_and_read_under_upstream_names():
    raw = v092.parse_v0_snmp((FIX / "snmp").read_text())
    assert len(raw) == 40 and raw["MPTCPMPTCPRetrans"] == 12 and raw["MPTCPMPJoinSynTx"] == 1
    named = v092.counters(FakeV092Node(["eth0"]))
    assert named["MPTcpExtMPCapableSYNACKRX"] == 1 and named["MPTcpExtMPJoinSynAckRx"] == 1
    assert named["MPTcpExtAddAddr"] == 1 and named["MPTCPMPTCPCsumEnabled"] == 1


def test_connection_table():
    (conn,) = v092.connections((FIX / "mptcp").read_text())
    assert conn["local"] == "10.0.0.2" and conn["local_port"] == 41394
    assert conn["remote"] == "10.0.9.2" and conn["remote_port"] == 5201
    assert conn["subflows"] == 2 and conn["state"] == 1 and not conn["ipv6"]


def test_endpoints_become_fullmesh_and_per_interface_multipath():
    node = FakeV092Node(["wlan0", "cell0", "eth9"])
    cfg = StackConfig(endpoints=[{"interface": "cell0", "flags": ["subflow", "backup"]},
                                 {"interface": "wlan0", "flags": ["subflow"]}],
                      limits={"subflows": 2}, sysctls={"checksum_enabled": 0, "mptcp_syn_retries": 5})
    applied = v092.configure(node, "client", cfg, Res("client", ["wlan0", "cell0", "eth9"]))
    assert node.sysctls == {"net.mptcp.mptcp_enabled": "1", "net.mptcp.mptcp_path_manager": "fullmesh",
                            "net.mptcp.mptcp_checksum": "0", "net.mptcp.mptcp_syn_retries": "5"}
    assert applied["multipath"] == {"wlan0": "on", "cell0": "backup", "eth9": "off"}
    assert ["ip", "link", "set", "dev", "cell0", "multipath", "backup"] in node.commands
    assert {i: v092.mode_of(f) for i, f in node.flags.items()} == applied["multipath"]
    assert applied["ignored"] and "limits" in applied["ignored"][0]
    # events: the same switches
    v092.set_backup(node, "client", "cell0", False, None)  # type: ignore[arg-type]
    v092.remove_endpoint(node, "client", "wlan0", None)  # type: ignore[arg-type]
    assert v092.mode_of(node.flags["cell0"]) == "on" and v092.mode_of(node.flags["wlan0"]) == "off"


def test_no_endpoints_is_the_default_path_manager_and_tcp_switches_mptcp_off():
    node = FakeV092Node(["eth0"])
    v092.configure(node, "client", StackConfig(), Res("client", ["eth0"]))
    assert node.sysctls["net.mptcp.mptcp_path_manager"] == "default"
    assert not any("multipath" in c for c in node.commands)
    node = FakeV092Node(["eth0"])
    v092.configure(node, "client", StackConfig(stack="tcp", sysctls={"scheduler": "x"}), Res("client", ["eth0"]))
    assert node.sysctls == {"net.mptcp.mptcp_enabled": "0"}


def test_a_stock_iproute2_fails_loudly():
    node = FakeV092Node(["wlan0"], patched_ip=False)
    with pytest.raises(RunError, match="multipath"):
        v092.configure(node, "client", StackConfig(endpoints=[{"interface": "wlan0"}]), Res("client", ["wlan0"]))


def test_what_v092_cannot_do_is_refused_before_anything_is_built():
    f = v092.features(fixture_probe())
    v092.check_supported(StackConfig(endpoints=[{"interface": "a", "flags": ["signal"]}],
                                     sysctls={"scheduler": "roundrobin"}), f, "server")
    bad = [StackConfig(endpoints=[{"interface": "a", "flags": ["laminar"]}]),
           StackConfig(sysctls={"stale_loss_cnt": 2}),
           StackConfig(sysctls={"scheduler": "redundant"}),  # not built into the fixture's kernel
           StackConfig(endpoints=[{"interface": "a", "port": 8080, "flags": ["signal"]}])]
    for cfg in bad:
        with pytest.raises(CapabilityError):
            v092.check_supported(cfg, f, "server")
    from testbed.stacks.features import Features

    with pytest.raises(CapabilityError, match="multipath-tcp.org"):
        v092.check_supported(StackConfig(), Features("upstream", "6.18", (6, 18)), "server")


def test_the_matrix_feature_table_says_where_each_v0_feature_comes_from():
    from testbed.matrix.features import UPSTREAM, V0, V092

    assert frozenset(V092) == V0 and all(V092.values())
    assert set(UPSTREAM) >= V0 and "laminar" not in V0 and "userspace_pm" not in V0
