"""Feature sets of implementations, and whether each can run here.

Upstream Linux MPTCP features are tabulated by the kernel release that first had them. A guest's
feature set follows from its kernel version; this machine's is the table at the running version
intersected with what is actually there (endpoint flags iproute2 and the kernel accept, net.mptcp
sysctls, MPTcpExt counters). Where the sources only bound a release, the table uses the *later*
bound: a cell then reads `unsupported` rather than blaming an implementation for a feature it may
not have.

Sources (kernel releases follow the net-next merge window a commit landed in):
  [wiki]   github.com/multipath-tcp/mptcp_net-next/wiki: "v5.6: Create MPTCPv1 sockets with a single
           subflow", "v5.7: Create multiple subflows ... Path management: global, controlled via
           Netlink; MIB counters".
  [pm]     "Multipath TCP part 3: Multiple subflows and path management" (net-next, March 2020):
           MP_JOIN, ADD_ADDR/REMOVE_ADDR, the netlink PM with signal/subflow/backup flags → 5.7.
  [cookie] "mptcp: add syncookie support" series (net-next, July 2020) → 5.9.
  [mib510] net/mptcp/mib.h of a 5.10 tree (gitcode.com/openharmony/kernel_linux_5.10): AddAddr,
           EchoAdd, RmAddr present; no MPCapableSYNTX/MPCapableSYNACKRX yet.
  [prio]   commit 49888961a45a "Merge branch 'mptcp-add-mp_prio-support-and-rework-local-address-ids'"
           (net-next 2021-01-09) and 0be2ac287bcc "mptcp: add the mibs for MP_PRIO" → 5.12; confirmed
           by 0cd55ef "mptcp: fix inconsistent backup usage": "MP_PRIO support in v5.12", "the
           default packet scheduler ... since v5.7" (backup).
  [port]   22fb85f "mptcp: add port support for ADD_ADDR suboption writing" and a77e9179c765 "mptcp:
           deal with MPTCP_PM_ADDR_ATTR_PORT in PM netlink" (net-next, early 2021) → 5.12.
  [rst]    "mptcp: add mptcp reset option support" (uapi, 2021-04-02) → 5.13.
  [sysctl] kernel.org/doc/html/v5.13 vs v5.14 networking/mptcp-sysctl.rst: checksum_enabled and
           allow_join_initial_addr_port (the C flag) first documented in 5.14; pm_type in 5.19;
           close_timeout in 6.8 (v6.8-rc1 ctrl.c); blackhole_timeout in 6.12; available_path_managers
           / path_manager in 6.15 (docs.kernel.org/6.15).
  [mesh]   371b90377e60 "selftests: mptcp: set and print the fullmesh flag" and "mptcp: local/remote
           addresses fullmesh" (net-next 2021-08-17/18) → 5.15; "mptcp: Miscellaneous changes for 5.18"
           (83a18b8e6954) only lets `endpoint change` toggle it on existing endpoints.
  [stale]  ff5a0b421cb2 "mptcp: faster active backup recovery" (net-next 2021-08-14): stale_loss_cnt → 5.15.
  [fclose] f284c0c77321 "mptcp: implement fastclose xmit path" (net-next 2022-01-07) → 5.17, sent then
           only by a disconnect (connect(AF_UNSPEC): b29fcfb54cd7 "mptcp: full disconnect
           implementation", same series), not by close(); 1e75629cb964 "mptcp: add the mibs for MP_FASTCLOSE"
           (MPFastcloseTx/Rx, net-next 2022-03-04, pulled for 5.18) → 5.18 counters; branch 'mptcp-fastclose'
           (pushed to net-next 2022-10-03, the day after 6.0 was released) → 6.1: d21f83485518 "mptcp: use
           fastclose on more edge scenarios" (close() with unread data sends MP_FASTCLOSE: the abort
           workload's default) and 69800e516e96 "mptcp: propagate fastclose error" (the peer's
           application gets ECONNRESET, as after a TCP RST). f14d6e9c3678 "mptcp: fastclose msk when
           linger time is 0" (7.1-rc2, 2026-04, Fixes d21f83485518, Cc stable; a 6.1.y backport was in
           review 2026-06) adds close() with SO_LINGER {1, 0}: a guest's stable release decides that
           one, so the table does not claim it (this machine's 6.18.44 does it, measured).
  [upm]    userspace path manager (pm_type=1) → 5.19 [sysctl].
  [tfo]    "mptcp: TCP Fast Open" support (MSG_FASTOPEN, TCP_FASTOPEN*, net-next late 2022) → 6.2.
  [sched]  net.mptcp.scheduler → 6.6 (docs.kernel.org/6.6 mptcp-sysctl).
  [bkmib]  0cd55ef "mptcp: fix inconsistent backup usage", patch 4: MPJoinSynBackupRx and
           MPJoinSynAckBackupRx (July 2024) → 6.11.
  [bhole]  27069e7cb3d1 "mptcp: disable active MPTCP in case of blackhole", parent "mptcp: fallback to
           TCP after SYN+MPC drops" (net-next 2024-09-11): MPCapableSYNTXDrop, Blackhole → 6.12.
  [laminar] 'laminar' endpoints → 6.18 (testbed.stacks.features).
RFC 6824 (v0) and RFC 8684 (v1) do not interoperate: a v1 host answers a v0 MP_CAPABLE SYN with a
plain SYN/ACK (RFC 8684 §3.1, version negotiation), so v0 ↔ v1 is a TCP fallback by design.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.spec.matrix import Implementation

Version = tuple[int, int]


@dataclass(frozen=True)
class Feature:
    since: Version
    what: str
    source: str
    sysctl: str | None = None  # on this machine: present only if this net.mptcp sysctl exists
    flag: str | None = None  # ... or if this endpoint flag is accepted


# Upstream Linux MPTCP (RFC 8684) features by the release that first had them.
UPSTREAM: dict[str, Feature] = {
    "mptcp": Feature((5, 6), "MP_CAPABLE v1 handshake, DSS, one subflow", "wiki"),
    "join": Feature((5, 7), "MP_JOIN subflows, in-kernel path manager, limits", "wiki, pm", flag="subflow"),
    "signal": Feature((5, 7), "ADD_ADDR announcements ('signal' endpoints)", "pm", flag="signal"),
    "backup": Feature((5, 7), "backup subflows (MP_JOIN B flag)", "pm, prio", flag="backup"),
    "syncookies": Feature((5, 9), "MP_CAPABLE and MP_JOIN through SYN cookies", "cookie"),
    "remove_addr": Feature((5, 10), "REMOVE_ADDR when an endpoint is deleted", "mib510"),
    "add_addr_timeout": Feature((5, 10), "ADD_ADDR retransmission (add_addr_timeout)", "mib510",
                                sysctl="add_addr_timeout"),
    "add_addr_port": Feature((5, 12), "ADD_ADDR with a port, joins to it", "port"),
    "mp_prio": Feature((5, 12), "MP_PRIO: change a subflow's backup priority", "prio"),
    "mp_tcprst": Feature((5, 13), "MP_TCPRST reason codes", "rst"),
    "checksum": Feature((5, 14), "DSS checksums (checksum_enabled)", "sysctl", sysctl="checksum_enabled"),
    "c_flag": Feature((5, 14), "C flag: no joins to the initial address (allow_join_initial_addr_port)",
                      "sysctl", sysctl="allow_join_initial_addr_port"),
    "fullmesh": Feature((5, 15), "'fullmesh' endpoints", "mesh", flag="fullmesh"),
    "stale_loss_cnt": Feature((5, 15), "stale subflows, faster backup switch-over (stale_loss_cnt)", "stale",
                              sysctl="stale_loss_cnt"),
    "fastclose": Feature((6, 1), "MP_FASTCLOSE when a socket is closed with unread data", "fclose"),
    "userspace_pm": Feature((5, 19), "userspace path manager (pm_type)", "upm, sysctl", sysctl="pm_type"),
    "fastopen": Feature((6, 2), "TCP Fast Open on MPTCP sockets (MSG_FASTOPEN, TCP_FASTOPEN)", "tfo"),
    "scheduler": Feature((6, 6), "packet scheduler selection (scheduler)", "sched", sysctl="scheduler"),
    "close_timeout": Feature((6, 8), "make-after-break timeout (close_timeout)", "sysctl", sysctl="close_timeout"),
    "syn_fallback": Feature((6, 12), "TCP fallback after MP_CAPABLE SYN drops, blackhole detection",
                            "bhole", sysctl="blackhole_timeout"),
    "path_manager": Feature((6, 15), "path manager by name (path_manager)", "sysctl", sysctl="path_manager"),
    "laminar": Feature((6, 18), "'laminar' endpoints", "laminar", flag="laminar"),
}

# What MPTCP v0.92 (multipath-tcp.org, RFC 6824 "v0") has, each with where the mptcp_v0.92 tree of
# multipath-tcp/mptcp shows it (v0 ↔ v1 cells fall back before features matter; v0 ↔ v0 and v0 ↔ tcp
# cells are judged by this table). testbed.stacks.v092 maps the experiments' settings onto it.
V092: dict[str, str] = {
    "mptcp": "MP_CAPABLE v0 handshake, DSS (net/mptcp/mptcp_ctrl.c, mptcp_input.c, mptcp_output.c)",
    "join": "MP_JOIN subflows by the fullmesh path manager (net/mptcp/mptcp_fullmesh.c)",
    "signal": "ADD_ADDR of the multipath-on interfaces' addresses (mptcp_fullmesh.c; counter AddAddrTx)",
    "backup": "backup subflows: `ip link set dev X multipath backup` (IFF_MPBACKUP, include/uapi/linux/if.h)",
    "remove_addr": "REMOVE_ADDR when an interface goes `multipath off` (mptcp_fullmesh.c; RemAddrTx)",
    "mp_prio": "MP_PRIO when an interface's backup state changes (mptcp_fullmesh.c address events)",
    "fastclose": "MP_FASTCLOSE (mptcp_snmp_list: MPFastcloseTX/RX)",
    "checksum": "DSS checksums, on by default (net.mptcp.mptcp_checksum)",
    "fullmesh": "the fullmesh path manager (net.mptcp.mptcp_path_manager=fullmesh)",
    "syncookies": "MP_CAPABLE through SYN cookies (mptcp_ctrl.c mptcp_reqsk_new_cookie)",
    "syn_fallback": "plain TCP after net.mptcp.mptcp_syn_retries (3) SYNs with MP_CAPABLE (MPCapableRetransFallback)",
    "scheduler": "packet scheduler by name (net.mptcp.mptcp_scheduler: default, roundrobin, redundant)",
}
V0 = frozenset(V092)

# MPTcpExt counters by the release that first had them (scenarios' counter checks imply them).
# Counters older than every kernel we know of (present in 5.10) are listed at 5.10.
MIB_SINCE: dict[str, Version] = {
    **dict.fromkeys(("MPCapableSYNRX", "MPCapableACKRX", "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
                     "MPTCPRetrans", "MPJoinNoTokenFound", "MPJoinSynRx", "MPJoinSynAckRx",
                     "MPJoinSynAckHMacFailure", "MPJoinAckRx", "MPJoinAckHMacFailure", "DSSNotMatching",
                     "InfiniteMapRx", "OFOQueueTail", "OFOQueue", "OFOMerge", "NoDSSInWindow",
                     "DuplicateData", "AddAddr", "EchoAdd", "RmAddr"), (5, 10)),      # [mib510]
    **dict.fromkeys(("RmSubflow", "MPPrioTx", "MPPrioRx", "PortAdd", "AddAddrDrop", "MPJoinPortSynRx",
                     "MPJoinPortSynAckRx", "MPJoinPortAckRx", "MismatchPortSynRx",
                     "MismatchPortAckRx"), (5, 12)),                                     # [prio], [port]
    **dict.fromkeys(("MPRstTx", "MPRstRx"), (5, 13)),                                   # [rst]
    **dict.fromkeys(("DataCsumErr", "DSSTcpMismatch"), (5, 14)),                        # [sysctl] checksum
    **dict.fromkeys(("SubflowStale", "SubflowRecover"), (5, 15)),                       # [stale]
    # Bounded by sources: absent in 5.10 [mib510], present in trees that have DataCsumErr but not yet
    # InfiniteMapTx (5.18): the later bound is used.
    **dict.fromkeys(("MPCapableSYNTX", "MPCapableSYNACKRX", "MPFastcloseTx", "MPFastcloseRx", "MPFailTx",
                     "MPFailRx", "InfiniteMapTx"), (5, 18)),                             # [fclose]
    # Absent from Debian's 6.1.192 (its counters, read at boot), so later than the 5.18 bound above;
    # the first release is not pinned down: 6.2 is a lower bound. Recorded counters win anyway.
    **dict.fromkeys(("AddAddrTx", "AddAddrTxDrop", "RmAddrTx", "RmAddrTxDrop"), (6, 2)),
    **dict.fromkeys(("MPJoinSynTx", "MPJoinSynTxCreatSkErr", "MPJoinSynTxBindErr", "MPJoinSynTxConnectErr",
                     "MPJoinRejected"), (6, 10)),
    **dict.fromkeys(("MPJoinSynBackupRx", "MPJoinSynAckBackupRx"), (6, 11)),           # [bkmib]
    **dict.fromkeys(("MPCapableSYNTXDrop", "MPCapableSYNTXDisabled", "Blackhole"), (6, 12)),  # [bhole]
}

# What a node's stack configuration implies its implementation must have.
FLAG_FEATURES = {"subflow": "join", "signal": "signal", "backup": "backup", "fullmesh": "fullmesh",
                 "laminar": "laminar"}
SYSCTL_FEATURES = {f.sysctl: name for name, f in UPSTREAM.items() if f.sysctl}
EVENT_FEATURES = {"set_backup": "mp_prio", "endpoint_remove": "remove_addr", "endpoint_add": "join"}


@dataclass(frozen=True)
class FeatureSet:
    """What one implementation speaks: protocol version (1: RFC 8684, 0: RFC 6824, None: plain TCP),
    the features it has, and for missing ones why (for the reason of an `unsupported` cell)."""

    implementation: str
    protocol: int | None
    kernel: str | None
    features: frozenset[str] = frozenset()
    counters: frozenset[str] | None = None  # MPTcpExt counter names; None = derive from the version
    version: Version | None = None
    detected: bool = False  # from this machine rather than from a table
    missing_why: dict[str, str] = field(default_factory=dict)

    def has(self, feature: str) -> bool:
        if feature.startswith("mib:"):
            return self.has_counter(feature[4:])
        return feature in self.features

    def has_counter(self, name: str) -> bool:
        if self.protocol != 1:
            return False
        if self.counters is not None:
            return name in self.counters
        since = MIB_SINCE.get(name)
        return since is None or (self.version is not None and self.version >= since)

    def why_missing(self, feature: str) -> str:
        if self.protocol is None:
            return "plain TCP"
        if feature.startswith("mib:"):
            name = feature[4:]
            since = MIB_SINCE.get(name)
            where = f"kernel {self.kernel}" if self.kernel else "this kernel"
            if self.counters is not None:  # the kernel's own list, not a version table
                return f"{where} has no MPTcpExt{name} counter (its counters, as read from the kernel)"
            return (f"{where} has no MPTcpExt{name} counter" + (f" (upstream ≥ {since[0]}.{since[1]})" if since else ""))
        if feature in self.missing_why:
            return self.missing_why[feature]
        f = UPSTREAM.get(feature)
        if f is None:
            return "unknown feature"
        return f"needs upstream ≥ {f.since[0]}.{f.since[1]}" + (f", kernel is {self.kernel}" if self.kernel else "")

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": {1: "RFC 8684 (v1)", 0: "RFC 6824 (v0)", None: "plain TCP"}[self.protocol],
                "kernel": self.kernel, "detected": self.detected, "features": sorted(self.features),
                "missing": {k: v for k, v in sorted(self.missing_why.items())}}


def _vtext(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def upstream_for_version(name: str, version: Version, kernel: str) -> FeatureSet:
    have = {n for n, f in UPSTREAM.items() if version >= f.since}
    why = {n: f"needs upstream ≥ {_vtext(f.since)}, kernel is {kernel}" for n, f in UPSTREAM.items()
           if n not in have}
    return FeatureSet(name, 1, kernel, frozenset(have), None, version, False, why)


@functools.cache
def host_counters() -> frozenset[str] | None:
    """MPTcpExt counter names of this kernel (from /proc/net/netstat)."""
    try:
        text = Path("/proc/net/netstat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MPTcpExt:"):  # the first MPTcpExt line names the counters, the second counts
            return frozenset(line.split()[1:])
    return None


def host_features(name: str, driver: str) -> FeatureSet:
    """This machine's kernel: the version table, checked against what is really there."""
    from testbed.stacks.features import detect

    f = detect()
    if driver == "tcp":
        return FeatureSet(name, None, f.kernel, version=f.version, detected=True)
    if f.flavour != "upstream":
        return FeatureSet(name, None, f.kernel, version=f.version, detected=True,
                          missing_why={"mptcp": f"this kernel has {f.flavour} MPTCP"})
    table = upstream_for_version(name, f.version, f.kernel)
    have = set(table.features)
    why = dict(table.missing_why)
    for n in list(have):
        feat = UPSTREAM[n]
        if feat.sysctl and feat.sysctl not in f.sysctls:
            have.discard(n)
            why[n] = f"net.mptcp.{feat.sysctl} does not exist on this kernel ({f.kernel})"
        elif feat.flag and f.endpoint_flags and feat.flag not in f.endpoint_flags:
            have.discard(n)
            why[n] = f"endpoint flag '{feat.flag}' is not accepted by this kernel/iproute2"
    if "userspace_pm" in have and f.path_managers and "userspace" not in f.path_managers:
        have.discard("userspace_pm")
        why["userspace_pm"] = "no userspace path manager registered"
    return FeatureSet(name, 1, f.kernel, frozenset(have), host_counters(), f.version, True, why)


