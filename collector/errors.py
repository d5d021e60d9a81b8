"""User-facing errors: one line naming what was wrong and what to do.

Each error carries the CLI's exit code: 2 when the command itself was wrong (a bad option value, a
missing or unreadable file, an unknown name, an output that cannot be written), 1 when valid work failed
on the way (a device that could not be reached or was busy, a runtime missing there, a model or an export
that failed).
"""


class LatkitError(Exception):
    """A bad input or an unusable environment; the CLI prints it as one line and exits with `exit_code`."""

    exit_code = 2


# Optional dependencies: the extra that installs each (pyproject.toml) and its name on PyPI where it differs.
EXTRAS = {"sklearn": "predict", "scipy": "predict", "lightgbm": "predict", "pandas": "predict",
          "matplotlib": "plot", "torch": "export", "onnx": "export", "onnxscript": "export",
          "onnxruntime": "onnxruntime", "litert_torch": "tflite", "ai_edge_litert": "tflite", "ray": "ray",
          "polars": "compact"}
DISTRIBUTIONS = {"sklearn": "scikit-learn", "litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}


def missing(module: str, what: str, extra: str = "") -> "LatkitError":
    """The one-line error for an optional dependency that is not installed."""
    top = module.split(".")[0]
    return LatkitError(f"{what} needs {DISTRIBUTIONS.get(top, top)}, which is not installed here; install it with "
                       f"pip install 'latkit[{extra or EXTRAS.get(top, 'all')}]'")


def need(module: str, extra: str, what: str):
    """Import an optional dependency, or say in one line which extra installs it (a measure-only install has
    no pandas, scipy, scikit-learn, matplotlib, onnx or torch)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(module, what, extra) from None


def closest(word: str, choices, cutoff: float = 0.6) -> "str | None":
    """The choice most like a mistyped `word` (difflib's ratio >= cutoff), or None."""
    import difflib
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: str, choices, cutoff: float = 0.6) -> str:
    """"; did you mean 'x'?" for a mistyped name with a close choice, else "": a typo gets the fix in the same
    line that refuses it."""
    match = closest(word, choices, cutoff)
    return f"; did you mean {match!r}?" if match else ""


class Failure(LatkitError):
    """Valid work that failed: a device, a model, an export (exit 1)."""

    exit_code = 1


class AgentCallError(Failure):
    """The agent answered a request with ok=false; `kind` is the agent's error tag."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class TransportError(Failure):
    """The link to the agent broke (process died, connection lost); the job may be retried."""


class CallTimeout(TransportError):
    """The agent gave no answer in time; the transport has killed it (a hung model, not a dead link)."""


class DeviceBusy(Failure):
    """Another collection holds the device's lease and the caller asked not to wait."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a collection; carries the signal's exit code (130 or 143)."""

    def __init__(self, signame: str, exit_code: int, summary: str = ""):
        super().__init__(signame)
        self.signame, self.exit_code, self.summary = signame, exit_code, summary


class ProtocolError(Failure):
    """The agent sent what the protocol does not allow (an unbounded line, bytes that are not UTF-8, a reply of
    the wrong shape, a NaN latency...): the agent is killed, the job in flight becomes a `protocol_error` row and
    the device leaves the run. Not a TransportError: reconnecting to a device that lies does not help."""
