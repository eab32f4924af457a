"""The decoder of the uplink payload, one payload at a time (`protocols.wire` describes the layout and
what the decoder checks)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Final, TypeVar

import msgpack
import numpy as np
import zstandard

from protocols.errors import WireError
from protocols.wire_dict import CODEBOOKS, Codebook
from protocols.wire_fields import vehicle_field, wire_float, wire_int, wire_list, wire_text
from protocols.wire_layout import (
    FLAG_ZSTD,
    HEADER_LEN,
    MAGIC,
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
    MAX_STEP,
    MAX_TS_STEP,
    SEVERITIES,
    WIRE_VERSION,
    FloatArray,
    IntArray,
    later_than_first,
    running_by_signal,
    unpack_column,
    unpack_floats,
    unzigzag,
)
from protocols.wire_records import AlertRecord, Batch, ColumnarBatch, PredictionRecord, SampleColumns

_MAX_WINDOW_BYTES: Final = MAX_BODY_BYTES
_T = TypeVar("_T")


def read_body(
    payload: object, decompressors: dict[int, zstandard.ZstdDecompressor] | None = None
) -> tuple[object, Codebook]:
    """The msgpack body of a payload and its codebook. `decompressors` (by codebook id) keeps the
    decompressors for the next payloads of one thread (creating one loads its dictionary)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise WireError(f"payload of {len(data)} bytes exceeds MAX_PAYLOAD_BYTES={MAX_PAYLOAD_BYTES}")
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise WireError("not a voltgate payload (bad magic or truncated header)")
    if data[2] != WIRE_VERSION:
        raise WireError(f"unsupported wire version {data[2]} (this decoder speaks {WIRE_VERSION})")
    if data[3] != FLAG_ZSTD:
        raise WireError(f"unsupported flags 0x{data[3]:02x}")
    codebook = CODEBOOKS.get(data[4])
    if codebook is None:
        raise WireError(f"unknown codebook {data[4]} (this decoder knows {sorted(CODEBOOKS)})")
    frame = data[HEADER_LEN:]
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size > MAX_BODY_BYTES:  # also "unknown" (ZSTD_CONTENTSIZE_UNKNOWN = 2**64 - 1)
            raise WireError(f"body declares {params.content_size} bytes, over MAX_BODY_BYTES")
        if not params.has_checksum:
            raise WireError("body frame without checksum")
        decompressor = None if decompressors is None else decompressors.get(codebook.id)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor(
                dict_data=codebook.zstd_dict, max_window_size=_MAX_WINDOW_BYTES
            )
        body = decompressor.decompress(frame, max_output_size=MAX_BODY_BYTES, allow_extra_data=False)
        if decompressors is not None:
            decompressors[codebook.id] = decompressor
    except zstandard.ZstdError as err:
        raise WireError(f"corrupt body: {err}") from err
    if len(body) != params.content_size:
        raise WireError("body size differs from the size its frame declares")
    try:
        document = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_MESSAGE_BYTES,
            max_bin_len=MAX_BODY_BYTES,
            max_array_len=max(MAX_PREDICTIONS, MAX_ALERTS, MAX_SIGNALS, 16),
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as err:
        raise WireError(f"body is not valid msgpack: {err}") from err
    return document, codebook


def table_names(code_steps: object, spelled: object, codebook: Codebook) -> list[str]:
    """The signal names of a batch's table, in table order."""
    names: list[str] = []
    code = -1
    for step in wire_list(code_steps, "codes"):
        code += 1 + wire_int(step, 0, len(codebook.names), "code step")
        if code >= len(codebook.names):
            raise WireError(f"code {code} not in codebook {codebook.id}")
        names.append(codebook.names[code])
    names.extend(wire_text(name, MAX_NAME_BYTES, "signal name") for name in wire_list(spelled, "names"))
    if len(names) > MAX_SIGNALS:
        raise WireError(f"more than MAX_SIGNALS={MAX_SIGNALS} signals")
    if len(set(names)) != len(names):
        raise WireError("signal listed twice")
    return names


def table_quanta(distinct: object) -> list[float]:
    """The distinct quanta of a batch's table (finite, positive, ascending)."""
    quanta = [wire_float(quantum, "quantum") for quantum in wire_list(distinct, "quanta")]
    if not all(math.isfinite(q) and q > 0 for q in quanta) or any(
        a >= b for a, b in itertools.pairwise(quanta)
    ):
        raise WireError("quanta must be finite, positive and ascending")
    return quanta


