"""The encoder of the uplink payload (`protocols.wire` describes the layout)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgpack
import numpy as np
import zstandard

from protocols.errors import WireError
from protocols.wire_dict import CODEBOOKS, CURRENT, Codebook
from protocols.wire_fields import float_field, int_field, text_field, vehicle_field
from protocols.wire_layout import (
    HEADER,
    MAX_ABS_QUANTUM_STEPS,
    MAX_ABS_TS_MS,
    MAX_ALERTS,
    MAX_BODY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PREDICTIONS,
    MAX_SAMPLES,
    MAX_SEQ,
    MAX_SIGNALS,
    SEVERITIES,
    ZSTD_LEVEL,
    FloatArray,
    IntArray,
    pack_column,
    pack_floats,
    zigzag,
)
from protocols.wire_records import AlertRecord, Batch, PredictionRecord, SampleRecord


def _quantum(quanta: Mapping[str, float], signal: str) -> float | None:
    if signal not in quanta:
        return None
    quantum = quanta[signal]
    if isinstance(quantum, bool) or not isinstance(quantum, float | int):
        raise WireError(f"quantum of {signal!r} must be a number")
    if not (math.isfinite(quantum) and quantum > 0):
        raise WireError(f"quantum of {signal!r} must be finite and positive, not {quantum!r}")
    return float(quantum)


def _quantize(values: FloatArray, quantum: float) -> IntArray | None:
    """The values as integer steps of `quantum`, or None when any of them is not representable."""
    with np.errstate(all="ignore"):
        steps = np.rint(values / quantum)
        ok = np.isfinite(steps).all() and np.abs(steps).max() <= MAX_ABS_QUANTUM_STEPS
        ok = ok and np.isfinite(steps * quantum).all()
    return steps.astype(np.int64) if ok else None


def _encode_samples(
    samples: Sequence[SampleRecord], quanta: Mapping[str, float], codebook: Codebook
) -> list[object]:
    n = len(samples)
    if n > MAX_SAMPLES:
        raise WireError(f"{n} samples exceed MAX_SAMPLES={MAX_SAMPLES}")
    ordered = sorted(samples, key=_seq_of)
    seqs = np.empty(n, dtype=np.int64)
    stamps = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float64)
    rows_of: dict[str, list[int]] = {}  # signal → its samples' positions in seq order
    for i, sample in enumerate(ordered):
        if not isinstance(sample, SampleRecord):
            raise WireError(f"samples must be SampleRecord, not {type(sample).__name__}")
        seqs[i] = int_field(sample.seq, 0, MAX_SEQ, "sample seq")
        stamps[i] = int_field(sample.ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "sample ts_ms")
        values[i] = float_field(sample.value, "sample value")
        rows = rows_of.get(sample.signal)
        if rows is None:
            if len(rows_of) == MAX_SIGNALS:
                raise WireError(f"more than MAX_SIGNALS={MAX_SIGNALS} signals in one batch")
            rows = rows_of[text_field(sample.signal, MAX_NAME_BYTES, "signal name")] = []
        rows.append(i)
    if n and int(np.diff(seqs).min(initial=1)) == 0:
        raise WireError("duplicate sample seq")

    codes = sorted(codebook.index[name] for name in rows_of if name in codebook.index)
    spelled = sorted(name for name in rows_of if name not in codebook.index)
    table = [codebook.names[code] for code in codes] + spelled
    counts = np.array([len(rows_of[name]) for name in table], dtype=np.int64)
    grouped = np.array([i for name in table for i in rows_of[name]], dtype=np.int64)  # sample positions
    starts = np.cumsum(counts) - counts
    later = np.ones(n, dtype=bool)  # every sample but each signal's first
    later[starts] = False
    stamps_grouped = stamps[grouped]
    first_ts = stamps_grouped[starts]
    ts_base = int(first_ts.min()) if n else 0

    quantum_of: list[float | None] = []
    bases: list[int] = []
    value_deltas: list[IntArray] = [np.empty(0, dtype=np.int64)]
    exact_values: list[FloatArray] = [np.empty(0, dtype=np.float64)]
    for name, start, count in zip(table, starts.tolist(), counts.tolist(), strict=True):
        signal_values = values[grouped[start : start + count]]
        quantum = _quantum(quanta, name)
        steps = None if quantum is None else _quantize(signal_values, quantum)
        quantum_of.append(None if steps is None else quantum)
        bases.append(0 if steps is None else int(steps[0]))
        if steps is None:
            exact_values.append(signal_values)
        else:  # second differences: a value that moves at a steady rate costs zeros
            value_deltas.append(np.diff(np.diff(steps), prepend=0))
    distinct = sorted({quantum for quantum in quantum_of if quantum is not None})
    position = {quantum: k + 1 for k, quantum in enumerate(distinct)}
    quantum_index = [0 if quantum is None else position[quantum] for quantum in quantum_of]

    # Canonical order: by (ts, table position), ties in grouped order; seq steps along it.
    canonical = np.lexsort((np.repeat(np.arange(len(table)), counts), stamps_grouped))
    canonical_seqs = seqs[grouped][canonical]

    return [
        n,
        int(canonical_seqs[0]) if n else 0,
        pack_column(zigzag(np.diff(canonical_seqs) - 1)),
        ts_base,
        [
            (np.diff(np.array(codes, dtype=np.int64), prepend=-1) - 1).tolist(),
            spelled,
            distinct,
            pack_column(np.array(quantum_index, dtype=np.uint64)),
            pack_column(zigzag(np.array(bases, dtype=np.int64))),
        ],
        pack_column(counts.view(np.uint64)),
        pack_column((first_ts - ts_base).view(np.uint64)),
        pack_column(zigzag(np.diff(stamps_grouped)[later[1:]])),
        pack_column(zigzag(np.concatenate(value_deltas))),
        pack_floats(np.concatenate(exact_values)),
    ]


def _seq_of(record: SampleRecord) -> int:
    return int_field(record.seq, 0, MAX_SEQ, "sample seq")


def _prediction_row(record: PredictionRecord) -> list[object]:
    if not isinstance(record, PredictionRecord):
        raise WireError(f"predictions must be PredictionRecord, not {type(record).__name__}")
    return [
        int_field(record.seq, 0, MAX_SEQ, "prediction seq"),
        int_field(record.ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "prediction ts_ms"),
        text_field(record.model, MAX_NAME_BYTES, "model"),
        text_field(record.model_version, MAX_NAME_BYTES, "model version", allow_empty=True),
        text_field(record.output, MAX_NAME_BYTES, "output"),
        float_field(record.value, "prediction value"),
    ]


def _alert_row(record: AlertRecord) -> list[object]:
    if not isinstance(record, AlertRecord):
        raise WireError(f"alerts must be AlertRecord, not {type(record).__name__}")
    if record.severity not in SEVERITIES:
        raise WireError(f"alert severity {record.severity!r} not one of {sorted(SEVERITIES)}")
    if not isinstance(record.active, bool):
        raise WireError("alert active must be a bool")
    return [
        int_field(record.seq, 0, MAX_SEQ, "alert seq"),
        int_field(record.ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "alert ts_ms"),
        text_field(record.rule, MAX_NAME_BYTES, "rule"),
        record.severity,
        record.active,
        float_field(record.value, "alert value"),
        text_field(record.message, MAX_MESSAGE_BYTES, "alert message", allow_empty=True),
    ]


def encode_batch(
    batch: Batch, quanta: Mapping[str, float] | None = None, *, level: int = ZSTD_LEVEL
) -> bytes:
    """Encode a batch. `quanta` maps a signal name to its resolution (e.g. 0.1 for SOC in 0.1 %):
    such values travel as integers of that step (decoded within quantum/2); others travel exactly.

    Samples are sent (and decoded) in seq order; predictions and alerts in batch order. Raises
    `WireError` for a batch the decoder would refuse: bad vehicle id or record fields, a seq used twice,
    more than the MAX_* limits, or an encoded size over MAX_PAYLOAD_BYTES (split the batch)."""
    if not isinstance(batch, Batch):
        raise WireError(f"expected a Batch, not {type(batch).__name__}")
    if len(batch.predictions) > MAX_PREDICTIONS or len(batch.alerts) > MAX_ALERTS:
        raise WireError("too many predictions or alerts for one batch")
    codebook = CODEBOOKS[CURRENT]
    samples = _encode_samples(batch.samples, quanta or {}, codebook)
    predictions = [_prediction_row(record) for record in batch.predictions]
    alerts = [_alert_row(record) for record in batch.alerts]
    _check_unique_seqs(batch.samples, predictions, alerts)
    body = msgpack.packb([vehicle_field(batch.vehicle_id), samples, predictions, alerts], use_bin_type=True)
    if len(body) > MAX_BODY_BYTES:
        raise WireError(f"batch body of {len(body)} bytes exceeds MAX_BODY_BYTES; split the batch")
    compressor = zstandard.ZstdCompressor(
        level=level, dict_data=codebook.zstd_dict, write_checksum=True, write_content_size=True
    )
    payload = HEADER + compressor.compress(body)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD_BYTES; split the batch")
    return payload


def _check_unique_seqs(
    samples: Sequence[SampleRecord], predictions: list[list[object]], alerts: list[list[object]]
) -> None:
    if not predictions and not alerts:
        return  # samples are checked while sorting
    seqs = [record.seq for record in samples] + [row[0] for row in predictions] + [row[0] for row in alerts]
    if len(set(seqs)) != len(seqs):
        raise WireError("a seq is used twice in one batch")
