"""The recorded-log formats `agent.logfiles.FrameLog` reads, one module each, and what they share: the one
error a log that cannot be read raises (`LogFormatError`, a sentence naming the format and what to do), and
the tally of malformed lines a text log skips (`MalformedLines`).

* `candump`  — `candump -L` (.log), parsed here line by line;
* `savvycan` — SavvyCAN's/GVRET's native CSV (.csv with a `Time Stamp,ID,Extended,...` header), parsed here;
* `pycan`    — what python-can reads: .asc, .trc and its own .csv (text, resumed after a bad line), .blf,
  and .mf4 through asammdf (the optional extra `mf4`).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("agent.logfiles")


class LogFormatError(ValueError):
    """A log that cannot be read (unknown format, missing optional reader, truncated or corrupt file); the
    message is one sentence that names the file, its format and what to install or convert."""


class MalformedLines:
    """The malformed lines of one text log: each is skipped alone (the lines around it still count) and
    counted; the first is logged when met, and `report()` logs the total once if there were more."""

    def __init__(self, path: Path, format_name: str) -> None:
        self.path = path
        self.format_name = format_name
        self.count = 0
        self.first: str | None = None  # "line N: why", for the summary

    def skip(self, line_number: int, why: str) -> None:
        self.count += 1
        if self.count == 1:
            self.first = f"line {line_number}: {why}"
            log.warning(
                "%s: skipping malformed %s line %d (%s); further ones are only counted",
                self.path,
                self.format_name,
                line_number,
                why,
            )

    def report(self) -> None:
        if self.count > 1:
            log.warning(
                "%s: skipped %d malformed %s lines (first: %s)",
                self.path,
                self.count,
                self.format_name,
                self.first,
            )

    def none_readable(self) -> LogFormatError:
        """The error for a log of which no line parsed: not this format at all."""
        return LogFormatError(
            f"{self.path} is not a {self.format_name} log: none of its {self.count} lines parse as one "
            f"(first: {self.first})"
        )
