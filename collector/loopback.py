"""A loopback fleet: real sshd "devices" on 127.0.0.2, .3, ... for trying latkit and for its tests.

Each device gets its own sshd (temporary host key, authorized_keys, pid file, config), its own Python
and workdir; traffic never leaves loopback. Needs the openssh-server package (scripts/test installs it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import psutil

from .errors import LatkitError

SSHD_CONFIG = """\
ListenAddress {host}:{port}
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
LogLevel ERROR
ClientAliveInterval 30
"""


@dataclass
class FleetDevice:
    name: str
    host: str
    port: int
    user: str
    key: str
    python: str
    workdir: str
    dir: str
    cores: Optional[str] = None
    pid: Optional[int] = None

    def add_command(self, registry: Optional[str] = None) -> list:
        cmd = ["latkit", "device", "add", self.name, "--host", self.host, "--port", str(self.port), "--user",
               self.user, "--key", self.key, "--python", self.python, "--workdir", self.workdir,
               "--tags", "loopback" + (",pinned" if self.cores else ""), "--trust-host-key",
               "--lease", f"{self.dir}/lease"]  # loopback devices share a machine: a lease each
        return cmd + (["--registry", registry] if registry else [])


def sshd_path() -> str:
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(path):
        raise LatkitError("sshd not found; install openssh-server (apt-get install openssh-server)")
    return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _previous_port(config: Path) -> Optional[int]:
    """The port an earlier start of this device used, if still free: registered devices stay valid."""
    if not config.exists():
        return None
    host, port = config.read_text().split()[1].rsplit(":", 1)
    try:
        with socket.socket() as s:
            s.bind((host, int(port)))
        return int(port)
    except OSError:
        return None


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(dev: FleetDevice) -> int:
    """(Re)start the sshd of `dev`; returns its pid once it answers with an SSH banner."""
    d = Path(dev.dir)
    cmd = [sshd_path(), "-D", "-e", "-f", str(d / "sshd_config")]
    if dev.cores:
        cmd = ["taskset", "-c", dev.cores] + cmd
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "ab"), start_new_session=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise LatkitError(f"sshd for {dev.name} exited: {(d / 'sshd.log').read_text()[-300:]}")
        try:
            with socket.create_connection((dev.host, dev.port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    dev.pid = proc.pid
                    return proc.pid
        except OSError:
            time.sleep(0.05)
    raise LatkitError(f"sshd for {dev.name} did not answer on {dev.host}:{dev.port}")


def kill_sshd(dev: FleetDevice) -> None:
    """Take the device down hard: its sshd, every session under it and the agents they run."""
    pid_file = Path(dev.dir) / "sshd.pid"
    pid = dev.pid or (int(pid_file.read_text()) if pid_file.exists() else None)
    if pid is None:
        return
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root] if "sshd" in root.name() else []
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    dev.pid = None


def start_fleet(base: Path, pythons: Sequence[str], cores: Sequence[Optional[str]] = (), prefix: str = "dev"
                ) -> list:
    """Start len(pythons) devices on 127.0.0.2, .3, ...; device i runs its agent with pythons[i]."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    client_key = base / "client_key"
    if not client_key.exists():
        _keygen(client_key)
    user = os.environ.get("USER") or psutil.Process().username()
    fleet = []
    for i, python in enumerate(pythons):
        host = f"127.0.0.{i + 2}"
        d = base / f"{prefix}{i}"
        d.mkdir(exist_ok=True)
        if not (d / "ssh_host_ed25519_key").exists():
            _keygen(d / "ssh_host_ed25519_key")
        shutil.copy(f"{client_key}.pub", d / "authorized_keys")
        port = _previous_port(d / "sshd_config") or _free_port(host)
        (d / "sshd_config").write_text(SSHD_CONFIG.format(host=host, port=port, dir=d))
        dev = FleetDevice(name=f"{prefix}{i}", host=host, port=port, user=user, key=str(client_key),
                          python=python, workdir=str(d / "work"), dir=str(d),
                          cores=cores[i] if i < len(cores) else None)
        start_sshd(dev)
        fleet.append(dev)
    (base / "fleet.json").write_text(json.dumps([asdict(f) for f in fleet], indent=2))
    return fleet


def stop_fleet(base: Path) -> None:
    """Stop every sshd of the fleet at `base` (by pid file, so restarted ones go too)."""
    state = Path(base) / "fleet.json"
    if state.exists():
        for entry in json.loads(state.read_text()):
            kill_sshd(FleetDevice(**dict(entry, pid=None)))
        state.unlink()
