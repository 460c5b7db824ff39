"""Link shaping: rate, delay, jitter, loss and queue length per link direction.

Two backends:

* ``netem`` (stock distro kernels): everything on the sender's egress, ``htb`` for the rate with a
  ``netem`` leaf for delay/jitter/loss, or a root ``netem`` when there is no rate.
* ``fallback`` (kernels without ``sch_netem``): the rate is still ``htb`` on the sender's egress
  (``pfifo`` leaf). Delay and jitter are a userspace delay line (``delayline.py`` behind an iptables
  NFQUEUE rule); loss is an nftables ``numgen random`` drop on an ingress, the delay line's drop
  verdict on an egress. Where they go (the "site", fixed per direction at its first shaping):

  1. the receiver's ingress when the receiver forwards (a router);
  2. else the sender's egress when the sender forwards: packets there are forwarded, so TCP Small
     Queues do not apply, and the delay happens before the receiving host's captures and kernel
     receive timestamps, as on a wire (and as with netem);
  3. else the receiver's ingress (two hosts, or a switch sending to a host). Caveat, written into the
     description: kernel receive timestamps on that host (``ping`` without ``-U``, its packet
     captures) are taken before the delay, so ping shows the RTT without this direction's delay;
  4. the sender's egress when the receiver is a switch port in the root namespace. Packets held in
     userspace there still count against the sending socket's TCP Small Queues budget, so local TCP
     senders are slow: the description says so.

A link direction with a remote host (ssh backend, a node with ``remote_end``) at either end has its
delay, jitter and loss at this machine's end of the host's tunnel; its rate is htb on the sender.

A link direction with a QEMU guest at either end (a node with ``shapes_own_links``) is shaped inside
the guest's own kernel with netem whatever the backend: on its NIC's egress when the guest sends, on
its ingress through an ifb device when it receives. The guest images load sch_netem, sch_htb, ifb,
act_mirred and cls_matchall; nothing runs on the host side of its TAPs.

Command construction is kept in pure functions returning argv lists so it can be checked without
root; :class:`Shaper` runs them inside the nodes' namespaces with ``node.popen`` (not the node's shell,
which other threads may be using). This module does not import Mininet: nodes are duck-typed
(``name``, ``popen``, optional ``inNamespace``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import pathlib
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from testbed.emulation.nodeexec import readable
from testbed.errors import CapabilityError, RunError
from testbed.spec.topology import Impairment

BACKENDS = ("netem", "fallback")

PACKET_BYTES = 1500
QUEUE_MIN = 10
QUEUE_MAX = 100_000
#: Packets in flight through a delay with no rate behind it: netem's limit and the delay line's
#: kernel queue length (the delay line holds packets in the kernel's NFQUEUE until their verdict).
DELAY_QUEUE = 10_000
NFT_TABLE = "testbed_shaping"
LOSS_SCALE = 10_000  # nft draws numgen random mod LOSS_SCALE: loss in steps of 0.01 %
DELAYLINE = pathlib.Path(__file__).with_name("delayline.py")
READY_TIMEOUT = 10.0
COMMAND_TIMEOUT = 15.0

_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")

JITTER_MODELS = {
    "netem": "netem default: uniform within delay ± jitter; packets may be reordered",
    "fallback": "normal around the delay, standard deviation jitter/2, clipped to delay ± jitter; packets are "
                "never reordered, so back-to-back packets wait for a slower one ahead (the mean delay rises "
                "with the packet rate)",
}


# ----------------------------------------------------------------------------------------------
# Queue sizing (both backends)


def bdp_packets(rate: float, delay: float) -> int:
    """One bandwidth-delay product in 1500-byte packets, RTT taken as twice the one-way delay,
    clamped to [QUEUE_MIN, QUEUE_MAX] (the minitopo habit)."""
    packets = math.ceil(rate * 2 * delay / (8 * PACKET_BYTES)) if rate > 0 and delay > 0 else 0
    return min(max(packets, QUEUE_MIN), QUEUE_MAX)


def queue_length(imp: Impairment) -> int | None:
    """The bottleneck queue in packets: the impairment's own `queue`, else one BDP; None without a rate
    and without an explicit queue (then nothing queues but the packets in flight through the delay)."""
    if imp.queue:
        return int(imp.queue)
    if imp.rate:
        return bdp_packets(imp.rate, imp.delay or 0.0)
    return None


# ----------------------------------------------------------------------------------------------
# Formatting for tc and nft


def tc_rate(bps: float) -> str:
    return f"{max(1, round(bps))}bit"


def tc_time(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def tc_percent(pct: float) -> str:
    text = f"{pct:.6f}".rstrip("0").rstrip(".")
    return f"{text}%"


def loss_threshold(pct: float) -> int:
    """nft threshold for `numgen random mod LOSS_SCALE < N`; at least 1 when any loss is asked for."""
    if pct <= 0:
        return 0
    return min(LOSS_SCALE, max(1, round(pct * LOSS_SCALE / 100)))


def check_ifname(ifname: str) -> str:
    if not _IFNAME.fullmatch(ifname):
        raise ValueError(f"not an interface name: {ifname!r}")
    return ifname


# ----------------------------------------------------------------------------------------------
# Pure command builders (argv lists)


def netem_probe_command() -> list[str]:
    return ["unshare", "--net", "--", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]


def tc_delete_root(ifname: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", check_ifname(ifname), "root"]


def netem_options(imp: Impairment, limit: int) -> list[str]:
    """The `netem ...` part: delay [jitter], loss, limit."""
    args = ["netem"]
    if imp.delay:
        args += ["delay", tc_time(imp.delay)]
        if imp.jitter:
            args.append(tc_time(imp.jitter))
    if imp.loss:
        args += ["loss", tc_percent(imp.loss)]
    args += ["limit", str(limit)]
    return args


def htb_commands(ifname: str, rate: float, leaf: list[str], *, root: bool = True) -> list[list[str]]:
    """htb root 1:, one class 1:1 at `rate` (ceil the same), `leaf` qdisc 10: under it.

    `root=False` when the htb root is already there: htb has no change operation, so replacing it
    fails ("Change operation not supported"); its class and leaf are changed in place instead.
    """
    dev = check_ifname(ifname)
    commands = [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"]] if root else []
    return commands + [
        ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
         "rate", tc_rate(rate), "ceil", tc_rate(rate)],
        ["tc", "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", *leaf],
    ]


def netem_layout(imp: Impairment) -> str | None:
    """What sits at the root with the netem backend: "htb", "netem" or nothing."""
    if imp.rate:
        return "htb"
    return None if imp.empty else "netem"


def netem_limit(imp: Impairment) -> int:
    queue = queue_length(imp)
    return queue if queue is not None else DELAY_QUEUE


def netem_commands(ifname: str, imp: Impairment, previous_layout: str | None = None) -> list[list[str]]:
    """Commands that make the sender's egress of `ifname` match `imp` with sch_netem.

    `previous_layout` is what an earlier call installed (None: nothing): `tc qdisc replace` cannot
    change the kind of the root qdisc, so switching between htb and netem deletes the root first.
    """
    layout = netem_layout(imp)
    commands: list[list[str]] = []
    if previous_layout is not None and previous_layout != layout:
        commands.append(tc_delete_root(ifname))
    if layout == "htb":
        assert imp.rate
        commands += htb_commands(ifname, imp.rate, netem_options(imp, netem_limit(imp)),
                                 root=previous_layout != "htb")
    elif layout == "netem":
        commands.append(["tc", "qdisc", "replace", "dev", check_ifname(ifname), "root", "handle", "1:",
                         *netem_options(imp, netem_limit(imp))])
    return commands


def ifb_commands(ifname: str, ifb: str) -> list[list[str]]:
    """Redirect everything `ifname` receives through the ifb device `ifb`, whose egress can then be
    shaped like any other (ingress shaping inside a QEMU guest)."""
    dev, out = check_ifname(ifname), check_ifname(ifb)
    return [["ip", "link", "add", out, "type", "ifb"], ["ip", "link", "set", out, "up"],
            ["tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
            ["tc", "filter", "add", "dev", dev, "parent", "ffff:", "matchall",
             "action", "mirred", "egress", "redirect", "dev", out]]


def fallback_rate_commands(ifname: str, rate: float, limit: int, *, root: bool = True) -> list[list[str]]:
    return htb_commands(ifname, rate, ["pfifo", "limit", str(limit)], root=root)


def nft_loss_command(chain: str, ifname: str, loss: float) -> list[str]:
    """One nft invocation (atomic): table and a prerouting chain at priority -300 for this direction,
    emptied, then the drop rule when `loss` > 0. Interface match is by name on ingress."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", chain):
        raise ValueError(f"bad nft chain name {chain!r}")
    dev = check_ifname(ifname)
    script = [
        f"add table inet {NFT_TABLE}",
        f"add chain inet {NFT_TABLE} {chain} {{ type filter hook prerouting priority -300; policy accept; }}",
        f"flush chain inet {NFT_TABLE} {chain}",
    ]
    threshold = loss_threshold(loss)
    if threshold:
        script.append(f'add rule inet {NFT_TABLE} {chain} iifname "{dev}" '
                      f"numgen random mod {LOSS_SCALE} < {threshold} drop")
    return ["nft", "; ".join(script)]


