"""Real SSH hosts for tests: one OpenSSH server per network namespace, reached only through it.

Each host is a named network namespace joined to the root namespace by a veth pair on its own
/30 from 10.241.0.0/16, an `sshd -D -f CONFIG` with generated host and user keys on its own port,
and a private mount namespace in which a per-host directory is bound over `mountpoint` (default
/srv): files a test writes "on the remote" under that path land in `host.root`, and reading them
back from the root namespace only works by fetching them (scp/sftp/ansible's fetch).

    with SshHosts(2, workdir) as hosts:
        hosts[0].run("uname", "-r")           # ssh with the generated key, host key verified
        hosts.write_inventory(path)           # an Ansible inventory of all of them

The hosts share this machine's kernel, process table and every other path of its filesystem.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                "/usr/lib/ssh/sftp-server") if os.path.exists(p)), "internal-sftp")
POOL = ipaddress.ip_network("10.241.0.0/16")
# Mounting happens inside the host's own mount namespace; the arguments are passed as $1.. so
# nothing is interpolated into the script. The login user's home is a fresh per-host directory as
# on a new machine: this machine's dotfiles (a shell rc that runs a version manager, say) would
# otherwise run at every ssh command of every host at once.
_START = 'mount --bind "$1" "$2" && { [ -z "$6" ] || mount --bind "$6" "$7"; } && exec "$3" -D -f "$4" -E "$5"'


def missing_capability() -> str | None:
    """Why SSH test hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: network namespaces and veth pairs"
    if not os.path.exists(SSHD):
        return "needs openssh-server (sshd)"
    for tool in ("ssh", "ssh-keygen", "ip", "unshare"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    nets = []
    for line in out.split("\n"):
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def _free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    used = _used_networks() + taken
    for _ in range(200):
        base = POOL.network_address + random.randrange(0, POOL.num_addresses // 4) * 4
        net = ipaddress.ip_network(f"{base}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /30 left in 10.241.0.0/16")


def _run(*argv: str, timeout: float = 10) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)


@dataclass
class SshHost:
    """One started host. `address` is reachable from the root namespace only."""

    name: str
    netns: str
    veth: str  # root-namespace end
    subnet: ipaddress.IPv4Network
    address: str
    port: int
    dir: Path  # keys, config, log, pid file: local to the test, never seen through SSH paths
    root: Path  # bound over `mountpoint` inside the host's mount namespace
    mountpoint: str
    user_key: Path
    known_hosts: Path
    host_key_pub: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "sshd.pid"

    def ssh_options(self) -> list[str]:
        """Options for ssh/scp: the generated key only, this host's key only, no prompts."""
        return ["-i", str(self.user_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5"]

    def ssh_argv(self, *command: str) -> list[str]:
        return ["ssh", *self.ssh_options(), "-p", str(self.port), f"root@{self.address}", "--", *command]

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs a command on the host over real SSH (the remote shell joins the words)."""
        return subprocess.run(self.ssh_argv(*command), capture_output=True, text=True, timeout=timeout)

    def inventory_vars(self) -> dict[str, object]:
        """Ansible host variables: key login as root, host key checked against our known_hosts."""
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.user_key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} "
                                       "-o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
            "ansible_python_interpreter": "/usr/bin/python3",
            "testbed_netns": self.netns,
        }


OUR_TAGS: set[str] = set()  # the tags this process gave its hosts (names: tss<tag><i>, tbssh-<tag>-h<i>)


class SshHosts:
    """Starts `count` hosts under `workdir`; stops them and removes their namespaces on exit."""

    def __init__(self, count: int, workdir: Path, *, mountpoint: str = "/srv", port: int = 2222,
                 start_timeout: float = 10.0) -> None:
        self.count = count
        self.workdir = Path(workdir)
        self.mountpoint = mountpoint
        self.port = port
        self.start_timeout = start_timeout
        self.tag = os.urandom(3).hex()
        OUR_TAGS.add(self.tag)
        self.hosts: list[SshHost] = []

    def __enter__(self) -> SshHosts:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, index: int) -> SshHost:
        return self.hosts[index]

    def __iter__(self):
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.workdir.mkdir(parents=True, exist_ok=True)
        user_key = self.workdir / "id_ed25519"
        if not user_key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testbed-test", "-f", str(user_key))
        taken: list[ipaddress.IPv4Network] = []
        for i in range(self.count):
            subnet = _free_subnet(taken)
            taken.append(subnet)
            self._start_host(i, subnet, user_key)
        for host in self.hosts:
            self._wait_ready(host)

    def _start_host(self, index: int, subnet: ipaddress.IPv4Network, user_key: Path) -> None:
        name = f"h{index + 1}"
        hdir = self.workdir / name
        root = hdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        gateway, address = (str(a) for a in list(subnet.hosts())[:2])
        host = SshHost(name=name, netns=f"tbssh-{self.tag}-{name}", veth=f"tss{self.tag}{index}",
                       subnet=subnet, address=address, port=self.port, dir=hdir, root=root,
                       mountpoint=self.mountpoint, user_key=user_key,
                       known_hosts=hdir / "known_hosts", host_key_pub=hdir / "ssh_host_ed25519_key.pub")
        self.hosts.append(host)  # recorded before anything exists, so stop() finds partial hosts
        self._network(host, gateway)
        host_key = hdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_key))
        authorized = hdir / "authorized_keys"
        authorized.write_text(Path(f"{user_key}.pub").read_text())
        key_type, key_b64 = host.host_key_pub.read_text().split()[:2]
        host.known_hosts.write_text(f"[{address}]:{self.port} {key_type} {key_b64}\n")
        config = hdir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {address}", f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}", f"PidFile {host.pid_file}",
            "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UseDNS no",
            "PrintMotd no", "LogLevel VERBOSE", "MaxStartups 30:30:100", "MaxSessions 30",
            f"Subsystem sftp {SFTP_SERVER}", "",
        ]))
        _run(SSHD, "-t", "-f", str(config))
        user_home = pwd.getpwuid(os.geteuid()).pw_dir
        (hdir / "home").mkdir(mode=0o700, exist_ok=True)
        # Hiding the home would hide the host's own files when they live under it.
        fresh_home = ["", ""] if Path(user_home) in hdir.resolve().parents else [str(hdir / "home"), user_home]
        host.process = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", _START, "sh", str(root), self.mountpoint, SSHD, str(config), str(host.log), *fresh_home],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)

    def _network(self, host: SshHost, gateway: str) -> None:
        prefix = host.subnet.prefixlen
        _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _run("ip", "addr", "add", f"{gateway}/{prefix}", "dev", host.veth)
        _run("ip", "link", "set", host.veth, "up")
        nsexec = ("ip", "-n", host.netns)
        _run(*nsexec, "addr", "add", f"{host.address}/{prefix}", "dev", "eth0")
        _run(*nsexec, "link", "set", "eth0", "up")
        _run(*nsexec, "link", "set", "lo", "up")
        _run(*nsexec, "route", "add", "default", "via", gateway)

    def _wait_ready(self, host: SshHost) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if host.process is not None and host.process.poll() is not None:
                err = host.process.stderr.read().decode(errors="replace") if host.process.stderr else ""
                log = host.log.read_text() if host.log.exists() else ""
                raise RuntimeError(f"sshd of {host.name} exited {host.process.returncode}: {err}{log}")
            try:
                with socket.create_connection((host.address, host.port), timeout=0.5) as sock:
                    sock.settimeout(2)
                    if sock.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd of {host.name} did not answer on {host.address}:{host.port} "
                           f"within {self.start_timeout:.0f} s")

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        for host in self.hosts:
            self._stop_host(host)
        self.hosts = []

    @staticmethod
    def _stop_host(host: SshHost) -> None:
        proc = host.process
        if proc is not None and proc.poll() is None:
            # The Popen pid is sshd itself (ip netns exec, unshare and sh all exec). Its session
            # also holds the per-connection children; signal the whole group.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=3)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None and proc.stderr:
            proc.stderr.close()
        try:  # a daemon restarted by a test (SIGHUP re-exec) keeps its pid file current
            pid = int(host.pid_file.read_text().split()[0])
            if Path(f"/proc/{pid}/ns/net").exists() and os.readlink(f"/proc/{pid}/exe").endswith("sshd"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        # Connections sshd forked that left its process group (setsid) still live in the netns.
        out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True)
        for pid in out.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        # The peer end goes with the namespace; this only matters if the namespace was never made.
        subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
        host.process = None

    # -- inventories ---------------------------------------------------------------------------
    def inventory(self, group: str = "testbed_hosts") -> dict:
        return {"all": {"children": {group: {"hosts": {h.name: h.inventory_vars() for h in self.hosts}}}}}

    def write_inventory(self, path: Path, group: str = "testbed_hosts") -> Path:
        import json  # JSON is YAML: Ansible and the testbed read it as an inventory file.

        path = Path(path)
        path.write_text(json.dumps(self.inventory(group), indent=2) + "\n")
        return path
