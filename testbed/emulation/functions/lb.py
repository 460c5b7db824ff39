"""A stateless layer-4 load balancer with direct server return (the Maglev / Katran / IPVS-DR shape).

Per packet, with nothing remembered per connection:
- nftables (raw prerouting, `notrack`) hashes the packet's fields with `jhash ... mod N` into a
  firewall mark 1..N, one per backend;
- one `ip rule fwmark k` per backend routes the virtual address to backend k's own address on the
  shared segment (the packet keeps the virtual address as its destination);
- each backend has the virtual address on its loopback (and the LVS-DR ARP settings), accepts the
  packet and answers from the virtual address itself.

So every TCP connection, and every MPTCP subflow (another source address or port: another hash),
is placed by the hash alone. Answers may come back through the balancer (it is then the backends'
gateway) and are routed untouched. The archive gets the ruleset as loaded (`lb.nft`), with its
per-backend counters at the end (`lb-final.nft`), and the routing set-up (`routing.txt`).
"""

from __future__ import annotations

from typing import Any

from testbed.emulation.functions.base import NetworkFunction
from testbed.emulation.nodeexec import run, run_many
from testbed.errors import RunError

RULE_PREF = 100  # fwmark rules at RULE_PREF + k; they must come before the `local` table, which moves
LOCAL_PREF = 200
TABLE_BASE = 200  # routing table of backend k: TABLE_BASE + k
# A direct-server-return backend neither answers ARP for the virtual address on its LAN nor uses it
# as the sender of its own ARP requests (the LVS-DR real-server settings).
BACKEND_SYSCTLS = {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}


def _mininet_nodes(start: Any) -> dict[str, Any]:
    """Every Mininet node reachable over links from `start` (hosts through switches), by name."""
    found = {start.name: start}
    todo = [start]
    while todo:
        node = todo.pop()
        for intf in node.intfList():
            link = getattr(intf, "link", None)
            if link is None:
                continue
            for other in (link.intf1.node, link.intf2.node):
                if other.name not in found:
                    found[other.name] = other
                    todo.append(other)
    return found


