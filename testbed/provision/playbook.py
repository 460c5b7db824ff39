"""Running an Ansible playbook through ansible-runner: per-host results, a timeout, Ctrl-C.

    from testbed.provision.playbook import run_playbook
    run = run_playbook(Path("playbooks/kernel-upstream.yml"), Path("hosts.yml"),
                       extravars={"kernel_reboot": False}, timeout=600, on_event=print)
    run.status            # successful | failed | timeout | canceled
    run.hosts["h1"]       # HostResult(ok=.., changed=.., failed=.., unreachable=.., task=.., message=..)

- Every run gets its own private_data_dir (a temporary one unless `data_dir` is given); extra vars
  go there in a 0600 file (`-e @file`), never on a command line.
- Host keys are checked (StrictHostKeyChecking=yes) against a known_hosts file generated for the
  run from the inventory: each host's `testbed_host_key` ("ssh-ed25519 AAAA...") and the
  known_hosts file it names (hosts.py: UserKnownHostsFile= in ansible_ssh_common_args, else
  testbed_known_hosts, else ~/.ssh/known_hosts). `accept_new_host_keys` switches to
  StrictHostKeyChecking=accept-new and appends the keys so learned to each host's own known_hosts.
  These options come first on ssh's command line, where OpenSSH takes the first value of each, so
  an inventory's `StrictHostKeyChecking=no` cannot switch checking off behind the user's back.
- Ctrl-C and SIGTERM (when called from the main thread) or `stop.set()` cancel the run within a
  second: ansible-runner kills ansible-playbook's process group; status is then "canceled".
  Commands already started on a remote host by a killed task are not stopped there.
- ssh connection masters (ControlPersist) live in a directory of the run and are told to exit
  when it ends, so no ssh process outlives the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from testbed.errors import CapabilityError, Problem, SpecError
from testbed.provision.hosts import Inventory, load_inventory

CANCEL_POLL = 0.25  # seconds between ansible-runner's looks at the cancel flag (its default is 5)
STATUSES = ("ok", "changed", "failed", "unreachable")


@dataclass
class HostResult:
    """One host's tally from the play recap, and the first task that failed on it."""

    name: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    task: str | None = None  # the failing (or unreachable) task
    message: str | None = None  # what it said

    @property
    def status(self) -> str:
        """unreachable | failed | changed | ok"""
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        return "changed" if self.changed else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "ok": self.ok, "changed": self.changed, "failed": self.failed,
                "unreachable": self.unreachable, "skipped": self.skipped, "rescued": self.rescued,
                "ignored": self.ignored, "task": self.task, "message": self.message}


@dataclass
class TaskEvent:
    """What a progress display needs from one runner event."""

    kind: str  # play | task | ok | changed | failed | unreachable | skipped | stats
    task: str | None = None
    host: str | None = None
    message: str | None = None
    play: str | None = None


@dataclass
class PlaybookRun:
    playbook: Path
    status: str  # successful | failed | timeout | canceled
    rc: int
    hosts: dict[str, HostResult]
    started: datetime
    finished: datetime
    data_dir: Path | None  # None once a temporary one was removed
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the runner's, in order
    stdout: str = field(default="", repr=False)  # ansible-playbook's own output
    error: str | None = None  # why it failed when no host did (a syntax error, a missing role, ...)
    check: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "successful" and all(h.status in ("ok", "changed") for h in self.hosts.values())

    @property
    def interrupted(self) -> bool:
        return self.status == "canceled"


# -- extra vars -----------------------------------------------------------------------------------
def parse_extra_vars(items: list[str], where: str = "--extra-vars") -> dict[str, Any]:
    """`k=v` (v read as YAML: 3 is a number, [a, b] a list, true a boolean) or `@file` (a YAML or
    JSON mapping). Later items win. Bad input raises SpecError with the file position."""
    from testbed.spec.source import parse_yaml, read_text

    out: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            path = Path(item[1:]).expanduser()
            doc = parse_yaml(read_text(path, item[1:]), item[1:])
            if doc.data is None:
                continue
            if not isinstance(doc.data, dict):
                raise SpecError([doc.problem((), "extra vars are a mapping of names to values")])
            bad = [k for k in doc.data if not _is_var_name(k)]
            if bad:
                raise SpecError([doc.problem((bad[0],), "not a valid Ansible variable name")])
            out.update(doc.data)
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError([Problem(where, None, None, item, "expected name=value or @file")])
        if not _is_var_name(name):
            raise SpecError([Problem(where, None, None, name, "not a valid Ansible variable name")])
        try:
            doc = parse_yaml(value, f"{where} {name}") if value.strip() else None
        except SpecError:
            doc = None  # not YAML: the plain string, as ansible-playbook -e would take it
        out[name] = value if doc is None else doc.data
    return out


