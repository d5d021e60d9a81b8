"""Devices: where models are timed. `local` (this machine, through a subprocess agent) is built in."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .errors import LatkitError
from .transports import LocalTransport, Transport

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Device:
    """A registered device. `python` is the interpreter the agent runs under (default: the host's, for local)."""

    name: str
    transport: str = "local"
    python: Optional[str] = None
    workdir: Optional[str] = None
    tags: tuple = field(default=())

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise LatkitError(f"device name {self.name!r} is not valid; use letters, digits, '.', '_' or '-'")

    def connect(self) -> Transport:
        """A transport for this device (not yet started)."""
        if self.transport == "local":
            return LocalTransport(python=self.python, workdir=self.workdir, name=self.name)
        raise LatkitError(f"device {self.name} has transport {self.transport!r}, which latkit does not know; "
                          "use local")


LOCAL = Device(name="local", tags=("builtin",))


def get_device(name: str) -> Device:
    if name == LOCAL.name:
        return LOCAL
    raise LatkitError(f"unknown device {name!r}; known devices: {', '.join(d.name for d in list_devices())}")


def list_devices() -> list:
    return [LOCAL]
