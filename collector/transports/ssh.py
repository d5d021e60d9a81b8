"""The SSH transport (paramiko): one long-lived agent per device on an exec channel, files over SFTP.

The agent is deployed by content hash (<workdir>/agent-<sha16>.py, re-sent only when it changes) and
models go to <workdir>/models/<sha256>.<ext>, each shipped once, the next one while the current one is
timed (prefetch). Uploads land under a temporary name and are renamed, so a broken upload never looks like
a cached model; where a login banner breaks SFTP, files go over exec channels instead (transports/files.py).
The device is reached as ~/.ssh/config says (alias, user, port, identity files, ProxyJump hops: see
sshconfig.py). Every hop's host key is checked against the user's ~/.ssh/known_hosts and latkit's own
known_hosts: an unknown key is refused unless trusted explicitly, a changed key always.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import paramiko

from ..errors import LatkitError, ProtocolError, TransportError
from ..job import Artifact
from ..text import clean
from . import sshconfig
from .base import AGENT_PATH, AgentClient, Transport
from .files import open_files

CONNECT_TIMEOUT = 10.0
KEEPALIVE_S = 15
logging.getLogger("paramiko").addHandler(logging.NullHandler())  # its errors arrive as one-line LatkitErrors


def _fp(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host key: refuse with instructions, or (trust=True) record it in latkit's known_hosts."""

    def __init__(self, known_hosts: Path, trust: bool, what: str):
        self.known_hosts, self.trust, self.what = known_hosts, trust, what

    def missing_host_key(self, client, hostname, key):
        if not self.trust:
            raise LatkitError(f"host key of {self.what} is not known ({_fp(key)}); check it, then add the device "
                              "with --trust-host-key")
        keys = paramiko.HostKeys()
        if self.known_hosts.exists():
            keys.load(str(self.known_hosts))
        keys.add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        keys.save(str(self.known_hosts))
        client.get_host_keys().add(hostname, key.get_name(), key)


