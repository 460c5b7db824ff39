"""Machines from an Ansible inventory (its YAML form; JSON is YAML): hosts, groups, variables.

Variables merge as Ansible's do for these simple cases: `all` vars, then each enclosing group's,
then the host's own. What the testbed reads of a host: ansible_host, ansible_port, ansible_user,
ansible_ssh_private_key_file, ansible_password / ansible_ssh_pass (log-in only, never archived),
the known_hosts file (`UserKnownHostsFile=` in ansible_ssh_common_args, else testbed_known_hosts,
else ~/.ssh/known_hosts), and for a testbed host testbed_dir (its checkout), testbed_python and
remote_results.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import SpecError
from testbed.provision.remote import Target
from testbed.spec.source import Document, parse_yaml, read_text

TESTBED_GROUP = "testbed_hosts"


@dataclass
class Inventory:
    path: Path
    doc: Document
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → merged vars
    groups: dict[str, list[str]] = field(default_factory=dict)
    where: dict[str, tuple[str | int, ...]] = field(default_factory=dict)  # host → its key path in the file

    def testbed_hosts(self) -> list[str]:
        """The hosts that run cells: group testbed_hosts, else every host."""
        return list(self.groups.get(TESTBED_GROUP) or self.hosts)

    def target(self, name: str) -> Target:
        v = self.hosts[name]
        loc = self.where[name]
        port = v.get("ansible_port", 22)
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise SpecError([self.doc.problem((*loc, "ansible_port"), f"not a port number: {port!r}")])
        known = v.get("testbed_known_hosts")
        args = v.get("ansible_ssh_common_args") or ""
        for word in shlex.split(str(args)):
            if word.startswith("UserKnownHostsFile="):
                known = word.split("=", 1)[1]
        key = v.get("ansible_ssh_private_key_file")
        return Target(name=name, host=str(v.get("ansible_host", name)), port=port, user=str(v.get("ansible_user", "root")),
                      key_filename=str(Path(str(key)).expanduser()) if key else None,
                      known_hosts=str(Path(str(known or "~/.ssh/known_hosts")).expanduser()),
                      password=v.get("ansible_password") or v.get("ansible_ssh_pass"), vars=dict(v))


def load_inventory(path: Path) -> Inventory:
    doc = parse_yaml(read_text(path), str(path))
    if not isinstance(doc.data, dict):
        raise SpecError([doc.problem((), "an inventory is a mapping of groups (e.g. `all:`)")])
    inv = Inventory(path, doc)
    problems = []

    def group(name: str, body: Any, loc: tuple[str | int, ...], inherited: dict[str, Any]) -> list[str]:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            problems.append(doc.problem(loc, f"group '{name}' must be a mapping (hosts, vars, children)"))
            return []
        for key in body:
            if key not in ("hosts", "vars", "children"):
                problems.append(doc.problem((*loc, key), f"unknown key '{key}' (a group has hosts, vars, children)"))
        gvars = body.get("vars") or {}
        if not isinstance(gvars, dict):
            problems.append(doc.problem((*loc, "vars"), "must be a mapping"))
            gvars = {}
        merged = {**inherited, **gvars}
        members: list[str] = []
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            problems.append(doc.problem((*loc, "hosts"), "must be a mapping of host names to variables"))
            hosts = {}
        for host, hvars in hosts.items():
            if hvars is not None and not isinstance(hvars, dict):
                problems.append(doc.problem((*loc, "hosts", host), "host variables must be a mapping"))
                continue
            inv.hosts[host] = {**inv.hosts.get(host, {}), **merged, **(hvars or {})}
            inv.where.setdefault(host, (*loc, "hosts", host))
            members.append(host)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            problems.append(doc.problem((*loc, "children"), "must be a mapping of groups"))
            children = {}
        for child, cbody in children.items():
            members += group(str(child), cbody, (*loc, "children", child), merged)
        inv.groups[name] = list(dict.fromkeys(inv.groups.get(name, []) + members))
        return members

    for name, body in doc.data.items():
        group(str(name), body, (name,), {})
    if problems:
        raise SpecError(problems)
    if not inv.hosts:
        raise SpecError([doc.problem((), "the inventory has no hosts")])
    return inv