def feature_set(name: str, impl: Implementation) -> FeatureSet:
    if impl.driver == "tcp":
        if impl.backend == "netns":
            return host_features(name, "tcp")
        return FeatureSet(name, None, impl.kernel, version=impl.version)
    if impl.driver == "v0.92":
        return FeatureSet(name, 0, impl.kernel, V0, None, impl.version,
                          missing_why={n: "not in MPTCP v0.92 (RFC 6824)" for n in UPSTREAM if n not in V0})
    if impl.backend == "netns":
        return host_features(name, "upstream")
    if impl.backend == "ssh":
        assert impl.version is not None and impl.kernel is not None  # the registry model requires it
        return upstream_for_version(name, impl.version, impl.kernel)
    assert impl.version is not None and impl.kernel is not None  # the registry model requires it
    built = _image(impl.image or name)
    has_mptcp = getattr(built, "mptcp", impl.mptcp) if built is not None else impl.mptcp
    if not has_mptcp:
        return FeatureSet(name, None, impl.kernel, version=impl.version, detected=built is not None,
                          missing_why={"mptcp": f"kernel {impl.kernel} is built without MPTCP (CONFIG_MPTCP)"})
    table = upstream_for_version(name, impl.version, impl.kernel)
    counters = getattr(built, "mptcp_counters", None)  # what the image's kernel showed at its first boot
    return dataclasses.replace(table, counters=counters) if counters else table


