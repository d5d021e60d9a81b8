"""Putting files on an SSH device: over SFTP, or over exec channels where SFTP does not work.

A device whose login prints to stdout (a ForceCommand wrapper, a chatty shell rc, as on some boards and
Termux) breaks SFTP: the client reads the banner as a binary packet. The agent's protocol is framed and
does not mind, so files then travel over exec channels instead: `cat` into a temporary name, the device's
Python checks the sha256 and renames, so a banner or a broken upload never becomes a cached file.
"""
from __future__ import annotations

import json
import logging
import shlex
import socket
from pathlib import Path

import paramiko

CHANNEL_TIMEOUT = 10.0  # to open a channel; a chunk of an upload may take 6x this
CHUNK = 1 << 16

_warned: set = set()  # devices already warned about in this process (a reconnect must not repeat it)


class SFTPFiles:
    def __init__(self, sftp: paramiko.SFTPClient):
        self.sftp = sftp

    def exists(self, remote: str) -> bool:
        try:
            self.sftp.stat(remote)
            return True
        except FileNotFoundError:
            return False

    def makedirs(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and not self.exists(sub):
                self.sftp.mkdir(sub)

    def upload(self, local: Path, remote: str, sha256: str) -> None:
        """Under a temporary name, then renamed, so an interrupted upload leaves nothing usable."""
        tmp = f"{remote}.part"
        self.sftp.put(str(local), tmp)
        self.sftp.posix_rename(tmp, remote)

    def touch(self, remote: str) -> None:
        self.sftp.utime(remote, None)

    def listing(self, folder: str) -> list:
        """(name, size, mtime) of each entry of `folder`."""
        return [(e.filename, e.st_size, e.st_mtime) for e in self.sftp.listdir_attr(folder)]

    def remove(self, remote: str) -> None:
        self.sftp.remove(remote)

    def close(self) -> None:
        self.sftp.close()


# Run by the device's Python: each entry of a folder as one framed JSON line (a banner may share stdout).
_LIST = ("import json,os,sys\nfor n in os.listdir(sys.argv[1]):\n st=os.stat(os.path.join(sys.argv[1],n))\n"
         " print('@@latkit '+json.dumps([n,st.st_size,st.st_mtime]))\n")

# Run by the device's Python on an uploaded file: rename it into place only if its sha256 is the expected one.
_CHECK = ("import hashlib,os,sys\nh=hashlib.sha256()\nwith open(sys.argv[1],'rb') as f:\n"
          " for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n"
          "if h.hexdigest()!=sys.argv[2]:\n os.unlink(sys.argv[1]); sys.exit('sha256 mismatch after upload')\n"
          "os.rename(sys.argv[1],sys.argv[3])\n")


class ExecFiles:
    """The same operations as shell commands on exec channels; their stdout (banners) is ignored, their exit
    status and stderr say what happened."""

    def __init__(self, ssh: paramiko.SSHClient, python: str):
        self.ssh, self.python = ssh, python

    def _run(self, cmd: str, data: Path = None, out: list = None) -> tuple:
        chan = self.ssh.get_transport().open_session(timeout=CHANNEL_TIMEOUT)
        try:
            chan.settimeout(6 * CHANNEL_TIMEOUT)
            chan.exec_command(cmd)
            if data is not None:
                with open(data, "rb") as f:
                    for block in iter(lambda: f.read(CHUNK), b""):
                        chan.sendall(block)
            chan.shutdown_write()
            err = chan.makefile_stderr("rb").read().decode(errors="replace").strip()
            text = chan.makefile("rb").read().decode(errors="replace")
            if out is not None:
                out += [line[len("@@latkit "):] for line in text.splitlines() if line.startswith("@@latkit ")]
            return chan.recv_exit_status(), err
        except socket.timeout:
            raise OSError(f"no progress in {6 * CHANNEL_TIMEOUT:g} s running {cmd.split()[0]} on the device") from None
        finally:
            chan.close()

    def exists(self, remote: str) -> bool:
        return self._run(f"test -f {shlex.quote(remote)}")[0] == 0

    def makedirs(self, path: str) -> None:
        status, err = self._run(f"mkdir -p {shlex.quote(path)}")
        if status:
            raise OSError(f"mkdir -p {path} failed: {err or 'exit status %d' % status}")

    def upload(self, local: Path, remote: str, sha256: str) -> None:
        tmp = f"{remote}.part"
        status, err = self._run(f"cat > {shlex.quote(tmp)} && {shlex.quote(self.python)} -c {shlex.quote(_CHECK)} "
                                f"{shlex.quote(tmp)} {sha256} {shlex.quote(remote)}", data=local)
        if status:
            raise OSError(f"upload of {Path(local).name} failed: {(err.splitlines() or ['exit status %d' % status])[-1]}")

    def touch(self, remote: str) -> None:
        self._run(f"touch {shlex.quote(remote)}")

    def listing(self, folder: str) -> list:
        lines: list = []
        status, err = self._run(f"{shlex.quote(self.python)} -c {shlex.quote(_LIST)} {shlex.quote(folder)}", out=lines)
        if status:
            raise OSError(f"cannot list {folder}: {(err.splitlines() or ['exit status %d' % status])[-1]}")
        return [tuple(json.loads(line)) for line in lines]

    def remove(self, remote: str) -> None:
        status, err = self._run(f"rm -f {shlex.quote(remote)}")
        if status:
            raise OSError(f"rm {remote} failed: {err or 'exit status %d' % status}")

    def close(self) -> None:
        pass


def _open_sftp(ssh: paramiko.SSHClient) -> paramiko.SFTPClient:
    """SFTP with a timeout on its handshake (a device's wrapper may never answer it)."""
    chan = ssh.get_transport().open_session(timeout=CHANNEL_TIMEOUT)
    chan.settimeout(CHANNEL_TIMEOUT)
    chan.invoke_subsystem("sftp")
    sftp = paramiko.SFTPClient(chan)
    chan.settimeout(None)
    return sftp


def open_files(ssh: paramiko.SSHClient, python: str, describe: str):
    """SFTPFiles where SFTP works, else ExecFiles with one warning line (once per device and process)."""
    try:
        return SFTPFiles(_open_sftp(ssh))
    except (paramiko.SSHException, paramiko.SFTPError, EOFError, OSError) as e:
        if describe not in _warned:
            _warned.add(describe)
            logging.getLogger("latkit").warning(
                f"SFTP does not work on {describe} ({str(e) or type(e).__name__}; does its login print to stdout?): "
                "shipping files over exec channels (cat, sha256 checked on the device) instead")
        return ExecFiles(ssh, python)
