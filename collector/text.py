"""One sanitizer for text from outside (devices, datasets, registries, options) on its way to a terminal, a log
line or a generated file: a device's error message or cpu_model may carry line breaks or terminal escape
sequences (`ESC ]0;title BEL` retitles a terminal, `ESC [2J` clears it), which must be shown, not obeyed."""
from __future__ import annotations

import logging
from typing import Optional


def _escaped(ch: str) -> str:
    return ch if ch.isprintable() else repr(ch)[1:-1]  # \n, \x1b, \u202e: as repr shows them


def clean(text, limit: Optional[int] = 300) -> str:
    """`text` as one printable line: control, escape and other non-printable characters shown escaped like repr
    does (so a device cannot break a line, move the cursor or retitle the terminal), cut after `limit`
    characters with a count of what was left out (None: whole). Printable text, Unicode included, is kept."""
    s = "" if text is None else str(text)
    more = len(s) - limit if limit is not None else 0
    if more > 0:
        s = s[:limit]
    if not s.isprintable():
        s = "".join(map(_escaped, s))
    return s + (f"... ({more} more characters)" if more > 0 else "")


class CleanFormatter(logging.Formatter):
    """Log lines whose message is clean(): a device string in a log line cannot break or steer the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = clean(record.message, None)
        return super().formatMessage(record)


def cell(text, limit: Optional[int] = 300) -> str:
    """clean() text for a rich table cell: its markup (`[bold]`, `[/]`) shown, not applied or crashing the table."""
    from rich.markup import escape
    return escape(clean(text, limit))


def md_cell(text, limit: Optional[int] = 300) -> str:
    """clean() text for a Markdown table cell in a generated file: a `|` cannot open a column of its own."""
    return clean(text, limit).replace("|", "\\|")
