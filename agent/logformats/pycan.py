"""The formats python-can reads, as `Frame`s: Vector ASC (.asc), PEAK TRC (.trc) and python-can's own CSV
(text), Vector BLF (.blf), and ASAM MDF4 (.mf4, through asammdf: the optional extra `mf4`).

Text logs: python-can's readers stop at the first line they cannot parse. Here they read through a
`_LineFeed` that knows which line of the file each one was; when a reader raises, that line is counted as
malformed and a fresh reader resumes after it, first fed again the header lines the file opened with (the
lines before its first frame: an ASC's date and number base, a TRC's version and columns). A PEAK TRC
line python-can declines with a warning is counted the same way, without the per-line warning.

Binary logs have no lines to skip: a BLF or MF4 that breaks off is read up to the break and then refused
with `LogFormatError`, saying how many frames came before it. asammdf, failing on a corrupt file, leaves a
half-built object whose finaliser prints a traceback; that is swallowed here (`_asammdf_finalisers_quiet`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import can
from can.io.generic import MessageReader

from agent.logformats import LogFormatError, MalformedLines
from agent.records import Frame, frame_from_message

# name, reader, reader options
# a reader class is called with a line iterable (python-can takes any object that iterates over lines)
TEXT_FORMATS: Final[dict[str, tuple[str, Callable[..., Iterable[can.Message]], dict[str, Any]]]] = {
    # relative_timestamp=False: an .asc keeps the absolute times of its "date" header
    ".asc": ("Vector ASC", can.ASCReader, {"relative_timestamp": False}),
    ".trc": ("PEAK TRC", can.TRCReader, {}),
    ".csv": ("python-can CSV", can.CSVReader, {}),
}
PYCAN_CSV_HEADER = "timestamp,arbitration_id,extended,remote,error,dlc,data"
MF4_EXTRA_HINT = "pip install 'voltgate[mf4]'"

# What python-can's text parsers raise on a line they cannot read (int(), split-unpacking, indexing).
_LINE_ERRORS = (ValueError, IndexError, KeyError, TypeError)
_END = object()


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class _LineFeed:
    """The lines a python-can text reader iterates over, numbered as in the file; after `replay(header)`
    the next reader gets the header lines again, then the file's lines after the last one handed out."""

    def __init__(self, text: TextIO) -> None:
        self._text = text
        self.number = 0  # line number (from 1) of the last line of the file handed out
        self._again: deque[str] = deque()
        self._kept: list[str] | None = []  # the lines handed out, until the first frame

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        if self._again:
            return self._again.popleft()
        line = next(self._text)
        self.number += 1
        if self._kept is not None:
            self._kept.append(line)
        return line

    def header(self) -> list[str]:
        """At the first frame: the lines before the one it came from; stops keeping lines."""
        kept, self._kept = self._kept or [], None
        return kept[:-1]

    def replay(self, header: list[str]) -> None:
        self._again.extend(header)

    def close(self) -> None:
        """A reader's `stop()`; the file itself is closed by its owner."""


class _TrcWarnings(logging.Filter):
    """python-can's TRC reader logs a warning per line it cannot parse and goes on; in a thread reading a
    log here, such a warning is a malformed line of that log instead."""

    def __init__(self) -> None:
        super().__init__()
        self.current = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        target: tuple[_LineFeed, MalformedLines] | None = getattr(self.current, "target", None)
        if target is None or record.levelno < logging.WARNING:
            return True
        feed, malformed = target
        malformed.skip(feed.number, record.getMessage())
        return False


_TRC_WARNINGS = _TrcWarnings()
logging.getLogger("can.io.trc").addFilter(_TRC_WARNINGS)


