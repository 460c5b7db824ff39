"""A process on a remote machine, shaped like subprocess.Popen for the testbed's drivers.

It runs over one SSH channel: the remote shell reports the command's pid on stderr's first line,
then becomes the command. Threads copy the channel's stdout and stderr into real pipes (`PIPE`) or
into the files given, so that callers can select() on `stdout` as on a local process's. `pid` is
the *remote* pid, also given as `guest_pid`: the drivers then know that it is not a process of this
machine (it is not registered in the run's state; the remote network namespace is stopped whole).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import IO, Any

from testbed.emulation.pipes import drain

# $0.. are the argv words, passed as separate quoted arguments: nothing is interpreted remotely.
_WRAP = 'echo "__testbed_pid=$$" >&2; exec "$@"'
PID_WAIT = 30.0  # seconds for the remote shell to say which pid it is


class _Stdin:
    def __init__(self, chan: Any) -> None:
        self._chan = chan
        self.closed = False

    def write(self, data: bytes) -> int:
        self._chan.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._chan.shutdown_write()


class RemoteProcess:
    def __init__(self, remote: Any, argv: list[str], prefix: list[str], *, stdin: Any = None, stdout: Any = None,
                 stderr: Any = None, what: str = "") -> None:
        self.remote = remote
        self.args = argv
        self.what = what
        self.returncode: int | None = None
        self.pid: int = 0
        self.guest_pid: int = 0
        self._done = threading.Event()
        self._have_pid = threading.Event()
        self._collected = {1: bytearray(), 2: bytearray()}
        chan = remote.client.get_transport().open_session()
        chan.exec_command(shlex.join([*prefix, "sh", "-c", _WRAP, "sh", *argv]))
        self._chan = chan
        self.stdin = _Stdin(chan) if stdin == subprocess.PIPE else None
        if self.stdin is None:
            chan.shutdown_write()
        self.stdout, out_fd = self._sink(stdout)
        self.stderr, err_fd = self._sink(stderr)
        self._threads = [threading.Thread(target=self._pump, args=(chan.recv, out_fd, False), daemon=True,
                                          name=f"remote-out-{what}"),
                         threading.Thread(target=self._pump, args=(chan.recv_stderr, err_fd, True), daemon=True,
                                          name=f"remote-err-{what}")]
        for t in self._threads:
            t.start()
        threading.Thread(target=self._reap, daemon=True, name=f"remote-wait-{what}").start()
        if not self._have_pid.wait(PID_WAIT) and self.returncode is None:
            self.kill_channel()
            raise OSError(f"{remote.target.name}: `{shlex.join(argv)[:120]}` did not start within {PID_WAIT:g} s")

    @staticmethod
    def _sink(spec: Any) -> tuple[IO[bytes] | None, int | None]:
        """(the Popen attribute, the descriptor the pump writes to, or None to drop the output)."""
        if spec == subprocess.PIPE:
            r, w = os.pipe()
            return os.fdopen(r, "rb", buffering=0), w
        if spec is None or spec == subprocess.DEVNULL:
            return None, None
        fd = spec if isinstance(spec, int) else spec.fileno()
        return None, os.dup(fd)

    def _pump(self, recv: Any, fd: int | None, is_stderr: bool) -> None:
        head = b""
        try:
            while True:
                try:
                    data = recv(65536)
                except Exception:  # noqa: BLE001 - the connection went: the stream ends
                    data = b""
                if not data:
                    break
                if is_stderr and not self._have_pid.is_set():
                    head += data
                    if b"\n" not in head:
                        continue
                    first, _, data = head.partition(b"\n")
                    if first.startswith(b"__testbed_pid="):
                        with contextlib.suppress(ValueError):
                            self.pid = self.guest_pid = int(first.split(b"=", 1)[1])
                    else:
                        data = head
                    self._have_pid.set()
                if fd is not None and data:
                    with contextlib.suppress(OSError):
                        os.write(fd, data)
                elif fd is None and data:
                    self._collected[2 if is_stderr else 1] += data
        finally:
            if is_stderr:
                self._have_pid.set()
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _reap(self) -> None:
        try:
            rc = self._chan.recv_exit_status()
        except Exception:  # noqa: BLE001
            rc = -1
        for t in self._threads:
            t.join(10)
        self.returncode = rc if rc is not None and rc >= 0 else -signal.SIGKILL
        self._have_pid.set()
        self._done.set()
        with contextlib.suppress(Exception):
            self._chan.close()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._done.is_set() or not self.pid:
            return
        with contextlib.suppress(Exception):
            self.remote.run(["kill", "-s", signal.Signals(sig).name.removeprefix("SIG"), str(self.pid)], timeout=10)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def kill_channel(self) -> None:
        """Stop reading (the connection is being closed): the process itself dies with its namespace."""
        with contextlib.suppress(Exception):
            self._chan.close()

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        drain(self.args, {1: self.stdout, 2: self.stderr}, self._collected, deadline, timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return (bytes(self._collected[1]) if self.stdout is not None else None,
                bytes(self._collected[2]) if self.stderr is not None else None)

    def __repr__(self) -> str:
        return f"<RemoteProcess {self.remote.target.name}:{self.pid} {shlex.join(self.args)[:60]!r} rc={self.returncode}>"
