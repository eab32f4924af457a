"""The downlink payload: what the cloud tells one bus, on `voltgate/v1/{fleet}/{vehicle}/downlink/...`.

Only the receiver publishes under `downlink/` (topics in `protocols.topics`); a bus subscribes to its
own `downlink_filter(fleet, vehicle)`. Every downlink message shares one envelope, so later message
types (desired config, model announcements) travel the same way and an old agent can tell "a type I do
not know yet" (`UnknownDownlinkTypeError`, skipped and counted) from "garbage" (`DownlinkError`).

Layout (version 1)::

    b"VD" | version (1 byte) | msgpack body
    body = [type (int), ts_ms (int), fields (list)]

`ts_ms` is when the cloud produced the message (Unix epoch milliseconds, UTC). Types:

    1  commit acknowledgement   fields = [first_0, last_0, first_1, last_1, ...]
    2  desired configuration    (`protocols.fleet_control`)
    3  model release            (`protocols.fleet_control`)

A commit acknowledgement names sequence numbers of the topic's vehicle that the cloud has stored (or
refused for good, e.g. a record outside the plausibility window: re-sending it would change nothing)
and committed. Each pair is an inclusive range of consecutive seqs; the ranges are sorted, disjoint and
not adjacent (the encoder merges neighbours), at most `MAX_ACK_RANGES` of them, each seq within
`0..MAX_SEQ`. The bus may delete exactly those rows from its buffer. An acknowledgement is published
retained (QoS 1): a bus that reconnects gets the latest one at once; earlier ones it missed are made
up by its re-sends, which the receiver stores as no-ops and acknowledges again.

The decoder trusts nothing: size, magic, version, types, counts, order and bounds are checked, and
every failure is a `DownlinkError` (a `WireError`, like the uplink format's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import msgpack
import numpy as np
import numpy.typing as npt

from protocols.errors import WireError

DOWNLINK_VERSION: Final = 1
MAGIC: Final = b"VD"
HEADER: Final = MAGIC + bytes((DOWNLINK_VERSION,))
MAX_DOWNLINK_BYTES: Final = 5 * 1024 * 1024  # a signed model release (fleet_control.MAX_MODEL_BYTES) fits
MAX_ACK_BYTES: Final = 256 * 1024
MAX_ACK_RANGES: Final = 8_192
MAX_SEQ: Final = 2**53 - 1  # as the uplink format's
MAX_TS_MS: Final = 2**53 - 1

SeqRange = tuple[int, int]  # inclusive: (first, last)


class DownlinkError(WireError):
    """A downlink payload that is malformed, of an unknown version, or out of bounds."""


class UnknownDownlinkTypeError(DownlinkError):
    """A well-formed envelope carrying a message type this code does not know (a newer cloud)."""


class DownlinkType(IntEnum):
    COMMIT_ACK = 1
    DESIRED_CONFIG = 2
    MODEL_RELEASE = 3


@dataclass(frozen=True, slots=True)
class CommitAck:
    """The cloud has stored (or refused for good) and committed these seqs of one vehicle."""

    ts_ms: int
    ranges: tuple[SeqRange, ...]  # sorted, disjoint, non-adjacent, inclusive

    @property
    def seq_count(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    def seqs(self) -> list[int]:
        """Every acknowledged seq, ascending (the caller bounds the ranges first if it must)."""
        return [seq for first, last in self.ranges for seq in range(first, last + 1)]


DownlinkMessage = CommitAck  # a union once there are more types


def ranges_of(seqs: Iterable[int] | npt.NDArray[np.int64]) -> tuple[SeqRange, ...]:
    """Compact seqs (any order, duplicates allowed) into sorted, merged, inclusive ranges."""
    values = ascending_unique(np.fromiter(seqs, dtype=np.int64) if not isinstance(seqs, np.ndarray) else seqs)
    if values.size == 0:
        return ()
    breaks = np.flatnonzero(np.diff(values) != 1)
    firsts = np.concatenate(([values[0]], values[breaks + 1]))
    lasts = np.concatenate((values[breaks], [values[-1]]))
    return tuple((int(f), int(last)) for f, last in zip(firsts, lasts, strict=True))


def ascending_unique(seqs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The distinct seqs, ascending: `np.unique` by sorting (numpy 2's hashing `np.unique` took ~100 µs
    for a message's few hundred seqs, sorting ~7 µs)."""
    values = np.sort(seqs)
    keep = np.ones(len(values), dtype=bool)
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def commit_acks(seqs: Iterable[int] | npt.NDArray[np.int64], ts_ms: int) -> list[CommitAck]:
    """The acknowledgement(s) for `seqs`: one, unless they need more than `MAX_ACK_RANGES` ranges."""
    ranges = ranges_of(seqs)
    return [
        CommitAck(ts_ms, ranges[start : start + MAX_ACK_RANGES])
        for start in range(0, len(ranges), MAX_ACK_RANGES)
    ]