def _is_var_name(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not name.startswith("__")


# -- known hosts ----------------------------------------------------------------------------------
def known_hosts_lines(inv: Inventory, hosts: list[str] | None = None) -> list[str]:
    """The host keys the run may accept: each host's `testbed_host_key`, then its known_hosts file."""
    lines: list[str] = []
    seen_files: set[str] = set()
    for name in hosts if hosts is not None else list(inv.hosts):
        target = inv.target(name)
        key = target.vars.get("testbed_host_key")
        if isinstance(key, str) and key.strip():
            lines.append(f"{target.known_as} {key.strip()}")
        if target.known_hosts in seen_files:
            continue
        seen_files.add(target.known_hosts)
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in Path(target.known_hosts).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    lines.append(line.strip())
    return list(dict.fromkeys(lines))


def _record_new_keys(inv: Inventory, before: set[str], generated: Path) -> list[str]:
    """Keys ssh learned under accept-new, appended to the known_hosts file of their host."""
    learned = []
    try:
        lines = generated.read_text().splitlines()
    except OSError:
        return learned
    by_name = {}
    for name in inv.hosts:
        with contextlib.suppress(SpecError):
            target = inv.target(name)
            by_name[target.known_as] = target
    for line in lines:
        line = line.strip()
        if not line or line in before:
            continue
        target = by_name.get(line.split()[0])
        if target is None:
            continue
        path = Path(target.known_hosts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line + "\n")
        learned.append(f"{target.name}: {line.split()[1]} recorded in {path}")
    return learned


# -- events ---------------------------------------------------------------------------------------
def describe(event: dict[str, Any]) -> TaskEvent | None:
    """A runner event as a TaskEvent, or None for those a display skips."""
    kind = event.get("event", "")
    data = event.get("event_data") or {}
    task = data.get("task") or None
    host = data.get("host") or None
    if kind == "playbook_on_play_start":
        return TaskEvent("play", play=data.get("play") or data.get("name"))
    if kind == "playbook_on_task_start":
        return TaskEvent("task", task=task, play=data.get("play"))
    if kind == "runner_on_ok":
        res = data.get("res") or {}
        return TaskEvent("changed" if res.get("changed") else "ok", task, host, _success_message(res))
    if kind == "runner_on_failed":
        if data.get("ignore_errors"):
            return TaskEvent("ok", task, host, "failed, ignored")
        return TaskEvent("failed", task, host, failure_message(data.get("res") or {}))
    if kind == "runner_on_unreachable":
        return TaskEvent("unreachable", task, host, failure_message(data.get("res") or {}))
    if kind == "runner_on_skipped":
        return TaskEvent("skipped", task, host)
    if kind == "playbook_on_stats":
        return TaskEvent("stats")
    return None


def _success_message(res: dict[str, Any]) -> str | None:
    msg = res.get("msg")
    return msg if isinstance(msg, str) and msg and msg != "All assertions passed" else None


def failure_message(res: dict[str, Any]) -> str:
    """The useful part of a failed result: its msg, a command's stderr, a loop's first failed item."""
    parts = []
    msg = res.get("msg")
    if isinstance(msg, str) and msg.strip():
        parts.append(msg.strip())
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            label = item.get("_ansible_item_label", item.get("item"))
            parts.append(f"item {label}: {failure_message(item)}")
            break
    err = res.get("stderr") or ""
    if isinstance(err, str) and err.strip():
        parts.append(err.strip()[-400:])
    if "rc" in res and res.get("rc") not in (None, 0) and not err:
        out = res.get("stdout") or ""
        parts.append(f"rc={res['rc']}" + (f": {str(out).strip()[-300:]}" if out else ""))
    text = "; ".join(dict.fromkeys(parts)) or json.dumps(res, default=str)[:400]
    return " ".join(text.split())


def _tally(events: list[dict[str, Any]]) -> dict[str, HostResult]:
    hosts: dict[str, HostResult] = {}
    for event in events:
        kind = event.get("event")
        data = event.get("event_data") or {}
        host = data.get("host")
        if kind in ("runner_on_failed", "runner_on_unreachable") and host and not data.get("ignore_errors"):
            result = hosts.setdefault(host, HostResult(host))
            if result.task is None:
                result.task = data.get("task")
                result.message = failure_message(data.get("res") or {})
        elif kind == "runner_on_start" and host:
            hosts.setdefault(host, HostResult(host))
        elif kind == "playbook_on_stats":
            counts = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
                      "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}
            for key, attr in counts.items():
                for name, n in (data.get(key) or {}).items():
                    setattr(hosts.setdefault(name, HostResult(name)), attr, int(n))
    # A host that failed but has no recap (the run was stopped) still counts as failed.
    for result in hosts.values():
        if result.task is not None and not result.failed and not result.unreachable:
            result.failed = 1
    return hosts


# -- the run ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _signals_set(flag: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `flag` during the run (main thread only), then the old handlers return."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, lambda *_: flag.set())
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def ansible_bin() -> Path:
    """The directory of this interpreter's scripts: ansible-playbook installed with the testbed."""
    return Path(sys.executable).parent


def missing_capability() -> str | None:
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        return "needs ansible-runner (pip install 'testbed[provision]')"
    if not (ansible_bin() / "ansible-playbook").exists() and not shutil.which("ansible-playbook"):
        return "needs ansible-playbook (pip install ansible-core)"
    return None


def run_playbook(playbook: Path, inventory: Path | Inventory, *, extravars: dict[str, Any] | None = None,
                 limit: str | None = None, check: bool = False, timeout: float | None = None,
                 accept_new_host_keys: bool = False, data_dir: Path | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None, stop: threading.Event | None = None,
                 forks: int | None = None, envvars: dict[str, str] | None = None) -> PlaybookRun:
    """Run `playbook` against the hosts of `inventory` (a YAML/JSON inventory file).

    Returns when ansible-playbook ends, the timeout passes (status "timeout"), or on Ctrl-C/SIGTERM
    or `stop` (status "canceled"); never raises for a failed host. Raises SpecError for a bad
    inventory and CapabilityError without ansible-runner. `on_event` gets every runner event as it
    happens (see `describe`); `data_dir` keeps the private_data_dir (it must not exist yet or be empty).
    """
    why = missing_capability()
    if why:
        raise CapabilityError(why)
    import ansible_runner

    inv = inventory if isinstance(inventory, Inventory) else load_inventory(Path(inventory))
    playbook = Path(playbook).resolve()
    keep = data_dir is not None
    pdd = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="testbed-ansible-"))
    pdd.mkdir(parents=True, exist_ok=True)
    os.chmod(pdd, 0o700)
    (pdd / "env").mkdir(exist_ok=True)
    # ssh's ControlPath must fit a unix socket name (108 bytes): a short directory of its own.
    control_dir = Path(tempfile.mkdtemp(prefix="tbcp-", dir="/tmp"))
    known_hosts = pdd / "known_hosts"
    allowed = known_hosts_lines(inv)
    known_hosts.write_text("".join(f"{line}\n" for line in allowed))
    if extravars:
        extra = pdd / "env" / "extravars"
        extra.write_text(json.dumps(extravars, default=str))
        os.chmod(extra, 0o600)
    strict = "accept-new" if accept_new_host_keys else "yes"
    ssh_args = (f"-o StrictHostKeyChecking={strict} -o UserKnownHostsFile={known_hosts} "
                "-o GlobalKnownHostsFile=/dev/null -o HashKnownHosts=no -o BatchMode=yes "
                f"-o ControlMaster=auto -o ControlPersist=60s -o ControlPath={control_dir}/%C")
    env = {
        "PATH": f"{ansible_bin()}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_SSH_ARGS": ssh_args,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"),
        **(envvars or {}),
    }
    flag = stop or threading.Event()
    events: list[dict[str, Any]] = []

    def handler(event: dict[str, Any]) -> bool:
        events.append(event)
        if on_event is not None:
            with contextlib.suppress(Exception):  # a display must never stop the run
                on_event(event)
        return True

    started = datetime.now(timezone.utc)
    kwargs: dict[str, Any] = dict(
        private_data_dir=str(pdd), playbook=str(playbook), inventory=str(inv.path.resolve()),
        envvars=env, quiet=True, event_handler=handler, cancel_callback=flag.is_set,
        settings={"pexpect_timeout": CANCEL_POLL, "suppress_ansible_output": True}, ident="run",
        cmdline="--check --diff" if check else None, limit=limit or None, forks=forks)
    if timeout:
        kwargs["timeout"] = int(max(1, round(timeout)))
    try:
        with _signals_set(flag):
            runner = ansible_runner.run(**{k: v for k, v in kwargs.items() if v is not None})
        status, rc = str(runner.status), int(runner.rc if runner.rc is not None else 1)
        try:
            stdout = (pdd / "artifacts" / "run" / "stdout").read_text(errors="replace")
        except OSError:
            stdout = ""
        if accept_new_host_keys:
            _record_new_keys(inv, set(allowed), known_hosts)
    finally:
        _close_masters(control_dir)
    finished = datetime.now(timezone.utc)
    hosts = _tally(events)
    error = None
    if status != "successful" and not any(h.status in ("failed", "unreachable") for h in hosts.values()):
        error = {"timeout": f"timed out after {timeout:g} s" if timeout else "timed out",
                 "canceled": "interrupted"}.get(status) or _tail(stdout)
    if not keep:
        shutil.rmtree(pdd, ignore_errors=True)
    return PlaybookRun(playbook=playbook, status=status, rc=rc, hosts=hosts, started=started, finished=finished,
                       data_dir=pdd if keep else None, events=events, stdout=stdout, error=error, check=check)


def _tail(stdout: str, lines: int = 6) -> str:
    kept = [line for line in stdout.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "ansible-playbook failed without output"


def _close_masters(control_dir: Path) -> None:
    """`ssh -O exit` every connection master of the run (they daemonise and would linger). Two
    passes: a master still starting when the run was killed binds its socket a moment later."""
    deadline = time.monotonic() + 10
    for attempt in range(2):
        if attempt:
            time.sleep(0.5)
        for sock in sorted(control_dir.glob("*")):
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "testbed-control"],
                               capture_output=True, timeout=5)
    shutil.rmtree(control_dir, ignore_errors=True)
