"""The middlebox node: kernel rules where they can, the NFQUEUE mangler for the rest.

Per behaviour (see :mod:`testbed.spec.functions.middlebox` for what each one means):

* drops (``drop_add_addr``, ``drop_mp_join_syn``, ``blackhole_mp_capable_syn``): one nftables rule
  each in table ``inet testbed_middlebox``, forward hook at priority -160 (before the mangle
  table), matching ``tcp option mptcp subtype N``; ``count`` is a ``limit ... burst N packets`` that
  never refills during a run, ``probability`` a ``numgen random`` draw;
* ``strip_mptcp`` with ``when: syn`` or ``all``: iptables/ip6tables ``TCPOPTSTRIP --strip-options 30``
  in the mangle table's FORWARD chain (through our own chain ``TB_MIDDLEBOX``);
* everything else: two NFQUEUE rules after those (conntrack original direction → queue 31000,
  reply → 31001, ``--queue-bypass``) and ``mangler.py`` bound to both queues.

Direction is conntrack's: ``to_server`` is the original direction of each TCP connection (the way
its SYN went), ``to_client`` the reply direction. Conntrack runs in liberal TCP mode in the
middlebox (``nf_conntrack_tcp_be_liberal=1``) so that rewritten or injected segments never make it
classify a subflow's segments as invalid (which would take them past the direction rules).

The middlebox's own interfaces have TSO, GSO and GRO switched off, so rules and mangler see the
segments a real box on the path would; the queues are bound without the GSO flag as well, so the
kernel segments anything still aggregated before handing it over.

Everything the function did is in its log directory (archived under ``functions/<node>/``):
``config.json`` (this build), ``ruleset.txt`` (nft and iptables as installed), ``mangler.json``,
``mangler.log``, ``mangler-counts.json`` and ``counters.json`` (per behaviour: kernel rule packet
counts and what the mangler did).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from testbed.emulation.functions.base import NetworkFunction
from testbed.emulation.nodeexec import run, wait_for_output
from testbed.errors import CapabilityError, RunError
from testbed.spec.functions.middlebox import uses_mangler

MANGLER = Path(__file__).with_name("mangler.py")
NFT_TABLE = "testbed_middlebox"
NFT_PRIORITY = -160  # before iptables' mangle FORWARD (-150): drops see segments as they arrived
IPT_CHAIN = "TB_MIDDLEBOX"
QUEUES = {"to_server": 31000, "to_client": 31001}
CTDIR = {"to_server": "ORIGINAL", "to_client": "REPLY"}
NFT_CTDIR = {"to_server": "original", "to_client": "reply"}
SUBTYPE = {"drop_add_addr": 3, "drop_mp_join_syn": 1, "blackhole_mp_capable_syn": 0}
PROBABILITY_SCALE = 10_000
READY_TIMEOUT = 15.0
OFFLOADS = (("tso", "tcp-segmentation-offload"), ("gso", "generic-segmentation-offload"),
            ("gro", "generic-receive-offload"))
SYSCTLS = {"net.netfilter.nf_conntrack_tcp_be_liberal": "1"}
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise ValueError(f"not an interface name: {name!r}")
    return name


def label(index: int, b: Any) -> str:
    """The name a behaviour goes by in rule comments and counters: '[2] strip_mptcp'."""
    return f"[{index}] {b.action}"


def nft_rule(index: int, b: Any) -> str:
    """The nft rule (without 'add rule ...' prefix) for a drop behaviour."""
    parts: list[str] = []
    if b.direction != "both":
        parts.append(f"ct direction {NFT_CTDIR[b.direction]}")
    if b.action in ("drop_mp_join_syn", "blackhole_mp_capable_syn"):
        parts.append("tcp flags syn")
    parts.append(f"tcp option mptcp subtype {SUBTYPE[b.action]}")
    if b.probability is not None:
        threshold = min(PROBABILITY_SCALE, max(1, round(b.probability * PROBABILITY_SCALE / 100)))
        parts.append(f"numgen random mod {PROBABILITY_SCALE} < {threshold}")
    if b.count is not None:
        # A bucket of `count` packets that refills at one a day: exactly the first `count` match.
        parts.append(f"limit rate 1/day burst {int(b.count)} packets")
    parts += ["counter", "drop", f'comment "{label(index, b)}"']
    return " ".join(parts)


def iptables_rule(index: int, b: Any, direction: str | None) -> list[str]:
    """Arguments after `iptables -w -t mangle -A TB_MIDDLEBOX` for a strip_mptcp (syn/all) rule."""
    argv = ["-p", "tcp"]
    if b.when == "syn":
        argv += ["--tcp-flags", "SYN", "SYN"]
    if direction is not None:
        argv += ["-m", "conntrack", "--ctdir", CTDIR[direction]]
    return argv + ["-m", "comment", "--comment", f"{label(index, b)} {b.when}",
                   "-j", "TCPOPTSTRIP", "--strip-options", "30"]


def nfqueue_rule(direction: str) -> list[str]:
    return ["-p", "tcp", "-m", "conntrack", "--ctdir", CTDIR[direction], "-m", "comment", "--comment",
            f"mangler {direction}", "-j", "NFQUEUE", "--queue-num", str(QUEUES[direction]), "--queue-bypass"]


def mangler_entry(index: int, b: Any) -> dict[str, Any]:
    """One behaviour as the mangler's configuration has it."""
    entry: dict[str, Any] = {"index": index, "action": b.action, "directions": list(b.directions())}
    if b.action == "strip_mptcp":
        entry["after"] = int(b.after or 0)
    elif b.action == "corrupt_payload":
        entry.update(after=int(b.after), count=b.count, probability=b.probability, offset=b.offset, xor=b.xor)
    elif b.action in ("inject_rst", "inject_mp_prio"):
        entry.update(after=b.after.describe(), count=b.count)
        if b.action == "inject_mp_prio":
            entry.update(address_id=b.address_id, backup=b.backup)
    return entry


