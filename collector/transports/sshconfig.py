"""Where an ssh device really is: its registry entry resolved through the user's OpenSSH config.

Host aliases, HostName, User, Port, IdentityFile, IdentitiesOnly and ProxyJump are honoured, as `ssh`
does: values in the registry win over the config, each ProxyJump hop is itself looked up in the config
(the first hop's own ProxyJump too), and the result is a route of hops, jump hosts first, the device last.
Nothing here touches the network.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paramiko

from ..errors import LatkitError

DEFAULT_CONFIG = "~/.ssh/config"
MAX_HOPS = 8  # ProxyJump chains longer than this are taken for a loop


@dataclass(frozen=True)
class Hop:
    """One ssh login on the way to a device. `name` is what the user wrote (an alias or an address)."""

    name: str
    host: str
    port: int = 22
    user: Optional[str] = None
    keys: tuple = ()  # identity files; empty: ssh-agent and ~/.ssh's default keys
    identities_only: bool = False  # use only `keys`, not ssh-agent
    aliased: bool = False  # a Host block gave it a HostName

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address if self.name == self.host else f"{self.name} ({self.address})"


def load(path: Optional[str]) -> tuple:
    """(the parsed config, its path); a missing default config is an empty one, a missing explicit one an error."""
    where = Path(path or DEFAULT_CONFIG).expanduser()
    if not where.is_file():
        if path:
            raise LatkitError(f"ssh config {path} not found; fix --ssh-config or leave it out for {DEFAULT_CONFIG}")
        return paramiko.SSHConfig(), where
    try:
        return paramiko.SSHConfig.from_text(_inlined(where, 0)), where
    except (OSError, UnicodeDecodeError, paramiko.SSHException) as e:
        raise LatkitError(f"cannot read ssh config {where}: {e}; fix it or give another with --ssh-config") from None


def _inlined(path: Path, depth: int) -> str:
    """The config's text with its `Include` lines replaced by the files they name (paramiko does not follow
    them): globs, several per line, relative to ~/.ssh as for a user's config; a pattern matching nothing adds
    nothing, as in ssh."""
    if depth > 16:
        raise LatkitError(f"ssh config {path} is included over 16 levels deep; fix the Include loop")
    lines = []
    for line in path.read_text().splitlines():
        words = line.split()
        if words and words[0].lower() == "include":
            for pattern in words[1:]:
                full = Path("~/.ssh").expanduser() / Path(pattern).expanduser()  # an absolute pattern stays
                lines += [_inlined(Path(f), depth + 1) for f in sorted(glob.glob(str(full))) if Path(f).is_file()]
        else:
            lines.append(line)
    return "\n".join(lines)


def _hop(config: paramiko.SSHConfig, where: Path, name: str, user=None, port=None, key=None) -> tuple:
    """The hop `name` (explicit user/port/key win over the config) and its ProxyJump text, if any."""
    found = config.lookup(name)
    if "proxycommand" in found and "proxyjump" not in found:
        raise LatkitError(f"{where} gives {name} a ProxyCommand, which latkit does not run; use ProxyJump")
    try:
        port = port or int(found.get("port", 22))
    except ValueError:
        raise LatkitError(f"{where} gives {name} the port {found['port']!r}; fix its Port line") from None
    keys = (key,) if key else tuple(found.get("identityfile", ()))
    jump = found.get("proxyjump")
    return Hop(name=name, host=found["hostname"], port=port, user=user or found.get("user"), keys=keys,
               identities_only=bool(key) or found.get("identitiesonly", "no").lower() == "yes",
               aliased=found["hostname"] != name), (None if not jump or jump.lower() == "none" else jump)


def _spec(text: str) -> tuple:
    """`[user@]host[:port]` of a ProxyJump entry as (host, user, port)."""
    user, _, rest = text.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):  # [::1]:22
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] or None
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    if not host or "://" in text or (port is not None and not port.isdigit()):
        raise LatkitError(f"cannot read the ProxyJump entry {text!r}; write [user@]host[:port]")
    return host, user or None, int(port) if port else None


def _route(config, where: Path, name: str, depth: int, **explicit) -> list:
    hop, jump = _hop(config, where, name, **explicit)
    if not jump:
        return [hop]
    if depth >= MAX_HOPS:
        raise LatkitError(f"the ProxyJump chain in {where} runs over {MAX_HOPS} hops at {name}; fix the loop")
    first, *rest = [_spec(s.strip()) for s in jump.split(",")]
    route = _route(config, where, first[0], depth + 1, user=first[1], port=first[2])
    return route + [_hop(config, where, h, user=u, port=p)[0] for h, u, p in rest] + [hop]


def resolve(device) -> list:
    """The hops to `device` (an ssh Device): jump hosts in order, the device last."""
    config, where = load(device.ssh_config)
    return _route(config, where, device.host, 0, user=device.user, port=device.port, key=device.key)
