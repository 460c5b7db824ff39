"""A topology host on a remote machine (the `ssh` backend): its own kernel, reached with paramiko.

The host lives in a network namespace of its own on the machine (`tb<run tag>-<node>`), so that the
machine's own interfaces and routes are never touched and one `ip netns del` removes the lot. Each
of the host's links is a VXLAN tunnel between this machine and the remote one: the remote end is
made in the machine's root namespace (so it encapsulates over the machine's own network) and moved
into the host's namespace under the topology's interface name; the local end is made in this
machine's root namespace and moved into the link peer's namespace under the peer's interface name,
as a QEMU guest's TAP is. What the rest of the testbed does with a remote node:

* commands (`cmd`, `popen`, `run_many`): `ip netns exec NS ...` over SSH, argv quoted word by word.
  A path of this checkout in argv (the workload agent) is copied to the machine first, once per run,
  and `sys.executable` becomes the machine's `python3`.
* counters (`counters()`, `proc_net()`): the machine's /proc/net files read inside its namespace.
* link bytes (`read_dev()`) and captures (`capture_point()`): on the local ends of the tunnels,
  rx and tx swapped, as for a guest: the tunnel carries exactly the link's frames.
* link shaping: delay, jitter and loss of both directions happen at the local end (shaping.py puts
  a direction with a `remote_end` node there); a rate is htb on the sender's egress, wherever it is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.emulation import abort
from testbed.emulation.ssh.process import RemoteProcess
from testbed.errors import CapabilityError, RunError

VXLAN_PORT = 4789
COMMAND_TIMEOUT = 120.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout's `testbed` package
POPEN_ARGS = ("stdin", "stdout", "stderr", "env", "cwd")


class _AbortFlag:
    """`Remote.run`'s stop event: the run is being cut off."""

    @staticmethod
    def is_set() -> bool:
        return abort.aborting()


@dataclass
class TunnelEnd:
    """One link of the remote host: its VXLAN id and where the local end is."""

    ifname: str  # the remote host's interface (the topology's name)
    vni: int
    local_dev: str  # as made in this machine's root namespace
    remote_dev: str  # as made in the machine's root namespace
    peer: Any = None  # the Mininet node holding the local end
    peer_if: str = ""  # its name there
    pid: int | None = None  # a process in the peer's namespace