def _decode_signal_table(value: object, codebook: Codebook) -> tuple[list[str], FloatArray, IntArray]:
    """Names, quanta (0: exact) and bases of a batch's signals, in table order."""
    code_steps, spelled, distinct, quantum_index, bases_column = wire_list(value, "signal table", 5)
    names = table_names(code_steps, spelled, codebook)
    quanta = table_quanta(distinct)
    raw_index = unpack_column(quantum_index, len(names), "quantum index")
    if raw_index.size and int(raw_index.max()) > len(quanta):
        raise WireError("quantum index out of range")
    index = raw_index.astype(np.int64)
    if np.bincount(index, minlength=len(quanta) + 1)[1:].min(initial=1) == 0:
        raise WireError("quantum listed but unused")
    signal_quanta = np.concatenate(([0.0], quanta))[index]

    bases = unzigzag(unpack_column(bases_column, len(names), "bases"))
    if bases.size and (int(bases.max()) > MAX_ABS_QUANTUM_STEPS or int(bases.min()) < -MAX_ABS_QUANTUM_STEPS):
        raise WireError("base out of range")
    if bases[signal_quanta == 0].any():
        raise WireError("exact signal with a base")
    return names, signal_quanta, bases


def _decode_samples(value: object, codebook: Codebook) -> SampleColumns:
    parts = wire_list(value, "samples", 10)
    n = wire_int(parts[0], 0, MAX_SAMPLES, "sample count")
    seq_first = wire_int(parts[1], 0, MAX_SEQ, "first seq")
    ts_base = wire_int(parts[3], -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "ts base")
    names, quanta, bases = _decode_signal_table(parts[4], codebook)
    m = len(names)
    if (n == 0) != (m == 0):
        raise WireError("signal table size does not fit the sample count")
    counts = unpack_column(parts[5], m, "counts")
    if counts.size and (int(counts.min()) == 0 or int(counts.max()) > n or int(counts.sum()) != n):
        raise WireError("per-signal counts do not add up to the sample count")
    counts_i = counts.astype(np.int64)
    offsets = unpack_column(parts[6], m, "first ts")
    if offsets.size and int(offsets.max()) > MAX_TS_STEP:
        raise WireError("first ts out of range")
    first_ts = np.int64(ts_base) + offsets.astype(np.int64)
    if first_ts.size and int(first_ts.max()) > MAX_ABS_TS_MS:
        raise WireError("first ts out of range")
    ts_deltas = unzigzag(unpack_column(parts[7], n - m, "ts deltas"))
    quantized = quanta > 0
    n_quantized = int(counts_i[quantized].sum())
    value_deltas = unzigzag(unpack_column(parts[8], n_quantized - int(quantized.sum()), "value deltas"))
    exact = unpack_floats(parts[9], n - n_quantized, "exact values")

    # Signal by signal, in table order ("grouped"): timestamps and values.
    signal = np.repeat(np.arange(m), counts_i)
    stamps = running_by_signal(first_ts, ts_deltas, counts_i, MAX_TS_STEP, MAX_ABS_TS_MS, "ts_ms")
    quantized_counts = counts_i[quantized]
    slopes = running_by_signal(  # each signal's first slope is 0, not sent
        np.zeros(quantized_counts.size, dtype=np.int64), value_deltas, quantized_counts, 2 * MAX_STEP,
        MAX_STEP, "value slope",
    )  # fmt: skip
    steps = running_by_signal(
        bases[quantized], slopes[later_than_first(quantized_counts)], quantized_counts, MAX_STEP,
        MAX_ABS_QUANTUM_STEPS, "quantized value",
    )  # fmt: skip
    with np.errstate(all="ignore"):
        scaled = steps.astype(np.float64) * np.repeat(quanta[quantized], quantized_counts)
    if not np.isfinite(scaled).all():
        raise WireError("quantized value overflows float64")
    values = np.empty(n, dtype=np.float64)
    quantized_rows = quantized[signal]
    values[quantized_rows] = scaled
    values[~quantized_rows] = exact

    # Sequence numbers along the canonical order, then samples in seq order.
    canonical = np.lexsort((signal, stamps))
    seq_steps = unzigzag(unpack_column(parts[2], max(n - 1, 0), "seq steps"))
    if seq_steps.size and (int(seq_steps.max()) > MAX_SEQ or int(seq_steps.min()) < -MAX_SEQ - 1):
        raise WireError("seq step out of range")
    seqs = np.empty(n, dtype=np.int64)
    run = np.array([n] if n else [], dtype=np.int64)  # one run through all samples
    first = np.full(run.size, seq_first, dtype=np.int64)
    seqs[canonical] = running_by_signal(first, seq_steps + 1, run, MAX_SEQ + 1, MAX_SEQ, "seq")
    if seqs.size and int(seqs.min()) < 0:
        raise WireError("negative seq")
    order = np.argsort(seqs, kind="stable")
    if n and int(np.diff(seqs[order]).min(initial=1)) == 0:
        raise WireError("duplicate sample seq")
    return SampleColumns(
        seqs[order], stamps[order], signal[order].astype(np.int32), values[order], tuple(names)
    )