def nfqueue_rule_commands(ifname: str, queue: int, *, ingress: bool, add: bool) -> list[list[str]]:
    """iptables + ip6tables mangle rules sending the interface's packets to NFQUEUE `queue`.

    `--queue-bypass`: if no delay line is bound (it died), packets pass instead of being dropped.
    """
    dev = check_ifname(ifname)
    chain, match = ("PREROUTING", "-i") if ingress else ("POSTROUTING", "-o")
    spec = ["-t", "mangle", "-A" if add else "-D", chain, match, dev,
            "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    return [[tool, "-w", *spec] for tool in ("iptables", "ip6tables")]


def delayline_command(queue: int, *, delay: float, jitter: float, loss: float, seed: int,
                      python: str | None = None, script: pathlib.Path = DELAYLINE,
                      lib: str | None = None) -> list[str]:
    """The delay line's argv. With `lib` (where netfilterqueue is) it runs under ``python -S``: the
    site module (and the editable install's finder) is a third of its start-up, paid once per
    delayed link direction."""
    head = [python or sys.executable, "-S", str(script), "--lib", lib] if lib else \
        [python or sys.executable, str(script)]
    return [*head, "--queue", str(queue),
            "--delay", repr(float(delay)), "--jitter", repr(float(jitter)), "--loss", repr(float(loss)),
            "--seed", str(seed), "--queue-maxlen", str(DELAY_QUEUE), "--stdin-control"]


@functools.cache
def netfilterqueue_lib() -> str | None:
    """The directory to put on a ``python -S`` delay line's path, or None (then it runs with site, and
    a missing package is reported by the line itself)."""
    spec = importlib.util.find_spec("netfilterqueue")
    if spec is None or not spec.origin:
        return None
    package = pathlib.Path(spec.origin).parent
    return str(package.parent if package.name == "netfilterqueue" else package)


def safe_label(label: str) -> str:
    text = re.sub(r"[^a-z0-9_-]+", "_", label.lower()).strip("_")
    return text or "link"


# ----------------------------------------------------------------------------------------------
# Backend choice


_netem_cache: bool | None = None


def _probe_netem() -> bool:
    try:
        result = subprocess.run(netem_probe_command(), capture_output=True, timeout=10, check=False)
        return result.returncode == 0
    except FileNotFoundError:  # no unshare: a named namespace, always deleted
        pass
    except (OSError, subprocess.TimeoutExpired):
        return False
    name = f"testbed-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10).returncode != 0:
            return False
        result = subprocess.run(["ip", "netns", "exec", name, *netem_probe_command()[3:]],
                                capture_output=True, timeout=10, check=False)
        return result.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)