def _check_ranges(ranges: Sequence[SeqRange]) -> None:
    if len(ranges) > MAX_ACK_RANGES:
        raise DownlinkError(f"too many ranges: {len(ranges)} > {MAX_ACK_RANGES}")
    previous_last = -2
    for first, last in ranges:
        if not 0 <= first <= last <= MAX_SEQ:
            raise DownlinkError(f"bad range {first}..{last}: need 0 <= first <= last <= {MAX_SEQ}")
        if first <= previous_last + 1:
            raise DownlinkError(f"range {first}..{last} overlaps, touches or precedes the one before it")
        previous_last = last


def check_int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int:  # bool is not an int here
        raise DownlinkError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise DownlinkError(f"{what} {value} outside {low}..{high}")
    return value


def encode_envelope(kind: DownlinkType, ts_ms: int, fields: object) -> bytes:
    """`HEADER` + msgpack `[kind, ts_ms, fields]`; `DownlinkError` when too large or out of bounds."""
    body: bytes = msgpack.packb(
        [int(kind), check_int(ts_ms, 0, MAX_TS_MS, "ts_ms"), fields], use_bin_type=True
    )
    payload = HEADER + body
    if len(payload) > MAX_DOWNLINK_BYTES:
        raise DownlinkError(f"payload of {len(payload)} bytes > {MAX_DOWNLINK_BYTES}")
    return payload


def decode_envelope(payload: bytes, kinds: tuple[DownlinkType, ...]) -> tuple[DownlinkType, int, object]:
    """Check the envelope and return (type, ts_ms, fields) for one of `kinds`; `UnknownDownlinkTypeError` for
    a well-formed message of another type, `DownlinkError` for anything malformed."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DownlinkError(f"payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if len(data) > MAX_DOWNLINK_BYTES:
        raise DownlinkError(f"payload of {len(data)} bytes > {MAX_DOWNLINK_BYTES}")
    if len(data) < len(HEADER) or data[:2] != MAGIC:
        raise DownlinkError("not a voltgate downlink payload (bad magic)")
    if data[2] != DOWNLINK_VERSION:
        raise DownlinkError(f"unknown downlink version {data[2]}")
    try:
        body = msgpack.unpackb(
            data[len(HEADER) :],
            raw=False,
            strict_map_key=True,
            max_array_len=2 * MAX_ACK_RANGES,
            max_map_len=1024,
            max_str_len=MAX_DOWNLINK_BYTES,
            max_bin_len=MAX_DOWNLINK_BYTES,
        )
    except Exception as err:  # msgpack raises several unrelated types (ExtraData, ValueError, ...)
        raise DownlinkError(f"malformed body: {type(err).__name__}: {err}") from err
    if not isinstance(body, list) or len(body) != 3:
        raise DownlinkError("body must be [type, ts_ms, fields]")
    kind = check_int(body[0], 0, 255, "type")
    ts_ms = check_int(body[1], 0, MAX_TS_MS, "ts_ms")
    if kind not in kinds:
        raise UnknownDownlinkTypeError(
            f"downlink message type {kind} is not one of {[int(k) for k in kinds]}"
        )
    return DownlinkType(kind), ts_ms, body[2]


def message_type(payload: bytes) -> int | None:
    """The type byte of a well-formed envelope's body, without decoding the rest (None: not an envelope)."""
    data = bytes(payload[:8])
    if len(data) < len(HEADER) + 2 or data[:2] != MAGIC or data[2] != DOWNLINK_VERSION or data[3] != 0x93:
        return None  # 0x93: a msgpack array of three
    kind = data[4]
    return kind if kind < 0x80 else None  # a positive fixint


def encode_downlink(message: DownlinkMessage) -> bytes:
    """The payload of `message`; `DownlinkError` for anything the decoder would refuse."""
    for pair in message.ranges:
        if len(pair) != 2 or not all(type(v) is int for v in pair):
            raise DownlinkError(f"a range is a pair of integers, not {pair!r}")
    _check_ranges(message.ranges)
    fields = [seq for pair in message.ranges for seq in pair]
    return encode_envelope(DownlinkType.COMMIT_ACK, message.ts_ms, fields)


def decode_downlink(payload: bytes) -> DownlinkMessage:
    """Parse a commit acknowledgement; `DownlinkError` (or `UnknownDownlinkTypeError`) on anything else."""
    if len(payload) > MAX_ACK_BYTES:
        raise DownlinkError(f"payload of {len(payload)} bytes > {MAX_ACK_BYTES}")
    _, ts_ms, fields = decode_envelope(payload, (DownlinkType.COMMIT_ACK,))
    if not isinstance(fields, list) or len(fields) % 2:
        raise DownlinkError("commit acknowledgement fields must be a list of first/last pairs")
    if len(fields) // 2 > MAX_ACK_RANGES:
        raise DownlinkError(f"too many ranges: {len(fields) // 2} > {MAX_ACK_RANGES}")
    seqs = [check_int(v, 0, MAX_SEQ, "seq") for v in fields]
    ranges = tuple(zip(seqs[0::2], seqs[1::2], strict=True))
    _check_ranges(ranges)
    return CommitAck(ts_ms, ranges)
