#!/usr/bin/env python3
"""The control daemon inside a QEMU guest (stdlib only; run by the guest's /init as ``python3 -S``).

It runs chrooted into the host's root filesystem (shared read-only over virtio-9p), so the commands
it starts are the host's own binaries running on the guest's kernel. It talks to guest.py on the host
over the virtio-serial port named ``testbed.ctl``: one JSON object per line each way.

Requests  {"id": N, "op": OP, ...}   answered by {"id": N, ...result} or {"id": N, "error": TEXT}
Events    {"ev": "hello", ...}          once, when the daemon is ready
          {"ev": "out", "h": H, "fd": 1|2, "data": B64}   output of a started process
          {"ev": "exit", "h": H, "rc": RC}                after all of that process's output

A started workload agent (``python -S .../agent/__main__.py MODE ...`` with this interpreter) is
forked from the daemon, which imported the agent once, instead of exec'd: an interpreter's start-up
and the agent's imports are half a second under TCG, paid by every workload of every cell.

Ops: ping; run (argv, timeout, input, merge) → rc, out, err, timed_out; batch (commands, files) → results;
start (argv, stdin, stdout, stderr: "pipe"|"null"|"stdout") → h, pid; stdin (h, data, close);
signal (h, sig, group); killall; read_file (path) / read_files (paths); write_file (path, data, mode);
sysctl_snapshot; sysctl_restore → restored, scan; net_reset (interfaces, mptcp, mptcp_limits) → what it
did; poweroff. Binary data is base64.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

try:  # run as a script inside the guest, from this directory; imported as a module by the tests
    from testbed.emulation.qemu import rtnl
except ImportError:
    import rtnl  # type: ignore[no-redef]

PORT_NAME = "testbed.ctl"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 65536
MODULES_LOADED = "/run/testbed/modules-loaded"  # written by /init once every module is loaded
INIT_LOG = "/run/testbed/init.log"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def find_port(timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            for entry in sorted(os.listdir("/sys/class/virtio-ports")):
                try:
                    with open(f"/sys/class/virtio-ports/{entry}/name") as f:
                        if f.read().strip() == PORT_NAME:
                            return f"/dev/{entry}"
                except OSError:
                    continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"guestd: no virtio-serial port named {PORT_NAME}")
        time.sleep(0.05)


class Daemon:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.wlock = threading.Lock()
        self.procs: dict[int, subprocess.Popen | Forked] = {}
        self.agents = AgentCache()
        self.next_handle = 1
        self.plock = threading.Lock()
        self.sysctls: dict[str, str] = {}  # /proc/sys path → value, as at the snapshot
        self.ledger = SysctlLedger()
        self.ifindex: dict[str, int] = {}  # device name → ifindex, as at the snapshot

    # ---------------------------------------------------------------------------------- wire
    def send(self, obj: dict) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with self.wlock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.fd, view)
                except InterruptedError:
                    continue
                except OSError:  # the host went away; nothing to tell it
                    return
                view = view[n:]

    def serve(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.fd, CHUNK)
            except InterruptedError:
                continue
            if not chunk:  # host side not connected: wait for it
                time.sleep(0.05)
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    threading.Thread(target=self.handle, args=(line,), daemon=True).start()

    def handle(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError as exc:
            self.send({"id": None, "error": f"bad request: {exc}"})
            return
        rid = req.get("id")
        try:
            result = getattr(self, "op_" + str(req.get("op")))(req)
        except AttributeError:
            self.send({"id": rid, "error": f"unknown op {req.get('op')!r}"})
            return
        except Exception as exc:  # reported to the host, which raises it
            self.send({"id": rid, "error": f"{type(exc).__name__}: {exc}"})
            return
        result["id"] = rid
        after = result.pop("_after", None)
        self.send(result)
        if after:
            after()

    # ----------------------------------------------------------------------------------- ops
    def op_ping(self, req: dict) -> dict:
        return {"uptime": _uptime()}

    def op_run(self, req: dict) -> dict:
        return _run(req["argv"], req.get("timeout"), unb64(req.get("input")), req.get("merge", True),
                    req.get("env"), req.get("cwd"), self._ledger_for(req["argv"]))

    def op_batch(self, req: dict) -> dict:
        for path, data in (req.get("files") or {}).items():
            self.op_write_file({"path": path, "data": data})
        results = []
        for cmd in req["commands"]:
            r = _run(cmd, req.get("timeout"), b"", True, None, None, self._ledger_for(cmd))
            results.append({"rc": r["rc"], "out": r["out"]})
            if req.get("stop_on_error") and r["rc"] != 0:
                break
        return {"results": results}

    def _ledger_for(self, argv: list[str]) -> SysctlLedger | None:
        """The ledger to tell about a process; None for our own workload agent, which writes no sysctl."""
        return None if self.agents.entry(argv) is not None else self.ledger

    def op_start(self, req: dict) -> dict:
        agent = self.agents.entry(req["argv"])
        proc: subprocess.Popen | Forked
        if agent is not None:
            proc = fork_agent(agent, req["argv"][3:], stdin=bool(req.get("stdin")),
                              stdout=req.get("stdout", "pipe"), stderr=req.get("stderr", "null"),
                              env=_env(req.get("env")), cwd=req.get("cwd") or "/")
        else:
            self.ledger.started(req["argv"])
            streams = {"pipe": subprocess.PIPE, "null": subprocess.DEVNULL, "stdout": subprocess.STDOUT}
            proc = subprocess.Popen(req["argv"], stdin=subprocess.PIPE if req.get("stdin") else subprocess.DEVNULL,
                                    stdout=streams[req.get("stdout", "pipe")],
                                    stderr=streams[req.get("stderr", "null")],
                                    start_new_session=True, env=_env(req.get("env")), cwd=req.get("cwd") or "/")
        with self.plock:
            handle = self.next_handle
            self.next_handle += 1
            self.procs[handle] = proc
        readers = []
        for fdno, stream in ((1, proc.stdout), (2, proc.stderr)):
            if stream is not None:
                t = threading.Thread(target=self._pump, args=(handle, fdno, stream), daemon=True)
                readers.append(t)
        # The reply (with the handle) must reach the host before any event of this process.
        return {"h": handle, "pid": proc.pid,
                "_after": lambda: self._watch(handle, proc, readers)}

    def _pump(self, handle: int, fdno: int, stream) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            self.send({"ev": "out", "h": handle, "fd": fdno, "data": b64(chunk)})
        stream.close()

    def _watch(self, handle: int, proc: subprocess.Popen | Forked, readers: list[threading.Thread]) -> None:
        def watch() -> None:
            for t in readers:
                t.start()
            rc = proc.wait()
            for t in readers:
                t.join()
            with self.plock:
                self.procs.pop(handle, None)
            self.send({"ev": "exit", "h": handle, "rc": rc})

        threading.Thread(target=watch, daemon=True).start()

    def op_stdin(self, req: dict) -> dict:
        proc = self.procs.get(req["h"])
        if proc is None or proc.stdin is None:
            return {"written": 0}
        data = unb64(req.get("data"))
        try:
            if data:
                proc.stdin.write(data)
                proc.stdin.flush()
            if req.get("close"):
                proc.stdin.close()
        except (BrokenPipeError, ValueError):
            return {"written": 0}
        return {"written": len(data)}

    def op_signal(self, req: dict) -> dict:
        proc = self.procs.get(req["h"])
        if proc is None:
            return {"sent": False}
        try:
            if req.get("group"):
                os.killpg(proc.pid, req["sig"])
            else:
                proc.send_signal(req["sig"])
        except ProcessLookupError:
            return {"sent": False}
        return {"sent": True}

    def op_killall(self, req: dict) -> dict:
        with self.plock:
            procs = list(self.procs.values())
        for sig, grace in ((signal.SIGTERM, float(req.get("grace", 1.0))), (signal.SIGKILL, 2.0)):
            for proc in procs:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.02)
        return {"killed": len(procs)}

    def op_ifnames(self, req: dict) -> dict:
        """Interface name by MAC address (lower case)."""
        names = {}
        for name in os.listdir("/sys/class/net"):
            try:
                with open(f"/sys/class/net/{name}/address") as f:
                    names[f.read().strip().lower()] = name
            except OSError:
                continue
        return {"by_mac": names}

    def op_read_file(self, req: dict) -> dict:
        with open(req["path"], "rb") as f:
            return {"data": b64(f.read())}

    def op_read_files(self, req: dict) -> dict:
        out: dict[str, str | None] = {}
        for path in req["paths"]:
            try:
                with open(path, "rb") as f:
                    out[path] = b64(f.read())
            except OSError:
                out[path] = None
        return {"files": out}

    def op_write_file(self, req: dict) -> dict:
        self.ledger.wrote(req["path"])
        with open(req["path"], "wb") as f:
            f.write(unb64(req.get("data")))
        if req.get("mode") is not None:
            os.chmod(req["path"], int(req["mode"]))
        return {}

    def op_sysctl_snapshot(self, req: dict) -> dict:
        self.sysctls = _read_sysctls(req.get("root", "/proc/sys/net"))
        self.ifindex = _ifindexes()
        self.ledger = SysctlLedger()
        return {"count": len(self.sysctls)}

    def op_sysctl_restore(self, req: dict) -> dict:
        """Every snapshot value that differs now, written back. Only the snapshot's own paths are read
        (the tree is not walked again: thousands of stat() calls under TCG), and a device's entries
        follow the device through renames (a pooled guest's NICs take each topology's names).

        Reading an entry costs ~0.3 ms under TCG, the whole snapshot a third of a second. So when
        every process since the last restore was one that cannot write sysctls (SysctlLedger), only
        the entries written through the daemon, and those the kernel changes along with them, are
        read ("scan": "written"); otherwise, or when asked ("full": true), all of them."""
        restored = []
        ledger, self.ledger = self.ledger, SysctlLedger()
        full = bool(req.get("full")) or ledger.foreign is not None
        now = {index: name for name, index in _ifindexes().items()}
        renamed = {old: now.get(index) for old, index in self.ifindex.items()}
        checked = 0
        for path, value in self.sysctls.items():
            path = _renamed(path, renamed)
            if path is None:  # its device is gone
                continue
            if not full and not ledger.may_have_changed(path):
                continue
            checked += 1
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    current = os.read(fd, 65536).decode()
                finally:
                    os.close(fd)
                if current == value:
                    continue
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, value.encode())
                finally:
                    os.close(fd)
                restored.append(path)
            except OSError:
                pass
        return {"restored": restored, "scan": "full" if full else "written", "checked": checked,
                "foreign": ledger.foreign}

    def op_net_reset(self, req: dict) -> dict:
        """The network half of a reused guest's reset (rtnl.reset), in the daemon: `interfaces` (the
        NICs) set down and cleared, links made since the snapshot deleted; then, only when there
        are nftables tables, ``nft flush ruleset``. Returns what was done."""
        now = _ifindexes()
        booted = set(self.ifindex.values())
        new_links = {name: index for name, index in now.items() if booted and index not in booted}
        down = {name: now[name] for name in req.get("interfaces", []) if name in now}
        done = rtnl.reset(down, new_links, req.get("mptcp_limits"), bool(req.get("mptcp")))
        done["new_links"] = sorted(new_links)
        done["nft_tables"] = rtnl.nft_tables()
        if done["nft_tables"]:
            r = _run(["nft", "flush", "ruleset"], 30, b"", True, None, None, self.ledger)
            if r["rc"] != 0:
                done["errors"].append("nft flush ruleset: " + unb64(r["out"]).decode(errors="replace").strip())
        return done

    def op_poweroff(self, req: dict) -> dict:
        def off() -> None:
            time.sleep(0.05)
            with open("/proc/sysrq-trigger", "w") as f:
                f.write("o")

        return {"_after": off}


def _read_sysctls(root: str) -> dict[str, str]:
    values = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if not os.stat(path).st_mode & 0o200:
                    continue
                with open(path) as f:
                    values[path] = f.read()
            except OSError:  # write-only or unreadable entries (e.g. route/flush)
                continue
    return values


# /proc/sys/net/<family>/<kind>/<device>/...: the directories named after a device.
_DEVICE_DIRS = {("ipv4", "conf"), ("ipv6", "conf"), ("ipv4", "neigh"), ("ipv6", "neigh"), ("mpls", "conf")}


def _ifindexes() -> dict[str, int]:
    out = {}
    for name in os.listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{name}/ifindex") as f:
                out[name] = int(f.read())
        except (OSError, ValueError):
            continue
    return out


def _renamed(path: str, renamed: dict[str, str | None]) -> str | None:
    """A snapshot path under the device's current name; None when the device is gone."""
    parts = path.split("/")  # "", "proc", "sys", "net", family, kind, device, ...
    if len(parts) > 7 and (parts[4], parts[5]) in _DEVICE_DIRS and parts[6] in renamed:
        name = renamed[parts[6]]
        if name is None:
            return None
        parts[6] = name
    return "/".join(parts)