def netem_available() -> bool:
    """Whether this kernel can attach a netem qdisc (probed once per process in a throwaway netns)."""
    global _netem_cache
    if _netem_cache is None:
        _netem_cache = _probe_netem()
    return _netem_cache


def choose_backend(prefer: str | None = None) -> str:
    """"netem" when the kernel has it, else "fallback"; `prefer` forces one."""
    if prefer not in (None, *BACKENDS):
        raise ValueError(f"unknown shaping backend {prefer!r} (use one of {', '.join(BACKENDS)})")
    if prefer == "fallback":
        return "fallback"
    if netem_available():
        return "netem"
    if prefer == "netem":
        raise CapabilityError("shaping backend 'netem' asked for, but this kernel has no sch_netem "
                              "(`tc qdisc add ... netem` fails): install the kernel's extra modules "
                              "or use the fallback backend")
    return "fallback"


# ----------------------------------------------------------------------------------------------
# Applying


@dataclass
class LinkDirection:
    label: str  # e.g. "wifi forward" (for the manifest)
    sender: Any  # mininet node whose interface sends in this direction
    sender_if: str
    receiver: Any | None  # node at the other end; None if that end is a switch port in the root namespace
    receiver_if: str | None
    impairment: Impairment


@dataclass
class _DelayLineProc:
    proc: subprocess.Popen[bytes]
    queue: int
    log_path: pathlib.Path
    log_file: IO[bytes]
    buffer: bytes = b""

    def read_line(self, timeout: float) -> str | None:
        """The next stdout line, or None on timeout / end of output."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not readable(fd, remaining):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").strip()


@dataclass(frozen=True)
class _Site:
    """Where the fallback delays (and drops) one direction's packets; fixed at the first apply."""

    node: Any
    ifname: str
    ingress: bool
    why: str  # for the description

    def __str__(self) -> str:
        return f"{_where(self.node, self.ifname)} {'ingress' if self.ingress else 'egress'} ({self.why})"


