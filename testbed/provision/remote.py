"""Controlling a remote machine over SSH with paramiko: commands as argv, files over SFTP.

- Host keys are checked against a known_hosts file. An unknown key is refused with the command
  that adds it (after checking it) unless `accept_new` is given, which records it in that file; a
  key different from the recorded one is always refused.
- A command is an argv list; it is quoted with shlex.join for the remote shell, so no word of it
  is ever interpreted there. Every command has a timeout and can be stopped (`stop` event or
  Ctrl-C): the remote process group is sent SIGTERM, then SIGKILL, over a second channel.
- Passwords (inventory `ansible_password`) are used to log in and never printed or kept in reprs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import CapabilityError, RunError

# The remote shell runs this wrapper: it reports its pid (the process group to signal on a stop),
# then becomes the command. $0.. are the argv words, passed as separate quoted arguments.
_WRAP = 'echo "__testbed_pid=$$" >&2; exec "$@"'
_KILL = 'kill -s "$1" -- "-$2" 2>/dev/null || kill -s "$1" "$2" 2>/dev/null; exit 0'
KILL_GRACE = 3.0


class HostKeyError(CapabilityError):
    """The host's key is unknown or changed: nothing was sent to it (exit 3)."""


@dataclass(frozen=True)
class Target:
    """How to reach one machine. `name` is its inventory name."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    key_filename: str | None = None
    known_hosts: str = str(Path("~/.ssh/known_hosts").expanduser())
    password: str | None = field(default=None, repr=False, compare=False)
    vars: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def known_as(self) -> str:
        """The name the host's key is recorded under (OpenSSH's "[host]:port" form off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def describe(self) -> dict[str, Any]:
        """For manifests: never the password or key contents."""
        return {"name": self.name, "host": self.host, "port": self.port, "user": self.user,
                "known_hosts": self.known_hosts, "password": bool(self.password) or None}


@dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> Result:
        if self.rc != 0:
            tail = (self.stderr.strip() or self.stdout.strip())[-400:]
            raise RunError(f"`{shlex.join(self.argv)}` exited {self.rc}: {tail}")
        return self


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _policy(target: Target, accept_new: bool) -> Any:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if not accept_new:
                raise HostKeyError(
                    f"{target.name}: the host key of {target.known_as} ({key.get_name()} {_fingerprint(key)}) is "
                    f"not in {target.known_hosts}: check it, then add it with `ssh-keyscan -p {target.port} "
                    f"{target.host} >> {target.known_hosts}`, or pass --accept-new-host-keys to record it")
            client.get_host_keys().add(target.known_as, key.get_name(), key)
            path = Path(target.known_hosts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:  # appended, as ssh's StrictHostKeyChecking=accept-new does
                f.write(f"{target.known_as} {key.get_name()} {key.get_base64()}\n")

    return Policy()


class Remote:
    """One SSH connection to `target`; a context manager."""

    def __init__(self, target: Target, *, accept_new: bool = False, connect_timeout: float = 10.0):
        self.target = target
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self.client: Any = None

    def __enter__(self) -> Remote:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        import paramiko

        t = self.target
        client = paramiko.SSHClient()
        if os.path.exists(t.known_hosts):
            client.load_host_keys(t.known_hosts)
        client.set_missing_host_key_policy(_policy(t, self.accept_new))
        try:
            client.connect(t.host, port=t.port, username=t.user, key_filename=t.key_filename, password=t.password,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, allow_agent=False, look_for_keys=t.key_filename is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"{t.name}: the host key of {t.known_as} CHANGED ({exc.key.get_name()} {_fingerprint(exc.key)}, "
                f"{t.known_hosts} has {_fingerprint(exc.expected_key)}): refused. If the machine was reinstalled, "
                f"remove the old key with `ssh-keygen -R '{t.known_as}' -f {t.known_hosts}` and add the new one") from None
        except HostKeyError:
            client.close()
            raise
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise RunError(f"{t.name}: cannot connect to {t.user}@{t.host}:{t.port}: {exc}") from None
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- commands ---------------------------------------------------------------------------------
    def run(self, argv: list[str], *, timeout: float = 60.0, check: bool = False, stop: threading.Event | None = None,
            stdin: bytes | None = None) -> Result:
        """Run `argv` on the host. On timeout, `stop` or KeyboardInterrupt the remote process group is
        killed; a timeout or stop raises RunError, Ctrl-C re-raises KeyboardInterrupt."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty list of strings")
        assert self.client is not None, "connect() first"
        chan = self.client.get_transport().open_session()
        chan.exec_command(shlex.join(["sh", "-c", _WRAP, "sh", *argv]))
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        pid: str | None = None
        start = time.monotonic()
        why = None
        try:
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    if pid is None and b"\n" in err:
                        first, _, rest = bytes(err).partition(b"\n")
                        if first.startswith(b"__testbed_pid="):
                            pid, err = first.split(b"=", 1)[1].decode().strip(), bytearray(rest)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() - start > timeout:
                    why = f"timed out after {timeout:g} s"
                    break
                if stop is not None and stop.is_set():
                    why = "stopped"
                    break
                time.sleep(0.01)
        except KeyboardInterrupt:
            self._kill(pid)
            chan.close()
            raise
        if why is not None:
            self._kill(pid)
            chan.close()
            raise RunError(f"{self.target.name}: `{shlex.join(argv)}` {why}; its processes were killed")
        rc = chan.recv_exit_status()
        chan.close()
        res = Result(list(argv), rc, out.decode(errors="replace"), err.decode(errors="replace"),
                     time.monotonic() - start)
        return res.check() if check else res

    def _kill(self, pid: str | None) -> None:
        """SIGTERM, then SIGKILL, to the command's process group (by the pid it reported)."""
        if pid is None or not pid.isdigit() or self.client is None:
            return
        for sig, wait in (("TERM", KILL_GRACE), ("KILL", 0.0)):
            with contextlib.suppress(Exception):
                self.run(["sh", "-c", _KILL, "sh", sig, pid], timeout=5)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    if self.run(["kill", "-0", pid], timeout=5).rc != 0:
                        return
                    time.sleep(0.1)

    def signal(self, pid: int, sig: str = "INT") -> None:
        """Send a signal to a remote process (e.g. a matrix run's, from its pid file)."""
        self.run(["kill", "-s", sig, str(int(pid))], timeout=10)

    # -- files --------------------------------------------------------------------------------------
    def put(self, local: Path, remote: str) -> None:
        with self._sftp() as sftp:
            sftp.put(str(local), remote)

    def read_text(self, remote: str) -> str | None:
        with self._sftp() as sftp:
            try:
                with sftp.open(remote, "r") as f:
                    return f.read().decode(errors="replace")
            except OSError:
                return None

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self._sftp() as sftp:
            sftp.get(remote, str(local))

    def get_tree(self, remote: str, local: Path) -> int:
        """Copy a remote directory tree into `local`; the number of files copied. Symlinks are not
        followed (an archive never needs them; following one could leave the tree)."""
        count = 0
        with self._sftp() as sftp:
            todo = [(remote.rstrip("/"), local)]
            while todo:
                rdir, ldir = todo.pop()
                ldir.mkdir(parents=True, exist_ok=True)
                for entry in sftp.listdir_attr(rdir):
                    rpath, lpath = f"{rdir}/{entry.filename}", ldir / entry.filename
                    mode = entry.st_mode or 0
                    if stat.S_ISDIR(mode):
                        todo.append((rpath, lpath))
                    elif stat.S_ISREG(mode):
                        sftp.get(rpath, str(lpath))
                        count += 1
        return count

    @contextlib.contextmanager
    def _sftp(self) -> Any:
        assert self.client is not None, "connect() first"
        sftp = self.client.open_sftp()
        sftp.get_channel().settimeout(60)
        try:
            yield sftp
        finally:
            sftp.close()
