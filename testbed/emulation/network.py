"""A resolved topology brought up as a Mininet network: one namespace per host/router, Linux bridges
for switches, addresses, static and per-interface source routes.

A host with `image:` is a QEMU guest instead (testbed.emulation.qemu.node): booted while the
namespaces are built (at most two at once), its NICs are TAP devices whose host side is moved into the
peer's namespace under the peer's interface name, or enslaved to the switch's bridge; it is then
configured like any node, through its `cmd`."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import signal
import subprocess
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from testbed.emulation import abort
from testbed.emulation.mininet_import import mininet_modules
from testbed.emulation.nodeexec import parallel, run, run_many, submit_all, write_script
from testbed.errors import RunError
from testbed.spec.resolve import Interface, Resolved, Route
from testbed.state import RunState

SHELL_START_WAIT = 2.0  # seconds a run cut off while its shells start waits for those starting (then: killed)

BASE_SYSCTLS = {
    # The topology is IPv4-only: IPv6 would add router solicitations and MLD to every capture.
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
    # Multihomed hosts receive replies on the interface their source-routing table chose.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}


def route_argv(route: Route, verb: str) -> list[str]:
    argv = ["ip", "route", verb, str(route.destination)]
    argv += ["via", str(route.via)] if route.via else ["scope", "link"]
    argv += ["dev", route.interface]
    if route.table is not None:
        argv += ["table", str(route.table)]
    return argv


def installed_routes(routes: list[Route]) -> list[Route]:
    """The routes to install: those with the same gateway, interface and table merged into the fewest
    prefixes covering exactly the same addresses (ipaddress.collapse_addresses). A router in the middle
    of an N-router chain has N routes through two gateways; merged, about 2 log N. Forwarding is the
    same, because a table's destinations are disjoint; a table where some overlap is left as it is."""
    tables: dict[tuple[int | None, int], list[Route]] = defaultdict(list)
    for route in routes:
        tables[(route.table, route.destination.version)].append(route)
    out: list[Route] = []
    for rs in tables.values():
        nets = sorted((r.destination for r in rs), key=lambda n: (n.network_address, n.prefixlen))
        # sorted CIDR blocks overlap only if one contains the next
        if any(a.overlaps(b) for a, b in zip(nets, nets[1:], strict=False)):
            out += rs
            continue
        groups: dict[tuple[Any, str], list[Any]] = defaultdict(list)
        for r in rs:
            groups[(r.via, r.interface)].append(r.destination)
        for (via, interface), dests in groups.items():
            out += [Route(net, via, interface, rs[0].table) for net in ipaddress.collapse_addresses(dests)]
    return out


