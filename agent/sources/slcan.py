"""SLCAN (Lawicel) read line by line, where a malformed line costs that line and never the link.

python-can's `slcan` interface raises on a line it cannot parse (a non-ASCII byte, bad hex, a truncated
frame); the notifier then reports a failed link, the source closes and reopens the port, and every valid
frame in the seconds of backoff is lost. Here python-can still opens the adapter, sets the bitrate and
sends ("S6", "O", "C" are python-can's), but reading goes through a pure core:

* `parse_slcan_line(line)` → `SlcanFrame` or `BadLine(reason)`; pure, never raises.
* `SlcanLineReader.feed(data)` splits the byte stream at CR (and BEL, the adapter's error reply) and
  parses each line. A line that does not parse is searched for a valid frame at its end: a line without
  its CR (garbage, a half-sent frame) glues onto the next one, and the frame after it must survive. The
  frame-type letters t/T/r/R/x are not hex digits, so a valid CAN 2.0 frame's line can only start at its
  letter: the longest suffix that parses exactly is the frame. A line longer than any SLCAN line is
  cut to the last frame letter it holds (counted "overlong" once per stretch).
* `SlcanLineReader.read(data)` is the live path: the same frames and bad lines as `feed`, with the
  bus's filters applied before any frame object is built. The common read, complete lines that are all
  well-formed CAN 2.0 frames, is checked by one regular expression over the whole read and split at CR;
  each line's id field ("t123", "T18FEF100") is looked up in a cache of the filter's verdicts, so a frame
  of an id the catalog does not know costs a slice and a dict lookup and is only counted (`unwanted`).
  A read with anything else in it (a bad line, BEL, a CAN FD frame) goes through `feed`, line by line.
* `TolerantSlcanBus` is python-can's `slcanBus` reading through that reader: `read_chunk(timeout)` reads
  all waiting bytes at once (one select and one read on a tty) and returns the wanted frames and the
  unwanted count (`agent.sources.can` reads it so, in its own thread); `recv` serves the same frames one
  by one. It has no `fileno()`: frames are queued inside it, so a `can.Notifier` must read it in a thread.
  python-can's `can_filters` become the reader's `IdFilter` (same meaning as python-can's).

Every bad line is counted per reason in `SlcanLineStats` (shared by the bus objects of one source across
reconnects, exported as `voltgate_can_serial_lines_rejected{bus,reason}`) and logged once per reason.
An empty line is the adapter's "OK" to a command and is not counted. A frame line may carry SLCAN's
optional 4-hex-digit timestamp (`Z1`); it is accepted and ignored (frames are stamped on receipt, as
python-can does).
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from binascii import a2b_hex
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import can
import serial
from can.interfaces.slcan import slcanBus
from can.typechecking import CanFilter
from can.util import CAN_FD_DLC

from agent import metrics

log = logging.getLogger(__name__)

CR: Final = 0x0D
BEL: Final = 0x07
TIMESTAMP_DIGITS: Final = 4
MAX_LINE_BYTES: Final = 1 + 8 + 1 + 2 * 64 + TIMESTAMP_DIGITS  # "B" + id + dlc + 64 bytes + timestamp
_HEX_DIGITS: Final = re.compile(rb"[0-9a-fA-F]*")
_PRINTABLE: Final = re.compile(rb"[\x20-\x7e]*")
_RESYNC_LETTERS: Final = b"tTrRx"  # frame letters that are not hex digits (see the module docstring)
_STANDARD: Final = frozenset(b"trdb")
_LINE_END: Final = re.compile(rb"[\r\x07]")
# A run of well-formed classic CAN lines, each ended by CR (or an empty line: the adapter's OK). The DLC
# digit fixes the number of data digits; ids in range (11-bit ≤ 7FF, 29-bit ≤ 1FFFFFFF); optional timestamp.
_H: Final = rb"[0-9A-Fa-f]"
_DATA_FOR_DLC: Final = rb"(?:" + rb"|".join(b"%d(?:%s){%d}" % (n, _H, 2 * n) for n in range(9)) + rb")"
_CLASSIC_LINE: Final = (
    rb"(?:t[0-7]" + _H + rb"{2}" + _DATA_FOR_DLC + rb"|T[01]" + _H + rb"{7}" + _DATA_FOR_DLC
    + rb"|r[0-7]" + _H + rb"{2}[0-8]|R[01]" + _H + rb"{7}[0-8])(?:" + _H + rb"{4})?"
)  # fmt: skip
_WELL_FORMED_RUN: Final = re.compile(rb"(?:(?:" + _CLASSIC_LINE + rb")?\r)*", re.ASCII)
READ_BYTES: Final = 65536  # the most one read of the port takes
MAX_CACHED_IDS: Final = 8192  # id fields whose filter verdict is kept; beyond, decided per line
_STANDARD_LETTERS: Final = frozenset(b"tr")


class BadLineReason(StrEnum):
    NOT_ASCII = "not_ascii"  # a byte outside printable ASCII
    UNKNOWN_TYPE = "unknown_type"  # does not start with a frame letter
    BAD_ID = "bad_id"  # identifier not hex or out of range
    BAD_DLC = "bad_dlc"  # length digit not valid for the frame type
    BAD_HEX = "bad_hex"  # data bytes not hex
    BAD_LENGTH = "bad_length"  # truncated, or characters beyond the frame and its timestamp
    OVERLONG = "overlong"  # no line end within MAX_LINE_BYTES
    ADAPTER_ERROR = "adapter_error"  # BEL: the adapter refused a command or reports an error


@dataclass(frozen=True, slots=True)
class SlcanFrame:
    arbitration_id: int
    is_extended: bool
    data: bytes
    is_remote: bool = False
    is_fd: bool = False
    bitrate_switch: bool = False
    dlc: int = 0


@dataclass(frozen=True, slots=True)
class BadLine:
    reason: BadLineReason
    line: bytes


def parse_slcan_line(line: bytes) -> SlcanFrame | BadLine:
    """One SLCAN frame line, without its CR. Pure; never raises."""
    if not line or not _PRINTABLE.fullmatch(line):
        return BadLine(BadLineReason.NOT_ASCII if line else BadLineReason.BAD_LENGTH, line)
    letter = line[0]
    if letter not in b"tTxrRdDbB":
        return BadLine(BadLineReason.UNKNOWN_TYPE, line)
    extended = letter not in _STANDARD
    id_digits = 8 if extended else 3
    if len(line) < 1 + id_digits + 1:
        return BadLine(BadLineReason.BAD_LENGTH, line)
    ident = line[1 : 1 + id_digits]
    if not _is_hex(ident):
        return BadLine(BadLineReason.BAD_ID, line)
    arbitration_id = int(ident, 16)
    if arbitration_id > (0x1FFFFFFF if extended else 0x7FF):
        return BadLine(BadLineReason.BAD_ID, line)
    dlc_char = chr(line[1 + id_digits])
    fd = letter in b"dDbB"
    remote = letter in b"rR"
    if fd:
        if dlc_char not in "0123456789ABCDEFabcdef":
            return BadLine(BadLineReason.BAD_DLC, line)
        dlc = CAN_FD_DLC[int(dlc_char, 16)]
    else:
        if dlc_char not in "012345678":
            return BadLine(BadLineReason.BAD_DLC, line)
        dlc = int(dlc_char)
    payload = line[2 + id_digits :]
    data_digits = 0 if remote else 2 * dlc
    if len(payload) not in (data_digits, data_digits + TIMESTAMP_DIGITS):
        return BadLine(BadLineReason.BAD_LENGTH, line)
    if not _is_hex(payload):
        return BadLine(BadLineReason.BAD_HEX, line)
    return SlcanFrame(
        arbitration_id=arbitration_id,
        is_extended=extended,
        data=bytes.fromhex(payload[:data_digits].decode("ascii")),
        is_remote=remote,
        is_fd=fd,
        bitrate_switch=letter in b"bB",
        dlc=dlc,
    )


def _is_hex(chars: bytes) -> bool:
    return _HEX_DIGITS.fullmatch(chars) is not None


def _resync(line: bytes) -> SlcanFrame | None:
    """The valid frame at the end of a bad line (garbage glued onto it), if there is one."""
    for pos in range(1, len(line)):
        if line[pos] in _RESYNC_LETTERS:
            parsed = parse_slcan_line(line[pos:])
            if isinstance(parsed, SlcanFrame):
                return parsed
    return None


class IdFilter:
    """The ids a bus wants, as python-can filters (`can_id`, `can_mask`, optional `extended`), with
    python-can's meaning: a frame passes when any filter matches it; no filters pass every frame."""

    def __init__(self, filters: Sequence[CanFilter] | None) -> None:
        self.filters: tuple[tuple[int, int, bool | None], ...] | None = (
            None
            if not filters
            else tuple((f["can_id"] & f["can_mask"], f["can_mask"], f.get("extended")) for f in filters)
        )

    def accepts(self, arbitration_id: int, extended: bool) -> bool:
        if self.filters is None:
            return True
        return any(
            arbitration_id & mask == code and (wants is None or wants == extended)
            for code, mask, wants in self.filters
        )


