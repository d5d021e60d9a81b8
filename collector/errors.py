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
    """The link to the agent broke (process died, connection lost); the job may be retried."""


class CallTimeout(TransportError):
    """The agent gave no answer in time; the transport has killed it (a hung model, not a dead link)."""


class DeviceBusy(LatkitError):
    """Another collection holds the device's lease and the caller asked not to wait."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a collection; carries the signal's exit code (130 or 143)."""

    def __init__(self, signame: str, exit_code: int, summary: str = ""):
        super().__init__(signame)
        self.signame, self.exit_code, self.summary = signame, exit_code, summary
