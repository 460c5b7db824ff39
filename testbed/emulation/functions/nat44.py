"""NAT44 in the node's namespace: an nftables masquerade on the outside interface, and (by default) a
forward filter that lets in only what answers a connection opened from the inside.

The archive gets the ruleset as loaded (`nat44.nft`), the same with its counters and the conntrack
table at the end of the run (`nat44-final.nft`, `conntrack.txt`: every translation made)."""

from __future__ import annotations

from testbed.emulation.functions.base import NetworkFunction
from testbed.emulation.nodeexec import run


class Nat44(NetworkFunction):
    kind = "nat44"

    @property
    def table(self) -> str:
        return f"nat44_{self.ctx.name}"

    def build(self) -> dict:
        spec, t = self.spec, self.table
        outside = spec.outside
        masquerade = "masquerade fully-random" if spec.randomize_ports else "masquerade"
        script = [
            f"add table ip {t}",
            f"add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
            f'add rule ip {t} postrouting oifname "{outside}" counter {masquerade} comment "translate"',
        ]
        if spec.block_inbound:
            script += [
                f"add chain ip {t} forward {{ type filter hook forward priority filter; policy accept; }}",
                f'add rule ip {t} forward iifname "{outside}" ct state established,related counter accept '
                f'comment "answers"',
                f'add rule ip {t} forward iifname "{outside}" counter drop comment "opened from outside"',
            ]
        inside = [i.name for i in self.ctx.interfaces if i.name != outside]
        return {"table": t, "outside": outside, "outside_address": spec.outside_address(self.ctx.name, self.ctx.resolved),
                "inside": inside, "randomize_ports": spec.randomize_ports, "block_inbound": spec.block_inbound,
                "nft": script}

    def start(self) -> dict:
        cfg = self.build()
        self.ctx.log_dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        # One nft invocation: the whole table or nothing.
        run(self.ctx.node, ["nft", "; ".join(cfg["nft"])])
        (self.ctx.log_dir / "nat44.nft").write_text(self._ruleset())
        return {**cfg, "files": ["nat44.nft", "nat44-final.nft", "conntrack.txt"]}

    def _ruleset(self) -> str:
        return run(self.ctx.node, ["nft", "list", "table", "ip", self.table])[1]

    def stop(self) -> None:
        super().stop()
        if not getattr(self, "_started", False):
            return
        self._started = False
        code, text = run(self.ctx.node, ["nft", "list", "table", "ip", self.table], check=False)
        if code == 0:
            (self.ctx.log_dir / "nat44-final.nft").write_text(text)
        code, text = run(self.ctx.node, ["cat", "/proc/net/nf_conntrack"], check=False)
        (self.ctx.log_dir / "conntrack.txt").write_text(text if code == 0 else f"unavailable: {text.strip()}\n")
        run(self.ctx.node, ["nft", "delete", "table", "ip", self.table], check=False)
