"""Transports start an agent on a device and carry requests to it; local and ssh share one interface.

SSHTransport is imported on first use, so hosts that only time on `local` (a lent GPU machine, CI) need
no paramiko."""
from .base import AGENT_PATH, Transport
from .local import LocalTransport

__all__ = ["AGENT_PATH", "Transport", "LocalTransport", "SSHTransport"]


def __getattr__(name):
    if name == "SSHTransport":
        from .ssh import SSHTransport
        return SSHTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
