"""`testbed provision INVENTORY PLAYBOOK`: check the inputs, run the playbook with a live display,
print a per-host summary and keep the run as an archive under results/.

Exit codes: 0 every host ok, 1 some host failed or was unreachable (or the run timed out),
2 bad input (nothing run, nothing archived), 3 no Ansible here, 130 interrupted.

The archive (`results/<stamp>-provision-<playbook>-<tag>/`) holds manifest.json (playbook,
inventory hosts, extra vars with secrets redacted, per-host results, sha256 of the playbook and
of every file of every role it uses, start/end, exit status), events.json (ansible-runner's
event log), ansible.log (ansible-playbook's output) and a copy of the playbook and its roles.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.archive.provenance import git_sha
from testbed.archive.redact import MARK, redact_data
from testbed.errors import Problem, SpecError
from testbed.provision.hosts import Inventory, load_inventory
from testbed.provision.playbook import PlaybookRun, describe, parse_extra_vars, run_playbook

ROLE_ACTIONS = {"include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role"}
# Ansible's own secrets by name (redact.py knows passwords and tokens; these are spelt `_pass`).
_SECRETISH = re.compile(r"(?i)(^|_)(pass|password|passwd|secret|token|key_data|vault)($|_)")
# Where ansible-core says the error is: "Origin: FILE:LINE:COL" (2.19+) or, before, "The error
# appears to be in 'FILE': line N, column C".
_ANSIBLE_ERROR_AT = (re.compile(r"^Origin: (.+?):(\d+):(\d+)\s*$", re.M),
                     re.compile(r"The (?:error|offending line) appears to be in '([^']+)': line (\d+), column (\d+)"))


@dataclass
class Request:
    inventory: Path
    playbook: Path
    limit: str | None = None
    extra: list[str] = field(default_factory=list)
    check: bool = False
    timeout: float | None = None
    accept_new_host_keys: bool = False
    results: Path = Path("results")


# -- input checks (exit 2 before anything runs) ----------------------------------------------------
def load_inputs(req: Request) -> tuple[Inventory, dict[str, Any], Any]:
    """The inventory, the extra vars and the parsed playbook, or SpecError naming the place."""
    from testbed.spec.source import parse_yaml, read_text

    inv = load_inventory(req.inventory)
    for name in inv.hosts:
        inv.target(name)  # a bad ansible_port is bad input, not an unreachable host
    extravars = parse_extra_vars(req.extra)
    doc = parse_yaml(read_text(req.playbook), str(req.playbook))
    if not isinstance(doc.data, list) or not doc.data:
        raise SpecError([doc.problem((), "a playbook is a list of plays")])
    for i, play in enumerate(doc.data):
        if not isinstance(play, dict) or not ({"hosts", "import_playbook", "ansible.builtin.import_playbook"} & set(play)):
            raise SpecError([doc.problem((i,), "each play is a mapping with `hosts:` (or an import_playbook)")])
    if req.limit:
        _check_limit(req.limit, inv)
    if req.timeout is not None and not req.timeout > 0:
        raise SpecError([Problem("--timeout", None, None, str(req.timeout), "expected a number of seconds > 0")])
    return inv, extravars, doc.data


def _check_limit(limit: str, inv: Inventory) -> None:
    """Plain names in --limit must be hosts or groups; patterns (*, ~, !, &, ranges) go to Ansible."""
    known = set(inv.hosts) | set(inv.groups) | {"all", "ungrouped"}
    for word in re.split(r"[,:]", limit):
        word = word.strip()
        if word and re.fullmatch(r"[A-Za-z0-9_.-]+", word) and word not in known:
            raise SpecError([Problem("--limit", None, None, word,
                                     f"no host or group '{word}' in {inv.path} (it has {', '.join(sorted(inv.hosts))})")])


def syntax_check(playbook: Path, inventory: Path) -> None:
    """ansible-playbook --syntax-check: a missing role, bad module arguments or a Jinja error in a
    play become one `file:line: playbook: problem` line (exit 2) instead of a failed run."""
    from testbed.provision.playbook import ansible_bin

    binary = ansible_bin() / "ansible-playbook"
    argv = [str(binary if binary.exists() else shutil.which("ansible-playbook") or "ansible-playbook"),
            "--syntax-check", "-i", str(inventory), str(playbook)]
    env = {"PATH": f"{ansible_bin()}:/usr/local/bin:/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "HOME": str(Path.home()), "LANG": "C.UTF-8"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode == 0:
        return
    text = (done.stderr + done.stdout).strip()
    where = next((m for m in (p.search(text) for p in _ANSIBLE_ERROR_AT) if m), None)
    errors = [line for line in text.splitlines() if line.startswith(("ERROR!", "[ERROR]:"))]
    first = errors[0].removeprefix("ERROR!").removeprefix("[ERROR]:").strip() if errors else \
        (text.splitlines()[-1] if text else "syntax check failed")
    if where:
        raise SpecError([Problem(where.group(1), int(where.group(2)), int(where.group(3)), "playbook", first)])
    raise SpecError([Problem(str(playbook), None, None, "playbook", first)])


# -- what the playbook uses -----------------------------------------------------------------------
def roles_used(plays: Any, events: list[dict[str, Any]]) -> list[str]:
    """Role names named in the playbook (roles:, include_role, import_role) and seen in its events."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ROLE_ACTIONS and isinstance(value, dict) and isinstance(value.get("name"), str):
                    names.append(value["name"])
                elif key == "roles" and isinstance(value, list):
                    for role in value:
                        name = role.get("role") or role.get("name") if isinstance(role, dict) else role
                        if isinstance(name, str):
                            names.append(name)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(plays)
    for event in events:
        role = (event.get("event_data") or {}).get("role")
        if isinstance(role, str) and role:
            names.append(role)
    return [n for n in dict.fromkeys(names) if "{{" not in n]


