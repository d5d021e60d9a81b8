"""A loopback fleet: real sshd "devices" on 127.0.0.2, .3, ... for trying latkit and for its tests.

Each device gets its own sshd (host key, authorized_keys, pid file, config), its own Python and workdir;
traffic never leaves loopback. Needs the openssh-server package (scripts/test installs it).

The state dir holds what decides who may log in, so it must be private: a fresh one per fleet by default
(new_fleet_dir, under ~/.cache/latkit/fleets), and an existing one is refused unless this user owns it and
no one else can write it or a directory above it (sshd's StrictModes rule; world-writable /tmp fails it).
The client key is generated anew on every start, so a key found in the dir is never authorized.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
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
StrictModes yes
UsePAM no
Subsystem sftp internal-sftp
LogLevel ERROR
ClientAliveInterval 30
"""


# A login that talks on stdout on every session, as some boards' and Termux's do (sshd ForceCommand): the
# agent's framed replies survive it, SFTP does not (transports/files.py falls back to exec channels).
BANNER_LOGIN = """\
#!/bin/sh
echo "Welcome to {name} (a loopback device whose login prints this banner)"
case "$SSH_ORIGINAL_COMMAND" in
  internal-sftp|sftp) exec {sftp_server} ;;
  "") exec /bin/sh -l ;;
  *) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
"""


def _sftp_server() -> str:
    for path in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/sftp-server"):
        if os.path.exists(path):
            return path
    return "sftp-server"


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
    banner: bool = False  # its login prints a banner on stdout (BANNER_LOGIN)

    def add_kwargs(self) -> dict:
        """`add_device`'s arguments for this device: the loopback devices share a machine, so each has a lease of
        its own (one shared lease would time them one after another)."""
        return dict(name=self.name, host=self.host, port=self.port, user=self.user, key=self.key, python=self.python,
                    workdir=self.workdir, tags=["loopback"] + (["pinned"] if self.cores else []),
                    trust_host_key=True, lease=f"{self.dir}/lease")

    def add_command(self, registry: Optional[str] = None) -> list:
        """The same as `latkit device add ...`."""
        k = self.add_kwargs()
        cmd = ["latkit", "device", "add", k["name"], "--host", k["host"], "--port", str(k["port"]), "--user", k["user"],
               "--key", k["key"], "--python", k["python"], "--workdir", k["workdir"], "--tags", ",".join(k["tags"]),
               "--trust-host-key", "--lease", k["lease"]]
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


def fleets_root() -> Path:
    return Path.home() / ".cache" / "latkit" / "fleets"


def new_fleet_dir() -> Path:
    """A fresh private (0700) state dir for one fleet, under fleets_root()."""
    root = fleets_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix="latkit-fleet-", dir=root))


def private_dir(path, create: bool = True) -> Path:
    """`path` resolved (created 0700 if missing and `create`); refused in one line unless this user owns
    it, no one else can write it, and every directory above it up to the home directory is owned by this
    user or root and not writable by group or others: sshd's StrictModes refuses keys below anything else."""
    path = Path(path).resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    elif not path.is_dir():
        raise LatkitError(f"no fleet dir {path}; give the --dir the fleet was started with")
    uid, home = os.getuid(), Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid not in ((uid,) if d == path else (uid, 0)):
            why = f"is owned by uid {st.st_uid}"
        elif st.st_mode & 0o022:
            why = f"is writable by group or others (mode {st.st_mode & 0o7777:04o})"
        elif d == home:
            break
        else:
            continue
        what = "it" if d == path else f"{d} above it"
        raise LatkitError(f"refusing fleet dir {path}: {what} {why}, so sshd could not trust the keys inside; "
                          "give a --dir of your own under your home that only you can write, or leave --dir out")
    return path


def _write_private(path: Path, text: str) -> None:
    """A new 0600 file at `path`, whatever was there before."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def _keygen(path: Path) -> None:
    """A new ed25519 key pair at `path` (private 0600) and `path`.pub, replacing any there."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
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


def start_fleet(base: Path, pythons: Sequence[str], cores: Sequence[Optional[str]] = (), prefix: str = "dev",
                banners: Sequence[bool] = ()) -> list:
    """Start len(pythons) devices on 127.0.0.2, .3, ...; device i runs its agent with pythons[i], pinned to
    cores[i] and with a login that prints a banner where banners[i].

    `base` must pass private_dir (new_fleet_dir gives one). Host keys and ports are kept across restarts
    of the same fleet, so registered devices stay valid; the client key is new each time."""
    base = private_dir(base)
    if (base / "fleet.json").exists():
        raise LatkitError(f"a fleet is already up in {base}; stop it first (scripts/fleet down --dir {base})")
    client_key = base / "client_key"
    _keygen(client_key)
    user = pwd.getpwuid(os.getuid()).pw_name  # sshd checks key ownership against this login's uid
    fleet = []
    for i, python in enumerate(pythons):
        host = f"127.0.0.{i + 2}"
        d = private_dir(base / f"{prefix}{i}")
        if not (d / "ssh_host_ed25519_key").exists():
            _keygen(d / "ssh_host_ed25519_key")
        _write_private(d / "authorized_keys", Path(f"{client_key}.pub").read_text())
        port = _previous_port(d / "sshd_config") or _free_port(host)
        banner = i < len(banners) and banners[i]
        config = SSHD_CONFIG.format(host=host, port=port, dir=d)
        if banner:
            (d / "login").write_text(BANNER_LOGIN.format(name=f"{prefix}{i}", sftp_server=_sftp_server()))
            (d / "login").chmod(0o700)
            config += f"ForceCommand {d / 'login'}\n"
        (d / "sshd_config").write_text(config)
        dev = FleetDevice(name=f"{prefix}{i}", host=host, port=port, user=user, key=str(client_key),
                          python=python, workdir=str(d / "work"), dir=str(d),
                          cores=cores[i] if i < len(cores) else None, banner=banner)
        start_sshd(dev)
        fleet.append(dev)
    (base / "fleet.json").write_text(json.dumps([asdict(f) for f in fleet], indent=2))
    return fleet


def stop_fleet(base: Path, remove: bool = False) -> None:
    """Stop every sshd of the fleet at `base` (by pid file, so restarted ones go too); `remove` deletes
    its state (keys included) as well. `base` is checked first: its pid files decide what is killed."""
    base = private_dir(base, create=False)
    state = base / "fleet.json"
    if state.exists():
        for entry in json.loads(state.read_text()):
            kill_sshd(FleetDevice(**dict(entry, pid=None)))
        state.unlink()
    if remove:
        shutil.rmtree(base)
