"""The pure core of the receiver: one MQTT message in, one thing to store out.

`ingest_message(topic, payload, received_at, limits)` never raises: a well-formed batch becomes a
`BatchMessage`, a status becomes a `StatusMessage`, and anything wrong — a topic outside the
scheme, a payload the wire format rejects, a vehicle id that disagrees with the topic, timestamps
outside the plausibility window, an oversized payload — becomes a `DeadLetter` carrying the reason
and the raw bytes. The stream goes on; nothing here touches the network or the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Self

import numpy as np
import numpy.typing as npt

from cloud.settings import IngestSettings
from protocols.errors import TopicError, WireError
from protocols.topics import TopicKind, parse_topic
from protocols.wire import Batch, ColumnarBatch, SampleColumns, decode_columnar_batch, decode_status

_MAX_REASON_CHARS: Final = 500


@dataclass(frozen=True, slots=True)
class BatchMessage:
    """A decoded telemetry or alert batch whose vehicle id matches its topic."""

    topic: str
    fleet: str
    kind: TopicKind
    batch: ColumnarBatch
    received_at: datetime
    payload_bytes: int

    @classmethod
    def of(
        cls, topic: str, fleet: str, kind: TopicKind, batch: Batch, received_at: datetime, payload_bytes: int
    ) -> Self:
        """From a batch of sample records (as tests and tools build them)."""
        return cls(topic, fleet, kind, ColumnarBatch.of(batch), received_at, payload_bytes)

    @property
    def samples(self) -> SampleColumns:
        return self.batch.samples

    @property
    def vehicle_id(self) -> str:
        return self.batch.vehicle_id

    def handled_seqs(self) -> npt.NDArray[np.int64]:
        """Every sequence number this message carried that the cloud is done with once it commits:
        the records stored (or already stored) and those refused one by one. The commit
        acknowledgement tells the bus these (sorted, unique)."""
        derived = [r.seq for r in self.batch.predictions] + [r.seq for r in self.batch.alerts]
        return np.unique(np.concatenate([self.samples.seq, np.array(derived, dtype=np.int64)]))

    def seq_range(self) -> tuple[int, int] | None:
        seqs = [r.seq for r in self.batch.predictions] + [r.seq for r in self.batch.alerts]
        if len(self.samples):
            seqs += [int(self.samples.seq.min()), int(self.samples.seq.max())]
        return (min(seqs), max(seqs)) if seqs else None


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A vehicle's retained status: online with its JSON document, or offline (the last will)."""

    topic: str
    fleet: str
    vehicle_id: str
    online: bool
    document: dict[str, object] | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot be stored as data, kept verbatim with the reason."""

    topic: str
    vehicle_id: str | None  # from the topic when the topic parses
    reason: str
    payload: bytes
    received_at: datetime


Ingested = BatchMessage | StatusMessage | DeadLetter


def ingest_message(topic: str, payload: bytes, received_at: datetime, limits: IngestSettings) -> Ingested:
    """Turn one received message into what the store writes. Never raises."""
    try:
        parts = parse_topic(topic)
    except TopicError as err:
        return _dead(topic, None, f"bad topic: {err}", payload, received_at)
    vehicle = parts.vehicle
    if len(payload) > limits.max_payload_bytes:
        reason = f"payload too large: {len(payload)} bytes > {limits.max_payload_bytes}"
        return _dead(topic, vehicle, reason, payload, received_at)
    if parts.kind is TopicKind.STATUS:
        return _status(topic, parts.fleet, vehicle, payload, received_at)
    if parts.kind not in (TopicKind.TELEMETRY, TopicKind.ALERTS):
        return _dead(topic, vehicle, f"unexpected topic kind {parts.kind.value!r}", payload, received_at)
    try:
        batch = decode_columnar_batch(payload)
    except WireError as err:
        return _dead(topic, vehicle, f"malformed payload: {err}", payload, received_at)
    except Exception as err:  # a decoder bug must not stop the stream; the bytes are kept to replay
        return _dead(topic, vehicle, f"decoder failed: {type(err).__name__}: {err}", payload, received_at)
    if batch.vehicle_id != vehicle:
        reason = f"vehicle id {batch.vehicle_id!r} in payload does not match topic vehicle {vehicle!r}"
        return _dead(topic, vehicle, reason, payload, received_at)
    message = BatchMessage(topic, parts.fleet, parts.kind, batch, received_at, len(payload))
    if _has_nul(message):
        return _dead(topic, vehicle, "text field contains a NUL character", payload, received_at)
    out_of_range = _first_implausible_ts_ms(message, received_at, limits)
    if out_of_range is not None:
        reason = f"timestamp out of range: {out_of_range} ms (received at {received_at.isoformat()})"
        return _dead(topic, vehicle, reason, payload, received_at)
    return message


def _first_implausible_ts_ms(
    message: BatchMessage, received_at: datetime, limits: IngestSettings
) -> int | None:
    earliest_ms = _epoch_ms(received_at - timedelta(days=limits.max_sample_age_days))
    latest_ms = _epoch_ms(received_at + timedelta(seconds=limits.max_future_skew_s))
    stamps = message.samples.ts_ms
    outside = np.flatnonzero((stamps < earliest_ms) | (stamps > latest_ms))
    if outside.size:
        return int(stamps[outside[0]])
    for records in (message.batch.predictions, message.batch.alerts):
        for record in records:
            if not earliest_ms <= record.ts_ms <= latest_ms:
                return record.ts_ms
    return None


def _has_nul(message: BatchMessage) -> bool:
    """PostgreSQL text cannot hold NUL; such a batch would make its whole group fail."""
    batch = message.batch
    texts = list(message.samples.signals)
    texts += [t for p in batch.predictions for t in (p.model, p.model_version, p.output)]
    texts += [t for a in batch.alerts for t in (a.rule, a.severity, a.message)]
    return any("\x00" in t for t in texts)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _status(topic: str, fleet: str, vehicle: str, payload: bytes, received_at: datetime) -> Ingested:
    if not payload:  # a retained status being cleared
        return StatusMessage(topic, fleet, vehicle, False, None, received_at)
    try:
        status = decode_status(payload)
    except WireError as err:
        return _dead(topic, vehicle, f"malformed status: {err}", payload, received_at)
    document: dict[str, object] = {"state": status.state, "ts_ms": status.ts_ms, **status.info}
    if any(isinstance(v, str) and "\x00" in v for v in (*document.values(), *document)):  # jsonb has no NUL
        return _dead(topic, vehicle, "status contains a NUL character", payload, received_at)
    return StatusMessage(topic, fleet, vehicle, status.state == "online", document, received_at)


def _dead(topic: str, vehicle: str | None, reason: str, payload: bytes, received_at: datetime) -> DeadLetter:
    return DeadLetter(topic, vehicle, reason[:_MAX_REASON_CHARS], payload, received_at)