class Forked:
    """A process forked from this daemon, not exec'd: as much of Popen's interface as the daemon uses.
    Only the watcher thread (wait) reaps it; poll() reads what wait() found."""

    def __init__(self, pid: int, stdin: int | None, stdout: int | None, stderr: int | None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = os.fdopen(stdin, "wb") if stdin is not None else None
        self.stdout = os.fdopen(stdout, "rb", buffering=0) if stdout is not None else None
        self.stderr = os.fdopen(stderr, "rb", buffering=0) if stderr is not None else None

    def wait(self) -> int:
        if self.returncode is None:
            _pid, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


class AgentCache:
    """The workload agent, imported once into the daemon so that forks of it start at once.

    Used only for the agent this interpreter would run (same executable, ``-S``) and only while its
    sources are those imported: another checkout's agent, or one changed since, is exec'd as asked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.here: str | None = None
        self.stamp: tuple | None = None
        self.failed: set[str] = set()

    def entry(self, argv: list[str]) -> str | None:
        """The package name to fork for `argv`, or None to exec it."""
        if len(argv) < 4 or argv[1] != "-S" or os.path.basename(argv[2]) != "__main__.py":
            return None
        here = os.path.dirname(os.path.abspath(argv[2]))
        try:
            if os.path.realpath(argv[0]) != os.path.realpath(sys.executable):
                return None
            stamp = _sources_stamp(here)
        except OSError:
            return None
        if "cli.py" not in {name for name, *_ in stamp}:
            return None
        with self.lock:
            if self.here is None and here not in self.failed:
                try:
                    _import_agent(here, [name for name, *_ in stamp])
                except Exception as exc:  # exec'd then, which reports what is wrong with it
                    self.failed.add(here)
                    print(f"guestd: agent {here} not preloaded: {type(exc).__name__}: {exc}", file=sys.stderr)
                    return None
                self.here, self.stamp = here, stamp
            if self.here != here or self.stamp != stamp:
                return None
        return os.path.basename(here)


def _sources_stamp(here: str) -> tuple:
    out = []
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(here, name))
            out.append((name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _import_agent(here: str, files: list[str]) -> None:
    """Every module of the agent, as its __main__.py would import them (the package's parent at the
    end of sys.path)."""
    import importlib

    parent = os.path.dirname(here)
    if parent not in sys.path:
        sys.path.append(parent)
    package = os.path.basename(here)
    for name in files:
        if name != "__main__.py":
            module = name[:-3]
            importlib.import_module(package if module == "__init__" else f"{package}.{module}")


def fork_agent(package: str, args: list[str], *, stdin: bool, stdout: str, stderr: str, env: dict[str, str],
               cwd: str) -> Forked:
    """Fork a child that runs the preloaded agent's main(args), as ``python -S agent MODE ...`` would
    (own session, the environment and directory asked for, stdio on pipes or /dev/null)."""
    parent_ends: dict[int, int] = {}
    child_ends: dict[int, int] = {}
    null = os.open(os.devnull, os.O_RDWR)
    try:
        if stdin:
            r, w = os.pipe()
            child_ends[0], parent_ends[0] = r, w
        else:
            child_ends[0] = null
        for fdno, mode in ((1, stdout), (2, stderr)):
            if mode == "pipe":
                r, w = os.pipe()
                child_ends[fdno], parent_ends[fdno] = w, r
            elif mode == "stdout" and fdno == 2:
                child_ends[2] = child_ends[1]
            else:
                child_ends[fdno] = null
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            _agent_child(package, args, child_ends, env, cwd)
    except BaseException:
        for fd in parent_ends.values():
            os.close(fd)
        raise
    finally:
        for fd in {*child_ends.values(), null}:
            os.close(fd)
    return Forked(pid, parent_ends.get(0), parent_ends.get(1), parent_ends.get(2))


def _agent_child(package: str, args: list[str], ends: dict[int, int], env: dict[str, str], cwd: str) -> None:
    code = 1
    try:
        os.setsid()
        for target in (0, 1, 2):
            os.dup2(ends[target], target)
        os.closerange(3, 1 << 16)  # the control channel above all: the agent must not write to it
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        # fresh stdio objects: another thread of the daemon may have held the old ones' locks
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.argv = [os.path.join(sys.modules[package].__path__[0], "__main__.py"), *args]
        code = sys.modules[f"{package}.cli"].main(args)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


# Programs that write no sysctl, given arguments that start nothing else (see SysctlLedger.started).
# iproute2's ip does change two kinds of entry as a side effect, which the ledger always checks:
# a link's MTU sets net.ipv6.conf.DEV.mtu, `addrgenmode` sets addr_gen_mode.
SYSCTL_FREE = frozenset({"ip", "tc", "nft", "nstat", "ss", "ping", "tcpdump", "sleep", "cat", "true", "uname"})
# Arguments with which they do more: run a command in a namespace, a tc action's program, ip's
# neighbour-table parameters (net.*.neigh.DEV.* sysctls).
_STARTS_OR_SETS = frozenset({"netns", "exec", "ntable"})
_SIDE_EFFECT_LEAVES = ("/mtu", "/addr_gen_mode")


class SysctlLedger:
    """What may have changed under /proc/sys since the last restore: the entries written through the
    daemon (sysctl_here, write_file), and whether a process ran that could have written others
    (`foreign`: the first such argv[0]; None while every process was known not to)."""

    def __init__(self) -> None:
        self.written: set[str] = set()
        self.leaves: set[tuple[str, str]] = set()  # (family dir, leaf) written under some conf/DEV/
        self.foreign: str | None = None

    def wrote(self, path: str) -> None:
        path = os.path.normpath(path)
        if not path.startswith("/proc/sys/"):
            return
        self.written.add(path)
        parts = path.split("/")  # "", proc, sys, net, ipv4, conf, DEV, leaf
        if len(parts) == 8 and parts[3] == "net" and parts[5] == "conf":
            # conf/all/X is copied to every device's X (forwarding, disable_ipv6, ...)
            self.leaves.add((parts[4], parts[7]))
        if path == "/proc/sys/net/ipv4/ip_forward" or parts[4:6] == ["ipv4", "conf"] and parts[-1] == "forwarding":
            self.leaves.add(("ipv4", "forwarding"))  # ip_forward is conf/all/forwarding, copied likewise
            self.written.add("/proc/sys/net/ipv4/ip_forward")

    def started(self, argv: list[str]) -> None:
        if self.foreign is not None:
            return
        name = os.path.basename(argv[0]) if argv else ""
        if name not in SYSCTL_FREE or _STARTS_OR_SETS.intersection(argv) or _batch_starts(argv):
            self.foreign = name or "?"

    def may_have_changed(self, path: str) -> bool:
        if path in self.written or path.endswith(_SIDE_EFFECT_LEAVES):
            return True
        parts = path.split("/")
        return len(parts) == 8 and parts[5] == "conf" and (parts[4], parts[7]) in self.leaves


def _batch_starts(argv: list[str]) -> bool:
    """An ip/tc -batch file whose commands may start or set what the ledger cannot see."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-batch", "-b"):
            try:
                with open(argv[i + 1]) as f:
                    return bool(_STARTS_OR_SETS.intersection(f.read().split()))
            except OSError:
                return True
    return False


