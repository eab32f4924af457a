"""Recorded CAN logs → `Frame`s: the one place the agent opens a recorded log, for the replay source and
`voltgate-agent decode`.

`FrameLog` picks the format by the file's extension (and, for .csv, by its header line):

| extension | format | read by |
|---|---|---|
| .log | `candump -L` (can-utils; what the simulator records) | `agent.logformats.candump` |
| .csv | SavvyCAN/GVRET (`Time Stamp,ID,Extended,...`) | `agent.logformats.savvycan` |
| .csv | python-can's CSV (`timestamp,arbitration_id,...`) | python-can |
| .asc, .trc | Vector ASC, PEAK TRC | python-can |
| .blf | Vector BLF | python-can |
| .mf4 | ASAM MDF4 bus log (CSS Electronics CANedge, Vector) | python-can's MF4Reader + asammdf, extra `mf4` |

A log that cannot be read raises `LogFormatError`: one sentence naming the file, the format and what to
install or convert — an unknown extension, a CSV of another dialect, an MF4 without asammdf installed, a
compressed or encrypted CANedge file, a truncated or corrupt file (after the frames before the damage). A
malformed line of a text log costs that line only: it is skipped and counted (`malformed_lines`), the first
one is logged when met and the total once at the end. A log that yields no frame at all is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TextIO

from can.io.generic import MessageReader

from agent.logformats import LogFormatError, MalformedLines, candump, pycan, savvycan
from agent.records import Frame

__all__ = ["READABLE", "FrameLog", "LogFormatError"]

READABLE: Final = (
    ".log (candump -L), .csv (SavvyCAN/GVRET or python-can), .asc (Vector), .trc (PEAK), .blf (Vector) "
    "and .mf4 (ASAM MDF4, e.g. CANedge)"
)
_CANEDGE_PACKED: Final = {".mfc": "compressed", ".mfe": "encrypted", ".mfm": "compressed and encrypted"}


class FrameLog:
    """The frames of one recorded log, in file order; iterate once, then `close()` (or use `with`).
    Raises `LogFormatError` (a `ValueError`) for a log it cannot read, `OSError` for a file it cannot open."""

    def __init__(self, path: Path, bus: str, ignores: Callable[[str], bool] | None = None) -> None:
        """`ignores`: for a candump log, the ids whose frames after the first are read no further
        (`agent.logformats.candump`)."""
        self.path = path
        self.bus = bus
        self._ignores = ignores
        self._reader: MessageReader | None = None
        self._malformed_lines: MalformedLines | None = None  # for a text log
        self._text: TextIO | None = None
        suffix = path.suffix.lower()
        self._frames: Iterator[Frame]
        if suffix == ".log":
            self.format_name = candump.FORMAT_NAME
            self._frames = self._candump()
        elif suffix == ".csv":
            self._frames = self._csv()
        elif suffix in pycan.TEXT_FORMATS:
            self.format_name = pycan.TEXT_FORMATS[suffix][0]
            self._frames = pycan.text_frames(path, self._open_text(), bus, self._malformed())
        elif suffix == ".blf":
            self.format_name = "Vector BLF"
            self._reader = pycan.open_blf(path)
            self._frames = pycan.binary_frames(path, bus, self._reader, self.format_name)
        elif suffix == ".mf4":
            self.format_name = "MF4"
            self._reader = pycan.open_mf4(path)
            self._frames = pycan.binary_frames(path, bus, self._reader, self.format_name)
        elif suffix in _CANEDGE_PACKED:
            raise LogFormatError(
                f"{path} is a {_CANEDGE_PACKED[suffix]} CANedge log: turn it into a plain .MF4 first with "
                "CSS Electronics' MF4 converters (mdf2finalized), then read that"
            )
        else:
            raise LogFormatError(
                f"{path}: unknown log format {path.suffix or '(no extension)'!r}; voltgate reads {READABLE} "
                "— convert the log to one of these (e.g. with SavvyCAN or python -m can.logconvert)"
            )

    @property
    def malformed_lines(self) -> int:
        """Lines of a text log skipped so far because they did not parse."""
        return 0 if self._malformed_lines is None else self._malformed_lines.count

    def _malformed(self) -> MalformedLines:
        self._malformed_lines = MalformedLines(self.path, self.format_name)
        return self._malformed_lines

    def _open_text(self) -> TextIO:
        """The log as text, open now (a missing file fails here); a byte that is not text spoils its line
        alone (it parses as nothing), not the file."""
        self._text = self.path.open(encoding="utf-8", errors="replace")
        return self._text

    def _candump(self) -> Iterator[Frame]:
        return candump.candump_frames(self.bus, self._open_text(), self._malformed(), self._ignores)

    def _csv(self) -> Iterator[Frame]:
        """Choose the dialect by the header line, now; read the rows when iterated."""
        text = self._open_text()
        header = text.readline().strip()
        columns = savvycan.savvycan_columns(header)
        if columns is not None:
            self.format_name = savvycan.FORMAT_NAME
            return savvycan.savvycan_frames(self.bus, columns, text, self._malformed())
        if header.replace(" ", "").lower().startswith(pycan.PYCAN_CSV_HEADER):
            self.format_name = pycan.TEXT_FORMATS[".csv"][0]
            text.seek(0)  # python-can's reader skips the header itself
            return pycan.text_frames(self.path, text, self.bus, self._malformed())
        text.close()
        shown = header if len(header) <= 80 else header[:77] + "..."
        raise LogFormatError(
            f"{self.path} is a CSV of an unknown dialect (header {shown!r}); voltgate reads SavvyCAN/GVRET's "
            f"({savvycan.HEADER}) and python-can's ({pycan.PYCAN_CSV_HEADER}) — export or convert the log "
            "to one of them"
        )

    def __iter__(self) -> Iterator[Frame]:
        any_frame = False
        for frame in self._frames:
            any_frame = True
            yield frame
        malformed = self._malformed_lines
        if not any_frame:
            if malformed is not None and malformed.count:
                raise malformed.none_readable()
            raise LogFormatError(
                f"{self.path} holds no CAN frames read as a {self.format_name} log: it is empty, or in "
                f"another format under this extension (voltgate reads {READABLE})"
            )
        if malformed is not None:
            malformed.report()

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    def __enter__(self) -> FrameLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