def _decode_rows(
    value: object, limit: int, width: int, what: str, row: Callable[[list[object]], _T]
) -> list[_T]:
    rows = wire_list(value, what)
    if len(rows) > limit:
        raise WireError(f"{what}: {len(rows)} records exceed the limit of {limit}")
    return [row(wire_list(item, what, width)) for item in rows]


def _decode_prediction(row: list[object]) -> PredictionRecord:
    seq, ts_ms, model, version, output, value = row
    return PredictionRecord(
        wire_int(seq, 0, MAX_SEQ, "prediction seq"),
        wire_int(ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "prediction ts_ms"),
        wire_text(model, MAX_NAME_BYTES, "model"),
        wire_text(version, MAX_NAME_BYTES, "model version", allow_empty=True),
        wire_text(output, MAX_NAME_BYTES, "output"),
        wire_float(value, "prediction value"),
    )


def _decode_alert(row: list[object]) -> AlertRecord:
    seq, ts_ms, rule, severity, active, value, message = row
    if not isinstance(severity, str) or severity not in SEVERITIES:
        raise WireError("alert severity unknown")
    if not isinstance(active, bool):
        raise WireError("alert active must be a bool")
    return AlertRecord(
        wire_int(seq, 0, MAX_SEQ, "alert seq"),
        wire_int(ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "alert ts_ms"),
        wire_text(rule, MAX_NAME_BYTES, "rule"),
        severity,
        active,
        wire_float(value, "alert value"),
        wire_text(message, MAX_MESSAGE_BYTES, "alert message", allow_empty=True),
    )


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate a payload; raises `WireError` on anything malformed, never anything else."""
    batch = decode_columnar_batch(payload)
    return Batch(batch.vehicle_id, batch.samples.records(), batch.predictions, batch.alerts)


def decode_columnar_batch(payload: bytes) -> ColumnarBatch:
    """As `decode_batch`, the samples left as columns (same checks, no object per sample)."""
    body, codebook = read_body(payload)
    vehicle, samples, predictions, alerts = wire_list(body, "body", 4)
    batch = ColumnarBatch(
        vehicle_id=vehicle_field(vehicle),
        samples=_decode_samples(samples, codebook),
        predictions=decode_predictions(predictions),
        alerts=decode_alerts(alerts),
    )
    check_unique_seqs(batch)
    return batch


def decode_predictions(value: object) -> tuple[PredictionRecord, ...]:
    return tuple(_decode_rows(value, MAX_PREDICTIONS, 6, "predictions", _decode_prediction))


def decode_alerts(value: object) -> tuple[AlertRecord, ...]:
    return tuple(_decode_rows(value, MAX_ALERTS, 7, "alerts", _decode_alert))


def check_unique_seqs(batch: ColumnarBatch) -> None:
    """`WireError` when a seq is used twice across samples, predictions and alerts (samples among
    themselves are checked as they decode)."""
    if batch.predictions or batch.alerts:
        seqs = batch.samples.seq.tolist() + [r.seq for r in batch.predictions] + [r.seq for r in batch.alerts]
        if len(set(seqs)) != len(seqs):
            raise WireError("a seq is used twice in one batch")