@dataclass
class _State:
    index: int
    label: str
    impairment: Impairment | None = None
    layout: str | None = None  # netem backend: root layout installed
    htb: bool = False  # fallback: htb installed on the sender's egress
    site: _Site | None = None  # fallback: where delay and loss go
    loss_chain: str | None = None  # fallback: nft chain created at an ingress site
    line: _DelayLineProc | None = None
    rule_queue: int | None = None  # fallback: the queue number the NFQUEUE rules at the site send to
    ipv6_error: str | None = None  # why the ip6tables NFQUEUE rule could not be added
    ifb: str | None = None  # guest ingress: the ifb device its packets are redirected through


def _where(node: Any, ifname: str | None) -> str:
    return f"{getattr(node, 'name', node)}:{ifname}"


def _run_in_guest(node: Any, commands: list[list[str]]) -> None:
    """One round trip, ip and tc commands batched: every process is slow in an emulated guest."""
    node.run_many(commands, optional=[argv[:3] == ["tc", "qdisc", "del"] for argv in commands])


class Shaper:
    """Installs and changes impairments on link directions; owns the delay-line processes."""

    def __init__(self, backend: str, log_dir: pathlib.Path, seed: int = 0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown shaping backend {backend!r}")
        self.backend = backend
        self.log_dir = pathlib.Path(log_dir)
        self.seed = seed
        self._states: dict[tuple[str, str], _State] = {}
        self._lines: list[_DelayLineProc] = []
        self._next_queue = 1
        self._log_names: set[str] = set()
        self._forwarding: dict[str, bool] = {}
        self._lock = threading.RLock()  # timeline events may change links from another thread
        # apply_many shapes directions side by side: what they share is changed under this one
        self._shared = threading.Lock()

    # -- public API -----------------------------------------------------------------------------

    def apply(self, d: LinkDirection) -> dict[str, Any]:
        """Install `d.impairment`; returns a JSON-able description for the manifest."""
        return self.change(d, d.impairment)

    def apply_many(self, directions: list[LinkDirection], workers: int = 8) -> list[dict[str, Any]]:
        """`apply` for many directions, side by side (each has its own interface and delay line; a
        thousand-link topology is not shaped one process at a time); descriptions in order."""
        from testbed.emulation.nodeexec import parallel

        with self._lock:
            for d in directions:  # states numbered in order, whatever order the threads run in
                self._state_for(d)
            # A QEMU guest's directions go together, in one round trip and two processes (ip, tc):
            # each process costs ~0.1 s under TCG, and the guest's one CPU runs them in turn anyway.
            guests: dict[int, list[int]] = {}
            jobs: list[Callable[[], Any]] = []
            for i, d in enumerate(directions):
                site = self._guest_site(d)
                if site is None:
                    jobs.append(lambda i=i, d=d: [(i, self._change(d, d.impairment))])
                else:
                    guests.setdefault(id(site[0]), []).append(i)
            for members in guests.values():
                jobs.append(lambda members=members: self._in_guest_many([directions[i] for i in members], members))
            described = dict(pair for done in parallel(jobs, workers=workers) for pair in done)
            return [described[i] for i in range(len(directions))]

    def change(self, d: LinkDirection, impairment: Impairment) -> dict[str, Any]:
        """Make an (already shaped or not) direction match `impairment` at runtime.

        `d.impairment` is updated to the impairment now installed, so that events can be laid over it.
        """
        with self._lock:
            return self._change(d, impairment)

    @staticmethod
    def _guest_site(d: LinkDirection) -> tuple[Any, str, bool] | None:
        """(guest node, its interface, ingress?) when a QEMU guest shapes this direction itself."""
        check_ifname(d.sender_if)
        if d.receiver is not None:
            if d.receiver_if is None:
                raise ValueError(f"{d.label}: a receiver node needs receiver_if")
            check_ifname(d.receiver_if)
        if getattr(d.sender, "shapes_own_links", False):
            return d.sender, d.sender_if, False
        if d.receiver is not None and getattr(d.receiver, "shapes_own_links", False):
            assert d.receiver_if is not None
            return d.receiver, d.receiver_if, True
        return None

    def _change(self, d: LinkDirection, impairment: Impairment) -> dict[str, Any]:
        site = self._guest_site(d)
        state = self._state_for(d)
        if site is not None:
            node, ifname, ingress = site
            commands, finish = self._in_guest(d, state, impairment, node, ifname, ingress)
            _run_in_guest(node, commands)
            description = finish()
        elif self.backend == "netem":
            description = self._netem(d, state, impairment)
        else:
            description = self._fallback(d, state, impairment)
        state.impairment = impairment
        d.impairment = impairment
        return description

    def _state_for(self, d: LinkDirection) -> _State:
        key = (str(getattr(d.sender, "name", id(d.sender))), d.sender_if)
        with self._shared:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _State(index=len(self._states), label=d.label)
            return state

    def stop(self) -> None:
        """Stop every delay line started (SIGTERM, wait, SIGKILL); idempotent."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        with self._shared:
            lines, self._lines = self._lines, []
        for line in lines:  # all told at once, then awaited: they release what they hold in parallel
            with contextlib.suppress(OSError):
                if line.proc.poll() is None:
                    line.proc.send_signal(signal.SIGTERM)
        for line in lines:
            self._terminate(line)
        for state in self._states.values():
            state.line = None

    def processes(self) -> list[int]:
        """Pids of the delay lines this shaper started and has not stopped."""
        with self._shared:
            return [line.proc.pid for line in self._lines]

    # -- backends ------------------------------------------------------------------------------

    def _describe(self, d: LinkDirection, imp: Impairment, queue: int | None) -> dict[str, Any]:
        return {
            "label": d.label,
            "backend": self.backend,
            "sender": _where(d.sender, d.sender_if),
            "receiver": _where(d.receiver, d.receiver_if) if d.receiver is not None else None,
            "impairment": imp.model_dump(mode="json", exclude_none=True),
            "queue": queue,
        }

    def _netem(self, d: LinkDirection, state: _State, imp: Impairment) -> dict[str, Any]:
        commands = netem_commands(d.sender_if, imp, state.layout)
        for argv in commands:
            if argv[:3] == ["tc", "qdisc", "del"]:  # already gone is not an error worth stopping for
                self._run(d.sender, argv, check=False)
        self._run_tc(d.sender, [argv for argv in commands if argv[:3] != ["tc", "qdisc", "del"]])
        state.layout = netem_layout(imp)
        return self._describe_netem(d, imp, state, f"{_where(d.sender, d.sender_if)} egress")

    def _describe_netem(self, d: LinkDirection, imp: Impairment, state: _State, where: str) -> dict[str, Any]:
        """What a netem (+ htb) layout on `where` does to the direction, for the manifest."""
        out = self._describe(d, imp, netem_limit(imp) if state.layout else None)
        if imp.rate:
            out["rate"] = f"htb on {where} (netem leaf limit {out['queue']})"
        if imp.delay:
            out["delay"] = f"netem on {where}"
            if imp.jitter:
                out["jitter_model"] = JITTER_MODELS["netem"]
        if imp.loss:
            out["loss"] = f"netem on {where}"
        return out

    def _in_guest_many(self, directions: list[LinkDirection], indices: list[int]) -> list[tuple[int, dict[str, Any]]]:
        """Directions one guest shapes, all in one run_many; (index, description) each."""
        commands: list[list[str]] = []
        finishes = []
        for d in directions:
            node, ifname, ingress = self._guest_site(d)  # type: ignore[misc]
            more, finish = self._in_guest(d, self._state_for(d), d.impairment, node, ifname, ingress)
            commands += more
            finishes.append(finish)
        # Each direction's ip commands (its ifb device) come before its tc commands, so all the ip
        # commands can go first: one ip batch, then one tc batch.
        _run_in_guest(node, [c for c in commands if c[0] == "ip"] + [c for c in commands if c[0] != "ip"])
        return [(i, finish()) for i, finish in zip(indices, finishes, strict=True)]

    def _in_guest(self, d: LinkDirection, state: _State, imp: Impairment, node: Any, ifname: str,
                  ingress: bool) -> tuple[list[list[str]], Callable[[], dict[str, Any]]]:
        """netem in a QEMU guest's kernel, its egress or its ingress through an ifb device: the
        commands to run there, and what to call once they have run (records the state, describes)."""
        dev = ifname
        commands: list[list[str]] = []
        if ingress:
            if state.ifb is None:
                state.ifb = f"tbifb{state.index}"
                commands += ifb_commands(ifname, state.ifb)
            dev = state.ifb
        commands += netem_commands(dev, imp, state.layout)

        def finish() -> dict[str, Any]:
            state.layout = netem_layout(imp)
            state.impairment = imp
            where = (f"{_where(node, ifname)} ingress (through {dev}) in the guest's kernel" if ingress
                     else f"{_where(node, ifname)} egress in the guest's kernel")
            return {**self._describe_netem(d, imp, state, where), "backend": "netem (guest kernel)"}

        return commands, finish

    def _fallback(self, d: LinkDirection, state: _State, imp: Impairment) -> dict[str, Any]:
        queue = queue_length(imp) if imp.rate else None
        out = self._describe(d, imp, queue)
        if imp.queue and not imp.rate:
            out["queue_note"] = (f"no rate, so no bottleneck queue: the delay line holds up to {DELAY_QUEUE} "
                                 "packets and lets more pass undelayed (fail-open)")

        # rate: htb + pfifo on the sender's egress
        if imp.rate:
            assert queue is not None
            self._run_tc(d.sender, fallback_rate_commands(d.sender_if, imp.rate, queue, root=not state.htb))
            state.htb = True
            out["rate"] = f"htb on {_where(d.sender, d.sender_if)} egress (pfifo limit {queue})"
        elif state.htb:
            self._run(d.sender, tc_delete_root(d.sender_if), check=False)
            state.htb = False

        delay, jitter, loss = imp.delay or 0.0, imp.jitter or 0.0, imp.loss or 0.0
        if state.site is None and (delay or loss):
            state.site = self._choose_site(d)
        site = state.site
        if site is None:
            return out

        # loss: nft on an ingress site; the delay line's drop verdict on an egress site (an nftables
        # drop on local output makes sends fail with EPERM instead of looking like loss on the wire)
        line_loss = 0.0
        if site.ingress:
            if loss or state.loss_chain:
                chain = state.loss_chain or f"loss_{state.index}"
                self._run(site.node, nft_loss_command(chain, site.ifname, loss))
                state.loss_chain = chain
            if loss:
                out["loss"] = f"nft numgen drop on {site}"
        else:
            line_loss = loss
            if loss:
                out["loss"] = f"delay line drop on {site}"
        if loss:
            out["loss_effective"] = tc_percent(loss_threshold(loss) * 100 / LOSS_SCALE) if site.ingress \
                else tc_percent(loss)

        if delay or line_loss:
            line = self._ensure_line(d, state, site, delay=delay, jitter=jitter, loss=line_loss)
            if state.rule_queue != line.queue:
                self._remove_rules(state)  # rules to an earlier line's queue
                ipv4, ipv6 = nfqueue_rule_commands(site.ifname, line.queue, ingress=site.ingress, add=True)
                self._run(site.node, ipv4)
                state.rule_queue = line.queue
                state.ipv6_error = self._try(site.node, ipv6)  # a kernel without IPv6 has no ip6tables
            if delay:
                out["delay"] = f"nfqueue delay line (queue {line.queue}, pid {line.proc.pid}) on {site}"
                if jitter:
                    out["jitter_model"] = JITTER_MODELS["fallback"]
            if state.ipv6_error:
                out["delay_ipv6"] = f"not applied: {state.ipv6_error}"
            out["delay_line_queue"] = DELAY_QUEUE
            out["delay_line_log"] = str(line.log_path)
        elif state.rule_queue is not None:
            # stop queueing to the line, then let go of what it holds; the process stays for later
            self._remove_rules(state)
            if state.line is not None and state.line.proc.poll() is None:
                self._set_line(state.line, delay=0.0, jitter=0.0, loss=0.0)
        return out

    def _remove_rules(self, state: _State) -> None:
        if state.rule_queue is None or state.site is None:
            return
        site = state.site
        for argv in nfqueue_rule_commands(site.ifname, state.rule_queue, ingress=site.ingress, add=False):
            self._run(site.node, argv, check=False)
        state.rule_queue = None

    def _choose_site(self, d: LinkDirection) -> _Site:
        """Delay where the packets are forwarded if either end forwards: there it is "on the wire" for
        both ends (captures and kernel receive timestamps see it, TCP Small Queues do not). Otherwise on
        the receiver's ingress, and on the sender's egress only when the receiver is a switch port."""
        if d.receiver is None:
            return _Site(d.sender, d.sender_if, False,
                         "sender egress: the other end is a switch port; TCP throughput will be limited")
        assert d.receiver_if is not None
        # A host on a remote machine: its end of the link is a tunnel there; this machine's end is
        # where the delay line and nftables run (the remote kernel may have neither).
        if getattr(d.sender, "remote_end", False):
            return _Site(d.receiver, d.receiver_if, True, "local end of a remote host's tunnel")
        if getattr(d.receiver, "remote_end", False):
            return _Site(d.sender, d.sender_if, False, "local end of a remote host's tunnel")
        if self._forwards(d.receiver):
            return _Site(d.receiver, d.receiver_if, True, "forwarding node")
        if self._forwards(d.sender):
            return _Site(d.sender, d.sender_if, False, "forwarding node")
        return _Site(d.receiver, d.receiver_if, True,
                     "receiver ingress: its captures see packets before this delay and loss, and its kernel "
                     "receive timestamps (ping without -U) miss the delay")

    def _forwards(self, node: Any) -> bool:
        """Whether the node is a namespace with IP forwarding on (a switch in the root namespace is not)."""
        if not getattr(node, "inNamespace", True):
            return False
        key = str(getattr(node, "name", id(node)))
        if key not in self._forwarding:
            _, out, _ = self._exec(node, ["sysctl", "-n", "-e", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"])
            self._forwarding[key] = "1" in out.split()
        return self._forwarding[key]

    # -- delay lines ---------------------------------------------------------------------------

    def _ensure_line(self, d: LinkDirection, state: _State, site: _Site, *,
                     delay: float, jitter: float, loss: float) -> _DelayLineProc:
        if state.line is not None and state.line.proc.poll() is None:
            self._set_line(state.line, delay=delay, jitter=jitter, loss=loss)
            return state.line
        if state.line is not None:  # it died: its rules (queue-bypass) pass packets; the caller replaces them
            with self._shared:
                self._lines = [x for x in self._lines if x is not state.line]
            self._terminate(state.line)
            state.line = None
        with self._shared:
            queue = self._next_queue
            self._next_queue += 1
            name = f"delayline-{safe_label(d.label)}"
            if name in self._log_names:
                name = f"{name}-q{queue}"
            self._log_names.add(name)
        seed = random.Random(f"{self.seed}:{state.index}").getrandbits(31)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        argv = delayline_command(queue, delay=delay, jitter=jitter, loss=loss, seed=seed,
                                 lib=netfilterqueue_lib())
        try:
            proc = site.node.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file)
        except Exception:
            log_file.close()
            raise
        line = _DelayLineProc(proc=proc, queue=queue, log_path=log_path, log_file=log_file)
        with self._shared:
            self._lines.append(line)
        answer = line.read_line(READY_TIMEOUT)
        if answer != "ready":
            with self._shared:
                self._lines.remove(line)
            self._terminate(line)
            raise RunError(f"{d.label}: the delay line in {getattr(site.node, 'name', site.node)} did not "
                           f"start (got {answer!r} within {READY_TIMEOUT:g}s): {self._log_tail(log_path)}")
        state.line = line
        return line

    def _set_line(self, line: _DelayLineProc, *, delay: float, jitter: float, loss: float) -> None:
        assert line.proc.stdin is not None
        message = f'{{"delay": {float(delay)!r}, "jitter": {float(jitter)!r}, "loss": {float(loss)!r}}}\n'
        try:
            line.proc.stdin.write(message.encode())
            line.proc.stdin.flush()
        except OSError as exc:
            raise RunError(f"delay line (queue {line.queue}) is gone: {exc}; "
                           f"{self._log_tail(line.log_path)}") from exc
        answer = line.read_line(READY_TIMEOUT)
        if answer is None or not answer.startswith("ok"):
            raise RunError(f"delay line (queue {line.queue}) refused new settings: {answer!r}; "
                           f"{self._log_tail(line.log_path)}")

    @staticmethod
    def _terminate(line: _DelayLineProc) -> None:
        proc = line.proc
        try:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            line.log_file.close()

    @staticmethod
    def _log_tail(path: pathlib.Path) -> str:
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"(no log at {path})"
        return " | ".join(lines[-5:]) if lines else f"(empty log {path})"

    # -- commands ------------------------------------------------------------------------------

    @staticmethod
    def _exec(node: Any, argv: list[str]) -> tuple[int, str, str]:
        """Run argv in the node's namespace (not through its shell, which others may be using);
        returns (exit code, stdout, stderr)."""
        proc = node.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RunError(f"{getattr(node, 'name', node)}: `{shlex.join(argv)}` timed out") from None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace").strip()

    def _run(self, node: Any, argv: list[str], *, check: bool = True) -> None:
        code, _, err = self._exec(node, argv)
        if check and code != 0:
            raise RunError(f"{getattr(node, 'name', node)}: `{shlex.join(argv)}` failed (exit {code}): {err}")

    def _run_tc(self, node: Any, commands: list[list[str]]) -> None:
        """tc commands in one `tc -batch -` process (the batch read from its stdin), stopping at the
        first failure, which the error names."""
        if len(commands) <= 1:
            for argv in commands:
                self._run(node, argv)
            return
        assert all(argv[0] == "tc" for argv in commands)
        script = "".join(" ".join(argv[1:]) + "\n" for argv in commands)
        proc = node.popen(["tc", "-batch", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(script.encode(), timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RunError(f"{getattr(node, 'name', node)}: `tc -batch` timed out") from None
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            found = re.search(r"Command failed -:(\d+)", text)
            failed = (shlex.join(commands[int(found.group(1)) - 1]) if found and int(found.group(1)) <= len(commands)
                      else f"tc -batch of {len(commands)} commands")
            raise RunError(f"{getattr(node, 'name', node)}: `{failed}` failed (exit {proc.returncode}): {text}")

    def _try(self, node: Any, argv: list[str]) -> str | None:
        """None if argv succeeded, else its error text."""
        code, _, err = self._exec(node, argv)
        return None if code == 0 else (err or f"exit {code}")