@dataclass(eq=False)  # compared and hashed by identity, like Mininet nodes
class RemoteNode:
    name: str
    target: Any  # provision.remote.Target
    tag: str
    remote: Any = None  # provision.remote.Remote, connected
    release: str = ""
    mptcp_flavour: str | None = None  # "upstream", "v0.9x" or None (no MPTCP)
    local_ip: str = ""
    remote_ip: str = ""
    tunnels: dict[str, TunnelEnd] = field(default_factory=dict)
    netns: str = ""  # on the machine; default tb<tag>-<node>
    netns_made: bool = False
    _uploaded: dict[str, str] = field(default_factory=dict)
    _workdir: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    inNamespace = True  # noqa: N815 - Mininet's attribute name
    remote_end = True  # shaping.py: delay and loss at the local end of its links
    shapes_own_links = False

    def __post_init__(self) -> None:
        self.netns = self.netns or f"tb{self.tag}-{self.name}"[:60]

    @property
    def has_mptcp(self) -> bool:
        return self.mptcp_flavour is not None

    @property
    def kernel(self) -> str:
        return self.release

    # -- connection ------------------------------------------------------------------------------
    def connect(self, accept_new: bool = False) -> None:
        """Connect (host key checked), detect the kernel and the underlay addresses."""
        from testbed.provision.remote import Remote

        self.remote = Remote(self.target, accept_new=accept_new)
        self.remote.connect()
        self.release, self.mptcp_flavour = detect(self.remote)
        self.remote_ip = underlay_address(self.target.host)
        self.local_ip = local_source(self.remote_ip)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    def _run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT, check: bool = True) -> Any:
        if self.remote is None:
            raise RunError(f"{self.name}: not connected to {self.target.name}")
        res = self.remote.run(argv, timeout=timeout, stop=_AbortFlag())
        if check and res.rc != 0:
            raise RunError(f"{self.name} ({self.target.name}): `{shlex.join(argv)[:200]}` failed ({res.rc}): "
                           f"{(res.stderr.strip() or res.stdout.strip())[-300:]}")
        return res

    def _in_ns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    # -- the namespace and the tunnels ---------------------------------------------------------------
    def plan_tunnels(self, links: list[tuple[str, int]], taken: set[int]) -> None:
        """One tunnel per (interface, link index); VXLAN ids drawn at random, unique in this run."""
        for ifname, _link in links:
            vni = random.randrange(1, 1 << 24)
            while vni in taken:
                vni = random.randrange(1, 1 << 24)
            taken.add(vni)
            # numbered across the run: several of its hosts may share one machine's root namespace
            n = len(taken)
            self.tunnels[ifname] = TunnelEnd(ifname, vni, f"tb{self.tag}x{n}", f"tb{self.tag}y{n}")

    def vxlan_argv(self, dev: str, vni: int, local: str, remote: str) -> list[str]:
        return ["ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "local", local, "remote", remote,
                "dstport", str(VXLAN_PORT)]

    def build_remote_side(self) -> None:
        """The namespace and the remote ends of the tunnels, in one round trip."""
        commands = [["ip", "netns", "add", self.netns]]
        for t in self.tunnels.values():
            commands += [self.vxlan_argv(t.remote_dev, t.vni, self.remote_ip, self.local_ip),
                         ["ip", "link", "set", t.remote_dev, "netns", self.netns, "name", t.ifname]]
        self.netns_made = True  # from here on teardown deletes it (a failed add leaves nothing to delete)
        self._script(commands, in_ns=False)

    def teardown(self) -> list[str]:
        """Kill what runs in the namespace, delete it (and with it the tunnels' remote ends), remove
        the uploaded files. Errors are returned, not raised: teardown goes on."""
        errors = []
        if self.remote is None:
            return [f"{self.name}: not connected to {self.target.name}: its namespace {self.netns} may be left there"]
        script = ('pids=$(ip netns pids "$1" 2>/dev/null); [ -z "$pids" ] || kill -9 $pids 2>/dev/null; '
                  'ip netns del "$1" 2>/dev/null; for d in "$@"; do [ "$d" = "$1" ] || ip link del "$d" 2>/dev/null; '
                  'done; [ -z "$TB_WORKDIR" ] || rm -rf "$TB_WORKDIR"; exit 0')
        devs = [t.remote_dev for t in self.tunnels.values()]
        env = ["env", f"TB_WORKDIR={self._workdir or ''}"]
        try:
            if self.netns_made or self._workdir:
                self.remote.run([*env, "sh", "-c", script, "sh", self.netns, *devs], timeout=60)
                left = self.remote.run(["ip", "netns", "list"], timeout=30).stdout.split()
                if self.netns in left:
                    errors.append(f"{self.name}: the namespace {self.netns} on {self.target.name} is still there")
        except Exception as exc:  # noqa: BLE001 - reported; `testbed clean` tries again
            errors.append(f"{self.name}: cleaning up on {self.target.name}: {exc}")
        self.netns_made = False
        return errors

    def record(self) -> dict[str, Any]:
        """What `testbed clean` needs to find this node's leftovers on the machine after a crash."""
        return {"node": self.name, "target": self.target.describe(), "key_filename": self.target.key_filename,
                "netns": self.netns, "devices": [t.remote_dev for t in self.tunnels.values()],
                "workdir": self._workdir}

    # -- commands ------------------------------------------------------------------------------------
    def cmd(self, line: str) -> str:
        res = self._run(self._in_ns(["sh", "-c", line]), check=False)
        return res.stdout + res.stderr

    def _script(self, commands: list[list[str]], in_ns: bool = True) -> None:
        lines = [f"{shlex.join(c)} || {{ rc=$?; echo __testbed_failed={i} >&2; exit $rc; }}"
                 for i, c in enumerate(commands)]
        argv = ["sh", "-c", "\n".join(lines)]
        res = self._run(self._in_ns(argv) if in_ns else argv, check=False)
        if res.rc != 0:
            head, _, tail = res.stderr.rpartition("__testbed_failed=")
            idx = tail.split()[0] if tail.split() else ""
            failed = shlex.join(commands[int(idx)]) if idx.isdigit() and int(idx) < len(commands) else "?"
            raise RunError(f"{self.name} ({self.target.name}): `{failed[:200]}` failed ({res.rc}): "
                           f"{(head or res.stdout).strip()[-300:]}")

    def run_many(self, commands: Any, optional: Any = None) -> list[str]:
        """nodeexec.run_many for a remote host: one round trip for the lot."""
        self._script([list(c) for c in commands])
        return []

    def popen(self, argv: Any, **kwargs: Any) -> RemoteProcess:
        unknown = set(kwargs) - set(POPEN_ARGS)
        if unknown:
            raise TypeError(f"{self.name}: a remote process takes no {', '.join(sorted(unknown))}")
        if self.remote is None:
            raise RunError(f"{self.name}: not connected to {self.target.name}")
        words = [self._translate(str(a)) for a in argv]
        prefix = self._in_ns([])
        if kwargs.get("env"):
            prefix += ["env", *(f"{k}={v}" for k, v in kwargs["env"].items())]
        if kwargs.get("cwd"):
            prefix += ["env", "-C", str(kwargs["cwd"])]
        return RemoteProcess(self.remote, words, prefix, stdin=kwargs.get("stdin"), stdout=kwargs.get("stdout"),
                             stderr=kwargs.get("stderr"), what=self.name)

    def _translate(self, word: str) -> str:
        """This machine's interpreter → the machine's python3; a file of this checkout → its copy there."""
        if word == sys.executable:
            return "python3"
        path = Path(word)
        if not path.is_absolute() or not path.exists():
            return word
        try:
            rel = path.resolve().relative_to(PACKAGE_ROOT.parent)
        except ValueError:
            return word
        return self._upload(path.resolve(), rel)

    def _upload(self, path: Path, rel: Path) -> str:
        """Copy the file's directory (a package: the agent is `agent/__main__.py`) to the run's
        directory on the machine, once."""
        with self._lock:
            if self._workdir is None:
                self._workdir = self._run(["mktemp", "-d", "/tmp/testbed-remote-XXXXXXXX"], timeout=30).stdout.strip()
            src = path.parent
            key = str(src)
            if key not in self._uploaded:
                dest = f"{self._workdir}/{rel.parent}"
                self._run(["mkdir", "-p", dest], timeout=30)
                for f in sorted(src.iterdir()):
                    if f.is_file() and f.suffix == ".py":
                        self.remote.put(f, f"{dest}/{f.name}")
                self._uploaded[key] = dest
            return f"{self._uploaded[key]}/{path.name}"

    # -- what collectors read -------------------------------------------------------------------------
    def proc_net(self, names: Any) -> dict[str, str | None]:
        """/proc/net/<name> of the host's namespace on the machine, in one round trip."""
        names = list(names)
        script = 'for f in "$@"; do echo "__testbed_file=$f"; cat "/proc/net/$f" 2>/dev/null || echo __testbed_missing; done'
        out = self._run(self._in_ns(["sh", "-c", script, "sh", *names]), check=False).stdout
        found: dict[str, str | None] = dict.fromkeys(names)
        for part in out.split("__testbed_file=")[1:]:
            name, _, body = part.partition("\n")
            if name in found and body.strip() != "__testbed_missing":
                found[name] = body
        return found

    def counters(self) -> dict[str, int]:
        from testbed.collect.counters import parse, parse_v0_snmp

        files = self.proc_net(["netstat", "snmp", "mptcp_net/snmp"])
        out: dict[str, int] = {}
        for name in ("netstat", "snmp"):
            out.update(parse(files[name] or ""))
        out.update(parse_v0_snmp(files["mptcp_net/snmp"] or ""))
        return out

    def read_dev(self) -> dict[str, tuple[int, int]]:
        """{interface: (rx_bytes, tx_bytes)} from the local ends of its tunnels (rx/tx swapped)."""
        from testbed.collect.linkbytes import read_dev

        by_pid: dict[int, dict[str, tuple[int, int]]] = {}
        out: dict[str, tuple[int, int]] = {}
        for ifname, t in self.tunnels.items():
            if t.pid is None:
                continue
            if t.pid not in by_pid:
                by_pid[t.pid] = read_dev(t.pid)
            rx, tx = by_pid[t.pid].get(t.peer_if, (0, 0))
            out[ifname] = (tx, rx)
        return out

    def capture_point(self, ifname: str) -> tuple[Any, str]:
        t = self.tunnels[ifname]
        return t.peer, t.peer_if

    def describe(self) -> dict[str, Any]:
        return {"backend": "ssh", "host": self.target.describe(), "kernel": self.release,
                "mptcp": self.mptcp_flavour, "netns": self.netns, "underlay": {"local": self.local_ip,
                                                                                "remote": self.remote_ip},
                "interfaces": {n: {"vxlan_id": t.vni, "local_end": f"{t.peer.name if t.peer else '?'}:{t.peer_if}"}
                               for n, t in self.tunnels.items()},
                "host_side_counters": "link bytes and captures of each interface are taken on its tunnel's local end"}