class SSHTransport(Transport):
    def __init__(self, device, trust_host_key: bool = False):
        self.device = device
        self.describe = f"{device.name} ({device.address})"
        self.known_hosts = Path(device.known_hosts or Path.home() / ".config" / "latkit" / "known_hosts")
        self.trust_host_key = trust_host_key
        self.workdir = device.workdir or ".latkit"
        self.python = device.python or "python3"
        self._ssh: Optional[paramiko.SSHClient] = None
        self._jumps: list = []  # clients of the jump hosts, first hop first
        self.route: list = []  # the hops of the last connection (sshconfig.Hop), the device last
        self._files = None  # SFTPFiles, or ExecFiles where SFTP does not work
        self._uploads = None  # one thread shipping the next model while this one is timed
        self._pending: dict = {}  # model name -> Future of its upload
        self._files_lock = threading.Lock()  # one file operation at a time (an upload may run in the background)
        self._chan: Optional[paramiko.Channel] = None
        self._client: Optional[AgentClient] = None
        self._stderr: collections.deque = collections.deque(maxlen=20)
        self._present: set = set()
        self._used: dict = {}  # model name -> time.time() of its last put here (SFTP mtimes are whole seconds)
        self.agent_pid: Optional[int] = None

    # -- connection ---------------------------------------------------------------------------------
    def _connect(self) -> None:
        """Log in hop by hop: each jump host's client opens a direct-tcpip channel that carries the next login."""
        route = sshconfig.resolve(self.device)
        clients: list = []
        try:
            for i, hop in enumerate(route):
                device = i == len(route) - 1
                what = f"{self.device.name} at {hop.address}" if device else f"jump host {hop} of {self.device.name}"
                sock = self._tunnel(clients[-1], route[i - 1], hop, what) if i else None
                clients.append(self._login(hop, sock, what, explicit_key=device and self.device.key is not None))
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise
        clients[-1].get_transport().set_keepalive(KEEPALIVE_S)
        self.route = route
        self._jumps, self._ssh = clients[:-1], clients[-1]
        self._files = open_files(self._ssh, self.python, self.describe)

    def _tunnel(self, via: paramiko.SSHClient, prev: sshconfig.Hop, hop: sshconfig.Hop, what: str
                ) -> paramiko.Channel:
        try:
            return via.get_transport().open_channel("direct-tcpip", (hop.host, hop.port), ("127.0.0.1", 0),
                                                    timeout=CONNECT_TIMEOUT)
        except paramiko.ChannelException as e:  # the previous hop could not connect onwards
            raise TransportError(f"cannot reach {what} from {prev}: {e.text}") from None
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise TransportError(f"cannot reach {what} from {prev}: {e or type(e).__name__}") from None

    def _known_in(self, hop: sshconfig.Hop) -> Path:
        """The known_hosts file whose key for `hop` was checked: paramiko looks in the user's ~/.ssh/known_hosts
        first, then in latkit's beside the registry."""
        users = Path("~/.ssh/known_hosts").expanduser()
        name = hop.host if hop.port == 22 else f"[{hop.host}]:{hop.port}"
        try:
            return users if users.is_file() and paramiko.HostKeys(str(users)).lookup(name) else self.known_hosts
        except (OSError, paramiko.SSHException):
            return self.known_hosts

    def _login(self, hop: sshconfig.Hop, sock, what: str, explicit_key: bool) -> paramiko.SSHClient:
        """A client logged in to `hop` (over `sock`, a channel through the previous hop, if given)."""
        ssh = paramiko.SSHClient()
        ssh.load_system_host_keys()
        if self.known_hosts.exists():
            ssh.get_host_keys().load(str(self.known_hosts))
        ssh.set_missing_host_key_policy(_HostKeyPolicy(self.known_hosts, self.trust_host_key, what))
        keys = [str(Path(k).expanduser()) for k in hop.keys]
        if explicit_key and not Path(keys[0]).is_file():
            raise LatkitError(f"key file {self.device.key} for device {self.device.name} not found; fix --key")
        keys = [k for k in keys if Path(k).is_file()]  # as ssh does, a config's missing IdentityFile is skipped
        try:
            ssh.connect(hop.host, port=hop.port, username=hop.user, key_filename=keys or None, sock=sock,
                        timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT,
                        channel_timeout=CONNECT_TIMEOUT, allow_agent=not hop.identities_only,
                        look_for_keys=not hop.keys)
        except LatkitError:
            ssh.close()
            raise
        except paramiko.BadHostKeyException as e:
            ssh.close()
            raise LatkitError(f"host key of {what} changed (now {_fp(e.key)}, known {_fp(e.expected_key)}); refused."
                              f" If it was reinstalled, remove its line from {self._known_in(hop)} "
                              "and add the device again with --trust-host-key") from None
        except paramiko.AuthenticationException:
            ssh.close()
            used = f"key {', '.join(hop.keys)}" if hop.keys else "ssh-agent and default keys"
            fix = "--key" if explicit_key else "the ssh config's IdentityFile"
            raise LatkitError(f"authentication to {what} failed with {used}; check {fix} and its authorized_keys"
                              ) from None
        except socket.gaierror as e:
            ssh.close()
            if not hop.aliased:
                raise LatkitError(f"cannot resolve {what}: no Host block in the ssh config gives {hop.name} a "
                                  f"HostName and it is no known host name ({e.strerror}); add one or fix the name"
                                  ) from None
            raise TransportError(f"cannot reach {what}: {e.strerror}") from None
        except paramiko.ssh_exception.NoValidConnectionsError as e:  # "[Errno None] Unable to connect ...": say why
            ssh.close()
            why = "; ".join(sorted({(getattr(x, "strerror", None) or str(x)).lower() for x in e.errors.values()}))
            raise TransportError(f"cannot reach {what}: {why or 'no connection'}; is sshd running there, on that "
                                 "port?") from None
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as e:
            ssh.close()
            raise TransportError(f"cannot reach {what}: {e or type(e).__name__}") from None
        return ssh

    def _connected(self) -> bool:
        return self._ssh is not None and self._ssh.get_transport() is not None and self._ssh.get_transport().is_active()

    # -- Transport ----------------------------------------------------------------------------------
    def start(self) -> dict:
        if self._chan is not None and not self._chan.closed and self._connected():
            return self.call("ping")
        try:
            if not self._connected():
                self._connect()
            agent_sha = hashlib.sha256(AGENT_PATH.read_bytes()).hexdigest()
            remote_agent = f"{self.workdir}/agent-{agent_sha[:16]}.py"
            with self._files_lock:
                self._files.makedirs(f"{self.workdir}/models")
                if not self._files.exists(remote_agent):
                    self._files.upload(AGENT_PATH, remote_agent, agent_sha)
            chan = self._ssh.get_transport().open_session(timeout=CONNECT_TIMEOUT)
            cmd = [self.python, remote_agent, "--workdir", self.workdir]
            chan.exec_command(" ".join(map(shlex.quote, cmd + (["--lease", self.device.lease] if self.device.lease else []))))
        except (OSError, paramiko.SSHException, EOFError) as e:
            self.close()
            raise TransportError(f"cannot start the agent on {self.describe}: {e or type(e).__name__}") from None
        self._chan = chan
        self._stderr.clear()
        threading.Thread(target=self._drain_stderr, args=(chan.makefile_stderr("rb"),), daemon=True).start()
        self._client = AgentClient(chan.makefile_stdin("wb"), chan.makefile("rb"), self.describe)
        try:
            pong = self._client.call("ping", 60)
        except ProtocolError:
            self.kill()  # no polite shutdown for an agent that broke the protocol
            self.close()
            raise
        except TransportError:
            status = chan.recv_exit_status() if chan.exit_status_ready() else None
            tail = " | ".join(self._stderr) or "no output"
            self.close()
            if status in (126, 127):
                raise LatkitError(f"cannot run {self.python} on {self.describe} ({tail}); set the device's --python") from None
            raise TransportError(f"agent on {self.describe} did not start: {tail}") from None
        self.agent_pid = pong["pid"]
        return pong

    def _drain_stderr(self, stream) -> None:
        """Keep the agent's last stderr lines for error messages, each cut to its start: read in pieces, so a
        device writing one endless line costs the host nothing."""
        try:
            whole = True  # the previous piece ended a line
            while True:
                piece = stream.readline(4096)
                if not piece:
                    break
                if whole:
                    self._stderr.append(clean(piece[:600].decode(errors="replace").rstrip(), 300))
                whole = piece.endswith(b"\n")
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def _ship(self, artifact: Artifact) -> None:
        remote = f"{self.workdir}/models/{artifact.name}"
        with self._files_lock:
            if self._files.exists(remote):
                self._files.touch(remote)  # its mtime is its last use: bounded caches evict the oldest
            else:
                self._files.upload(artifact.path, remote, artifact.sha256)

    def prefetch(self, artifact: Artifact) -> None:
        """Start shipping a model the next request will need, while the agent times the current one."""
        if artifact.name in self._present or artifact.name in self._pending or self._files is None:
            return
        if self._uploads is None:
            self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"upload-{self.device.name}")
        self._pending[artifact.name] = self._uploads.submit(self._ship, artifact)

    def put(self, artifact: Artifact) -> str:
        self._used[artifact.name] = time.time()
        if artifact.name not in self._present:
            try:
                pending = self._pending.pop(artifact.name, None)
                if pending is not None:
                    pending.result()
                else:
                    self._ship(artifact)
            except (OSError, paramiko.SSHException, EOFError) as e:
                if isinstance(e, (PermissionError,)) or "No space" in str(e):
                    raise LatkitError(f"cannot store {artifact.name} on {self.describe}: {e}; free space or change --workdir") from None
                self.kill()
                raise TransportError(f"upload to {self.describe} failed: {e or type(e).__name__}") from None
            self._present.add(artifact.name)
        return artifact.name

    def model_files(self) -> list:
        from ..cache import CachedFile
        try:
            with self._files_lock:
                entries = self._files.listing(f"{self.workdir}/models")
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise TransportError(f"cannot list the models on {self.describe}: {e or type(e).__name__}") from None
        return [CachedFile(name.split(".")[0], size, max(mtime, self._used.get(name, 0.0)))
                for name, size, mtime in entries
                if len(name.split(".")[0]) == 64 and not name.endswith(".part")]

    def evict(self, shas) -> None:
        shas = set(shas)
        try:
            with self._files_lock:
                for name, _, _ in self._files.listing(f"{self.workdir}/models"):
                    if name.split(".")[0] in shas:
                        self._files.remove(f"{self.workdir}/models/{name}")
                        self._present.discard(name)
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise TransportError(f"cannot remove models on {self.describe}: {e or type(e).__name__}") from None

    def stderr_tail(self) -> str:
        return " | ".join(list(self._stderr)[-3:])

    def kill(self) -> None:
        """Stop the agent even if it hangs in a runtime: closing the channel alone would leave it timing."""
        if self.agent_pid and self._connected():
            try:
                chan = self._ssh.get_transport().open_session(timeout=CONNECT_TIMEOUT)
                chan.exec_command(f"kill -9 {int(self.agent_pid)}")
                chan.recv_exit_status()
                chan.close()
            except (OSError, paramiko.SSHException, EOFError):
                pass
        self._close_channel()

    def _close_channel(self) -> None:
        if self._chan is not None:
            self._chan.close()
        self._chan = self._client = None
        self.agent_pid = None

    def close(self) -> None:
        if self._client is not None and self._chan is not None and not self._chan.closed:
            try:
                self._client.call("shutdown", 10)
            except (TransportError, ProtocolError):
                self.kill()
        self._close_channel()
        if self._uploads is not None:
            self._uploads.shutdown(wait=False, cancel_futures=True)  # an upload in flight fails as its link closes
        for obj in (self._files, self._ssh, *reversed(self._jumps)):
            if obj is not None:
                try:
                    obj.close()
                except (OSError, paramiko.SSHException, EOFError):
                    pass
        self._files = self._ssh = self._uploads = None
        self._jumps = []
        self._present.clear()
        self._pending.clear()