def role_files(playbook: Path, roles: list[str]) -> dict[str, Path]:
    """Every file of those roles (and of their meta dependencies), keyed by path from the playbook's directory."""
    base = playbook.resolve().parent
    out: dict[str, Path] = {}
    todo = list(roles)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        role_dir = base / "roles" / name
        if not role_dir.is_dir():
            continue
        for p in sorted(role_dir.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(base))] = p
        meta = role_dir / "meta" / "main.yml"
        if meta.is_file():
            todo += re.findall(r"^\s*-\s*(?:role:\s*)?([A-Za-z0-9_.]+)\s*$",
                               meta.read_text().split("dependencies:", 1)[-1], re.M)
    return out


def secret_values(data: Any) -> list[str]:
    """String values of the extra vars a redaction replaces: to scrub them from logs too."""
    found: list[str] = []
    clean = redact_vars(data)

    def walk(raw: Any, red: Any) -> None:
        if isinstance(raw, dict) and isinstance(red, dict):
            for k in raw:
                walk(raw[k], red.get(k))
        elif isinstance(raw, list) and isinstance(red, list):
            for a, b in zip(raw, red, strict=False):
                walk(a, b)
        elif isinstance(raw, (str, int, float)) and red == MARK and len(str(raw)) >= 4:
            found.append(str(raw))

    walk(data, clean)
    return sorted(set(found), key=len, reverse=True)


def redact_vars(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: MARK if isinstance(k, str) and _SECRETISH.search(k) and v not in (None, "") else redact_vars(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact_vars(v) for v in data]
    return redact_data(data)


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, MARK)
    return text


# -- display --------------------------------------------------------------------------------------
class Display:
    """One line per task as it starts and one per host result as it arrives."""

    STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "unreachable": "bold red", "skipped": "dim"}

    def __init__(self, console: Any) -> None:
        self.console = console

    def __call__(self, event: dict[str, Any]) -> None:
        e = describe(event)
        if e is None or e.kind == "stats":
            return
        if e.kind == "play":
            self.console.print(f"[bold]PLAY[/bold] {e.play or ''}")
        elif e.kind == "task":
            self.console.print(f"  [bold]TASK[/bold] {e.task}", soft_wrap=True)
        else:
            style = self.STYLE.get(e.kind, "")
            line = f"    [{style}]{e.kind:<11}[/{style}] {e.host}"
            if e.message and e.kind in ("failed", "unreachable"):
                line += f": {e.message[:300]}"
            self.console.print(line, markup=True, highlight=False, soft_wrap=True)

    def summary(self, run: PlaybookRun) -> None:
        from rich.table import Table

        table = Table(title=f"{run.playbook.name}{' (check mode)' if run.check else ''}: {run.status}")
        for col in ("host", "status", "ok", "changed", "failed", "unreachable", "skipped", "failing task"):
            table.add_column(col, overflow="fold")
        for name, h in sorted(run.hosts.items()):
            style = self.STYLE.get(h.status, "")
            failing = f"{h.task}: {h.message}" if h.task else ""
            table.add_row(name, f"[{style}]{h.status}[/{style}]", str(h.ok), str(h.changed), str(h.failed),
                          str(h.unreachable), str(h.skipped), failing[:500])
        self.console.print(table)
        if run.error:
            self.console.print(f"[bold red]ansible:[/bold red] {run.error[:1500]}", highlight=False)


