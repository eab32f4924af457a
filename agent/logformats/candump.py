"""`candump -L` logs (.log), read line by line into `Frame`s without a python-can `Message` per line (a third
of the agent's cost per frame when replaying).

`candump_frame` yields what python-can's `CanutilsLogReader` would for a line (same timestamps, ids, extended
flag by id width, data, error and remote frames) and raises `ValueError` on a malformed one; `candump_frames`
skips such a line alone, counted in its `MalformedLines`.

Given `ignores` (the decoder's `Decoder.ignores`), `candump_frames` reads a plain data line of an id it
ignores no further than the id text and yields `UNKNOWN_ID_FRAME` in its place: on a full bus most frames
are other controllers' (bench/bus_mix.py), and their timestamp and payload are never used. The first frame
of each such id comes whole, so the decoder logs and counts it as it would; such a line with a damaged
timestamp or payload then counts as an unknown id, not as a malformed line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from agent.logformats import MalformedLines
from agent.records import UNKNOWN_ID_FRAME, Frame

FORMAT_NAME = "candump -L"

_CAN_ERR_FLAG = 0x20000000
_CAN_ERR_BUSERROR = 0x00000080
_ID_MASK = 0x1FFFFFFF
_DIRECTIONS = frozenset(("R", "T", "r", "t"))
_NOT_DATA = frozenset(("#", "R", "r"))  # CAN FD, remote frames: `candump_frame`
MAX_ID_VERDICTS = 4096  # id texts whose `ignores` verdict is kept; beyond, lines are read whole


def candump_frame(bus: str, line: str) -> Frame | None:
    """One line of `candump -L` output, `(1700000000.123456) can0 18FEF100#0102030405060708 [R|T]`;
    None for a blank line."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) == 4 and fields[3] in ("R", "T", "r", "t"):
        del fields[3]  # direction (python-can writes it; candump does not)
    if len(fields) != 3:
        raise ValueError(f"{len(fields)} fields where candump writes 3")
    stamp, _interface, frame_text = fields
    if stamp[0] != "(" or stamp[-1] != ")":
        raise ValueError(f"not a candump timestamp: {stamp!r}")
    ts = float(stamp[1:-1])
    id_text, hash_mark, payload = frame_text.partition("#")
    if not hash_mark:
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


def candump_frames(
    bus: str,
    lines: Iterable[str],
    malformed: MalformedLines,
    ignores: Callable[[str], bool] | None = None,
) -> Iterator[Frame]:
    """The frames of a candump log's lines, in order; a malformed line is skipped and counted. With
    `ignores` (id text → whether its frames need not be read), `UNKNOWN_ID_FRAME` for those frames after
    the first of their id (see the module docstring).

    A plain data frame (the bulk of a log) is parsed inline here; anything else (error, remote and CAN FD
    frames, blank or odd lines) goes through `candump_frame`, which also words the error of a bad line."""
    new = tuple.__new__  # what `Frame._make` calls, without its Python frame (a third of a line's cost)
    verdicts: dict[str, bool] = {}  # id text → ignored (after its first frame)
    for number, line in enumerate(lines, 1):
        fields = line.split()
        count = len(fields)
        if count == 3 or (count == 4 and fields[3] in _DIRECTIONS):
            stamp = fields[0]
            id_text, hash_mark, payload = fields[2].partition("#")
            if hash_mark and stamp[:1] == "(" and stamp[-1:] == ")" and payload[:1] not in _NOT_DATA:
                if ignores is not None:
                    ignored = verdicts.get(id_text)
                    if ignored:
                        yield UNKNOWN_ID_FRAME
                        continue
                    if ignored is None and len(verdicts) < MAX_ID_VERDICTS:
                        verdicts[id_text] = ignores(id_text)  # this first frame is read whole
                try:
                    can_id = int(id_text, 16)
                    if not can_id & _CAN_ERR_FLAG:
                        ts, data = float(stamp[1:-1]), bytes.fromhex(payload)
                        yield new(Frame, (bus, ts, can_id & _ID_MASK, len(id_text) > 3, data, False, False))
                        continue
                except ValueError:
                    pass  # worded by `candump_frame` below
        try:
            frame = candump_frame(bus, line)
        except ValueError as err:
            malformed.skip(number, str(err))
            continue
        if frame is not None:
            yield frame