def _env(extra: dict | None) -> dict[str, str]:
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _plain_key(key: str) -> bool:
    return bool(key) and key[0] != "." and all(c.isalnum() or c in "_.-" for c in key)


def sysctl_here(argv: list[str], merge: bool, ledger: SysctlLedger | None = None) -> dict | None:
    """``sysctl -q [-e] -w KEY=VALUE...`` and ``sysctl [-n] [-e] KEY...`` done by the daemon, with
    procps-ng's messages and exit status: a process is ~0.1 s under TCG, and every cell sets and
    reads sysctls. None for any other form (then the real sysctl runs)."""
    if not argv or argv[0] != "sysctl":
        return None
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    flags, args = set(argv[1:i]), argv[i:]
    write = "-w" in flags
    if not args or not flags <= {"-q", "-e", "-w", "-n"} or \
            (write and ("-q" not in flags or "-n" in flags)) or (not write and "-q" in flags):
        return None
    pairs = [arg.partition("=") for arg in args]
    if any(not _plain_key(key) or bool(sep) != write for key, sep, _value in pairs):
        return None
    out: list[str] = []
    err: list[str] = []
    rc = 0
    for key, _sep, value in pairs:
        path = "/proc/sys/" + key.replace(".", "/")
        if not os.path.exists(path):
            if "-e" not in flags:
                err.append(f"sysctl: cannot stat {path}: No such file or directory")
                rc = 1
            continue
        if write:
            if ledger is not None:
                ledger.wrote(path)
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as exc:
                err.append(f'sysctl: setting key "{key}": {exc.strerror}')
                rc = 1
            continue
        try:
            for name, text in _sysctl_read(path, key):
                out.append(text if "-n" in flags else f"{name} = {text}")
        except OSError:
            return None  # reading has no side effect: let sysctl itself say what is wrong
    text_out = "".join(line + "\n" for line in out)
    text_err = "".join(line + "\n" for line in err)
    if merge:  # sysctl's stderr is unbuffered, its stdout flushed at exit
        return {"rc": rc, "out": b64((text_err + text_out).encode()), "err": "", "timed_out": False}
    return {"rc": rc, "out": b64(text_out.encode()), "err": b64(text_err.encode()), "timed_out": False}


