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

from .. import protocol
from ..errors import AgentCallError, CallTimeout, ProtocolError, TransportError
from ..job import Artifact
from ..text import clean

AGENT_PATH = Path(__file__).resolve().parents[2] / "agents" / "agent.py"


# Every reply line of the agent starts with this (agents/agent.py FRAME); other stdout lines are device noise.
FRAME = b"@@latkit "


CHUNK = 1 << 16  # bytes read at a time: a line is assembled from chunks so its length is checked as it grows
QUEUED = 8  # replies read ahead of the calls that take them; more are more than the device was asked for


class AgentClient:
    """Request/reply over an agent's stdin/stdout. A reader thread feeds a queue so every call can time out
    (a hung runtime must not hang the host). Lines without the FRAME prefix (login banners, wrapper
    scripts) are kept aside for error messages and otherwise ignored.

    Whatever a device sends, the host's memory stays bounded: no line may grow past the bound of the request
    in flight (collector/protocol.py reply_limit), at most QUEUED replies wait, and each reply is checked
    (collector/protocol.py parse_reply) before it is used. A breach is a ProtocolError, raised at once."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], describe: str):
        self._stdin, self._describe = stdin, describe
        self._replies: queue.Queue = queue.Queue(QUEUED)
        self._ids = itertools.count(1)
        self._limit, self._op = protocol.REPLY_BYTES, "a request"
        self.noise: collections.deque = collections.deque(maxlen=5)
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _line(self, stdout) -> Optional[bytes]:
        """The next line (its newline dropped), None at the end of the stream (a last line cut short by the
        agent's exit included: a crash, not a lie); ProtocolError once it outgrows the bound."""
        parts, size = [], 0
        while True:
            chunk = stdout.readline(CHUNK)
            if not chunk:
                return None
            parts.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(parts)[:-1]
            if size > self._limit:
                raise ProtocolError(f"{self._describe} broke the agent protocol: it sent a line of more than "
                                    f"{self._limit:,} bytes (the bound of a reply to {self._op})")

    def _read(self, stdout) -> None:
        end = None
        try:
            while True:
                line = self._line(stdout)
                if line is None:
                    break
                if line.startswith(FRAME):
                    try:
                        self._replies.put_nowait(line[len(FRAME):])
                    except queue.Full:
                        raise ProtocolError(f"{self._describe} broke the agent protocol: it sent more than "
                                            f"{QUEUED} replies nobody asked for") from None
                elif line.strip():
                    self.noise.append(clean(line[:400].decode(errors="replace").strip(), 200))
        except ProtocolError as e:
            end = e  # stop reading: the transport kills the agent when the call takes this
        except (OSError, ValueError, EOFError):
            pass
        while True:  # the end goes in even if replies fill the queue: the oldest give way
            try:
                self._replies.put_nowait(end)
                return
            except queue.Full:
                try:
                    self._replies.get_nowait()
                except queue.Empty:
                    pass

    def call(self, op: str, timeout: Optional[float], **fields) -> dict:
        req_id = next(self._ids)
        self._limit, self._op = protocol.reply_limit(op, fields), op
        try:
            self._stdin.write((json.dumps({"id": req_id, "op": op, **fields}) + "\n").encode())
            self._stdin.flush()
        except (OSError, ValueError) as e:
            raise TransportError(f"agent on {self._describe} is gone ({e}); it will be restarted") from None
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise CallTimeout(f"agent on {self._describe} gave no answer to {op!r} within {timeout:.0f} s") from None
        if line is None:
            noise = f" (it printed: {' | '.join(self.noise)})" if self.noise else ""
            raise TransportError(f"agent on {self._describe} exited during {op!r}{noise}")
        if isinstance(line, ProtocolError):
            raise line
        # every request is answered before the next is sent (a timeout kills the agent), so a reply with
        # another id, or one that does not parse, is a breach of the protocol, not a late answer
        reply = protocol.parse_reply(line, req_id, op, fields, self._describe)
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
        """One request; a broken link, a timeout or a breach of the protocol kills the agent so nothing keeps
        running on the device."""
        if self._client is None:
            raise TransportError(f"agent on {self.describe} is not started")
        try:
            return self._client.call(op, timeout, **fields)
        except ProtocolError:
            self.kill()  # a device that breaks the protocol may go on sending: stop it now
            raise
        except TransportError as e:
            tail = self.stderr_tail()
            self.kill()
            raise type(e)(f"{e}{'; agent stderr: ' + tail if tail else ''}") from None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
