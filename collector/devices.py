"""Devices and their registry: a TOML file (default ~/.config/latkit/devices.toml, or $LATKIT_REGISTRY).

`local` (this machine, through a subprocess agent) is built in. Remote devices are reached over SSH with
keys or ssh-agent only; their host keys live in `known_hosts` beside the registry file. Passwords are
never stored.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .errors import LatkitError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_registry_path() -> Path:
    env = os.environ.get("LATKIT_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".config" / "latkit" / "devices.toml"


@dataclass(frozen=True)
class Device:
    """A device latkit can time on. For ssh devices `python` and `workdir` are paths on the device."""

    name: str
    transport: str = "local"
    host: Optional[str] = None
    port: int = 22
    user: Optional[str] = None
    key: Optional[str] = None
    python: Optional[str] = None
    workdir: Optional[str] = None
    lease: Optional[str] = None  # the device lease file; default: one per machine (see agents/agent.py)
    tags: tuple = ()
    fingerprint: str = ""
    last_probe: str = ""
    probe: dict = field(default_factory=dict, compare=False, hash=False)
    known_hosts: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise LatkitError(f"device name {self.name!r} is not valid; use letters, digits, '.', '_' or '-'")
        if self.transport not in ("local", "ssh"):
            raise LatkitError(f"device {self.name} has transport {self.transport!r}; use local or ssh")
        if self.transport == "ssh" and not self.host:
            raise LatkitError(f"device {self.name} needs a host (--host)")
        object.__setattr__(self, "tags", tuple(self.tags))

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}" if self.host else "this machine"

    def connect(self, trust_host_key: bool = False):
        """A transport for this device (not yet started)."""
        if self.transport == "local":
            from .transports import LocalTransport
            return LocalTransport(python=self.python, workdir=self.workdir, name=self.name, lease=self.lease)
        from .transports.ssh import SSHTransport  # paramiko only where a device is reached over ssh
        return SSHTransport(self, trust_host_key=trust_host_key)

    def to_toml(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "", (), {}) and k != "name"}
        d.pop("known_hosts", None)
        d["tags"] = list(self.tags)
        return d


LOCAL = Device(name="local", tags=("builtin",))


class Registry:
    """The devices file. Every change is written to a temporary file and renamed over the old one."""

    def __init__(self, path=None):
        self.path = Path(path).expanduser() if path else default_registry_path()
        self.known_hosts = self.path.parent / "known_hosts"

    def _load(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            return tomllib.loads(self.path.read_text()).get("devices", {})
        except tomllib.TOMLDecodeError as e:
            raise LatkitError(f"registry {self.path} is not valid TOML ({e}); fix or remove it") from None

    def devices(self) -> list:
        found = [LOCAL]
        for name, entry in sorted(self._load().items()):
            entry = dict(entry, tags=tuple(entry.get("tags", ())))
            found.append(Device(name=name, known_hosts=str(self.known_hosts), **entry))
        return found

    def get(self, name: str) -> Device:
        for d in self.devices():
            if d.name == name:
                return d
        raise LatkitError(f"unknown device {name!r}; known devices: {', '.join(d.name for d in self.devices())} "
                          "(add one with latkit device add)")

    def save(self, device: Device) -> None:
        if device.name == LOCAL.name:
            raise LatkitError("'local' is built in; choose another name")
        entries = self._load()
        entries[device.name] = device.to_toml()
        self._write(entries)

    def remove(self, name: str) -> None:
        entries = self._load()
        if name not in entries:
            raise LatkitError(f"no registered device {name!r}; see latkit device list")
        del entries[name]
        self._write(entries)

    def _write(self, entries: dict) -> None:
        import tomli_w  # only writers of the registry need it (reading is tomllib, in the standard library)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps({"devices": entries}))
        os.replace(tmp, self.path)


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_device(name: str, registry: Optional[Registry] = None) -> Device:
    return (registry or Registry()).get(name)


def list_devices(registry: Optional[Registry] = None) -> list:
    return (registry or Registry()).devices()
