"""J1939 beyond single frames, for the decoder of one bus: transport-protocol reassembly and DM1 state.

The agent only listens. It reassembles what it sees of a multi-packet parameter group (SAE J1939-21 §5.10):

* BAM (broadcast): TP.CM (PGN 0xEC00) with control byte 32 announces size, packet count and PGN to the
  global address; TP.DT (PGN 0xEB00) packets 1..N follow, 7 data bytes each after the sequence number.
* Connection mode: RTS (control byte 16) from the originator, CTS (17) from the responder granting a window
  of packets from a given number (0 packets: hold), the same TP.DT packets, End of Message Ack (19), or
  Connection Abort (255) from either side.

Sessions are keyed by (source, destination) as the standard keys them (one BAM per sender, one connection
per sender and destination at a time). A session ends when its last packet arrives (the payload, cut to the
announced size, goes on), or is dropped and counted: a missing, repeated or extra packet (`tp_sequence`), an
announcement whose size and packet count disagree or fall outside 9..1785 bytes (`tp_bad_announce`), an
abort or a new announcement over an unfinished one (`tp_aborted`), silence beyond the J1939-21 §5.10.2.4
timeouts (`tp_timeout`), or more sessions at once than `MAX_SESSIONS` (`tp_overflow`). A data packet no
session expects (the agent started mid-transfer, or its session was dropped) is `tp_orphan`.

Timeouts (J1939-21 §5.10.2.4), judged on the frames' own timestamps: T1 = 750 ms between data packets
(and from a BAM to its first packet), T2 = 1250 ms from a CTS to its data, T3 = 1250 ms from the last packet
of a window (or the RTS) to the next CTS, T4 = 1050 ms after a CTS that holds the connection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from agent.records import Frame
from protocols.catalog import SignalSpec
from protocols.j1939 import GLOBAL_ADDRESS, PGN_DM1, PGN_TP_CM, PGN_TP_DT, Dm1, split_id

T1_S: Final = 0.750
T2_S: Final = 1.250
T3_S: Final = 1.250
T4_S: Final = 1.050
MIN_TP_BYTES: Final = 9  # J1939-21 §5.10: 9..1785 bytes (255 packets of 7)
MAX_TP_BYTES: Final = 1785
MAX_SESSIONS: Final = 64  # concurrent sessions kept per bus; a real bus has a handful

_BAM: Final = 32
_RTS: Final = 16
_CTS: Final = 17
_EOM_ACK: Final = 19
_ABORT: Final = 255


class TransportProblem(StrEnum):
    TIMEOUT = "tp_timeout"
    SEQUENCE = "tp_sequence"
    BAD_ANNOUNCE = "tp_bad_announce"
    ABORTED = "tp_aborted"
    ORPHAN = "tp_orphan"
    OVERFLOW = "tp_overflow"


@dataclass(frozen=True, slots=True)
class Group:
    """One complete parameter group: a single frame's or a reassembled session's payload."""

    ts: float  # the frame that completed it
    pgn: int
    source: int
    data: bytes


@dataclass(slots=True)
class _Session:
    pgn: int
    size: int
    packets: int
    last_ts: float
    timeout_s: float
    next_seq: int = 1
    window_end: int = 0  # connection mode: the last packet the latest CTS granted (0: none yet)
    data: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class Offered:
    """What one TP or DM1 frame did: complete groups, and problems to count."""

    groups: list[Group] = field(default_factory=list)
    problems: list[TransportProblem] = field(default_factory=list)


class TransportReassembler:
    """BAM and connection-mode sessions of one bus; pure apart from its own state (no clock of its own)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[int, int], _Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def offer(self, ts: float, pgn: int, source: int, destination: int, data: bytes, out: Offered) -> None:
        """One TP.CM or TP.DT frame (`pgn` says which)."""
        self._expire(ts, out)
        if pgn == PGN_TP_CM:
            self._control(ts, source, destination, data, out)
        else:
            self._data(ts, (source, destination), data, out)

    def _expire(self, ts: float, out: Offered) -> None:
        expired = [key for key, s in self._sessions.items() if abs(ts - s.last_ts) > s.timeout_s]
        for key in expired:
            del self._sessions[key]
            out.problems.append(TransportProblem.TIMEOUT)

    def _control(self, ts: float, source: int, destination: int, data: bytes, out: Offered) -> None:
        if len(data) < 8:
            out.problems.append(TransportProblem.BAD_ANNOUNCE)
            return
        control, pgn = data[0], data[5] | (data[6] << 8) | (data[7] << 16)
        if control in (_BAM, _RTS):
            self._announce(ts, control, source, destination, data, pgn, out)
        elif control == _CTS:  # from the responder: the session is (destination, source)
            self._grant(ts, self._sessions.get((destination, source)), (destination, source), data, out)
        elif control in (_EOM_ACK, _ABORT):
            for key in ((source, destination), (destination, source)):
                session = self._sessions.pop(key, None)
                if session is not None:  # an ack of a session still open: we missed packets
                    out.problems.append(
                        TransportProblem.ABORTED if control == _ABORT else TransportProblem.SEQUENCE
                    )
        else:
            out.problems.append(TransportProblem.BAD_ANNOUNCE)

    def _announce(
        self, ts: float, control: int, source: int, destination: int, data: bytes, pgn: int, out: Offered
    ) -> None:
        size, packets = data[1] | (data[2] << 8), data[3]
        broadcast = control == _BAM
        if (
            not MIN_TP_BYTES <= size <= MAX_TP_BYTES
            or packets != math.ceil(size / 7)
            or broadcast != (destination == GLOBAL_ADDRESS)
        ):
            out.problems.append(TransportProblem.BAD_ANNOUNCE)
            return
        key = (source, destination)
        if self._sessions.pop(key, None) is not None:
            out.problems.append(TransportProblem.ABORTED)
        elif len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].last_ts)
            del self._sessions[oldest]
            out.problems.append(TransportProblem.OVERFLOW)
        timeout_s = T1_S if broadcast else T3_S
        self._sessions[key] = _Session(
            pgn, size, packets, ts, timeout_s, window_end=packets if broadcast else 0
        )

    def _grant(
        self, ts: float, session: _Session | None, key: tuple[int, int], data: bytes, out: Offered
    ) -> None:
        if session is None:
            return  # a CTS of a connection we never saw open: nothing to follow
        count, first = data[1], data[2]
        if count == 0:  # hold the connection open
            session.last_ts, session.timeout_s = ts, T4_S
            return
        if first < 1 or first > session.next_seq or first + count - 1 > session.packets:
            del self._sessions[key]
            out.problems.append(TransportProblem.SEQUENCE)
            return
        if first < session.next_seq:  # the responder asks again for packets it lost
            del session.data[(first - 1) * 7 :]
            session.next_seq = first
        session.window_end = first + count - 1
        session.last_ts, session.timeout_s = ts, T2_S

    def _data(self, ts: float, key: tuple[int, int], data: bytes, out: Offered) -> None:
        session = self._sessions.get(key)
        if session is None:
            out.problems.append(TransportProblem.ORPHAN)
            return
        if not data or data[0] != session.next_seq:  # in order, with or without a CTS seen
            del self._sessions[key]
            out.problems.append(TransportProblem.SEQUENCE)
            return
        session.data += data[1:8]
        session.next_seq += 1
        session.last_ts = ts
        if session.next_seq > session.packets:
            del self._sessions[key]
            if len(session.data) < session.size:  # short data packets
                out.problems.append(TransportProblem.SEQUENCE)
                return
            out.groups.append(Group(ts, session.pgn, key[0], bytes(session.data[: session.size])))
        else:
            session.timeout_s = T1_S if session.next_seq <= session.window_end else T3_S


