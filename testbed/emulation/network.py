"""A resolved topology brought up as a Mininet network: one namespace per host/router, Linux bridges
for switches, addresses, static and per-interface source routes."""

from __future__ import annotations

from typing import Any

from testbed.emulation.mininet_import import mininet_modules
from testbed.emulation.nodeexec import parallel, run, run_many
from testbed.errors import RunError
from testbed.spec.resolve import Interface, Resolved, Route
from testbed.state import RunState

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


class Network:
    def __init__(self, resolved: Resolved, state: RunState, tag: str):
        """`tag`: a short hex string unique to the run; names the root-namespace bridges."""
        self.resolved = resolved
        self.state = state
        self.tag = tag
        self.net: Any = None
        self.nodes: dict[str, Any] = {}
        self.bridges: dict[str, str] = {}  # switch name → bridge name in the root namespace

    def start(self) -> None:
        mn_net, mn_node, mn_nodelib = mininet_modules()
        topo = self.resolved.topology
        self.net = mn_net.Mininet(topo=None, controller=None, build=False, autoSetMacs=False)
        for name, spec in topo.nodes.items():
            if spec.kind == "switch":
                bridge = f"tb{self.tag}{len(self.bridges):02d}"
                self.bridges[name] = bridge
                self.state.add_link(bridge)
                self.nodes[name] = self.net.addSwitch(bridge, cls=mn_nodelib.LinuxBridge)
            else:
                self.nodes[name] = self.net.addHost(name, cls=mn_node.Host, ip=None)
                self.state.add_process(self.nodes[name].pid, f"shell of {name}", node_namespace=True)
        ports: dict[str, int] = {}
        for li, link in enumerate(topo.links):
            names = []
            for end in link.endpoints:
                if end.node in self.bridges:
                    ports[end.node] = ports.get(end.node, 0) + 1
                    port = f"{self.bridges[end.node]}p{ports[end.node]}"
                    self.state.add_link(port)
                    names.append(port)
                else:
                    names.append(self._interface_of(end.node, li).name)
            a, b = link.endpoints
            self.net.addLink(self.nodes[a.node], self.nodes[b.node], intfName1=names[0], intfName2=names[1])
        for name in self.bridges:
            self.nodes[name].start([])
        # Each node has its own shell, so nodes are configured side by side.
        parallel([lambda n=n: self._configure(n) for n in self.resolved.l3_nodes()])

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
        commands: list[list[str]] = [["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())],
                                     ["ip", "link", "set", "lo", "up"]]
        for intf in self.resolved.interfaces[name]:
            mtu = self.resolved.topology.links[intf.link].mtu if intf.link is not None else None
            if mtu:
                commands.append(["ip", "link", "set", intf.name, "mtu", str(mtu)])
            if intf.address is not None:
                commands.append(["ip", "addr", "add", str(intf.address), "dev", intf.name])
            if intf.address6 is not None:
                commands.append(["ip", "-6", "addr", "add", str(intf.address6), "dev", intf.name, "nodad"])
            if self._lossy(intf.link):
                # Loss is per packet only if packets are MTU-sized: with offloads a veth carries
                # 64 KB super-packets, and one drop would lose ~45 segments at once.
                commands.append(["ethtool", "-K", intf.name, "tso", "off", "gso", "off", "gro", "off"])
            commands.append(["ip", "link", "set", intf.name, "up"])
        commands += [route_argv(route, "add") for route in self.resolved.routes[name]]
        for i, rule in enumerate(self.resolved.rules[name]):
            commands.append(["ip", f"-{rule.address.version}", "rule", "add", "from", str(rule.address),
                             "table", str(rule.table), "priority", str(1000 + i)])
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
        run_many(self.nodes[name], [route_argv(r, "replace") for r in self.resolved.routes[name]
                                    if r.interface == intf])

    def stop(self) -> None:
        if self.net is None:
            return
        try:
            self.net.stop()
        except Exception as exc:  # noqa: BLE001 - teardown must go on; the sweep removes the rest
            raise RunError(f"stopping Mininet: {exc}") from exc
        finally:
            self.net = None
