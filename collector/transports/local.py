"""The local transport: the agent as a subprocess of the host, with the host's Python by default."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..errors import LatkitError, ProtocolError, TransportError
from ..job import Artifact
from .base import AGENT_PATH, AgentClient, Transport


class LocalTransport(Transport):
    """Models are timed where they lie (no copy); `python` may point at another environment, as a device's own."""

    def __init__(self, python: Optional[str] = None, workdir: Optional[str] = None, name: str = "local",
                 lease: Optional[str] = None):
        self.python = python or sys.executable
        self.workdir = Path(workdir or Path.home() / ".cache" / "latkit" / "agent").expanduser()
        self.lease = lease
        self.describe = name
        self._proc: Optional[subprocess.Popen] = None
        self._client: Optional[AgentClient] = None

    def start(self) -> dict:
        if self._proc is not None and self._proc.poll() is None:
            return self.call("ping")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.workdir / "agent.log", "ab")
        try:
            # --parent-pid: the agent dies with this process (PR_SET_PDEATHSIG), however it dies
            cmd = [self.python, str(AGENT_PATH), "--workdir", str(self.workdir), "--parent-pid", str(os.getpid())]
            self._proc = subprocess.Popen(cmd + (["--lease", self.lease] if self.lease else []),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as e:
            raise LatkitError(f"cannot start the agent with {self.python}: {e.strerror}; check the device's python") from None
        self._client = AgentClient(self._proc.stdin, self._proc.stdout, self.describe)
        return self.call("ping", timeout=60)

    def put(self, artifact: Artifact) -> str:
        return str(artifact.path)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                self.call("shutdown", timeout=10)
                self._proc.wait(timeout=10)
            except (TransportError, ProtocolError, subprocess.TimeoutExpired):
                self.kill()
        for f in (self._proc.stdin, self._proc.stdout):
            f.close()
        self._stderr.close()
        self._proc = self._client = None
