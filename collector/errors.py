"""User-facing errors: one line naming what was wrong and what to do."""


class LatkitError(Exception):
    """A bad input or an unusable environment; the CLI prints it as one line and exits non-zero."""


class AgentCallError(LatkitError):
    """The agent answered a request with ok=false; `kind` is the agent's error tag."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class TransportError(LatkitError):
    """The link to the agent broke (process died, connection lost, timeout); the job may be retried."""
