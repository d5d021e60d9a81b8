"""Transports start an agent on a device and carry requests to it; local and ssh share one interface.

A device's `transport` names its kind in TRANSPORTS, the one place a kind is looked up (`kind_of(device)`).
SSHTransport is imported on first use, so hosts that only time on `local` (a lent GPU machine, CI) need
no paramiko."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import AGENT_PATH, Transport
from .local import LocalTransport

__all__ = ["AGENT_PATH", "Transport", "LocalTransport", "SSHTransport", "TRANSPORTS", "TransportKind", "kind_of"]


def _local(device, trust_host_key: bool = False) -> Transport:
    return LocalTransport(python=device.python, workdir=device.workdir, name=device.name, lease=device.lease)


def _ssh(device, trust_host_key: bool = False) -> Transport:
    from .ssh import SSHTransport  # paramiko only where a device is reached over ssh
    return SSHTransport(device, trust_host_key=trust_host_key)


@dataclass(frozen=True)
class TransportKind:
    """How devices of one kind are reached: `open(device, trust_host_key)` makes a (not yet started)
    transport; `remote`: over a network, with a host, a route of hops and a probe kept in the registry;
    `shares_host`: the agent runs on this machine, beside exports."""

    name: str
    open: Callable[..., Transport]
    remote: bool
    shares_host: bool


TRANSPORTS = {"local": TransportKind("local", _local, remote=False, shares_host=True),
              "ssh": TransportKind("ssh", _ssh, remote=True, shares_host=False)}


def kind_of(device) -> TransportKind:
    """The kind of transport `device` names (Device checks the name when it is made)."""
    return TRANSPORTS[device.transport]


def __getattr__(name):
    if name == "SSHTransport":
        from .ssh import SSHTransport
        return SSHTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
