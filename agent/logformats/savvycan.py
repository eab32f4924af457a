"""SavvyCAN's native CSV, the GVRET log (.csv), read line by line into `Frame`s.

SavvyCAN (github.com/collin80/SavvyCAN, `framefileio.cpp`, `saveNativeCSVFile`) writes the header
`Time Stamp,ID,Extended,Dir,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8` and rows like
`39747828,000005EB,false,Rx,0,8,E8,45,85,4B,4A,28,36,69,`: the time stamp in integer microseconds, the id in
hex (eight digits), `true`/`false` for an extended id, `Rx`/`Tx`, the bus number, the data length and eight
data columns in hex, padded with `00` past the length, each followed by a comma. Older files (and GVRET
firmware) lack the `Dir` column; other writers prefix the id with `0x`, write `1`/`0` for the flag, or put
more data columns. So columns are found by their header names, not by position, and only the first LEN
data columns are data.

Each row stands alone: a malformed one (a field that does not parse, fewer data columns than its length) is
skipped and counted in the log's `MalformedLines`, and the next row is read as usual. The time stamp is
taken as it is written: SavvyCAN's are microseconds since the Unix epoch when it stamps frames with the
system clock, or since the start of the capture (decoded times then start near 1970).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from agent.logformats import MalformedLines
from agent.records import Frame

FORMAT_NAME = "SavvyCAN/GVRET CSV"
HEADER = "Time Stamp,ID,Extended,Dir,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8"

_MAX_ID = 0x1FFFFFFF
_MAX_LEN = 64  # CAN FD
_FLAGS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class Columns:
    """Where a file's fields are, from its header."""

    time_stamp: int
    arbitration_id: int
    extended: int
    length: int
    first_data: int


def savvycan_columns(header: str) -> Columns | None:
    """The columns of a SavvyCAN/GVRET header line; None if the line is not one."""
    names = [name.strip().upper() for name in header.split(",")]
    try:
        return Columns(
            time_stamp=names.index("TIME STAMP"),
            arbitration_id=names.index("ID"),
            extended=names.index("EXTENDED"),
            length=names.index("LEN"),
            first_data=names.index("D1"),
        )
    except ValueError:
        return None


def savvycan_frame(bus: str, columns: Columns, line: str) -> Frame | None:
    """One data row; None for a blank line; `ValueError` saying what is wrong with a malformed one."""
    fields = line.rstrip("\r\n").split(",")
    if len(fields) == 1 and not fields[0].strip():
        return None
    if not fields[-1].strip():
        fields.pop()  # SavvyCAN ends every row with a comma
    if len(fields) <= max(columns.time_stamp, columns.arbitration_id, columns.extended, columns.length):
        raise ValueError(f"{len(fields)} fields, fewer than the header's")
    time_us = int(fields[columns.time_stamp])
    if time_us < 0:
        raise ValueError(f"negative time stamp {time_us}")
    arbitration_id = int(fields[columns.arbitration_id], 16)  # also takes a "0x" prefix
    if not 0 <= arbitration_id <= _MAX_ID:
        raise ValueError(f"id {fields[columns.arbitration_id].strip()!r} out of range")
    flag = fields[columns.extended].strip().lower()
    if flag not in _FLAGS:
        raise ValueError(f"Extended is {flag!r}, not true/false")
    length = int(fields[columns.length])
    if not 0 <= length <= _MAX_LEN:
        raise ValueError(f"LEN {length} out of 0..{_MAX_LEN}")
    data_fields = fields[columns.first_data : columns.first_data + length]
    if len(data_fields) < length:
        raise ValueError(f"LEN {length} but {len(data_fields)} data columns")
    data = bytes(int(byte, 16) for byte in data_fields)  # ValueError past 0xFF
    # int / int is correctly rounded: the same float as candump's "(seconds.micros)" for the same instant
    return Frame(bus, time_us / 1_000_000, arbitration_id, _FLAGS[flag], data)


def savvycan_frames(
    bus: str, columns: Columns, rows: Iterable[str], malformed: MalformedLines, *, first_row: int = 2
) -> Iterator[Frame]:
    """The frames of the rows after the header, in order; a malformed row is skipped and counted."""
    for number, line in enumerate(rows, first_row):
        try:
            frame = savvycan_frame(bus, columns, line)
        except ValueError as err:
            malformed.skip(number, str(err))
            continue
        if frame is not None:
            yield frame