def detect(remote: Any) -> tuple[str, str | None]:
    """(kernel release, MPTCP flavour) of the machine: upstream (net.mptcp.enabled), v0.9x
    (net.mptcp.mptcp_enabled, the multipath-tcp.org kernel) or None."""
    script = ('uname -r; if [ -e /proc/sys/net/mptcp/enabled ]; then echo upstream; '
              'elif [ -e /proc/sys/net/mptcp/mptcp_enabled ]; then echo v0.9x; else echo none; fi; '
              'for t in ip python3; do command -v $t >/dev/null || echo "missing=$t"; done')
    res = remote.run(["sh", "-c", script], timeout=30)
    lines = res.stdout.split()
    missing = [w.split("=", 1)[1] for w in lines if w.startswith("missing=")]
    if missing:
        raise CapabilityError(f"{remote.target.name}: needs {', '.join(missing)} (install iproute2 and python3 "
                              "there, e.g. with playbooks/testbed-host.yml)")
    if len(lines) < 2:
        raise RunError(f"{remote.target.name}: could not read its kernel: {res.stderr.strip()[:200]}")
    return lines[0], None if lines[1] == "none" else lines[1]


def underlay_address(host: str) -> str:
    """The machine's IPv4 address (the inventory's ansible_host, resolved)."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except OSError as exc:
        raise RunError(f"cannot resolve {host} to an IPv4 address: {exc}") from None


def local_source(remote_ip: str) -> str:
    """This machine's address towards `remote_ip` (what the kernel would use as a source)."""
    r = subprocess.run(["ip", "-j", "route", "get", remote_ip], capture_output=True, text=True, timeout=10)
    try:
        return json.loads(r.stdout)[0]["prefsrc"]
    except (ValueError, LookupError):
        raise RunError(f"no route from this machine to {remote_ip}: {r.stderr.strip()[:200]}") from None


