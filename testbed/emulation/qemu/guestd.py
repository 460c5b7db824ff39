#!/usr/bin/env python3
"""The control daemon inside a QEMU guest (stdlib only; run by the guest's /init as ``python3 -S``).

It runs chrooted into the host's root filesystem (shared read-only over virtio-9p), so the commands
it starts are the host's own binaries running on the guest's kernel. It talks to guest.py on the host
over the virtio-serial port named ``testbed.ctl``: one JSON object per line each way.

Requests  {"id": N, "op": OP, ...}   answered by {"id": N, ...result} or {"id": N, "error": TEXT}
Events    {"ev": "hello", ...}          once, when the daemon is ready
          {"ev": "out", "h": H, "fd": 1|2, "data": B64}   output of a started process
          {"ev": "exit", "h": H, "rc": RC}                after all of that process's output

Ops: ping; run (argv, timeout, input, merge) → rc, out, err, timed_out; batch (commands) → results;
start (argv, stdin, stdout, stderr: "pipe"|"null"|"stdout") → h, pid; stdin (h, data, close);
signal (h, sig, group); killall; read_file (path) / read_files (paths); write_file (path, data, mode);
sysctl_snapshot; sysctl_restore → restored; net_state → new_links, tables, qdiscs; poweroff. Binary data is base64.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

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
        self.procs: dict[int, subprocess.Popen] = {}
        self.next_handle = 1
        self.plock = threading.Lock()
        self.sysctls: dict[str, str] = {}  # /proc/sys path → value, as at the snapshot
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
                    req.get("env"), req.get("cwd"))

    def op_batch(self, req: dict) -> dict:
        results = []
        for cmd in req["commands"]:
            r = _run(cmd, req.get("timeout"), b"", True, None, None)
            results.append({"rc": r["rc"], "out": r["out"]})
            if req.get("stop_on_error") and r["rc"] != 0:
                break
        return {"results": results}

    def op_start(self, req: dict) -> dict:
        streams = {"pipe": subprocess.PIPE, "null": subprocess.DEVNULL, "stdout": subprocess.STDOUT}
        proc = subprocess.Popen(req["argv"], stdin=subprocess.PIPE if req.get("stdin") else subprocess.DEVNULL,
                                stdout=streams[req.get("stdout", "pipe")], stderr=streams[req.get("stderr", "null")],
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

    def _watch(self, handle: int, proc: subprocess.Popen, readers: list[threading.Thread]) -> None:
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
        with open(req["path"], "wb") as f:
            f.write(unb64(req.get("data")))
        if req.get("mode") is not None:
            os.chmod(req["path"], int(req["mode"]))
        return {}

    def op_sysctl_snapshot(self, req: dict) -> dict:
        self.sysctls = _read_sysctls(req.get("root", "/proc/sys/net"))
        self.ifindex = _ifindexes()
        return {"count": len(self.sysctls)}

    def op_sysctl_restore(self, req: dict) -> dict:
        """Every snapshot value that differs now, written back. Only the snapshot's own paths are read
        (the tree is not walked again: thousands of stat() calls under TCG), and a device's entries
        follow the device through renames (a pooled guest's NICs take each topology's names)."""
        restored = []
        now = {index: name for name, index in _ifindexes().items()}
        renamed = {old: now.get(index) for old, index in self.ifindex.items()}
        for path, value in self.sysctls.items():
            path = _renamed(path, renamed)
            if path is None:  # its device is gone
                continue
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
        return {"restored": restored}

    def op_net_state(self, req: dict) -> dict:
        """What reset() must undo, read over rtnetlink (no process started): links made since the
        snapshot, the routing tables in use per family, and every qdisc a cell configured (a root
        qdisc with a handle, or an ingress qdisc; the kernel's default root qdiscs have handle 0)."""
        names = {index: name for name, index in _ifindexes().items()}
        booted = set(self.ifindex.values())
        tables: dict[str, list[int]] = {}
        for family, key in ((socket.AF_INET, "4"), (socket.AF_INET6, "6")):
            found = set()
            for _type, body, attrs in _netlink_dump(RTM_GETROUTE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)):
                table = struct.unpack_from("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else body[4]
                found.add(table)
            tables[key] = sorted(found)
        qdiscs = []
        for _type, body, attrs in _netlink_dump(RTM_GETQDISC, struct.pack("=BxxxiIII", 0, 0, 0, 0, 0)):
            _family, ifindex, handle, parent, _info = struct.unpack_from("=BxxxiIII", body)
            kind = attrs.get(TCA_KIND, b"").rstrip(b"\0").decode()
            if ifindex in names and (kind == "ingress" or (parent == TC_H_ROOT and handle != 0)):
                qdiscs.append({"dev": names[ifindex], "kind": kind, "root": kind != "ingress"})
        return {"new_links": sorted(name for index, name in names.items() if booted and index not in booted),
                "tables": tables, "qdiscs": qdiscs}

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


# rtnetlink (linux/rtnetlink.h, linux/netlink.h): what op_net_state dumps.
RTM_GETROUTE, RTM_GETQDISC = 26, 38
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTA_TABLE, TCA_KIND = 15, 1
TC_H_ROOT = 0xFFFFFFFF
_RTMSG_SIZE = {RTM_GETROUTE - 2: 12, RTM_GETQDISC - 2: 20}  # replies (RTM_NEW*): rtmsg, tcmsg


def _netlink_dump(request: int, header: bytes) -> list[tuple[int, bytes, dict[int, bytes]]]:
    """An rtnetlink dump: (message type, fixed header, {attribute type: payload}) per message."""
    out: list[tuple[int, bytes, dict[int, bytes]]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(10)
        sock.send(struct.pack("=IHHII", 16 + len(header), request, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + header)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    return out
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", data, offset + 16)[0]
                    if errno:
                        raise OSError(errno, os.strerror(errno))
                    return out
                fixed = _RTMSG_SIZE.get(mtype)
                if fixed is not None:
                    body = data[offset + 16:offset + 16 + fixed]
                    attrs: dict[int, bytes] = {}
                    at = offset + 16 + fixed
                    while at + 4 <= offset + length:
                        alen, atype = struct.unpack_from("=HH", data, at)
                        if alen < 4:
                            break
                        attrs[atype & 0x3FFF] = data[at + 4:at + alen]
                        at += (alen + 3) & ~3
                    out.append((mtype, body, attrs))
                offset += (length + 3) & ~3


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


def _env(extra: dict | None) -> dict[str, str]:
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _run(argv: list[str], timeout: float | None, data: bytes, merge: bool, env: dict | None,
         cwd: str | None) -> dict:
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
