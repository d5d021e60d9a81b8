"""Devices and their registry: a TOML file (default ~/.config/latkit/devices.toml, or $LATKIT_REGISTRY).

`local` (this machine, through a subprocess agent) is built in. Remote devices are reached over SSH with
keys or ssh-agent only; their host keys live in `known_hosts` beside the registry file. Passwords are
never stored.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from . import validate
from .errors import LatkitError, did_you_mean
from .transports import TRANSPORTS, kind_of

MAX_REGISTRY_BYTES = 4 * 2 ** 20  # thousands of devices; anything larger is not a devices file
_TEXT = ("host", "user", "key", "ssh_config", "python", "workdir", "lease", "fingerprint", "last_probe")


def default_registry_path() -> Path:
    env = os.environ.get("LATKIT_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".config" / "latkit" / "devices.toml"


@dataclass(frozen=True)
class Device:
    """A device latkit can time on. For ssh devices `python` and `workdir` are paths on the device; `host` may be
    a Host alias of the ssh config, whose HostName, Port, User, IdentityFile and ProxyJump fill what is None."""

    name: str
    transport: str = "local"
    host: Optional[str] = None
    port: Optional[int] = None  # None: the ssh config's Port, else 22
    user: Optional[str] = None
    key: Optional[str] = None
    ssh_config: Optional[str] = None  # None: ~/.ssh/config
    python: Optional[str] = None
    workdir: Optional[str] = None
    lease: Optional[str] = None  # the device lease file; default: one per machine (see agents/agent.py)
    tags: tuple = ()
    fingerprint: str = ""
    last_probe: str = ""
    probe: dict = field(default_factory=dict, compare=False, hash=False)
    known_hosts: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        validate.partition(self.name, "device name")  # it names the folder data/device_=<name>/
        if self.transport not in TRANSPORTS:
            raise LatkitError(f"device {self.name} has transport {self.transport!r}; use {' or '.join(TRANSPORTS)}")
        if kind_of(self).remote and not self.host:
            raise LatkitError(f"device {self.name} needs a host (--host)")
        if self.port is not None:
            validate.whole(self.port, f"the port of device {self.name}", 1, 65535)
        for key in _TEXT:
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise LatkitError(f"the {key} of device {self.name} must be text, got {getattr(self, key)!r}")
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise LatkitError(f"the tags of device {self.name} must be a list of text, got {self.tags!r}")
        if not isinstance(self.probe, dict):
            raise LatkitError(f"the probe of device {self.name} must be a table, got {self.probe!r}")
        object.__setattr__(self, "tags", tuple(self.tags))

    @property
    def address(self) -> str:
        if not self.host:
            return "this machine"
        return f"{self.user + '@' if self.user else ''}{self.host}{f':{self.port}' if self.port else ''}"

    def connect(self, trust_host_key: bool = False):
        """A transport for this device (not yet started)."""
        return kind_of(self).open(self, trust_host_key=trust_host_key)

    def to_toml(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "", (), {}) and k != "name"}
        d.pop("known_hosts", None)
        d["tags"] = list(self.tags)
        return d


LOCAL = Device(name="local", tags=("builtin",))
_ENTRY_KEYS = {f.name for f in dataclasses.fields(Device)} - {"name", "known_hosts"}


class Registry:
    """The devices file. Every change is written to a temporary file and renamed over the old one."""

    def __init__(self, path=None):
        self.path = Path(path).expanduser() if path else default_registry_path()
        self.known_hosts = self.path.parent / "known_hosts"

    def _load(self) -> dict:
        if not self.path.exists() and not self.path.is_symlink():  # a broken or looping link is named, not ignored
            return {}
        text = validate.read_bytes(self.path, "registry", MAX_REGISTRY_BYTES)
        try:
            doc = tomllib.loads(text.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise LatkitError(f"registry {self.path} is not valid TOML ({e}); fix or remove it") from None
        except RecursionError:
            raise LatkitError(f"registry {self.path} nests too deeply for a devices file; fix or remove it") from None
        unknown = set(doc) - {"devices"}
        devices = doc.get("devices", {})
        if unknown or not isinstance(devices, dict) or not all(isinstance(e, dict) for e in devices.values()):
            raise LatkitError(f"registry {self.path} must hold only [devices.NAME] tables"
                              f"{f', not {sorted(unknown)}' if unknown else ''}; fix or remove it")
        return devices

    def devices(self) -> list:
        found = [LOCAL]
        for name, entry in sorted(self._load().items()):
            unknown = set(entry) - _ENTRY_KEYS
            if unknown:
                raise LatkitError(f"registry {self.path}: device {name!r} has unknown key(s) "
                                  f"{', '.join(sorted(unknown))}; known keys: {', '.join(sorted(_ENTRY_KEYS))}")
            try:
                found.append(Device(name=name, known_hosts=str(self.known_hosts), **entry))
            except LatkitError as e:
                raise LatkitError(f"registry {self.path}: {e}") from None
        return found

    def get(self, name: str) -> Device:
        devices = self.devices()
        for d in devices:
            if d.name == name:
                return d
        names = [d.name for d in devices]
        known = f"known devices: {', '.join(names)}"
        close = did_you_mean(name, names)
        raise LatkitError(f"unknown device {name!r}" + (f"{close} ({known}; add one with latkit device add)" if close
                                                         else f"; {known} (add one with latkit device add)"))

    def save(self, device: Device) -> None:
        if device.name == LOCAL.name:
            raise LatkitError("'local' is built in; choose another name")
        entry = device.to_toml()

        def put(devices) -> None:
            if device.name not in devices:
                devices[device.name] = entry
                return
            table = devices[device.name]  # edited key by key, so comments inside it stay
            for k in [k for k in table if k not in entry]:
                del table[k]
            for k, v in entry.items():
                if table.get(k) != v:
                    table[k] = v
        self._edit(put)

    def remove(self, name: str) -> None:
        registered = self._load()
        if name not in registered:
            close = did_you_mean(name, registered)
            raise LatkitError(f"no registered device {name!r}" + (f"{close} (see latkit device list)" if close
                                                                   else "; see latkit device list"))
        self._edit(lambda devices: devices.pop(name))

    def _edit(self, change) -> None:
        """Apply `change` to the [devices] table and write the file back with the user's comments and layout."""
        import tomlkit  # only writers of the registry need it (reading is tomllib, in the standard library)
        self._load()  # a broken file is named, not rewritten
        doc = tomlkit.parse(self.path.read_text()) if self.path.exists() else tomlkit.document()
        if "devices" not in doc:
            doc["devices"] = tomlkit.table(is_super_table=True)
        change(doc["devices"])
        target = self.path.resolve()  # a linked registry (dotfiles) is written where the link points, never replaced
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(tomlkit.dumps(doc))
        os.replace(tmp, target)


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_device(name: str, registry: Optional[Registry] = None) -> Device:
    return (registry or Registry()).get(name)


def list_devices(registry: Optional[Registry] = None) -> list:
    return (registry or Registry()).devices()
