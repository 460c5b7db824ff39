"""One experiment end to end: build, configure, shape, run, collect, judge, tear down, archive."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import testbed
from testbed.archive.provenance import git_sha
from testbed.archive.store import SCHEMA_VERSION, RunDir
from testbed.collect import counters as counters_mod
from testbed.collect import system
from testbed.collect.linkbytes import Sampler
from testbed.collect.sockets import PEER_INTERVAL, SocketSampler
from testbed.emulation import abort
from testbed.emulation.nodeexec import parallel
from testbed.errors import CapabilityError, RunError
from testbed.events import Origin, Timeline
from testbed.runguard import Escalated, Interrupted, SignalGuard, TimedOut, signal_name
from testbed.spec.experiment import (
    BackupEvent,
    Bulk,
    EndpointAddEvent,
    EndpointRemoveEvent,
    Event,
    ImpairmentEvent,
    Iperf3,
    LinkEvent,
    Workload,
)
from testbed.spec.load import LoadedExperiment, is_ip
from testbed.state import RunState, sweep, sweep_orphans
from testbed.verdict import UNOBSERVED, Measurements, judge, outcome

CAPTURE_AUTO_LIMIT = 200_000_000  # bytes moved by bulk workloads above which 'auto' skips pcaps


TEARDOWN_GRACE = 10.0  # seconds a graceful teardown may take at least, before it is made hard

# The phase a run says it stopped in (manifest "stopped_in"), by the timing step it was in.
PHASES = {"preflight": ("setup", "preparing"), "network": ("setup", "building the network"),
          "stacks": ("setup", "configuring the MPTCP stacks"), "shaping": ("shaping", "shaping the links"),
          "metadata": ("setup", "starting network functions and captures"),
          "workloads": ("workloads", "running the workloads"), "collect": ("collect", "collecting results"),
          "teardown": ("teardown", "tearing down")}


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict
    exit_code: int
    checks: list = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _capture_on(loaded: LoadedExperiment) -> bool:
    c = loaded.experiment.capture
    if c in (True, "on"):
        return True
    if c in (False, "off"):
        return False
    moved = sum(w.size for w in loaded.experiment.workloads if isinstance(w, Bulk))
    long_iperf = any(isinstance(w, Iperf3) and w.duration > 30 for w in loaded.experiment.workloads)
    return moved <= CAPTURE_AUTO_LIMIT and not long_iperf


class Runner:
    def __init__(self, loaded: LoadedExperiment, results: Path, seed: int | None = None,
                 cli_set: list[str] | None = None, shaping: str | None = None):
        self.loaded = loaded
        self.exp = loaded.experiment
        self.res = loaded.topo.resolved
        self.results = results
        self.seed = self.exp.seed if seed is None else seed
        self.cli_set = cli_set or []
        self.shaping = shaping or self.exp.shaping
        self.network: Any = None
        self.shaper: Any = None
        self.captures: Any = None
        self.manifest: dict[str, Any] = {}
        self.link_directions: dict[tuple[int, bool], Any] = {}
        self.functions: list[Any] = []
        self.guest_images: dict[str, Any] = {}  # host → qemu Image, for hosts on QEMU guests

    # -- preparation that must not build anything ------------------------------------------------
    def preflight(self) -> tuple[Any, str]:
        from testbed.emulation import shaping
        from testbed.emulation.qemu.node import guest_images
        from testbed.stacks import upstream, v092
        from testbed.stacks.features import detect, for_kernel

        if os.geteuid() != 0:
            raise CapabilityError("testbed run needs root (network namespaces): run it with sudo")
        features = detect()
        self.guest_images = guest_images(self.res.topology)  # hosts on QEMU guests: their kernels' features
        for name, cfg in self.loaded.stacks.items():
            image = self.guest_images.get(name)
            if getattr(self.res.topology.nodes[name], "remote", None) is not None:
                continue  # a remote machine's kernel: its stack driver checks once it is reached
            if image is not None and image.flavour == "v0.9x":  # its first boot found the out-of-tree stack
                v092.check_supported(cfg, v092.from_detected(image.detected), name,
                                     where=f"guest image {image.name} (kernel {image.release})")
            elif image is not None:
                upstream.check_supported(cfg, for_kernel(image.release, image.mptcp), name,
                                         where=f"guest image {image.name} (kernel {image.release})")
            else:
                upstream.check_supported(cfg, features, name)
        backend = shaping.choose_backend(None if self.shaping == "auto" else self.shaping)
        return features, backend

    def run(self) -> RunResult:
        guard = SignalGuard()
        guard.install()
        try:
            return self._guarded_run(guard)
        finally:
            guard.restore()

    def _guarded_run(self, guard: SignalGuard) -> RunResult:
        self._started = self._last_mark = time.monotonic()
        features, backend = self.preflight()
        run_dir = RunDir(self.results, self.exp.name)
        state = RunState(f"{run_dir.name}")
        self.manifest = {
            "schema_version": SCHEMA_VERSION, "testbed_version": testbed.__version__, "git_sha": git_sha(),
            "name": self.exp.name, "run_id": run_dir.name,
            "host": {**system.host_info(), "mptcp": features.as_dict(), "shaping_backend": backend},
            "started": _now(), "finished": None, "seed": self.seed,
            "inputs": {"experiment": {"file": str(self.loaded.path), "text": self.loaded.rendered},
                       "topology": {"file": str(self.loaded.topo.path), "parameters":
                                    {k: str(v) for k, v in self.loaded.topo.parameters.items()},
                                    "rendered": self.loaded.topo.rendered},
                       "set": self.cli_set},
            "status": "error",
        }
        checks: list = []
        exit_code = 1
        try:
            state.archive = str(run_dir.tmp)
            state.save()
            run_dir.write_json("manifest.json", self.manifest)  # what 'testbed clean' salvages after a kill
            run_dir.write_text("inputs/experiment.yaml", self.loaded.rendered)
            run_dir.write_text("inputs/topology.yaml", self.loaded.topo.rendered)
            run_dir.write_text("inputs/replay.yaml", self._replay_yaml())
            guard.arm_timeout(self.exp.timeout)
            guard.arm()
            checks = self._run(run_dir, state, backend)
            guard.disarm()
            self.manifest["status"] = "complete"
            exit_code = 1 if any(c.verdict in ("fail", UNOBSERVED) for c in checks) else 0  # unconfirmed is unmet
        except TimedOut:
            guard.disarm()
            step = self._phase()
            self._stopped("error", step, f"timed out: the experiment's timeout ({self.exp.timeout:g} s) passed "
                                         f"while {PHASES[step][1]} ({step}); what it ran was killed")
            exit_code = 1
        except (KeyboardInterrupt, Interrupted):
            guard.disarm()
            step = self._phase()
            how = signal_name(guard.received[0]) if guard.received else "SIGINT"
            self._stopped("interrupted", step, f"interrupted ({how}) while {PHASES[step][1]} ({step})")
            exit_code = 130
        except (RunError, RuntimeError, OSError) as exc:
            guard.disarm()
            self._stopped("error", self._phase(), str(exc))
            exit_code = 1
        finally:
            guard.disarm()
            self._teardown(state, guard)
            self._mark("teardown")
            self.manifest["finished"] = _now()
            final = self._finalize(run_dir)
        if self.manifest["status"] == "error" and exit_code == 0:
            exit_code = 1  # e.g. the disk filled up while the archive was being written
        if self.manifest["status"] == "interrupted":
            exit_code = 130  # also when a complete run's teardown was cut short by the user
        return RunResult(final, self.manifest, exit_code, checks)

    # -- the run itself ---------------------------------------------------------------------------
    def _run(self, run_dir: RunDir, state: RunState, backend: str) -> list:
        from concurrent.futures import ThreadPoolExecutor

        # Tool versions come from a handful of subprocesses; they run while the network is built.
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            self._versions = pool.submit(system.tool_versions)
            return self._run_network(run_dir, state, backend)
        finally:  # a run cut short does not wait for them (they have their own timeouts)
            pool.shutdown(wait=False)

    def _run_network(self, run_dir: RunDir, state: RunState, backend: str) -> list:
        from testbed.emulation.network import Network
        from testbed.emulation.shaping import LinkDirection, Shaper
        from testbed.stacks import stack_driver

        self._mark("preflight")
        self.network = Network(self.res, state, tag=run_dir.tag, log_dir=run_dir.path("logs/guests/x").parent)
        self.network.start()
        self.manifest["nodes"] = {n: self.network.node(n).describe()
                                  if n in self.network.guests or n in self.network.remotes
                                  else {"backend": "netns", "kernel": self.manifest["host"]["kernel"]}
                                  for n in self.res.l3_nodes()}
        self._mark("network")
        names = list(self.loaded.stacks)
        applied = parallel([lambda n=n: stack_driver(self.network.node(n)).configure(
            self.network.node(n), n, self.loaded.stacks[n], self.res) for n in names])
        stacks = dict(zip(names, applied, strict=True))
        self.manifest["stacks"] = stacks
        self._mark("stacks")
        self.shaper = Shaper(backend, run_dir.path("logs/shaping"), seed=self.seed)
        shaped = []
        for li, link in enumerate(self.res.topology.links):
            if link.impairment is None:
                continue
            for forward in (True, False):
                imp = link.impairment.direction(forward)
                if imp.empty:
                    continue
                d = self._direction(li, forward, imp, LinkDirection)
                self.link_directions[(li, forward)] = d
                shaped.append((li, link, forward, d))
        try:
            descs = self.shaper.apply_many([d for *_, d in shaped])
        finally:  # delay lines started before a failure are recorded too
            known = {p["pid"] for p in state.processes}
            state.add_processes([(pid, "shaping delay line") for pid in self.shaper.processes() if pid not in known])
        links = [{"link": li, "name": link.name, "direction": "forward" if forward else "reverse", **desc}
                 for (li, link, forward, _), desc in zip(shaped, descs, strict=True)]
        self.manifest["shaping"] = {"backend": backend, "links": links}
        self._mark("shaping")
        self.manifest["functions"] = self._start_functions(run_dir, state)
        nodes = {n: self.network.node(n) for n in self.res.l3_nodes()}
        self.manifest["sysctls"] = dict(zip(nodes, parallel([lambda n=n: system.node_sysctls(nodes[n])
                                                              for n in nodes]), strict=True))
        self.manifest["versions"] = self._versions.result()

        if _capture_on(self.loaded):
            from testbed.collect.pcap import Captures

            self.captures = Captures(run_dir.path("pcaps"), state)
            targets = [(i.ref, *_capture_point(nodes[n], i.name)) for n in nodes
                       if self.res.topology.nodes[n].kind == "host" for i in self.res.interfaces[n]]
            self.captures.start(targets)
        self._mark("metadata")
        before = {n: counters_mod.of_node(node) for n, node in nodes.items()}
        t0 = time.monotonic()
        sources = {n: getattr(node, "read_dev", None) or node.pid for n, node in nodes.items()}  # guests: TAPs
        refs = {i.ref: (sources[n], i.name) for n in nodes for i in self.res.interfaces[n]}
        sampler = Sampler(refs, self.exp.sample_interval, t0)
        hosts = {n: nodes[n] for n in nodes if self.res.topology.nodes[n].kind == "host"}
        sockets = SocketSampler(hosts, 1.0, t0)
        self._origin = Origin()  # the first workload's connection: events and path windows count from it
        timeline = Timeline(self.exp.events, self._apply_event, self._origin,
                            lambda node, name: counters_mod.of_node(nodes[node]).get(name, 0) - before[node].get(name, 0))
        sampler.start()
        sockets.start()
        timeline.start()
        results: dict[str, dict] = {}
        try:
            results = self._workloads(run_dir, state, nodes)
        finally:
            timeline.stop()
            sampler.stop()
            sockets.stop()
            if self.captures is not None:
                self.manifest["captures"] = self.captures.stop()
                self.captures = None
        self._mark("workloads")
        after = {n: counters_mod.of_node(node) for n, node in nodes.items()}
        deltas = {n: counters_mod.delta(before[n], after[n]) for n in nodes}
        run_dir.write_json("counters.json", {"delta": deltas, "before": before, "after": after})
        run_dir.write_json("linkbytes.json", {"interval": self.exp.sample_interval, "columns": ["t", "rx", "tx"],
                                              "series": sampler.series})
        run_dir.write_json("sockets.json", sockets.snapshots)
        run_dir.write_json("peers.json", {"interval": PEER_INTERVAL, "peers": sockets.peer_table()})
        run_dir.write_json("events.json", timeline.log)
        self.manifest["events"] = timeline.log
        self.manifest["workloads"] = {n: _summary(r) for n, r in results.items()}
        self.manifest["counters"] = {n: {k: v for k, v in d.items() if k.startswith(("MPTcpExt", "MPTCP"))}
                                     for n, d in deltas.items()}
        specs = dict(zip(self.exp.workload_names(), self.exp.workloads, strict=True))
        offset = (self._origin.at - t0) if self._origin.at is not None else 0.0
        self.manifest["origin_seconds"] = round(offset, 4)  # into the workloads: events and windows count from here

        def path_bytes(ref: str, start: float | None, end: float | None) -> int:
            return sampler.bytes_between(ref, None if start is None else start + offset,
                                         None if end is None else end + offset)

        self.manifest["socket_samples"] = {n: st.as_dict() for n, st in sockets.stats.items()}
        m = Measurements(results, specs, deltas, path_bytes,
                         {n: [i.name for i in self.res.interfaces[n]] for n in nodes}, sockets=sockets.snapshots,
                         peers={n: set(p) for n, p in sockets.peers.items()},
                         addresses={i.ref: [str(a.ip) for a in (i.address, i.address6) if a is not None]
                                    for n in nodes for i in self.res.interfaces[n]},
                         present={n: set(after[n]) for n in nodes if after[n]},
                         counter_gaps={n: f"no counters could be read from {n} "
                                          f"({'before' if not before[n] else 'after'} the workloads)"
                                       for n in nodes if not before[n] or not after[n]},
                         socket_gaps={n: why for n in hosts if (why := sockets.gap(n, offset)) is not None},
                         link_gaps={ref: why for ref in refs if (why := sampler.gap(ref)) is not None},
                         event_done=_event_done(timeline.log, len(self.exp.events)))
        self.manifest["outcome"] = outcome(m)
        checks = judge(self.exp, m, self.manifest["outcome"])
        self.manifest["checks"] = [c.as_dict() for c in checks]
        self._mark("collect")
        return checks

    def _finalize(self, run_dir: RunDir) -> Path:
        """Write the manifest and move the archive into place. On a full disk the captures (the bulk
        of an archive) are given up so that the manifest can still say what happened."""
        import errno
        import shutil

        try:
            return run_dir.finalize(self.manifest)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise RunError(f"cannot write the archive {run_dir.tmp}: {exc.strerror}") from None
        shutil.rmtree(run_dir.path("pcaps"), ignore_errors=True)
        self.manifest["status"] = "error"
        self.manifest["error"] = ("disk full while writing the archive; packet captures were removed to make "
                                  "room for the manifest" + (f" (earlier: {self.manifest['error']})"
                                                             if self.manifest.get("error") else ""))
        self.manifest.pop("captures", None)
        try:
            return run_dir.finalize(self.manifest)
        except OSError as exc:
            raise RunError(f"disk full: the archive could not be completed; what was written is in "
                           f"{run_dir.tmp} ({exc.strerror})") from None

    def _replay_yaml(self) -> str:
        """The experiment as validated, pinned to the rendered topology beside it and this run's seed:
        `testbed run <archive>/inputs/replay.yaml` reproduces the run from the archive alone."""
        import io

        from ruamel.yaml import YAML

        data = self.exp.model_dump(mode="json", exclude_unset=True)
        data["topology"] = {"file": "topology.yaml"}
        data["seed"] = self.seed
        if self.shaping != "auto":
            data["shaping"] = self.shaping
        out = io.StringIO()
        out.write(f"# Replay of run {self.manifest.get('run_id')}: the experiment as run, on the rendered topology.\n")
        YAML().dump(data, out)
        return out.getvalue()

    def _stopped(self, status: str, step: str, error: str | None) -> None:
        """The run ended before its end: how, in which phase (setup, shaping, workloads, ...), why."""
        self.manifest["status"] = status
        self.manifest["stopped_in"] = PHASES[step][0]
        if step != "teardown" and step not in self.manifest.get("timing", {}):
            self._mark(step)  # the time it ran before it was cut off (teardown is timed on its own)
        if error:
            self.manifest["error"] = error

    def _phase(self) -> str:
        done = list(self.manifest.get("timing", {}))
        order = ["preflight", "network", "stacks", "shaping", "metadata", "workloads", "collect"]
        return next((p for p in order if p not in done), "teardown")

    def _mark(self, phase: str) -> None:
        """Seconds each phase took, in the manifest (where a run's time goes, for users and benchmarks)."""
        now = time.monotonic()
        self.manifest.setdefault("timing", {})[phase] = round(now - self._last_mark, 4)
        self._last_mark = now

    def _start_functions(self, run_dir: RunDir, state: RunState) -> dict[str, dict]:
        from testbed.emulation.functions.base import FunctionContext
        from testbed.emulation.functions.registry import implementation

        started: dict[str, dict] = {}
        for name, spec in self.res.topology.nodes.items():
            cls = implementation(spec.kind)
            if cls is None:
                continue
            ctx = FunctionContext(name, self.network.node(name), self.res.interfaces[name], self.res,
                                  run_dir.path(f"functions/{name}/x").parent, state, self.seed)
            function = cls(spec, ctx)
            self.functions.append(function)
            started[name] = {"kind": spec.kind, **function.start()}
        return started

    def _direction(self, li: int, forward: bool, imp, cls) -> Any:
        link = self.res.topology.links[li]
        a, b = link.endpoints if forward else reversed(link.endpoints)
        sender, receiver = self.network.node(a.node), self.network.node(b.node)
        kinds = self.res.topology.nodes

        def ifname(end) -> str:
            if kinds[end.node].kind == "switch":
                return self._switch_port(li, end.node)
            return next(i.name for i in self.res.interfaces[end.node] if i.link == li)

        recv_switch = kinds[b.node].kind == "switch"
        label = f"{link.name or f'link{li}'} {'forward' if forward else 'reverse'}"
        return cls(label=label, sender=sender, sender_if=ifname(a), receiver=None if recv_switch else receiver,
                   receiver_if=None if recv_switch else ifname(b), impairment=imp)

    def _switch_port(self, li: int, switch: str) -> str:
        count = 0
        for lj, link in enumerate(self.res.topology.links):
            count += sum(1 for e in link.endpoints if e.node == switch)
            if lj == li:
                return f"{self.network.bridges[switch]}p{count}"
        raise KeyError(switch)

    def _workloads(self, run_dir: RunDir, state: RunState, nodes: dict[str, Any]) -> dict[str, dict]:
        from testbed.workloads import drivers

        names = self.exp.workload_names()
        groups: list[list[tuple[str, Workload]]] = []
        for name, w in zip(names, self.exp.workloads, strict=True):
            if w.concurrent and groups:
                groups[-1].append((name, w))
            else:
                groups.append([(name, w)])
        results: dict[str, dict] = {}
        for group in groups:
            threads = []
            for name, w in group:
                log_dir = run_dir.path(f"workloads/{name}/x").parent
                ctx = drivers.Context(nodes[w.client], nodes[w.servers[0] if w.servers else w.server],
                                      self._target(w), log_dir, state, self.seed,
                                      servers={s: nodes[s] for s in w.servers}, on_started=self._origin.mark)
                if w.type != "bulk":  # only bulk clients say when they are connected
                    self._origin.mark()
                drivers.add_path_info(ctx, self.res, w)  # via node address, configured path RTT

                def work(name=name, w=w, ctx=ctx):
                    started = round(time.monotonic(), 4)
                    try:
                        results[name] = {"started": started, **drivers.run(w, ctx)}
                    except Exception as exc:  # noqa: BLE001 - a workload thread must leave a result
                        results[name] = {"started": started, "ok": False, "type": w.type,
                                         "error": f"the testbed failed running it: {exc!r}"}

                t = threading.Thread(target=work, name=f"workload-{name}", daemon=True)
                threads.append(t)
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.05)  # short joins keep the main thread responsive to signals
        for name in names:
            run_dir.write_json(f"workloads/{name}/result.json", results.get(name, {}))
        return results

    def _target(self, w: Workload) -> str:
        """The server address the client connects to, in a family the client has (IPv4 first)."""
        if w.target and is_ip(w.target):
            return w.target
        if w.target:
            node, _, intf_name = w.target.partition(":")
            intf = self.res.interface(node, intf_name)
        else:
            intf = self.res.interfaces[w.server][0]
        client = self.res.interfaces[w.client]
        for family in ("ipv4", "ipv6"):
            if intf.addr(family) is not None and any(i.addr(family) is not None for i in client):
                return str(intf.addr(family).ip)
        return str(intf.primary)

    def _apply_event(self, event: Event) -> Any:
        from testbed.stacks import stack_driver

        if isinstance(event, LinkEvent):
            self.network.set_link(event.link, event.action == "link_up")
            return None
        if isinstance(event, ImpairmentEvent):
            node, _, intf = event.link.partition(":")
            i = self.res.interface(node, intf)
            assert i.link is not None
            out = []
            for forward in (True, False):
                if event.direction != "both" and (event.direction == "forward") != forward:
                    continue
                d = self.link_directions.get((i.link, forward))
                if d is None:
                    from testbed.emulation.shaping import LinkDirection

                    d = self._direction(i.link, forward, event.impairment, LinkDirection)
                    self.link_directions[(i.link, forward)] = d
                    out.append(self.shaper.apply(d))
                else:
                    out.append(self.shaper.change(d, event.impairment.over(d.impairment)))
            return out
        if isinstance(event, EndpointAddEvent):
            node = self.network.node(event.node)
            stack_driver(node).add_endpoint(node, event.node, event.endpoint, self.res)
        elif isinstance(event, EndpointRemoveEvent):
            node = self.network.node(event.node)
            stack_driver(node).remove_endpoint(node, event.node, event.interface, self.res)
        elif isinstance(event, BackupEvent):
            node = self.network.node(event.node)
            stack_driver(node).set_backup(node, event.node, event.interface, event.backup, self.res)
        return None

    def _teardown(self, state: RunState, guard: SignalGuard) -> None:
        """Graceful (captures, functions, shaping and the network asked to stop) within what is left of
        the experiment's timeout, at least TEARDOWN_GRACE (only that after a run cut short); hard (the
        run's processes killed, nothing asked) if that runs out or the user signals again. Either way
        the sweep then removes what the run recorded."""
        errors: list[str] = []
        left = self.exp.timeout - (time.monotonic() - self._started)
        budget = max(TEARDOWN_GRACE, left) if self.manifest.get("status") == "complete" else TEARDOWN_GRACE
        if not abort.settle(0):  # node commands still awaited (a job left hanging by a failed one)
            abort.abort("the run is being torn down")
            abort.settle(3.0)
        sweep_orphans(state)  # while the node shells still say which namespaces are ours
        try:
            with guard.teardown(budget):
                self._graceful_teardown(errors)
        except Escalated:
            self._hard_teardown(guard.hard_reason or "teardown was cut short", guard.hard_by_signal, errors)
        sweep(state)  # anything still alive in our namespaces, and our root-namespace links
        state.remove()
        if errors:
            self.manifest.setdefault("teardown_errors", errors)

    def _graceful_teardown(self, errors: list[str]) -> None:
        if self.captures is not None:
            with contextlib.suppress(Exception):
                self.captures.stop()
            self.captures = None
        while self.functions:
            function = self.functions.pop()
            try:
                function.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down; reported in the manifest
                errors.append(f"{function.kind} {function.ctx.name}: {exc}")
        if self.shaper is not None:
            try:
                self.shaper.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down; reported in the manifest
                errors.append(f"shaper: {exc}")
            self.shaper = None
        if self.network is not None:
            try:
                self.network.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))
            self.network = None

    def _hard_teardown(self, reason: str, by_signal: bool, errors: list[str]) -> None:
        """Nothing is asked to stop: the nodes' shells and guests are killed (the sweep then kills
        every other process in the run's namespaces and removes its links)."""
        self.manifest["teardown"] = f"hard: {reason}"
        if self.manifest.get("status") == "complete":  # measured and judged, but not cleanly ended
            self._stopped("interrupted" if by_signal else "error", "teardown",
                          f"teardown was made hard ({reason}); every process of the run was killed")
        if self.network is not None:
            try:
                self.network.stop(hard=True)
            except Exception as exc:  # noqa: BLE001 - the sweep still runs
                errors.append(str(exc))
            self.network = None


def _capture_point(node: Any, intf: str) -> tuple[Any, str]:
    """Where an interface's packets are captured: in its namespace, or a QEMU guest's on its TAP's host side."""
    point = getattr(node, "capture_point", None)
    return point(intf) if point is not None else (node, intf)


def _event_done(log: list[dict], count: int) -> list[float | None]:
    """Per event (in the experiment's order), when it had been carried out (from the origin), or None."""
    done: list[float | None] = [None] * count
    for entry in log:
        i = entry.get("index")
        if i is not None and entry.get("executed") and entry.get("seconds") is not None:
            done[i] = entry["executed_at"] + entry["seconds"]
    return done


def _summary(r: dict) -> dict:
    """The workload result without the bulky per-sample lists (those stay in workloads/<name>/)."""
    out = {k: v for k, v in r.items() if k not in ("client", "server")}
    for side in ("client", "server"):
        if isinstance(r.get(side), dict):
            out[side] = {k: v for k, v in r[side].items() if k != "samples"}
    return out