@dataclass(slots=True)
class SlcanChunk:
    """What one read of the port yields on the live path (`SlcanLineReader.read`)."""

    frames: list[SlcanFrame]  # the wanted frames, in stream order
    bad: list[BadLine]
    unwanted: int  # valid frames whose id the filter refuses: counted, never built


class SlcanLineReader:
    """Pure and stateful: bytes in (any chunking), frames and bad lines out, in stream order.

    `feed` parses every line. `read` is the live path: a chunk whose complete lines are all well-formed
    classic CAN frames (the common case, checked by one regular expression over the chunk) is split at CR
    and each frame's id field is looked up in a cache of the filter's verdicts, so a frame of an id the
    bus does not want costs a slice and a dict lookup and no object; any other chunk goes through `feed`
    line by line (a bad line costs only itself, as there).
    """

    def __init__(self, wanted: IdFilter | None = None) -> None:
        self._line = bytearray()
        self._overlong = False  # the current line was already counted "overlong"
        self.wanted = wanted or IdFilter(None)
        # id field ("t123", "T18FEF100", "r123", ...) → None (unwanted) or (id, extended, remote)
        self._verdicts: dict[bytes, tuple[int, bool, bool] | None] = {}

    def want(self, wanted: IdFilter) -> None:
        """Filter by `wanted` from now on."""
        self.wanted = wanted
        self._verdicts = {}

    def read(self, data: bytes) -> SlcanChunk:
        """`feed` with the filter applied: the wanted frames, the bad lines, how many were unwanted."""
        pending = bytes(self._line)
        end = data.rfind(b"\r")
        if (
            self._overlong
            or end < 0
            or BEL in data
            or _WELL_FORMED_RUN.fullmatch(pending + data[: end + 1] if pending else data[: end + 1]) is None
        ):
            return self._read_slowly(data)
        body = pending + data[:end] if pending else data[:end]
        self._line.clear()
        frames: list[SlcanFrame] = []
        unwanted = 0
        verdicts = self._verdicts
        for line in body.split(b"\r"):
            if not line:
                continue  # the adapter's OK
            key = line[:4] if line[0] in _STANDARD_LETTERS else line[:9]
            try:
                verdict = verdicts[key]
            except KeyError:
                verdict = self._verdict(key)
            if verdict is None:
                unwanted += 1
                continue
            arbitration_id, extended, remote = verdict
            dlc = line[len(key)] - 0x30
            frames.append(
                SlcanFrame(
                    arbitration_id,
                    extended,
                    b"" if remote else a2b_hex(line[len(key) + 1 : len(key) + 1 + 2 * dlc]),
                    remote,
                    False,
                    False,
                    dlc,
                )
            )
        tail: list[SlcanFrame | BadLine] = []
        self._extend(data[end + 1 :], tail)  # the start of the next line (overlong: cut and counted)
        return SlcanChunk(frames, [item for item in tail if isinstance(item, BadLine)], unwanted)

    def _verdict(self, key: bytes) -> tuple[int, bool, bool] | None:
        extended = key[0] not in _STANDARD_LETTERS
        arbitration_id = int(key[1:], 16)
        verdict = (
            (arbitration_id, extended, key[0] in b"rR")
            if self.wanted.accepts(arbitration_id, extended)
            else None
        )
        if len(self._verdicts) < MAX_CACHED_IDS:
            self._verdicts[key] = verdict
        return verdict

    def _read_slowly(self, data: bytes) -> SlcanChunk:
        frames: list[SlcanFrame] = []
        bad: list[BadLine] = []
        unwanted = 0
        for item in self.feed(data):
            if isinstance(item, BadLine):
                bad.append(item)
            elif self.wanted.accepts(item.arbitration_id, item.is_extended):
                frames.append(item)
            else:
                unwanted += 1
        return SlcanChunk(frames, bad, unwanted)

    def feed(self, data: bytes) -> list[SlcanFrame | BadLine]:
        out: list[SlcanFrame | BadLine] = []
        pos = 0
        for end in _LINE_END.finditer(data):
            self._extend(data[pos : end.start()], out)
            self._end_line(out, error=data[end.start()] == BEL)
            pos = end.end()
        self._extend(data[pos:], out)
        return out

    def _extend(self, part: bytes, out: list[SlcanFrame | BadLine]) -> None:
        self._line += part
        while len(self._line) > MAX_LINE_BYTES:
            self._cut(out)

    def _end_line(self, out: list[SlcanFrame | BadLine], *, error: bool) -> None:
        line = bytes(self._line)
        self._line.clear()
        overlong, self._overlong = self._overlong, False
        if error:
            out.append(BadLine(BadLineReason.ADAPTER_ERROR, line))
            return
        if not line:
            return  # the adapter's OK
        parsed = parse_slcan_line(line)
        if isinstance(parsed, SlcanFrame):
            out.append(parsed)
            return
        if not overlong:  # the rest of an overlong stretch was counted with it
            out.append(parsed)
        frame = _resync(line)
        if frame is not None:
            out.append(frame)

    def _cut(self, out: list[SlcanFrame | BadLine]) -> None:
        """A line past any SLCAN line's length: keep from its last frame letter (a frame may be
        arriving), drop the rest; count the stretch once."""
        if not self._overlong:
            out.append(BadLine(BadLineReason.OVERLONG, bytes(self._line[:32])))
            self._overlong = True
        keep = max(self._line.rfind(bytes([letter])) for letter in _RESYNC_LETTERS)
        if keep <= 0:
            self._line.clear()
        else:
            del self._line[:keep]