class Network:
    def __init__(self, resolved: Resolved, state: RunState, tag: str, log_dir: Path | None = None,
                 pool: Any = None):
        """`tag`: a short hex string unique to the run; names the root-namespace bridges and TAPs.
        `log_dir`: where guests' console logs go. `pool`: a qemu.node.GuestPool to take booted guests
        from and give them back to (default: qemu.node.POOL, else the guests a parent process lent
        through the environment (qemu.node.LentGuests); neither: boot and shut down)."""
        self.resolved = resolved
        self.state = state
        self.tag = tag
        self.log_dir = log_dir
        self.pool = pool
        self.net: Any = None
        self.nodes: dict[str, Any] = {}
        self.bridges: dict[str, str] = {}  # switch name → bridge name in the root namespace
        self.guests: dict[str, Any] = {}  # host name → qemu.node.GuestNode
        self._boots: dict[str, Future] = {}
        self.remotes: dict[str, Any] = {}  # host name → ssh.node.RemoteNode
        self._connects: dict[str, Future] = {}

    def start(self) -> None:
        mn_net, mn_node, mn_nodelib = mininet_modules()
        topo = self.resolved.topology
        for name, spec in topo.nodes.items():
            if spec.kind == "switch":
                self.bridges[name] = f"tb{self.tag}{len(self.bridges):02d}"
        ports = self._switch_ports()
        self._boot_guests(ports)  # in the background, while the namespaces are made
        self._connect_remotes()  # likewise
        self.net = mn_net.Mininet(topo=None, controller=None, build=False, autoSetMacs=False)
        self._add_nodes(mn_node, mn_nodelib)
        self._add_links(ports)
        self._wire_guests()
        self._wire_remotes()
        # Each node has its own shell, so nodes are configured side by side.
        parallel([lambda n=n: self._configure(n) for n in self.resolved.l3_nodes()])

    def _add_nodes(self, mn_node: Any, mn_nodelib: Any) -> None:
        """One Mininet node (a shell, in its own namespace unless it is a switch) per topology node.

        Starting a shell is a fork, an exec and a wait for its first prompt: the shells are started
        side by side, and registered with Mininet and the run's state in topology order."""
        topo = self.resolved.topology
        order = [n for n in topo.nodes if n not in self.guests and n not in self.remotes]
        for name in order:
            if topo.nodes[name].kind == "switch":
                self.state.add_link(self.bridges[name])

        def make(name: str) -> Any:
            if topo.nodes[name].kind == "switch":
                # Its bridge and ports are in the root namespace, and so must its shell be: a Mininet
                # Node defaults to a namespace of its own (Mininet.addSwitch passes False itself),
                # where a command for its ports (a rate on a switch's egress) finds no such device.
                return mn_nodelib.LinuxBridge(self.bridges[name], inNamespace=False)
            return mn_node.Host(name, ip=None)

        # Every shell that started is registered, even if another failed or the run was interrupted
        # meanwhile: teardown must find them all. The wait is in short steps, so a signal's exception
        # is raised here at once; the shells still starting then are awaited (briefly) and registered.
        started = submit_all([lambda n=n: make(n) for n in order], workers=4, name="node-shell")
        futures = list(zip(order, started, strict=True))
        try:
            while not all(f.done() for f in started):
                wait(started, timeout=0.2)
        finally:
            for f in started:
                f.cancel()
            # (a cancelled future never counts as done for wait(): only those that started)
            wait([f for f in started if not f.cancelled()], timeout=SHELL_START_WAIT)
            self._register_nodes(futures)
            kill_starting_shells([n for n, f in futures if not f.done()])

    def _register_nodes(self, futures: list[tuple[str, Future]]) -> None:
        topo = self.resolved.topology
        order = [name for name, _ in futures]
        failure: BaseException | None = None
        for name, future in futures:
            if not future.done() or future.cancelled():
                continue
            try:
                node = future.result()
            except Exception as exc:  # noqa: BLE001 - the first one is raised below
                failure = failure or exc
                continue
            self.nodes[name] = node
            (self.net.switches if topo.nodes[name].kind == "switch" else self.net.hosts).append(node)
            self.net.nameToNode[node.name] = node
        self.state.add_processes([(self.nodes[n].pid, f"shell of {n}") for n in order
                                  if n in self.nodes and topo.nodes[n].kind != "switch"], node_namespace=True)
        if failure is not None:
            raise RunError(f"starting the node shells: {failure}") from failure

    def _add_links(self, ports: dict[tuple[int, str], str]) -> None:
        """Every veth pair and bridge in one `ip -batch` run in the root namespace: each pair is made
        with its ends already in their nodes' namespaces (`netns PID`), each switch port enslaved to
        its bridge. Mininet gets the same Link and Intf objects as if it had made them one by one."""
        topo = self.resolved.topology
        made_link, made_intf = _made_classes()
        lines = [f"link add name {self.bridges[name]} group {self.group} type bridge" for name in self.bridges]
        up: list[str] = []
        port_names = []
        for li, link in enumerate(topo.links):
            if any(end.node in self.guests or end.node in self.remotes for end in link.endpoints):
                continue  # a guest's TAP or a remote host's tunnel: wired once it is up
            names, where = [], []
            for end in link.endpoints:
                if end.node in self.bridges:
                    port = ports[(li, end.node)]
                    port_names.append(port)
                    names.append(port)
                    where.append("")
                    up += [f"link set {port} master {self.bridges[end.node]} group {self.group}",
                           f"link set {port} up"]
                else:
                    names.append(self._interface_of(end.node, li).name)
                    where.append(f" netns {self.nodes[end.node].pid}")
            lines.append(f"link add name {names[0]}{where[0]} type veth peer name {names[1]}{where[1]}")
            a, b = link.endpoints
            self.net.addLink(self.nodes[a.node], self.nodes[b.node], intfName1=names[0], intfName2=names[1],
                             cls=made_link, intf=made_intf)
        lines += up + [f"link set {self.bridges[name]} up" for name in self.bridges]
        for port in port_names:
            self.state.links.append(port)
        self.state.save()
        root_batch(lines)

    def _switch_ports(self) -> dict[tuple[int, str], str]:
        """(link index, switch) → the switch port's name in the root namespace, counted in link order."""
        ports: dict[tuple[int, str], str] = {}
        count: dict[str, int] = {}
        for li, link in enumerate(self.resolved.topology.links):
            for end in link.endpoints:
                if end.node in self.bridges:
                    count[end.node] = count.get(end.node, 0) + 1
                    ports[(li, end.node)] = f"{self.bridges[end.node]}p{count[end.node]}"
        return ports

    # -- QEMU guests ------------------------------------------------------------------------------
    def _boot_guests(self, ports: dict[tuple[int, str], str]) -> None:
        from testbed.emulation.qemu import node as qnode
        from testbed.emulation.qemu.guest import Nic, random_mac

        topo = self.resolved.topology
        wanted = {n: spec for n, spec in topo.nodes.items() if spec.kind == "host" and getattr(spec, "image", None)}
        if not wanted:
            return
        if self.pool is None:  # a long-lived process's pool, or the guests a matrix lent this cell
            self.pool = qnode.POOL or qnode.lent_guests_from_environment()
        found = qnode.guest_images(topo)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="guest-boot")  # 2 cores: 2 guests at once
        taps = 0
        for name in wanted:
            nics = []
            for intf in self.resolved.interfaces[name]:
                assert intf.link is not None
                switch = next((e.node for e in topo.links[intf.link].endpoints if e.node in self.bridges), None)
                if switch is not None:
                    tap = ports[(intf.link, switch)]  # named as the switch port it is
                else:
                    tap = f"tb{self.tag}g{taps}"
                    taps += 1
                nics.append(Nic(tap, random_mac(), intf.name))
            gnode = qnode.GuestNode(name, found[name])
            self.guests[name] = self.nodes[name] = gnode
            self._boots[name] = executor.submit(self._boot, gnode, nics)
        executor.shutdown(wait=False)

    def _boot(self, gnode: Any, nics: list[Any]) -> None:
        from testbed.emulation.qemu import node as qnode
        from testbed.emulation.qemu.guest import Guest

        if self.pool is not None:
            guest = self.pool.take(gnode.image, len(nics))
            if guest is not None:
                gnode.guest, gnode.reused = guest, True
                qnode.rename_nics(guest, [n.ifname for n in nics])
                return
        # A guest the pool will keep outlives the run: the pool's process records it, not the run.
        keeps = self.pool is not None and getattr(self.pool, "keeps_new_guests", True)
        state = self.pool.state if keeps else self.state
        gnode.guest = Guest(f"{gnode.name}-{self.tag}", state=state, log_dir=self.log_dir)
        gnode.guest.boot(gnode.image, nics)

    def _wire_guests(self) -> None:
        """Wait for the guests; put each TAP's host side where the link's peer is."""
        from testbed.emulation.qemu.guest import GuestError
        from testbed.emulation.qemu.node import HostSide, in_namespace

        for name, gnode in self.guests.items():
            try:
                self._boots[name].result()
            except (GuestError, OSError, ValueError) as exc:
                raise RunError(f"{name}: the QEMU guest ({gnode.image.name}) did not boot: {exc}") from exc
            for nic, intf in zip(gnode.guest.nics, self.resolved.interfaces[name], strict=True):
                assert intf.link is not None
                link = self.resolved.topology.links[intf.link]
                switch = next((e.node for e in link.endpoints if e.node in self.bridges), None)
                if switch is not None:
                    argvs = [["ip", "link", "set", nic.tap, "master", self.bridges[switch]],
                             ["ip", "link", "set", nic.tap, "up"]]
                    side = HostSide(intf.name, nic.tap, self.nodes[switch], nic.tap, None, f"switch {switch}")
                else:
                    assert intf.peer is not None
                    peer, peer_if = intf.peer
                    pid = self.nodes[peer].pid
                    argvs = [["ip", "link", "set", nic.tap, "netns", str(pid), "name", peer_if]]
                    side = HostSide(intf.name, nic.tap, self.nodes[peer], peer_if, pid,
                                    f"{self.resolved.topology.nodes[peer].kind} {peer}, as its {peer_if}")
                for argv in argvs:
                    r = in_namespace(None, argv)
                    if r.returncode != 0:
                        raise RunError(f"{name}: `{' '.join(argv)}` failed: {r.stderr.strip()}")
                gnode.sides[intf.name] = side

    def _stop_guests(self) -> list[str]:
        """Shut the guests down (or reset them into the pool) and remove their TAPs' host sides; the
        guests side by side (a reset is about a second of an emulated guest's time)."""
        errors: list[str] = []
        parallel([lambda n=name, g=gnode: errors.extend(self._stop_guest(n, g)) for name, gnode in self.guests.items()])
        return errors

    def _stop_guest(self, name: str, gnode: Any) -> list[str]:
        from testbed.emulation.qemu.node import in_namespace

        errors = []
        boot = self._boots.get(name)
        if boot is not None and not boot.done() and gnode.guest is not None and gnode.guest.proc is not None:
            with contextlib.suppress(OSError):
                gnode.guest.proc.kill()  # cut a boot short: it then shuts itself down
        booted = False
        if boot is not None:
            try:
                boot.result(timeout=120)
                booted = True
            except Exception:  # noqa: BLE001 - reported when it happened; teardown goes on
                pass
        guest = gnode.guest
        if guest is None:
            return errors
        keep = self.pool is not None and booted and guest.proc is not None and guest.proc.poll() is None
        for side in gnode.sides.values():
            if side.moved:  # back to the root namespace under its own name (the pool), or gone
                argv = (["ip", "link", "set", side.name, "netns", "1", "name", side.tap] if keep
                        else ["ip", "link", "del", side.name])
            else:
                argv = ["ip", "link", "set", side.tap, "nomaster"]
            r = in_namespace(side.pid, argv)
            if r.returncode != 0 and keep:
                keep = False
                errors.append(f"{name}: `{' '.join(argv)}`: {r.stderr.strip()}")
        gnode.sides.clear()
        try:
            if not (keep and self.pool.give(guest)):
                guest.shutdown()
        except Exception as exc:  # noqa: BLE001 - teardown goes on; the sweep kills qemu
            errors.append(f"{name}: shutting the guest down: {exc}")
        return errors

    # -- remote hosts (ssh) ------------------------------------------------------------------------
    def _connect_remotes(self) -> None:
        from testbed.emulation.ssh.node import remote_nodes

        found = remote_nodes(self.resolved.topology, self.tag)
        if not found:
            return
        taken: set[int] = set()
        for name, rnode in found.items():
            rnode.plan_tunnels([(i.name, i.link) for i in self.resolved.interfaces[name]], taken)
            self.remotes[name] = self.nodes[name] = rnode
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="remote-connect")
        for name, rnode in found.items():
            self._connects[name] = executor.submit(self._bring_up_remote, rnode)
        executor.shutdown(wait=False)

    def _bring_up_remote(self, rnode: Any) -> None:
        rnode.connect()
        self.state.add_remote(rnode.record())  # before anything is made there: `testbed clean` finds it
        rnode.build_remote_side()

    def _wire_remotes(self) -> None:
        """Wait for the remote hosts; make each tunnel's local end and put it where the link's peer is."""
        from testbed.errors import CapabilityError

        for name, rnode in self.remotes.items():
            try:
                self._connects[name].result()
            except (RunError, CapabilityError):
                raise
            except Exception as exc:  # noqa: BLE001 - paramiko's and the OS's errors, said as a run error
                raise RunError(f"{name}: setting up the remote host {rnode.target.name}: {exc}") from exc
            lines = []
            for intf in self.resolved.interfaces[name]:
                assert intf.peer is not None  # the topology check refuses a remote host on a switch
                peer, peer_if = intf.peer
                t = rnode.tunnels[intf.name]
                t.peer, t.peer_if, t.pid = self.nodes[peer], peer_if, self.nodes[peer].pid
                self.state.links.append(t.local_dev)
                lines += [" ".join(rnode.vxlan_argv(t.local_dev, t.vni, rnode.local_ip, rnode.remote_ip)[1:]),
                          f"link set {t.local_dev} netns {t.pid} name {peer_if}"]
            self.state.save()
            root_batch(lines)

    def _stop_remotes(self) -> list[str]:
        errors: list[str] = []

        def stop(name: str, rnode: Any) -> None:
            connect = self._connects.get(name)
            if connect is not None:
                with contextlib.suppress(Exception):
                    connect.result(timeout=60)
            own = rnode.teardown()
            errors.extend(own)
            if not own:  # this host's leftovers are gone: `testbed clean` need not look for them
                self.state.drop_remote(rnode.netns)
            rnode.close()

        parallel([lambda n=name, r=rnode: stop(n, r) for name, rnode in self.remotes.items()])
        return errors

    def _interface_of(self, node: str, link: int) -> Interface:
        return next(i for i in self.resolved.interfaces[node] if i.link == link)

    def _configure(self, name: str) -> None:
        spec = self.resolved.topology.nodes[name]
        node = self.nodes[name]
        sysctls = dict(BASE_SYSCTLS)
        ipv6 = any(i.address6 is not None for i in self.resolved.interfaces[name])
        if ipv6:
            sysctls.update({"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
                            # Addresses are unique by construction; DAD would only delay them ~2 s.
                            "net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
        if spec.kind != "host":  # routers and network functions forward
            sysctls["net.ipv4.ip_forward"] = "1"
            if ipv6:
                sysctls["net.ipv6.conf.all.forwarding"] = "1"
        sysctls.update({k: str(v) for k, v in spec.sysctls.items()})
        # Grouped so that run_many gives the `ip` commands to one `ip -batch` each for `ip -6` (addresses
        # first: IPv6 routes need them), plain `ip` (the family comes from the addresses), `ip -6` rules.
        commands: list[list[str]] = [["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())]]
        addrs6: list[list[str]] = []
        ip: list[list[str]] = [["ip", "link", "set", "lo", "up"]]
        for intf in self.resolved.interfaces[name]:
            mtu = self.resolved.topology.links[intf.link].mtu if intf.link is not None else None
            if mtu:
                ip.append(["ip", "link", "set", intf.name, "mtu", str(mtu)])
            if intf.address is not None:
                ip.append(["ip", "addr", "add", str(intf.address), "dev", intf.name])
            if intf.address6 is not None:
                addrs6.append(["ip", "-6", "addr", "add", str(intf.address6), "dev", intf.name, "nodad"])
            if self._lossy(intf.link):
                # Loss is per packet only if packets are MTU-sized: with offloads a veth carries
                # 64 KB super-packets, and one drop would lose ~45 segments at once.
                commands.append(["ethtool", "-K", intf.name, "tso", "off", "gso", "off", "gro", "off"])
            ip.append(["ip", "link", "set", intf.name, "up"])
        ip += [route_argv(route, "add") for route in installed_routes(self.resolved.routes[name])]
        rules6 = []
        for i, rule in enumerate(self.resolved.rules[name]):
            argv = ["rule", "add", "from", str(rule.address), "table", str(rule.table), "priority", str(1000 + i)]
            (ip.append(["ip", *argv]) if rule.address.version == 4 else rules6.append(["ip", "-6", *argv]))
        commands += addrs6 + ip + rules6
        run_many(node, commands)

    def _lossy(self, link: int | None) -> bool:
        imp = self.resolved.topology.links[link].impairment if link is not None else None
        return imp is not None and any((imp.direction(f).loss or 0) > 0 for f in (True, False))

    def node(self, name: str) -> Any:
        return self.nodes[name]

    def set_link(self, ref: str, up: bool) -> None:
        node, _, intf = ref.partition(":")
        run(self.nodes[node], ["ip", "link", "set", intf, "up" if up else "down"])
        if up:
            # The kernel removed the routes through the link while it was down; put them back.
            self._restore_routes(node, intf)
            peer = self.resolved.interface(node, intf).peer
            if peer:
                self._restore_routes(*peer)

    def _restore_routes(self, name: str, intf: str) -> None:
        run_many(self.nodes[name], [route_argv(r, "replace") for r in installed_routes(self.resolved.routes[name])
                                    if r.interface == intf])

    def stop(self, hard: bool = False) -> None:
        """Tear the network down. `hard` (graceful teardown was given up): the guests' QEMU processes
        and every node's shell are killed, and nothing is asked of them; the run's sweep removes the
        bridges and anything left in the namespaces."""
        if hard:
            self._kill_guests()
            self.guests = {}
            for rnode in self.remotes.values():  # the run's sweep removes what they made there
                rnode.close()
            self.remotes = {}
            if self.net is not None:
                nodes = [*self.net.hosts, *self.net.switches]
                self.net = None
                kill_shells(nodes, grace=0)
            return
        errors = self._stop_guests() if self.guests else []
        self.guests = {}
        errors += self._stop_remotes() if self.remotes else []
        self.remotes = {}
        if self.net is None:
            if errors:
                raise RunError("; ".join(errors))
            return
        try:
            self._stop_nodes()
        except Exception as exc:  # noqa: BLE001 - teardown must go on; the sweep removes the rest
            raise RunError("; ".join([*errors, f"stopping Mininet: {exc}"])) from exc
        finally:
            self.net = None
        if errors:
            raise RunError("; ".join(errors))

    def _kill_guests(self) -> None:
        for gnode in self.guests.values():
            proc = getattr(gnode.guest, "proc", None)
            if proc is not None:
                with contextlib.suppress(OSError):
                    proc.kill()  # not reset for reuse: a pool gets nothing back from a hard stop

    def _stop_nodes(self) -> None:
        """Every shell is hung up at once and awaited: a namespace ends with its last process, and the
        kernel removes its interfaces with it, in one batch per namespace, veth peers in the root
        namespace (switch ports) included. The bridges and their ports are in the run's own link group:
        one request deletes them all (ports whose peer is in no namespace of ours too).
        Deleting devices one by one costs a kernel synchronisation each (20 ms under load)."""
        net = self.net
        kill_shells([*net.hosts, *net.switches], grace=2.0)
        if net.switches:
            root_batch([f"link del group {self.group}"], force=True)

    @property
    def group(self) -> int:
        """The interface group of this run's root-namespace devices (from its unique tag; 0 is the
        kernel's default group, so the tag's value is moved clear of small numbers others may use)."""
        return (1 << 24) + int(self.tag, 16) if all(c in "0123456789abcdef" for c in self.tag) else (1 << 24) + 1


def kill_starting_shells(names: list[str]) -> None:
    """SIGKILL the shells of `names` that never showed their first prompt (their Mininet node was never
    made, so neither the run's state nor teardown knows them): this process's children running
    `bash ... mininet:NAME` (Mininet's name for a node's shell)."""
    if not names:
        return
    wanted = {f"mininet:{n}".encode() for n in names}
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent == me and wanted.intersection(argv):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


def kill_shells(nodes: list[Any], grace: float) -> None:
    """Hang up every node's shell (and what runs in its foreground: a shell's commands share its
    process group), SIGKILL the groups still there after `grace` seconds, then let Mininet close the
    terminals. A node command still awaited is abandoned first: a closed terminal is not polled."""
    import time

    ours = not abort.settle(0) and not abort.aborting()
    if ours:  # only to free the threads polling these terminals: cleared again below
        abort.abort("the network is being stopped")
        abort.settle(2.0)
    shells = [n.shell for n in nodes if getattr(n, "shell", None) is not None and n.shell.poll() is None]
    for shell in shells:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(shell.pid, signal.SIGHUP)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(s.poll() is None for s in shells):
        time.sleep(0.02)
    for shell in shells:
        if shell.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(shell.pid, signal.SIGKILL)
    for node in nodes:
        with contextlib.suppress(Exception):
            node.terminate()  # the shell is gone: this closes its terminal and reaps it
    if ours:
        abort.resume()  # another network in this process (a benchmark's next size) runs commands again


@functools.cache
def _made_classes() -> tuple[type, type]:
    """Mininet Link and Intf classes for veth pairs that already exist (made by the root batch) and
    that the node's own configuration batch brings up: Mininet runs no command for them."""
    from mininet import link as mn_link

    class MadeIntf(mn_link.Intf):
        def config(self, **_params: Any) -> dict:
            return {}

    class MadeLink(mn_link.Link):
        def makeIntfPair(self, *_args: Any, **_kwargs: Any) -> None:
            return None

    return MadeLink, MadeIntf


def root_batch(lines: list[str], force: bool = False, timeout: float = 120.0) -> None:
    """Run `ip` batch lines in the root namespace (one process); RunError names the failed line."""
    if not lines:
        return
    path = write_script("\n".join(lines) + "\n", suffix=".batch")
    try:
        argv = ["ip", *(["-force"] if force else []), "-batch", str(path)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    if r.returncode != 0 and not force:
        found = re.search(re.escape(str(path)) + r":(\d+)", r.stderr)
        line = lines[int(found.group(1)) - 1] if found and int(found.group(1)) <= len(lines) else "?"
        raise RunError(f"`ip {line}` failed: {r.stderr.strip()[:400]}")
