"""Transports start an agent on a device and carry requests to it; local and ssh share one interface."""
from .base import AGENT_PATH, Transport
from .local import LocalTransport
from .ssh import SSHTransport

__all__ = ["AGENT_PATH", "Transport", "LocalTransport", "SSHTransport"]
