"""Recorded CAN logs → `Frame`s: what the replay source plays and what `voltgate-agent decode` decodes.

Every format python-can's `LogReader` reads (.asc, .blf, .csv, .trc, .mf4, ...) goes through it and
`frame_from_message`. A `candump -L` log (.log) — what a fleet engineer pulls off a gateway, and what
the simulator records — is read here directly, line by line into `Frame`s, without a python-can
`Message` per line: a third of the agent's cost per frame when replaying. It yields the frames python-can's
`CanutilsLogReader` would (same timestamps, ids, extended flag by id width, data, error and remote
frames), and raises `ValueError` on a malformed line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import can
from can.io.generic import MessageReader

from agent.records import Frame, frame_from_message

_CAN_ERR_FLAG = 0x20000000
_CAN_ERR_BUSERROR = 0x00000080
_ID_MASK = 0x1FFFFFFF


def candump_frame(bus: str, line: str) -> Frame | None:
    """One line of `candump -L` output, `(1700000000.123456) can0 18FEF100#0102030405060708 [R|T]`;
    None for a blank line."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) == 4 and fields[3] in ("R", "T", "r", "t"):
        del fields[3]  # direction (python-can writes it; candump does not)
    stamp, _interface, frame_text = fields  # ValueError on anything else, as python-can
    if stamp[0] != "(" or stamp[-1] != ")":
        raise ValueError(f"not a candump timestamp: {stamp!r}")
    ts = float(stamp[1:-1])
    id_text, _, payload = frame_text.partition("#")
    if not _:
        raise ValueError(f"no '#' in candump frame {frame_text!r}")
    can_id = int(id_text, 16)
    if can_id & _CAN_ERR_FLAG and can_id & _CAN_ERR_BUSERROR:
        return Frame(bus, ts, 0, True, b"", is_error=True)  # as python-can: an error frame, nothing else
    if payload[:1] == "#":
        payload = payload[2:]  # CAN FD: "##<flags><data>"
    if payload[:1] in ("R", "r"):
        return Frame(bus, ts, can_id & _ID_MASK, len(id_text) > 3, b"", is_remote=True)
    if len(payload) % 2:
        raise ValueError(f"odd number of hex digits in candump data {payload!r}")
    return Frame(bus, ts, can_id & _ID_MASK, len(id_text) > 3, bytes.fromhex(payload))


class FrameLog:
    """The frames of one recorded log, in file order; iterate once, then `close()` (or use `with`).
    Raises `OSError`/`ValueError` (and whatever python-can raises for its formats) on unreadable input."""

    def __init__(self, path: Path, bus: str) -> None:
        self.path = path
        self.bus = bus
        self._text: TextIO | None = None
        self._reader: MessageReader | None = None
        if path.suffix.lower() == ".log":
            self._text = path.open(encoding="ascii", errors="strict")
        else:
            # relative_timestamp=False: an .asc keeps the absolute times of its "date" header
            self._reader = can.LogReader(path, relative_timestamp=False)

    def __iter__(self) -> Iterator[Frame]:
        bus = self.bus
        if self._text is not None:
            for line in self._text:
                frame = candump_frame(bus, line)
                if frame is not None:
                    yield frame
        elif self._reader is not None:
            for message in self._reader:
                yield frame_from_message(bus, message)

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        if self._reader is not None:
            self._reader.stop()

    def __enter__(self) -> FrameLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
