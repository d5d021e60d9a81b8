"""The transport interface and the JSON-lines client both transports speak through."""
from __future__ import annotations

import itertools
import json
import queue
import threading
from pathlib import Path
from typing import IO, Optional

from ..errors import AgentCallError, TransportError
from ..job import Artifact

AGENT_PATH = Path(__file__).resolve().parents[2] / "agents" / "agent.py"


class AgentClient:
    """Request/reply over an agent's stdin/stdout. A reader thread feeds a queue so every call can time out
    (a hung runtime must not hang the host)."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], describe: str):
        self._stdin, self._describe = stdin, describe
        self._replies: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout) -> None:
        try:
            for line in stdout:
                self._replies.put(line)
        except (OSError, ValueError):
            pass
        self._replies.put(None)  # end of stream

    def call(self, op: str, timeout: Optional[float], **fields) -> dict:
        req_id = next(self._ids)
        try:
            self._stdin.write((json.dumps({"id": req_id, "op": op, **fields}) + "\n").encode())
            self._stdin.flush()
        except (OSError, ValueError) as e:
            raise TransportError(f"agent on {self._describe} is gone ({e}); it will be restarted") from None
        while True:
            try:
                line = self._replies.get(timeout=timeout)
            except queue.Empty:
                raise TransportError(f"agent on {self._describe} gave no answer to {op!r} within {timeout:.0f} s") from None
            if line is None:
                raise TransportError(f"agent on {self._describe} exited during {op!r}")
            reply = json.loads(line)
            if reply.get("id") != req_id:  # a late answer to a request that timed out
                continue
            if reply["ok"]:
                return reply["result"]
            err = reply["error"]
            raise AgentCallError(err["kind"], err["message"])


class Transport:
    """Starts one long-lived agent on a device, puts model files there, and carries requests to it."""

    describe = "device"

    def start(self) -> dict:
        """Start (or reuse) the agent; returns its ping reply."""
        raise NotImplementedError

    def put(self, artifact: Artifact) -> str:
        """Make the model file available on the device; returns the name to send in measure requests."""
        raise NotImplementedError

    def call(self, op: str, timeout: Optional[float] = 60.0, **fields) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
