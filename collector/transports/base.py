"""The transport interface and the JSON-lines client both transports speak through."""
from __future__ import annotations

import abc
import collections
import itertools
import json
import queue
import threading
from pathlib import Path
from typing import IO, Optional

from ..errors import AgentCallError, CallTimeout, TransportError
from ..job import Artifact

AGENT_PATH = Path(__file__).resolve().parents[2] / "agents" / "agent.py"


# Every reply line of the agent starts with this (agents/agent.py FRAME); other stdout lines are device noise.
FRAME = b"@@latkit "


class AgentClient:
    """Request/reply over an agent's stdin/stdout. A reader thread feeds a queue so every call can time out
    (a hung runtime must not hang the host). Lines without the FRAME prefix (login banners, wrapper
    scripts) are kept aside for error messages and otherwise ignored."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], describe: str):
        self._stdin, self._describe = stdin, describe
        self._replies: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self.noise: collections.deque = collections.deque(maxlen=5)
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout) -> None:
        try:
            for line in stdout:
                if line.startswith(FRAME):
                    self._replies.put(line[len(FRAME):])
                elif line.strip():
                    self.noise.append(line.decode(errors="replace").strip()[:200])
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
                raise CallTimeout(f"agent on {self._describe} gave no answer to {op!r} within {timeout:.0f} s") from None
            if line is None:
                noise = f" (it printed: {' | '.join(self.noise)})" if self.noise else ""
                raise TransportError(f"agent on {self._describe} exited during {op!r}{noise}")
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # a framed line garbled in transit cannot be matched to a request
            if reply.get("id") != req_id:  # a late answer to a request that timed out
                continue
            if reply["ok"]:
                return reply["result"]
            err = reply["error"]
            raise AgentCallError(err["kind"], err["message"])


class Transport(abc.ABC):
    """Starts one long-lived agent on a device, puts model files there, and carries requests to it."""

    describe = "device"
    _client: Optional[AgentClient] = None

    @abc.abstractmethod
    def start(self) -> dict:
        """Start (or reuse) the agent; returns its ping reply."""

    @abc.abstractmethod
    def put(self, artifact: Artifact) -> str:
        """Make the model file available on the device; returns the name to send in measure requests."""

    def prefetch(self, artifact: Artifact) -> None:
        """Start making a model available ahead of its request (SSH: ship it while another model is timed)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the agent now, even mid-measurement (it releases the device lease as it dies)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Shut the agent down politely and release the connection."""

    def stderr_tail(self) -> str:
        return ""

    def model_files(self) -> list:
        """The device's cached model files (CachedFile); none where models are timed in place (local)."""
        return []

    def evict(self, shas) -> None:
        """Delete these models from the device's cache (a later put ships them again)."""

    def call(self, op: str, timeout: Optional[float] = 60.0, **fields) -> dict:
        """One request; a broken link or a timeout kills the agent so nothing keeps running on the device."""
        if self._client is None:
            raise TransportError(f"agent on {self.describe} is not started")
        try:
            return self._client.call(op, timeout, **fields)
        except TransportError as e:
            tail = self.stderr_tail()
            self.kill()
            raise type(e)(f"{e}{'; agent stderr: ' + tail if tail else ''}") from None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
