"""The pure core of the receiver: one MQTT message in, one thing to store out.

`ingest_message(topic, payload, received_at, limits)` never raises (nor does `ingest_messages`, the
same for a group of messages, their batches decoded together): a well-formed batch becomes a
`BatchMessage`, a status becomes a `StatusMessage`, and a message that cannot be split into records —
a topic outside the scheme, a payload the wire format rejects, a vehicle id that disagrees with the
topic, an oversized payload — becomes a `DeadLetter` carrying the reason and the raw bytes.

The receiver refuses records, not messages. A batch that decodes keeps its good records; each
implausible one is refused on its own, with a `Refusal` reason, and travels in `BatchMessage.refused`:

- a timestamp outside the accepted window, `received_at - max_sample_age_days` to `received_at +
  max_future_skew_s` (a GPS week rollover dates a fix 2007; a bus back after weeks offline is inside it),
- a value that is NaN or ±inf (an alert's NaN is the wire's "no value" and passes),
- a NUL character in a text field (PostgreSQL text cannot hold it).

A refused record is handled all the same: `handled_seqs()` lists it, so the commit acknowledgement tells
the bus to delete it instead of re-sending it forever; the store keeps it as a dead letter with its
reason. The stream goes on; nothing here touches the network or the database.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Self

import numpy as np
import numpy.typing as npt

from cloud.settings import IngestSettings
from protocols.downlink import ascending_unique
from protocols.errors import TopicError, WireError
from protocols.topics import TopicKind, parse_topic
from protocols.wire import (
    AlertRecord,
    Batch,
    ColumnarBatch,
    PredictionRecord,
    SampleColumns,
    decode_columnar_batch,
    decode_columnar_batches,
    decode_status,
)

_MAX_REASON_CHARS: Final = 500


class Refusal(StrEnum):
    """Why one record was refused; also the `reason` label of `voltgate_cloud_records_refused_total`."""

    NUL_IN_TEXT = "nul_in_text"
    TS_TOO_OLD = "ts_too_old"
    TS_IN_FUTURE = "ts_in_future"
    VALUE_NOT_FINITE = "value_not_finite"


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """One record of a batch that is not stored as data (the first reason that applies)."""

    seq: int
    ts_ms: int
    name: str  # the signal of a sample, the output of a prediction, the rule of an alert
    reason: Refusal
    value: float = math.nan  # the record's value (what a refused timestamp stamped)


@dataclass(frozen=True, slots=True)
class BatchMessage:
    """A decoded telemetry or alert batch whose vehicle id matches its topic: its good records in
    `batch`, the implausible ones in `refused` (seq order)."""

    topic: str
    fleet: str
    kind: TopicKind
    batch: ColumnarBatch
    received_at: datetime
    payload_bytes: int
    refused: tuple[RefusedRecord, ...] = ()
    # The message as received (a reference, not a copy): the evidence kept with its refused records.
    payload: bytes = field(default=b"", repr=False)

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
        return ascending_unique(np.concatenate([self.samples.seq, self._other_seqs()]))

    def seq_range(self) -> tuple[int, int] | None:
        """Lowest and highest seq the message carried, refused records included."""
        seqs = self._other_seqs()
        if len(self.samples):
            seqs = np.concatenate([seqs, [self.samples.seq.min(), self.samples.seq.max()]])
        return (int(seqs.min()), int(seqs.max())) if seqs.size else None

    def refused_summary(self) -> str:
        """E.g. "2 of 120 records refused: ts_too_old 1, value_not_finite 1" ('' when none was)."""
        if not self.refused:
            return ""
        batch = self.batch
        carried = len(self.samples) + len(batch.predictions) + len(batch.alerts) + len(self.refused)
        counts = Counter(r.reason.value for r in self.refused)
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
        return f"{len(self.refused)} of {carried} records refused: {by_reason}"

    def _other_seqs(self) -> npt.NDArray[np.int64]:
        seqs = [r.seq for r in self.batch.predictions] + [r.seq for r in self.batch.alerts]
        return np.array(seqs + [r.seq for r in self.refused], dtype=np.int64)


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
    """A message that cannot be stored as data, kept with the reason (the store truncates the payload)."""

    topic: str
    vehicle_id: str | None  # from the topic when the topic parses
    reason: str
    payload: bytes
    received_at: datetime


Ingested = BatchMessage | StatusMessage | DeadLetter


def ingest_message(topic: str, payload: bytes, received_at: datetime, limits: IngestSettings) -> Ingested:
    """Turn one received message into what the store writes. Never raises."""
    screened = _screen(topic, payload, received_at, limits)
    if not isinstance(screened, _Batch):
        return screened
    return screened.outcome(_decode_alone(payload), limits)


def ingest_messages(
    messages: Sequence[tuple[str, bytes, datetime]], limits: IngestSettings
) -> list[Ingested]:
    """`ingest_message` of each (topic, payload, received_at), the same results, with the batches among
    them decoded together (`decode_columnar_batches`: a fraction of the CPU). Never raises."""
    screened = [_screen(topic, payload, received_at, limits) for topic, payload, received_at in messages]
    batches = [item for item in screened if isinstance(item, _Batch)]
    decoded: Sequence[ColumnarBatch | Exception]
    try:
        decoded = decode_columnar_batches([item.payload for item in batches])
    except Exception:  # a decoder bug: each payload alone, so that it costs only the one that provokes it
        decoded = [_decode_alone(item.payload) for item in batches]
    outcomes = iter([item.outcome(batch, limits) for item, batch in zip(batches, decoded, strict=True)])
    return [next(outcomes) if isinstance(item, _Batch) else item for item in screened]


@dataclass(frozen=True, slots=True)
class _Batch:
    """A telemetry or alerts message past its topic and size checks, its payload not yet decoded."""

    topic: str
    fleet: str
    kind: TopicKind
    vehicle: str
    payload: bytes
    received_at: datetime

    def outcome(self, decoded: ColumnarBatch | Exception, limits: IngestSettings) -> Ingested:
        """What the message becomes once `decoded` is its payload's batch, or what decoding it raised."""
        topic, vehicle, payload, received_at = self.topic, self.vehicle, self.payload, self.received_at
        if isinstance(decoded, WireError):
            return _dead(topic, vehicle, f"malformed payload: {decoded}", payload, received_at)
        if isinstance(decoded, Exception):  # a decoder bug must not stop the stream; the bytes are kept
            reason = f"decoder failed: {type(decoded).__name__}: {decoded}"
            return _dead(topic, vehicle, reason, payload, received_at)
        if decoded.vehicle_id != vehicle:
            reason = f"vehicle id {decoded.vehicle_id!r} in payload does not match topic vehicle {vehicle!r}"
            return _dead(topic, vehicle, reason, payload, received_at)
        good, refused = judge_records(decoded, *accepted_window_ms(received_at, limits))
        return BatchMessage(topic, self.fleet, self.kind, good, received_at, len(payload), refused, payload)