class LoadBalancer(NetworkFunction):
    kind = "lb"

    def __init__(self, spec: Any, ctx: Any):
        super().__init__(spec, ctx)
        self._undo: list[tuple[Any, list[str]]] = []  # (node, argv), run in reverse by stop()

    @property
    def table(self) -> str:
        return f"lb_{self.ctx.name}"

    def build(self) -> dict:
        spec, res, name, t = self.spec, self.ctx.resolved, self.ctx.name, self.table
        vip = str(spec.vip(name, res))
        own = {i.segment: i for i in res.interfaces[name] if i.address is not None}
        backends = []
        for k, b in enumerate(spec.backends, start=1):
            shared = next(i for i in res.interfaces[b] if i.segment in own and i.address is not None)
            backends.append({"node": b, "mark": k, "table": TABLE_BASE + k, "address": str(shared.address.ip),
                             "interface": own[shared.segment].name})
        key = " . ".join(f"ip {f}" if f in ("saddr", "daddr") else f"tcp {f}" for f in spec.hash)
        match = f"ip daddr {vip} tcp dport {spec.port}"
        script = [
            f"add table ip {t}",
            f"add chain ip {t} prerouting {{ type filter hook prerouting priority raw; policy accept; }}",
            f"add rule ip {t} prerouting {match} notrack meta mark set jhash {key} mod {len(backends)} "
            f'seed {spec.seed:#x} offset 1 comment "hash"',
            *(f'add rule ip {t} prerouting {match} meta mark {b["mark"]} counter comment "to {b["node"]}"'
              for b in backends),
            f'add rule ip {t} prerouting ip saddr {vip} tcp sport {spec.port} notrack counter comment "answers"',
        ]
        own_addresses = {str(i.address.ip) for i in res.interfaces[name] if i.address is not None}
        routing = [["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_local=1"]]  # answers come from the VIP
        if vip not in own_addresses:
            routing.append(["ip", "addr", "add", f"{vip}/32", "dev", "lo"])
        for b in backends:
            routing += [["ip", "route", "add", f"{vip}/32", "via", b["address"], "dev", b["interface"],
                         "table", str(b["table"])],
                        ["ip", "rule", "add", "fwmark", str(b["mark"]), "table", str(b["table"]),
                         "pref", str(RULE_PREF + b["mark"])]]
        # The virtual address is local here: marked packets must meet their rules before `local`.
        routing += [["ip", "rule", "add", "table", "local", "pref", str(LOCAL_PREF)],
                    ["ip", "rule", "del", "pref", "0", "table", "local"]]
        return {"table": t, "virtual_address": vip, "port": spec.port, "hash": list(spec.hash),
                "seed": spec.seed, "backends": backends, "nft": script, "routing": routing,
                "on_backends": [["ip", "addr", "add", f"{vip}/32", "dev", "lo"],
                                *(["sysctl", "-q", "-w", f"{k}={v}"] for k, v in BACKEND_SYSCTLS.items())]}

    def start(self) -> dict:
        cfg = self.build()
        node, log_dir = self.ctx.node, self.ctx.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        peers = _mininet_nodes(node)
        missing = [b["node"] for b in cfg["backends"] if b["node"] not in peers]
        if missing:
            raise RunError(f"lb {self.ctx.name}: backends not reachable in the emulated network: {', '.join(missing)}")
        vip = cfg["virtual_address"]
        for b in cfg["backends"]:
            backend = peers[b["node"]]
            for key in BACKEND_SYSCTLS:
                value = run(backend, ["sysctl", "-n", key])[1].strip()
                self._undo.append((backend, ["sysctl", "-q", "-w", f"{key}={value}"]))
            self._undo.append((backend, ["ip", "addr", "del", f"{vip}/32", "dev", "lo"]))
            run_many(backend, cfg["on_backends"])
        _, accept_local = run(node, ["sysctl", "-n", "net.ipv4.conf.all.accept_local"])
        self._undo += [(node, ["nft", "delete", "table", "ip", self.table]),
                       (node, ["sysctl", "-q", "-w", f"net.ipv4.conf.all.accept_local={accept_local.strip()}"])]
        for argv in cfg["routing"][1:]:
            if argv[:3] == ["ip", "addr", "add"]:
                self._undo.append((node, ["ip", "addr", "del", *argv[3:]]))
            elif argv[:3] == ["ip", "route", "add"]:
                self._undo.append((node, ["ip", "route", "del", *argv[3:]]))
            elif argv[:3] == ["ip", "rule", "add"]:
                self._undo.append((node, ["ip", "rule", "del", *argv[3:]]))
            else:  # the `local` rule's old place
                self._undo.append((node, ["ip", "rule", "add", "pref", "0", "table", "local"]))
        run(node, ["nft", "; ".join(cfg["nft"])])
        run_many(node, cfg["routing"])
        (log_dir / "lb.nft").write_text(self._ruleset())
        _, rules = run(node, ["ip", "rule", "show"])
        tables = [run(node, ["ip", "route", "show", "table", str(b["table"])])[1] for b in cfg["backends"]]
        (log_dir / "routing.txt").write_text("# ip rule show\n" + rules + "".join(
            f"# ip route show table {b['table']} ({b['node']})\n{text}" for b, text in zip(cfg["backends"], tables,
                                                                                          strict=True)))
        return {**cfg, "files": ["lb.nft", "lb-final.nft", "routing.txt"]}

    def _ruleset(self) -> str:
        return run(self.ctx.node, ["nft", "list", "table", "ip", self.table])[1]

    def stop(self) -> None:
        super().stop()
        if not self._undo:
            return
        code, text = run(self.ctx.node, ["nft", "list", "table", "ip", self.table], check=False)
        if code == 0:
            (self.ctx.log_dir / "lb-final.nft").write_text(text)
        undo, self._undo = self._undo, []
        for node, argv in reversed(undo):
            run(node, argv, check=False)
