"""Frozen, slotted records that cross stage boundaries inside the agent.

GPS fixes cross as `protocols.nmea.GpsFix`; what leaves the buffer crosses as the wire records of
`protocols.wire` (SampleRecord, PredictionRecord, AlertRecord), which carry the sequence number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from can import Message

from protocols.catalog import Priority


class Frame(NamedTuple):
    """One CAN frame as the interface delivered it. A named tuple, immutable like the records below: one is
    built per frame on the bus, ~4× faster than a frozen dataclass."""

    bus: str  # configured bus name, e.g. "traction"
    ts: float  # interface timestamp, Unix epoch seconds (not the moment we decoded it)
    arbitration_id: int  # without the extended-id flag
    is_extended: bool
    data: bytes
    is_error: bool = False
    is_remote: bool = False


UNKNOWN_ID_FRAME: Final = Frame("", 0.0, -1, False, b"")
"""In a replay's chunk, stands for a frame of an id its bus's decoder ignores (`Decoder.ignores`), read no
further than its id: the decoder counts it as an unknown id. The first frame of each such id comes whole."""


def frame_from_message(bus: str, message: Message) -> Frame:
    """Narrow a python-can message to our `Frame`; the timestamp is the interface's (or the log's)."""
    return Frame(
        bus=bus,
        ts=float(message.timestamp),
        arbitration_id=int(message.arbitration_id),
        is_extended=bool(message.is_extended_id),
        data=bytes(message.data),
        is_error=bool(message.is_error_frame),
        is_remote=bool(message.is_remote_frame),
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """One kept value of one catalog signal."""

    ts: float  # source timestamp (frame time or GPS fix time), Unix epoch seconds
    signal: str  # canonical catalog name
    value: float
    priority: Priority


@dataclass(frozen=True, slots=True)
class Prediction:
    ts: float
    model: str
    model_version: str
    output: str
    value: float


Severity = Literal["info", "warning", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Alert:
    ts: float
    rule: str
    severity: Severity
    active: bool
    value: float
    message: str