# What a kernel or tool without the needed feature answers (iptables-nft / legacy, nft, python).
_MISSING = ("No chain/target/match", "Couldn't load", "not supported", "Could not process rule",
            "syntax error", "No module named", "Protocol not supported")


def _missing(argv: list[str], message: str) -> CapabilityError | None:
    """A failure that means this machine lacks something (exit 3, naming it), not a testbed bug."""
    if not any(m in message for m in _MISSING):
        return None
    if argv[0] == "nft":
        what = "nftables matching on MPTCP options (nft >= 1.0.1 and a kernel with nft exthdr)"
    elif "TCPOPTSTRIP" in argv:
        what = "the iptables TCPOPTSTRIP target (xt_TCPOPTSTRIP)"
    elif "NFQUEUE" in argv:
        what = "the iptables NFQUEUE target and conntrack match (nfnetlink_queue, xt_conntrack)"
    elif argv[0] == sys.executable:
        what = "the Python packages netfilterqueue and scapy in the testbed's environment"
    else:
        what = f"what `{' '.join(argv[:3])}` needs"
    return CapabilityError(f"the middlebox needs {what}: {message.strip()[-300:]}")


class Middlebox(NetworkFunction):
    kind = "middlebox"

    def __init__(self, spec: Any, ctx: Any) -> None:
        super().__init__(spec, ctx)
        self._restore: list[list[str]] = []  # commands that put sysctls and offloads back
        self._applied = False
        self._mangler: subprocess.Popen | None = None
        self._stopped = False
        self._started = False

    # -- configuration ----------------------------------------------------------------------------
    def build(self) -> dict:
        log_dir = self.ctx.log_dir
        interfaces = [_ifname(i.name) for i in self.ctx.interfaces]
        nft: list[str] = []
        ipt: list[list[str]] = []
        mangler: list[dict[str, Any]] = []
        where: dict[str, str] = {}
        for index, b in enumerate(self.spec.behaviours):
            if b.action in SUBTYPE:
                nft.append(nft_rule(index, b))
                where[label(index, b)] = "nftables"
            elif uses_mangler(b):
                mangler.append(mangler_entry(index, b))
                where[label(index, b)] = "mangler"
            else:
                directions: list[str | None] = [None] if b.direction == "both" else [b.direction]
                ipt += [iptables_rule(index, b, d) for d in directions]
                where[label(index, b)] = "iptables"
        if mangler:
            ipt += [nfqueue_rule(d) for d in QUEUES]

        apply: list[list[str]] = []
        remove: list[list[str]] = []
        for intf in interfaces:
            apply.append(["ethtool", "-K", intf, "tso", "off", "gso", "off", "gro", "off"])
        if self.spec.behaviours:
            apply.append(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in SYSCTLS.items())])
        if nft:
            script = [f"add table inet {NFT_TABLE}",
                      f"add chain inet {NFT_TABLE} forward {{ type filter hook forward priority {NFT_PRIORITY}; "
                      "policy accept; }"]
            script += [f"add rule inet {NFT_TABLE} forward {rule}" for rule in nft]
            apply.append(["nft", "; ".join(script)])
            remove.append(["nft", "delete", "table", "inet", NFT_TABLE])
        if ipt:
            for tool in ("iptables", "ip6tables"):
                apply.append([tool, "-w", "-t", "mangle", "-N", IPT_CHAIN])
                apply += [[tool, "-w", "-t", "mangle", "-A", IPT_CHAIN, *rule] for rule in ipt]
                apply.append([tool, "-w", "-t", "mangle", "-A", "FORWARD", "-j", IPT_CHAIN])
                remove += [[tool, "-w", "-t", "mangle", "-D", "FORWARD", "-j", IPT_CHAIN],
                           [tool, "-w", "-t", "mangle", "-F", IPT_CHAIN],
                           [tool, "-w", "-t", "mangle", "-X", IPT_CHAIN]]
        config: dict[str, Any] = {
            "behaviours": [b.model_dump(mode="json", exclude_none=True) for b in self.spec.behaviours],
            "implemented_by": where,
            "directions": {"to_server": "conntrack original direction (the way each subflow's SYN went)",
                           "to_client": "conntrack reply direction"},
            "interfaces": interfaces,
            "nft_rules": nft,
            "iptables_rules": ipt,
            "apply": apply,
            "remove": remove,
        }
        if mangler:
            seed = random.Random(f"{self.ctx.seed}:{self.ctx.name}").getrandbits(31)
            config["mangler"] = {"queues": dict(QUEUES), "seed": seed, "behaviours": mangler}
            config["mangler_argv"] = [sys.executable, str(MANGLER), "--config", str(log_dir / "mangler.json"),
                                      "--counts", str(log_dir / "mangler-counts.json")]
        return config

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> dict:
        cfg = self.build()
        log_dir = self.ctx.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "config.json").write_text(json.dumps(cfg, indent=1))
        node = self.ctx.node
        self._save_state(cfg)
        self._started = True
        started: dict[str, Any] = {}
        if "mangler" in cfg:
            (log_dir / "mangler.json").write_text(json.dumps(cfg["mangler"], indent=1))
            started = self._start_mangler(cfg["mangler_argv"])
        self._applied = True
        for argv in cfg["apply"]:
            try:
                run(node, argv)
            except RunError as exc:
                raise _missing(argv, str(exc)) or exc from None
        (log_dir / "ruleset.txt").write_text(self._ruleset())
        files = {"config": "config.json", "ruleset": "ruleset.txt", "counters": "counters.json"}
        if "mangler" in cfg:
            files.update(mangler_config="mangler.json", mangler_log="mangler.log",
                         mangler_counts="mangler-counts.json")
        return {**cfg, **started, "restore": list(self._restore), "log_dir": str(log_dir), "files": files}

    def _save_state(self, cfg: dict) -> None:
        """Remember the sysctl and offload settings that start() changes, to put them back."""
        node = self.ctx.node
        if self.spec.behaviours:
            for key in SYSCTLS:
                code, out = run(node, ["sysctl", "-n", key], check=False)
                if code == 0 and out.strip():
                    self._restore.append(["sysctl", "-q", "-w", f"{key}={out.strip()}"])
        for intf in cfg["interfaces"]:
            code, out = run(node, ["ethtool", "-k", intf], check=False)
            if code != 0:
                continue
            states = dict(line.strip().split(": ", 1) for line in out.splitlines() if ": " in line)
            back = [x for short, long in OFFLOADS
                    if (state := states.get(long, "").split(" ")[0]) in ("on", "off") and "[fixed]" not in
                    states.get(long, "") for x in (short, state)]
            if back:
                self._restore.append(["ethtool", "-K", intf, *back])

    def _start_mangler(self, argv: list[str]) -> dict[str, Any]:
        log_dir = self.ctx.log_dir
        with open(log_dir / "mangler.log", "ab") as log:
            proc = self.spawn(argv, "mangler", stdout=subprocess.PIPE, stderr=log)
        self._mangler = proc
        found, seen = wait_for_output(proc.stdout, b"ready", READY_TIMEOUT)
        if not found:
            tail = (log_dir / "mangler.log").read_text(errors="replace")[-600:].strip()
            missing = _missing(argv, tail)
            if missing is not None:
                raise missing
            raise RunError(f"middlebox {self.ctx.name}: the mangler did not start "
                           f"(exit {proc.poll()}): {tail or seen.decode(errors='replace')}")
        return {"mangler_pid": proc.pid}

    def _ruleset(self) -> str:
        node = self.ctx.node
        out = []
        listings = [("iptables-save -t mangle", ["iptables-save", "-c", "-t", "mangle"]),
                    ("ip6tables-save -t mangle", ["ip6tables-save", "-c", "-t", "mangle"])]
        if any(b.action in SUBTYPE for b in self.spec.behaviours):
            listings.insert(0, (f"nft list table inet {NFT_TABLE}", ["nft", "list", "table", "inet", NFT_TABLE]))
        for title, argv in listings:
            code, text = run(node, argv, check=False)
            out.append(f"# {title}{'' if code == 0 else f' (exit {code})'}\n{text.strip()}\n")
        return "\n".join(out)

    def kernel_counters(self) -> dict[str, dict[str, int]]:
        """Packets and bytes each kernel rule matched, by the rule's comment."""
        node = self.ctx.node
        counts: dict[str, dict[str, int]] = {}
        code, text = run(node, ["nft", "-j", "list", "table", "inet", NFT_TABLE], check=False)
        if code == 0:
            with contextlib.suppress(ValueError):
                for item in json.loads(text[text.index("{"):]).get("nftables", []):
                    rule = item.get("rule")
                    if not rule:
                        continue
                    counter = next((e["counter"] for e in rule.get("expr", []) if "counter" in e), None)
                    if counter is not None:
                        counts[f"nft {rule.get('comment', rule.get('handle'))}"] = {
                            "packets": counter["packets"], "bytes": counter["bytes"]}
        for tool in ("iptables-save", "ip6tables-save"):
            code, text = run(node, [tool, "-c", "-t", "mangle"], check=False)
            if code != 0:
                continue
            for line in text.splitlines():
                m = re.match(r"^\[(\d+):(\d+)\] -A " + IPT_CHAIN + r" .*--comment \"?([^\"]+?)\"? -j", line)
                if m:
                    key = f"{tool.split('-')[0]} {m.group(3)}"
                    prev = counts.get(key, {"packets": 0, "bytes": 0})
                    counts[key] = {"packets": prev["packets"] + int(m.group(1)),
                                   "bytes": prev["bytes"] + int(m.group(2))}
        return counts

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        node = self.ctx.node
        log_dir = self.ctx.log_dir
        kernel: dict[str, Any] = {}
        if self._applied:
            try:
                kernel = self.kernel_counters()
            except Exception as exc:  # noqa: BLE001 - counters are a record; removal must go on
                kernel = {"error": str(exc)}
            cfg = self.build()
            for argv in cfg["remove"]:
                run(node, argv, check=False)
            self._applied = False
        super().stop()  # the mangler writes its counts on SIGTERM
        if self._mangler is not None and self._mangler.stdout is not None:
            self._mangler.stdout.close()
        for argv in self._restore:
            run(node, argv, check=False)
        self._restore = []
        mangler_counts: dict[str, Any] = {}
        counts_file = log_dir / "mangler-counts.json"
        if counts_file.exists():
            with contextlib.suppress(OSError, ValueError):
                mangler_counts = json.loads(counts_file.read_text())
        if self._started:
            summary = {"kernel_rules": kernel,
                       "mangler": {f"[{b['index']}] {b['action']}": b.get("counts", {})
                                   for b in mangler_counts.get("behaviours", [])},
                       "mangler_packets": mangler_counts.get("packets")}
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / "counters.json").write_text(json.dumps(summary, indent=1))