def _sysctl_read(path: str, key: str) -> list[tuple[str, str]]:
    """(key, value) of one entry, or of every readable entry under a directory (in the kernel's
    order, as sysctl prints them; write-only ones such as route.flush are left out, as it does)."""
    if not os.path.isdir(path):
        with open(path) as f:
            return [(key, f.read().rstrip("\n"))]
    found = []
    for name in os.listdir(path):
        sub = os.path.join(path, name)
        if os.path.isdir(sub) or os.stat(sub).st_mode & 0o444:
            found.extend(_sysctl_read(sub, f"{key}.{name}"))
    return found


def mptcp_limits_here(argv: list[str]) -> dict | None:
    """``ip mptcp limits show`` answered by the daemon over generic netlink, in iproute2's words
    (every upstream-MPTCP cell reads its limits back: a process is ~0.1 s under TCG). None for any
    other command, or when the kernel has no MPTCP path manager (then ip itself runs and says so)."""
    if argv not in (["ip", "mptcp", "limits", "show"], ["ip", "mptcp", "limits"]):
        return None
    try:
        text = rtnl.mptcp_limits_text()
    except OSError:
        return None
    if text is None:
        return None
    return {"rc": 0, "out": b64(text.encode()), "err": "", "timed_out": False}


def _run(argv: list[str], timeout: float | None, data: bytes, merge: bool, env: dict | None,
         cwd: str | None, ledger: SysctlLedger | None = None) -> dict:
    """One process to its end (or a sysctl, or an MPTCP limits read, done here); `ledger` is told
    what ran, when given."""
    done = (sysctl_here(argv, merge, ledger) or mptcp_limits_here(argv)) if not data else None
    if done is not None:
        return done
    if ledger is not None:
        ledger.started(argv)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                                start_new_session=True, env=_env(env), cwd=cwd or "/")
    except OSError as exc:
        return {"rc": 127, "out": b64(f"{argv[0]}: {exc.strerror}\n".encode()), "err": "", "timed_out": False}
    timed_out = False
    try:
        out, err = proc.communicate(data or None, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    return {"rc": proc.returncode, "out": b64(out or b""), "err": b64(err or b""), "timed_out": timed_out}


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def main() -> int:
    os.environ.update(_env(None))
    port = find_port()
    fd = os.open(port, os.O_RDWR)
    daemon = Daemon(fd)
    deadline = time.monotonic() + 60
    while not os.path.exists(MODULES_LOADED) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with open(INIT_LOG) as f:
            init_log = f.read()
    except OSError:
        init_log = ""
    daemon.send({"ev": "hello", "release": os.uname().release, "pid": os.getpid(), "uptime": _uptime(),
                 "python": sys.version.split()[0], "modules_loaded": os.path.exists(MODULES_LOADED),
                 "init_log": init_log})
    daemon.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