def _remote_available(impl: Implementation, inventory: Path | None) -> tuple[bool, str]:
    """Reach the machine (its host key checked) and read its kernel: the implementation is available
    when that kernel has the stack the registry says."""
    from testbed.emulation.ssh.node import detect
    from testbed.errors import CapabilityError, RunError, SpecError
    from testbed.provision.hosts import load_inventory
    from testbed.provision.remote import Remote

    assert impl.host is not None and inventory is not None  # the registry model requires them
    try:
        target = load_inventory(inventory).target(impl.host)
    except SpecError as exc:
        return False, f"inventory {inventory}: {exc.problems[0].message}"
    except KeyError:
        return False, f"no host '{impl.host}' in the inventory {inventory}"
    try:
        with Remote(target) as remote:
            release, flavour = detect(remote)
    except (CapabilityError, RunError) as exc:
        return False, str(exc)
    want = {"upstream": "upstream", "v0.92": "v0.9x", "tcp": None}[impl.driver]
    if want is not None and flavour != want:
        return False, (f"{impl.host} runs kernel {release} with {flavour or 'no'} MPTCP, not "
                       f"{'upstream MPTCP' if want == 'upstream' else 'MPTCP v0.92'}")
    return True, f"remote host {impl.host} (kernel {release}) over ssh"