def _screen(topic: str, payload: bytes, received_at: datetime, limits: IngestSettings) -> Ingested | _Batch:
    """A message as far as its topic and size tell: a status, a dead letter, or a batch to decode."""
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
    return _Batch(topic, parts.fleet, parts.kind, vehicle, payload, received_at)


def _decode_alone(payload: bytes) -> ColumnarBatch | Exception:
    try:
        return decode_columnar_batch(payload)
    except Exception as err:  # WireError, or a decoder bug (`_Batch.outcome` tells them apart)
        return err


def accepted_window_ms(received_at: datetime, limits: IngestSettings) -> tuple[int, int]:
    """The source timestamps (epoch ms, inclusive) a record received at `received_at` may carry."""
    earliest = received_at - timedelta(days=limits.max_sample_age_days)
    latest = received_at + timedelta(seconds=limits.max_future_skew_s)
    return _epoch_ms(earliest), _epoch_ms(latest)


def judge_records(
    batch: ColumnarBatch, earliest_ms: int, latest_ms: int
) -> tuple[ColumnarBatch, tuple[RefusedRecord, ...]]:
    """Split a batch into its good records and the refused ones (seq order), each refused for the
    first that applies of: NUL in a text field, ts before `earliest_ms`, ts after `latest_ms`, a
    non-finite value (NaN or ±inf; an alert's NaN is "no value" and passes)."""
    samples, refused = _judge_samples(batch.samples, earliest_ms, latest_ms)
    predictions: list[PredictionRecord] = []
    for p in batch.predictions:
        reason = _judge(p.ts_ms, p.value, (p.model, p.model_version, p.output), earliest_ms, latest_ms)
        if reason is None:
            predictions.append(p)
        else:
            refused.append(RefusedRecord(p.seq, p.ts_ms, p.output, reason, p.value))
    alerts: list[AlertRecord] = []
    for a in batch.alerts:
        value = 0.0 if math.isnan(a.value) else a.value  # NaN: the alert carries no value
        reason = _judge(a.ts_ms, value, (a.rule, a.severity, a.message), earliest_ms, latest_ms)
        if reason is None:
            alerts.append(a)
        else:
            refused.append(RefusedRecord(a.seq, a.ts_ms, a.rule, reason, a.value))
    if not refused:
        return batch, ()
    refused.sort(key=lambda r: r.seq)
    good = ColumnarBatch(batch.vehicle_id, samples, tuple(predictions), tuple(alerts))
    return good, tuple(refused)


def _judge(
    ts_ms: int, value: float, texts: tuple[str, ...], earliest_ms: int, latest_ms: int
) -> Refusal | None:
    if any("\x00" in text for text in texts):
        return Refusal.NUL_IN_TEXT
    if ts_ms < earliest_ms:
        return Refusal.TS_TOO_OLD
    if ts_ms > latest_ms:
        return Refusal.TS_IN_FUTURE
    if not math.isfinite(value):
        return Refusal.VALUE_NOT_FINITE
    return None


# What choice i of np.select in `_judge_samples` stands for (the order of `_judge`).
_SAMPLE_REFUSALS: Final = (
    Refusal.NUL_IN_TEXT,
    Refusal.TS_TOO_OLD,
    Refusal.TS_IN_FUTURE,
    Refusal.VALUE_NOT_FINITE,
)


def _judge_samples(
    samples: SampleColumns, earliest_ms: int, latest_ms: int
) -> tuple[SampleColumns, list[RefusedRecord]]:
    """The same judgement as `_judge`, on columns (no object per good sample)."""
    nul_signal = np.array(["\x00" in name for name in samples.signals], dtype=bool)
    nul = nul_signal[samples.signal_index] if nul_signal.size else np.zeros(len(samples), dtype=bool)
    too_old = samples.ts_ms < earliest_ms
    in_future = samples.ts_ms > latest_ms
    not_finite = ~np.isfinite(samples.value)
    bad = nul | too_old | in_future | not_finite
    if not bad.any():
        return samples, []
    choice = np.select([nul, too_old, in_future], [0, 1, 2], default=3)[bad]
    names = samples.signals
    refused = [
        RefusedRecord(seq, ts, names[k], _SAMPLE_REFUSALS[c], value)
        for seq, ts, k, c, value in zip(
            samples.seq[bad].tolist(), samples.ts_ms[bad].tolist(), samples.signal_index[bad].tolist(),
            choice.tolist(), samples.value[bad].tolist(), strict=True,
        )
    ]  # fmt: skip
    return samples.where(~bad), refused


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
