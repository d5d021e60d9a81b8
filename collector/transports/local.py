"""The local transport: the agent as a subprocess of the host, with the host's Python by default."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..errors import LatkitError, TransportError
from ..job import Artifact
from .base import AGENT_PATH, AgentClient, Transport


class LocalTransport(Transport):
    """Models are timed where they lie (no copy); `python` may point at another environment, as a device's own."""

    def __init__(self, python: Optional[str] = None, workdir: Optional[str] = None, name: str = "local"):
        self.python = python or sys.executable
        self.workdir = Path(workdir or Path.home() / ".cache" / "latkit" / "agent").expanduser()
        self.describe = name
        self._proc: Optional[subprocess.Popen] = None
        self._client: Optional[AgentClient] = None

    def start(self) -> dict:
        if self._proc is not None and self._proc.poll() is None:
            return self.call("ping")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.workdir / "agent.log", "ab")
        try:
            self._proc = subprocess.Popen([self.python, str(AGENT_PATH), "--workdir", str(self.workdir)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as e:
            raise LatkitError(f"cannot start the agent with {self.python}: {e.strerror}; check the device's python") from None
        self._client = AgentClient(self._proc.stdin, self._proc.stdout, self.describe)
        return self.call("ping", timeout=60)

    def put(self, artifact: Artifact) -> str:
        return str(artifact.path)

    def call(self, op: str, timeout: Optional[float] = 60.0, **fields) -> dict:
        if self._client is None:
            raise TransportError(f"agent on {self.describe} is not started")
        try:
            return self._client.call(op, timeout, **fields)
        except TransportError:
            self.kill()
            raise

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
            except (TransportError, subprocess.TimeoutExpired):
                self.kill()
        for f in (self._proc.stdin, self._proc.stdout):
            f.close()
        self._stderr.close()
        self._proc = self._client = None