def text_frames(path: Path, text: TextIO, bus: str, malformed: MalformedLines) -> Iterator[Frame]:
    """The frames of an .asc, .trc or python-can .csv log opened as `text` (its owner closes it); each
    malformed line is skipped and counted. `LogFormatError` if the reader fails before any frame (a header
    it cannot read)."""
    format_name, reader_class, options = TEXT_FORMATS[path.suffix.lower()]
    feed = _LineFeed(text)
    header: list[str] | None = None
    routed = _TRC_WARNINGS.current if reader_class is can.TRCReader else None  # per thread: see _TrcWarnings
    while True:
        messages = iter(reader_class(feed, **options))
        try:
            while True:
                if routed is None:
                    message = next(messages, _END)
                else:
                    routed.target = (feed, malformed)
                    try:
                        message = next(messages, _END)
                    finally:
                        routed.target = None
                if message is _END:
                    return
                assert isinstance(message, can.Message)
                if header is None:
                    header = feed.header()
                yield frame_from_message(bus, message)
        except _LINE_ERRORS as err:
            if header is None:
                raise LogFormatError(
                    f"{path} is not a readable {format_name} log: line {feed.number} fails before any "
                    f"frame ({_why(err)})"
                ) from None
            malformed.skip(feed.number, _why(err))
            feed.replay(header)


def open_blf(path: Path) -> MessageReader:
    """A Vector BLF reader; `LogFormatError` if the file is not one."""
    try:
        return can.BLFReader(path)
    except OSError:
        raise
    except Exception as err:  # struct, zlib or python-can's own parse errors: all mean "not a BLF"
        raise LogFormatError(f"{path} is not a readable Vector BLF log ({_why(err)})") from None


def open_mf4(path: Path) -> MessageReader:
    """python-can's MF4Reader on an MDF4 bus log (CANedge, Vector, python-can's MF4Writer); `LogFormatError`
    without asammdf and for a file that is not an MDF4 or is cut short."""
    try:
        import asammdf  # noqa: F401  # what python-can's MF4Reader reads with; not in the gateway's install
    except ImportError:
        raise LogFormatError(
            f"{path}: MF4 needs the optional extra: {MF4_EXTRA_HINT} (asammdf), or convert the log "
            "to .asc or .blf first"
        ) from None
    failure: str | None = None
    with _asammdf_finalisers_quiet():
        try:
            return can.MF4Reader(path)
        except OSError:
            raise
        except Exception as err:  # asammdf raises MdfException, ValueError, struct errors...: all "corrupt"
            failure = _why(err)
        gc.collect()  # finalise the half-built MDF4 while its traceback is swallowed
    raise LogFormatError(
        f"{path} is not a readable MF4 log, truncated or corrupt ({failure}); copy it again from the logger"
    )


def binary_frames(path: Path, bus: str, reader: MessageReader, format_name: str) -> Iterator[Frame]:
    """The frames of an opened BLF or MF4 reader (its owner stops it); `LogFormatError` after the frames
    before a break in the file, and for a BLF shorter than its header declares."""
    count = 0
    try:
        for message in reader:
            yield frame_from_message(bus, message)
            count += 1
    except Exception as err:  # whatever the parser meets in a damaged file
        raise LogFormatError(
            f"{path} is a corrupt {format_name} log: it breaks off after {count} frames ({_why(err)}); "
            "copy it again from the logger"
        ) from None
    declared = getattr(reader, "file_size", None)  # a BLF header's own size; a cut copy has less
    size = path.stat().st_size
    if isinstance(declared, int) and declared > size:
        raise LogFormatError(
            f"{path} is a truncated {format_name} log ({size} of the {declared} bytes its header "
            f"declares): the {count} frames before the cut were read; copy it again from the logger"
        )


@contextlib.contextmanager
def _asammdf_finalisers_quiet() -> Iterator[None]:
    """asammdf's MDF4.__del__ fails on an object whose __init__ failed, and Python prints that as an
    "Exception ignored" traceback; drop those, pass every other unraisable exception on."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if str(getattr(unraisable.object, "__module__", "")).startswith("asammdf"):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
