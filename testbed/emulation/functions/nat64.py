"""NAT64 with tayga in the node's namespace, plus NAT44 (nftables masquerade) behind it."""

from __future__ import annotations

import time

from testbed.emulation.functions.base import NetworkFunction
from testbed.emulation.nodeexec import run, run_many
from testbed.errors import RunError

TUN = "nat64"
NFT_TABLE = "testbed_nat64"


class Nat64(NetworkFunction):
    kind = "nat64"

    def build(self) -> dict:
        spec = self.spec
        own = self.ctx.interfaces
        outside = next(i for i in own if i.address is not None and (spec.outside in (None, i.name)))
        inside = next(i for i in own if i.address6 is not None)
        conf = "\n".join([
            f"tun-device {TUN}",
            f"ipv4-addr {spec.tayga_address()}",
            # Set explicitly: tayga cannot derive it from the well-known prefix and a private ipv4-addr.
            f"ipv6-addr {inside.address6.ip}",
            f"prefix {spec.prefix}",
            f"dynamic-pool {spec.pool4}",
            f"data-dir {self.ctx.log_dir / 'tayga-data'}",
        ]) + "\n"
        return {"implementation": "tayga", "prefix": str(spec.prefix), "pool4": str(spec.pool4),
                "tayga_ipv4": str(spec.tayga_address()), "outside": outside.name,
                "outside_address": str(outside.address.ip), "inside_address": str(inside.address6.ip),
                "tayga_conf": conf}

    def start(self) -> dict:
        cfg = self.build()
        log_dir = self.ctx.log_dir
        (log_dir / "tayga-data").mkdir(parents=True, exist_ok=True)
        conf = log_dir / "tayga.conf"
        conf.write_text(cfg["tayga_conf"])
        node = self.ctx.node
        run(node, ["tayga", "--mktun", "-c", str(conf)])
        run_many(node, [
            ["ip", "link", "set", TUN, "up"],
            ["ip", "addr", "add", cfg["outside_address"], "dev", TUN],
            ["ip", "-6", "addr", "add", cfg["inside_address"], "dev", TUN, "nodad"],
            ["ip", "route", "add", cfg["pool4"], "dev", TUN],
            ["ip", "-6", "route", "add", cfg["prefix"], "dev", TUN],
            ["nft", "add", "table", "ip", NFT_TABLE],
            ["nft", "add", "chain", "ip", NFT_TABLE, "postrouting",
             "{ type nat hook postrouting priority srcnat ; policy accept ; }"],
            ["nft", "add", "rule", "ip", NFT_TABLE, "postrouting", "ip", "saddr", cfg["pool4"],
             "oifname", cfg["outside"], "masquerade"],
        ])
        proc = self.spawn(["tayga", "-c", str(conf), "-d"], "tayga")
        # tayga opens the existing tun and starts translating; give it a moment and make sure it lives.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "TAYGA" not in (log_dir / "tayga.log").read_text():
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            raise RunError(f"tayga on {self.ctx.name} exited: {(log_dir / 'tayga.log').read_text()[-400:]}")
        _, ruleset = run(node, ["nft", "list", "table", "ip", NFT_TABLE])
        (log_dir / "nat44.nft").write_text(ruleset)
        return {**cfg, "pid": proc.pid}

    def stop(self) -> None:
        super().stop()
        conf = self.ctx.log_dir / "tayga.conf"
        if conf.exists():
            run(self.ctx.node, ["tayga", "--rmtun", "-c", str(conf)], check=False)
        run(self.ctx.node, ["nft", "delete", "table", "ip", NFT_TABLE], check=False)