class J1939Layer:
    """The frames of one bus that no DBC plan matched but J1939 explains: transport sessions and DM1."""

    def __init__(self, dm1_specs: Sequence[SignalSpec]) -> None:
        self.transport = TransportReassembler()
        self.dm1_specs = tuple(dm1_specs)
        self._dm1: dict[int, Dm1] = {}  # source address → its latest DM1

    def offer(self, frame: Frame) -> Offered | None:
        """None when `frame` is neither a transport frame nor a single-frame DM1."""
        j1939 = split_id(frame.arbitration_id)
        out = Offered()
        if j1939.pgn in (PGN_TP_CM, PGN_TP_DT):
            self.transport.offer(frame.ts, j1939.pgn, j1939.source, j1939.destination, frame.data, out)
        elif j1939.pgn == PGN_DM1:
            out.groups.append(Group(frame.ts, PGN_DM1, j1939.source, frame.data))
        else:
            return None
        return out

    def dm1_values(self, source: int, dm1: Dm1) -> list[tuple[SignalSpec, float]]:
        """Keep `dm1` as `source`'s latest; the catalog's DM1 values it changes: its own (entries pinned
        to `source`) and the bus-wide ones (entries without a source: DTCs of all ECUs, a lamp on when
        any ECU's is on; an ECU's DM1 counts until its next one)."""
        self._dm1[source] = dm1
        values: list[tuple[SignalSpec, float]] = []
        for spec in self.dm1_specs:
            if spec.source_address is None:
                values.append((spec, _dm1_value(spec.dm1_field, self._dm1.values())))
            elif spec.source_address == source:
                values.append((spec, _dm1_value(spec.dm1_field, (dm1,))))
        return values


def _dm1_value(dm1_field: str, reports: Iterable[Dm1]) -> float:
    """A DM1 field over one or more ECUs' reports; a lamp with no ECU saying off or on is NaN (skipped)."""
    reports = list(reports)
    if dm1_field == "active_dtc_count":
        return float(sum(len(dm1.dtcs) for dm1 in reports))
    states = [getattr(dm1, dm1_field) for dm1 in reports]
    known = [state for state in states if state in (0, 1)]  # 2 reserved, 3 not available (J1939-73)
    return float(max(known)) if known else math.nan