# -- the command ----------------------------------------------------------------------------------
def exit_code(run: PlaybookRun) -> int:
    if run.interrupted:
        return 130
    return 0 if run.ok else 1


def provision(req: Request, console: Any | None = None) -> int:
    from rich.console import Console

    import testbed
    from testbed.archive.store import RunDir, sha256_file
    from testbed.provision.playbook import missing_capability

    console = console or Console(highlight=False)
    inv, extravars, plays = load_inputs(req)
    why = missing_capability()
    if why:
        from testbed.errors import CapabilityError

        raise CapabilityError(why)
    syntax_check(req.playbook, req.inventory)
    secrets = secret_values(extravars)
    display = Display(console)
    console.print(f"provisioning {', '.join(sorted(inv.hosts))} with {req.playbook}"
                  f"{' (check mode)' if req.check else ''}{f' limited to {req.limit}' if req.limit else ''}",
                  soft_wrap=True)
    run = run_playbook(req.playbook, inv, extravars=extravars, limit=req.limit, check=req.check,
                       timeout=req.timeout, accept_new_host_keys=req.accept_new_host_keys, on_event=display)
    display.summary(run)
    code = exit_code(run)

    archive = RunDir(req.results, f"provision-{re.sub(r'[^A-Za-z0-9_.-]', '_', req.playbook.stem)}")
    try:
        roles = roles_used(plays, run.events)
        used = {req.playbook.name: req.playbook.resolve(), **role_files(req.playbook, roles)}
        for rel, src in used.items():
            shutil.copyfile(src, archive.path(f"inputs/{rel}"))
        events = json.loads(_scrub(json.dumps(run.events, default=str), secrets))
        archive.write_json("events.json", events)
        archive.write_text("ansible.log", _scrub(run.stdout, secrets))
        status = "interrupted" if run.interrupted else ("complete" if run.status in ("successful", "failed")
                                                        and not run.error else "error")
        manifest = {
            "schema_version": 1, "kind": "provision", "testbed_version": testbed.__version__,
            "git_sha": git_sha(), "started": run.started.isoformat(timespec="milliseconds"),
            "finished": run.finished.isoformat(timespec="milliseconds"), "status": status,
            "exit_code": code, "ansible_status": run.status, "ansible_rc": run.rc, "error": run.error,
            "controller": _controller(),
            "inputs": {
                "playbook": {"path": str(req.playbook), "sha256": sha256_file(req.playbook)},
                "roles": roles,
                "role_files": {rel: sha256_file(p) for rel, p in used.items() if rel != req.playbook.name},
                "inventory": {"path": str(req.inventory), "sha256": sha256_file(req.inventory),
                              "hosts": [inv.target(n).describe() for n in sorted(inv.hosts)],
                              "groups": inv.groups},
                "extra_vars": redact_vars(extravars), "limit": req.limit, "check": req.check,
                "timeout": req.timeout, "accept_new_host_keys": req.accept_new_host_keys,
            },
            "hosts": {name: h.as_dict() for name, h in sorted(run.hosts.items())},
            "summary": {s: sorted(n for n, h in run.hosts.items() if h.status == s)
                        for s in ("ok", "changed", "failed", "unreachable")},
        }
        manifest = json.loads(_scrub(json.dumps(manifest, default=str), secrets))
        final = archive.finalize(manifest)
    except BaseException:
        archive.discard()
        raise
    console.print(f"archive: {final}", soft_wrap=True)
    return code


def testbed_root() -> Path:
    import testbed

    return Path(testbed.__file__).resolve().parent


def _controller() -> dict[str, Any]:
    import platform

    versions: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("ansible-core", "ansible-runner"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution is recorded as None
            versions[dist] = None
    return {"kernel": __import__("os").uname().release, "argv": [_scrub_argv(a) for a in sys.argv[1:]],
            "versions": versions}


def _scrub_argv(word: str) -> str:
    name, sep, _ = word.partition("=")
    return f"{name}={MARK}" if sep and _SECRETISH.search(name) else word
