"""Progress on stderr, never stdout (stdout is for results, e.g. one JSON document with --json): rich bars
when stderr is a terminal, else plain lines through the `latkit` logger, so a run under nohup or cron
leaves a readable log instead of control codes. The CLI's -q hides both, -v adds debug lines."""
from __future__ import annotations

import logging
import sys
import threading
from typing import Iterable, Optional

from .reports import DeviceStatus

log = logging.getLogger("latkit")


def bars() -> bool:
    """Whether progress is drawn as bars (stderr is a terminal) rather than logged as lines."""
    return sys.stderr.isatty()


def _stderr_console():
    from rich.console import Console
    return Console(stderr=True)


def progress_iter(items: Iterable, description: str, enabled: bool = True, total: Optional[int] = None) -> Iterable:
    """`items` (`total` of them: needed for an iterator), with a bar or about ten log lines saying how far the
    loop is."""
    if not enabled:
        yield from items
        return
    total = len(items) if total is None else total
    if bars():
        from rich.progress import track
        yield from track(items, total=total, description=description, console=_stderr_console(), transient=True)
        return
    step = max(1, total // 10)
    for i, x in enumerate(items, 1):
        yield x
        if i % step == 0 or i == total:
            log.info("%s: %d/%d", description, i, total)


class CollectProgress:
    """One bar per device and one overall (ETA, done/failed counts); or, off a terminal, a log line per
    stored row and one per device when it finishes. `update(report, measurement)` is the scheduler's
    on_row callback."""

    def __init__(self, report, enabled: bool):
        self.report, self.enabled, self.bars = report, enabled, enabled and bars()
        self._lock = threading.Lock()
        self.devices: dict = {}  # a bar's task id -> its DeviceReport

    def __enter__(self):
        if not self.bars:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), _live_column(self.state), console=_stderr_console())
        self.progress.start()
        total = sum(d.total for d in self.report.devices)
        self.overall = self.progress.add_task("all devices", total=total, state="")
        self.tasks = {d.device: self.progress.add_task(d.device, total=d.total, state="") for d in self.report.devices}
        self.devices = {self.tasks[d.device]: d for d in self.report.devices}
        self.update()
        return self

    def update(self, device_report=None, m=None):
        if not self.enabled:
            return
        with self._lock:
            if not self.bars:
                if m is not None:
                    d = device_report
                    what = f"{m.latency_ms:.4g} ms" if m.status == "ok" else f"{m.error_kind}: {m.error}"
                    log.info("%s: %d/%d %s: %s", d.device, d.total - d.remaining, d.total, m.job.artifact.arch[:60],
                             what)
                return
            for d in self.report.devices:
                state = d.status + (f" ({d.errors} errors)" if d.errors else "")
                self.progress.update(self.tasks[d.device], total=d.total, completed=d.total - d.remaining, state=state)
            failed = sum(d.status == DeviceStatus.FAILED for d in self.report.devices)
            self.progress.update(self.overall, total=sum(d.total for d in self.report.devices),
                                 completed=sum(d.total - d.remaining for d in self.report.devices),
                                 state=f"{failed} device(s) failed" if failed else "")

    def state(self, task) -> str:
        """A bar's last column, read at every refresh: a running device's round shows before its first row."""
        d = self.devices.get(task.id)
        running = d is not None and d.status == DeviceStatus.RUNNING and d.round_note
        return task.fields["state"] + (f" · {d.round_note}" if running else "")

    def __exit__(self, *exc):
        if self.bars:
            self.update()
            self.progress.stop()
        elif self.enabled:
            for d in self.report.devices:
                log.info("%s: %s, %d measured, %d errors, %d already done, %d left%s", d.device, d.status, d.measured,
                         d.errors, d.skipped, d.remaining, f" ({d.message})" if d.message else "")


def _live_column(text_of):
    """A rich column whose text `text_of(task)` is read at every refresh, not only when the task is updated."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Live(ProgressColumn):
        def render(self, task):
            return Text(text_of(task))

    return Live()


class Steps:
    """Progress of work made of named steps of unknown count (a predictor fit's rounds, transfer's seeds, one
    table per import): a spinner with the current step on a terminal, else one `latkit: LABEL: STEP` log line
    per step. Called with the step's text; `enabled=False` (-q) says nothing."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.bars = label, enabled, enabled and bars()
        self.progress = None

    def __enter__(self):
        if self.bars:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=_stderr_console(), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label)
        return self

    def __call__(self, step: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{self.label}: {step}")
        elif self.enabled:
            log.info("%s: %s", self.label, step)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
