"""`testbed matrix SUITE --inventory HOSTS`: the matrix's cells sharded over testbed hosts.

1. The cells are planned here as a local run would plan them, and each reachable host (its key
   checked against known_hosts first, testbed.provision.remote) is given a share balanced by
   expected cost (testbed.provision.shard_plan).
2. playbooks/run-cells.yml runs every host's share as `testbed matrix SUITE --cells FILE` on that
   host and fetches its archive back (one play for all hosts; one failing host stops no other).
3. The cells of a host that failed or was unreachable are given once to the hosts that did not
   fail (a second play); what still has no result is an `error` cell naming the host.
4. The archives are merged into one matrix run laid out as a local one (testbed.provision.shard_merge).

Ctrl-C cancels ansible-runner, sends SIGINT to every host's matrix (its pid file) over SSH, waits
a bounded time for them to archive themselves, fetches what they archived and merges that.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testbed.errors import RunError, UsageError
from testbed.provision.hosts import Inventory, load_inventory
from testbed.provision.remote import Remote, Target
from testbed.provision.shard_merge import Fetched, Merge, merge
from testbed.provision.shard_plan import assign, estimate, previous_seconds

CHECKOUT = Path(__file__).resolve().parents[2]
REMOTE_RESULTS = "/srv/testbed/results"  # run-cells.yml's default
STOP_WAIT = 60.0  # seconds a host's interrupted matrix gets to archive itself
PLAY_MARGIN = 300.0  # seconds beyond the cells' own timeouts before a play is given up


def run_sharded(args: argparse.Namespace, axes: tuple[list[str] | None, ...]) -> int:
    """`testbed matrix --inventory`: `args` as the CLI parsed them, `axes` its --clients, --servers
    and --scenarios as lists (None: the suite's)."""
    from testbed.matrix import history
    from testbed.matrix import probes as probe_cells
    from testbed.matrix.runner import MatrixRunner
    from testbed.spec.matrix import PROBE_SCENARIO, load_suite

    loaded = load_suite(args.suite)
    inventory = load_inventory(args.inventory)
    suite_arg = _remote_suite(loaded.path)
    only = None
    if args.cells is not None:
        from testbed.matrix.cellsfile import load_cells

        listed = load_cells(args.cells, loaded)
        axes, only = listed.axes(), listed.keys
    runner = MatrixRunner(loaded, args.results, clients=axes[0], servers=axes[1], scenarios=axes[2],
                          must_include=args.must_include, jobs=args.jobs, reruns=args.reruns, only=only)
    planned = runner.plan()
    hosts = inventory.testbed_hosts()
    print(f"matrix {loaded.suite.name}: {len(planned)} cells over {len(hosts)} host(s) of {args.inventory}, "
          f"--jobs {runner.jobs} each, --reruns {runner.reruns}", flush=True)
    known = previous_seconds(history.db_path(args.results), loaded.suite.name)
    costs = {c.key: estimate(c, known) for c in planned}
    by_key = {c.key: c for c in planned}
    shard = Sharded(inventory, args, suite_arg, by_key)
    head = _head(runner, loaded, args, hosts)
    # SIGTERM stops the hosts as Ctrl-C does (and the play's ansible-playbook is not orphaned)
    old = signal.signal(signal.SIGTERM, _as_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        shard.run(hosts, costs)
    except BaseException:
        shutil.rmtree(shard.work, ignore_errors=True)
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    probes = [probe_cells.client_name(p) for p in runner.probes] if PROBE_SCENARIO in runner.scenarios else []
    m = Merge(loaded.suite.name, planned, {"scenarios": list(runner.scenarios), "clients": list(runner.clients),
                                           "servers": list(runner.servers), "probes": probes},  # as a local run's
              {**runner.options(), "inventory": str(args.inventory), "hosts": hosts}, shard.parts, shard.interrupted)
    try:
        final, matrix = merge(m, args.results, head, shard.logs)
    finally:
        shutil.rmtree(shard.work, ignore_errors=True)
    return _report(matrix, final, args)


def _as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _remote_suite(path: Path) -> str:
    """The suite as the hosts see it: relative to their checkout (the same tree as this one)."""
    try:
        return str(path.resolve().relative_to(CHECKOUT))
    except ValueError:
        raise UsageError("--inventory", "suite", f"a sharded matrix runs a suite of the testbed checkout "
                                                 f"({CHECKOUT}); {path} is outside it") from None


def _head(runner: Any, loaded: Any, args: argparse.Namespace, hosts: list[str]) -> dict[str, Any]:
    import testbed
    from testbed.archive.provenance import git_sha
    from testbed.collect import system

    return {"testbed_version": testbed.__version__, "git_sha": git_sha(), "kind": "matrix",
            "name": f"matrix-{loaded.suite.name}", "suite": loaded.suite.name,
            "host": {**system.host_info(), "role": "controller", "inventory": str(args.inventory), "hosts": hosts},
            "started": _now(), "finished": None, "seed": None,
            "inputs": {"suite": {"file": str(loaded.path), "text": loaded.text},
                       "implementations": {"file": str(loaded.registry.path), "text": loaded.registry.text},
                       "inventory": {"file": str(args.inventory)}, "options": runner.options()}}


def _report(matrix: dict[str, Any], final: Path, args: argparse.Namespace) -> int:
    summary = matrix["summary"]
    print("summary: " + ", ".join(f"{n} {v}" for v, n in summary.items() if n), flush=True)
    for c in matrix["cells"].values():
        if c["verdict"] == "error":
            print(f"  error: {c['scenario']} {c['client']} -> {c['server']}: {c['reason']}")
    print(f"archive: {final}")
    print(f"report: {final / 'report.html'}", flush=True)
    if matrix["status"] == "interrupted":
        return 130
    if args.ci:
        return 1 if summary["unexpected"] or matrix["history"]["regressions"] else 0
    return 0 if all(c["verdict"] in ("as-expected", "unsupported", "unavailable") for c in matrix["cells"].values()) else 1


class Sharded:
    """The plays of one sharded matrix and what came back of them."""

    def __init__(self, inventory: Inventory, args: argparse.Namespace, suite: str, cells: dict[str, Any]):
        self.inventory = inventory
        self.args = args
        self.suite = suite
        self.cells = cells
        self.tag = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        args.results.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=".shard-", dir=args.results))
        self.parts: list[Fetched] = []
        self.logs: dict[str, str] = {}
        self.interrupted = False
        self.cancel = threading.Event()

    def target(self, host: str) -> Target:
        return self.inventory.target(host)

    def run(self, hosts: list[str], costs: dict[str, float]) -> None:
        reachable, down = self.preflight(hosts)
        if not reachable:  # nothing can run: every cell is an error naming the hosts
            self.parts = [Fetched(h, list(costs) if i == 0 else [], status="unreachable", error=why)
                          for i, (h, why) in enumerate(down.items())]
            return
        first = self.play("run", assign(costs, reachable), None)  # an unreachable host's share went to the others
        self.parts = first + [Fetched(h, [], status="unreachable", error=why) for h, why in down.items()]
        if self.interrupted:
            return
        missing = {k: p.host for p in first if p.status != "ok" for k in p.keys if k not in p.cells()}
        healthy = [p.host for p in first if p.status == "ok"]
        if not missing or not healthy:
            return
        print(f"retrying {len(missing)} cell(s) of {', '.join(sorted(set(missing.values())))} on "
              f"{', '.join(healthy)}", flush=True)
        self.parts += self.play("retry", assign({k: costs[k] for k in costs if k in missing}, healthy), missing)

    def preflight(self, hosts: list[str]) -> tuple[list[str], dict[str, str]]:
        """Each host's key checked (an unknown or changed key stops the run: exit 3, nothing sent to
        any host), and which hosts answer at all."""
        ok, down = [], {}
        for host in hosts:
            try:
                with Remote(self.target(host), accept_new=self.args.accept_new_host_keys):
                    ok.append(host)
            except RunError as exc:
                down[host] = str(exc)
                print(f"{host}: unreachable: {exc}", file=sys.stderr, flush=True)
        return ok, down

    def play(self, name: str, shares: dict[str, list[str]], retry_of: dict[str, str] | None) -> list[Fetched]:
        from testbed.provision.shard_play import play

        hosts = [h for h, keys in shares.items() if keys]
        local = self.work / name
        tag = f"{self.tag}-{name}"
        cell = lambda k: {"client": self.cells[k].client, "server": self.cells[k].server,  # noqa: E731
                          "scenario": self.cells[k].scenario}
        budget = max((sum(self.cells[k].timeout for k in shares[h]) for h in hosts), default=0.0)
        budget = budget * (self.args.reruns + 1) + 120
        extravars = {"suite": self.suite, "shards": {h: [cell(k) for k in shares[h]] for h in hosts},
                     "local_results": str(local), "run_tag": tag, "jobs": self.args.jobs,
                     "reruns": self.args.reruns, "cell_timeout": int(budget), "poll_interval": 2}
        box: dict[str, Any] = {}

        def worker() -> None:
            try:
                box["result"] = play(self.args.inventory, extravars, hosts, cancel=self.cancel,
                                     timeout=budget + PLAY_MARGIN, data_dir=self.work / f"ansible-{name}")
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                box["error"] = exc

        thread = threading.Thread(target=worker, name=f"play-{name}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.2)
        except KeyboardInterrupt:
            self.interrupted = True
            self.cancel.set()
            print("interrupted: stopping every host's matrix", file=sys.stderr, flush=True)
            self.stop(hosts, tag)
            thread.join(30)
        if "error" in box:
            raise box["error"]
        result = box.get("result")
        if result is not None:
            self.logs[f"{name}.log"] = result.stdout
        parts = []
        for host in hosts:
            part = Fetched(host, list(shares[host]))
            if retry_of:
                part.retry_of = ",".join(sorted({retry_of[k] for k in shares[host] if k in retry_of}))
            if result is not None:
                part.status = result.hosts.get(host, "failed")
                part.error = result.messages.get(host, "")
            if self.interrupted:
                part.status = "interrupted"
                self.fetch_remote(host, tag, local / host)
            part.archive = _archive(local / host)
            if part.archive is None and part.status == "ok":
                part.status, part.error = "failed", "the play succeeded but no archive came back"
            part.load()
            parts.append(part)
            if part.status != "ok":
                print(f"{host}: {part.status}: {part.error or '-'}", file=sys.stderr, flush=True)
        return parts

    def _remote_dir(self, host: str, tag: str) -> str:
        return f"{self.target(host).vars.get('remote_results', REMOTE_RESULTS)}/run-{tag}"

    def stop(self, hosts: list[str], tag: str) -> None:
        """SIGINT to each host's matrix through its pid file; then wait (bounded) until each has
        removed its pid file, i.e. archived itself."""
        remotes, sessions = {}, {}
        for host in hosts:
            with contextlib.suppress(Exception):
                r = Remote(self.target(host), accept_new=False)
                r.connect()
                remotes[host] = r
                pid = (r.read_text(f"{self._remote_dir(host, tag)}/matrix.pid") or "").strip()
                if pid.isdigit():
                    # Ansible's async wrapper runs the matrix in a session of its own, and its
                    # processes outlive the matrix by a moment (they write the job's result).
                    sid = r.run(["ps", "-o", "sid=", "-p", pid], timeout=10).stdout.strip()
                    if sid.isdigit() and int(sid) > 1:
                        sessions[host] = sid
                    r.signal(int(pid), "INT")
        deadline = time.monotonic() + STOP_WAIT
        try:
            for host, r in remotes.items():
                while time.monotonic() < deadline:
                    try:
                        if r.read_text(f"{self._remote_dir(host, tag)}/matrix.pid") is None:
                            break
                    except Exception:  # noqa: BLE001 - the connection went: nothing more to wait for
                        break
                    time.sleep(0.3)
                while host in sessions and time.monotonic() < deadline:
                    try:
                        if not r.run(["pgrep", "-s", sessions[host]], timeout=10).stdout.split():
                            break
                    except Exception:  # noqa: BLE001 - as above
                        break
                    time.sleep(0.3)
        finally:
            for r in remotes.values():
                r.close()

    def fetch_remote(self, host: str, tag: str, local: Path) -> None:
        """After an interrupt: the host's archive over SFTP, unless the play fetched it already."""
        if _archive(local) is not None:
            return
        rdir = self._remote_dir(host, tag)
        with contextlib.suppress(Exception), Remote(self.target(host)) as r:
            found = r.run(["find", rdir, "-mindepth", "1", "-maxdepth", "1", "-type", "d", "-name", "*-matrix-*",
                           "!", "-name", ".*"], timeout=20).stdout.split()
            for path in sorted(found)[-1:]:
                r.get_tree(path, local / os.path.basename(path))


def _archive(local: Path) -> Path | None:
    """The matrix archive unpacked under a host's directory (there is one per play)."""
    if not local.is_dir():
        return None
    found = sorted(p for p in local.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and (p / "matrix.json").is_file())
    return found[-1] if found else None


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