def remote_nodes(topology: Any, tag: str) -> dict[str, RemoteNode]:
    """A RemoteNode (not connected) for every host of the topology that names a remote machine."""
    from testbed.provision.hosts import load_inventory

    out = {}
    inventories: dict[str, Any] = {}
    for name, spec in topology.nodes.items():
        remote = getattr(spec, "remote", None)
        if remote is None:
            continue
        inv = inventories.get(remote.inventory)
        if inv is None:
            inv = inventories[remote.inventory] = load_inventory(Path(remote.inventory))
        out[name] = RemoteNode(name, inv.target(remote.host), tag)
    return out


def clean_recorded(entry: dict[str, Any]) -> str:
    """`testbed clean` for one remote node a crashed run left: its namespace, tunnels, files."""
    from testbed.provision.remote import Remote, Target

    t = entry["target"]
    target = Target(name=t["name"], host=t["host"], port=t["port"], user=t["user"],
                    key_filename=entry.get("key_filename"), known_hosts=t["known_hosts"])
    node = RemoteNode(entry["node"], target, "", netns=entry["netns"], netns_made=True)
    node.tunnels = {d: TunnelEnd(d, 0, "", d) for d in entry.get("devices", [])}
    node._workdir = entry.get("workdir")
    try:
        node.remote = Remote(target)
        node.remote.connect()
    except Exception as exc:  # noqa: BLE001 - reported; the entry is kept for the next clean
        return f"{target.name}: cannot connect to remove {entry['netns']}: {exc}"
    with contextlib.closing(node.remote):
        errors = node.teardown()
    return "; ".join(errors) or f"{target.name}: removed {entry['netns']}"