def _image(target: str) -> Any:
    """The qemu backend's built image `target` (its find(), else its load()), or None."""
    try:
        images = importlib.import_module("testbed.emulation.qemu.images")
    except ImportError:
        return None
    lookup = getattr(images, "find", None) or getattr(images, "load", None)
    if lookup is None:
        return None
    try:
        return lookup(target)
    except Exception:  # noqa: BLE001 - someone else's module: no image then
        return None


def tcp_features(name: str, kernel: str | None = None) -> FeatureSet:
    return FeatureSet(name, None, kernel)


# --------------------------------------------------------------------------------------------
# Can an implementation run here?

GUEST_FIELD = "guest"  # a node runs on a guest when its `stacks.<node>.guest` names an image


def guest_field_supported() -> bool:
    """Whether experiments can place a node on a guest yet (the qemu backend's hook into topologies)."""
    from testbed.spec.stack import StackConfig

    return GUEST_FIELD in StackConfig.model_fields


def available(name: str, impl: Implementation, image_path: Path | None = None,
              inventory: Path | None = None) -> tuple[bool, str]:
    """(True, what runs it) or (False, why not): an unavailable implementation's cells are listed
    as `unavailable` with this reason, never dropped."""
    if impl.backend == "netns":
        from testbed.stacks.features import detect

        f = detect()
        if f.flavour != "upstream":
            return False, (f"this machine's kernel {f.kernel} has no upstream MPTCP ({f.flavour}); "
                           "netns implementations need it")
        return True, f"this machine's kernel {f.kernel} in network namespaces"
    if impl.backend == "ssh":
        return _remote_available(impl, inventory)
    # qemu
    if impl.driver == "v0.92" and impl.image is None and _image(name) is None:
        # (an image built under the implementation's own name, `testbed images build NAME --deb ...`, is used)
        return False, "no v0.92 guest image: build one from a v0.92 kernel and set its path as image: in the registry"
    if image_path is not None and not image_path.exists():
        return False, f"image {image_path} does not exist"
    not_wired = "guest kernels are not wired into topologies yet"
    try:
        images = importlib.import_module("testbed.emulation.qemu.images")
    except ImportError:
        return False, f"{not_wired} (no testbed.emulation.qemu backend)"
    lookup = getattr(images, "find", None) or getattr(images, "load", None)
    if lookup is None:
        return False, f"{not_wired} (testbed.emulation.qemu.images has no find())"
    target = str(image_path) if image_path is not None else (impl.image or name)
    try:
        found = lookup(target)
    except Exception as exc:  # noqa: BLE001 - someone else's module: its failure makes the cell unavailable
        return False, f"looking up image '{target}' failed: {exc}"
    where = getattr(found, "dir", found)
    if impl.driver == "v0.92" and found:
        problem = v092_image_problem(target, found)
        if problem is not None:
            return False, problem
    if not guest_field_supported():
        built = f"image {where} is built" if found else f"no image '{target}' is built either (`testbed images`)"
        return False, f"{not_wired}: experiments cannot put a node on a guest (stacks.<node>.{GUEST_FIELD}); {built}"
    if not found:
        return False, f"no built image '{target}': build it with `testbed images`"
    return True, f"guest image {where}"


def v092_image_problem(target: str, image: Any) -> str | None:
    """Why a built image cannot be a v0.92 implementation (None when its first boot found the v0.9x
    stack): never booted yet, or its kernel has upstream MPTCP or none."""
    detected = getattr(image, "detected", None)
    if not detected:
        return (f"image {target} has not been booted yet, so which MPTCP its kernel has is unknown: boot it once "
                f"with `sudo testbed images {getattr(image, 'name', target)}`")
    flavour, kernel = detected.get("flavour"), detected.get("kernel") or getattr(image, "release", "?")
    if flavour == "v0.9x":
        return None
    what = "with upstream MPTCP" if flavour == "upstream" else "without MPTCP"
    return f"image {target} boots kernel {kernel} {what}, not v0.92"