@dataclass
class SlcanLineStats:
    """Bad SLCAN lines of one bus per reason; the first of each reason is logged. Written by the
    notifier's reader thread, read by the metrics exporter (a dict of ints: no torn reads)."""

    bus: str
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, bad: BadLine) -> None:
        with self._lock:
            first = bad.reason.value not in self.rejected
            self.rejected[bad.reason.value] = self.rejected.get(bad.reason.value, 0) + 1
        metrics.CAN_SERIAL_LINES_REJECTED.labels(self.bus, bad.reason.value).inc()
        if first:
            log.warning(
                "CAN bus %s: skipping a malformed SLCAN line (%s: %r); further ones are only counted",
                self.bus,
                bad.reason.value,
                bad.line[:40],
            )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.rejected)


class TolerantSlcanBus(slcanBus):
    """python-can's `slcanBus` (open, bitrate, send, close) reading through `SlcanLineReader`.

    The bus's filters (python-can's `can_filters`) are applied by the reader before any frame object is
    built: `read_chunk` (the live source's reader thread) returns the wanted frames of one read of the
    port and how many were not wanted; `recv` (python-can's API) serves the same frames one by one.
    """

    def __init__(self, channel: str, *, line_stats: SlcanLineStats, **kwargs: Any) -> None:
        self._line_stats = line_stats
        self._reader = SlcanLineReader()
        self._frames: deque[SlcanFrame] = deque()
        super().__init__(channel, **kwargs)

    def _apply_filters(self, filters: Sequence[CanFilter] | None) -> None:
        self._reader.want(IdFilter(filters))

    def fileno(self) -> int:
        # frames are queued here after a read, so "the fd is readable" no longer means "a frame is
        # waiting": the notifier must poll `recv` in its thread instead of watching the fd
        raise NotImplementedError("read in a thread: frames are queued inside the bus")

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if not self._frames:
            self._frames.extend(self.read_chunk(timeout).frames)
        if not self._frames:
            return None, True
        frame = self._frames.popleft()
        message = can.Message(
            arbitration_id=frame.arbitration_id,
            is_extended_id=frame.is_extended,
            timestamp=time.time(),  # SLCAN carries no usable time; stamped on receipt, as python-can does
            is_remote_frame=frame.is_remote,
            is_fd=frame.is_fd,
            bitrate_switch=frame.bitrate_switch,
            dlc=frame.dlc,
            data=frame.data,
        )
        return message, True  # filtered by the reader already

    def read_chunk(self, timeout: float | None) -> SlcanChunk:
        """Wait up to `timeout` for bytes, read all that are waiting, and parse them (bad lines counted)."""
        try:
            data = self._read_waiting(timeout)
        except (serial.SerialException, OSError) as err:
            raise can.CanOperationError(f"Could not read from serial device: {err}") from err
        chunk = self._reader.read(data)
        for bad in chunk.bad:
            self._line_stats.count(bad)
        return chunk

    def _read_waiting(self, timeout: float | None) -> bytes:
        """A serial port with a file descriptor (a tty, a pty) is read with one select and one read of
        all that is waiting (pyserial's `read` adds an ioctl and a select per call); others by pyserial."""
        port = self.serialPortOrig
        fd = getattr(port, "fd", None)
        if isinstance(fd, int) and fd >= 0:
            readable, _, _ = select.select([fd], [], [], timeout)
            if not readable:
                return b""
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:  # pyserial opens the port non-blocking; readiness can be spurious
                return b""
            if not data:  # readable but nothing: pyserial's reading of a vanished device, too
                raise serial.SerialException("the device reports data but returns none (disconnected?)")
            return data
        if port.timeout != timeout:
            port.timeout = timeout
        data = port.read(max(1, port.in_waiting))
        if data and port.in_waiting:
            data += port.read(port.in_waiting)
        return bytes(data)
