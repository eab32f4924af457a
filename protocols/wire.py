"""The uplink payload: a versioned, compact binary batch of samples, predictions and alerts.

CONTRACT (fixed): every record carries the per-vehicle sequence number that makes storage idempotent on
(vehicle, seq).

Layout of a payload (version 2)::

    b"VG" | version (1 byte) | flags (1 byte) | codebook id (1 byte) | zstd frame of a msgpack body

The zstd frame declares its content size and carries a checksum; it is compressed with the codebook's
dictionary (`protocols.wire_dict`: signal names and quanta both ends ship, so a batch need not spell
them). A receiver refuses a codebook id it does not know.

    body     = [vehicle_id, samples, predictions, alerts]
    samples  = [n, seq_first, seq_steps, ts_base, signals, counts, first_ts, ts_deltas, value_deltas, exact]
    signals  = [codes, names, quanta, quantum_index, bases]           the batch's signal table
    predictions = [[seq, ts_ms, model, model_version, output, value], ...]
    alerts      = [[seq, ts_ms, rule, severity, active, value, message], ...]

The signal table lists each distinct signal once: first those in the codebook, by codebook position
(`codes`: position steps beyond +1, so 0, 1, 2 are positions 0, 2, 5), then the others by name
(`names`, spelled out). `quanta` holds the distinct quanta in ascending order; per signal,
`quantum_index` is 0 for a signal travelling exactly, else 1 + the position of its quantum, and `bases`
its first value in quanta (0 when exact).

Samples travel signal by signal in table order, each signal's in seq order, as columns. An integer
column is `[width, planes]`: `width` in {0, 1, 2, 4, 8} bytes (0: every element is zero, `planes` empty)
and `planes` the little-endian elements split into byte planes (all first bytes, then all second bytes,
…), which zstd compresses much better than interleaved bytes or msgpack varints. Signed columns are
zigzag-coded. Per signal: `counts` its number of samples, `first_ts` its first timestamp minus
`ts_base`; `ts_deltas` and `value_deltas` hold, signal after signal, the steps after its first sample:

    ts[j]    = ts[j-1] + ts_delta                    (a signal sampled by a fixed interval repeats one delta)
    step[j]  = step[j-1] + slope[j],  slope[j] = slope[j-1] + value_delta,  step[0] = base, slope[0] = 0
    value    = quantum * step                        for a signal with a quantum
    value    = the signal's next float64 of `exact` (also byte planes)    for a signal without one

Sequence numbers are implicit when the buffer numbered samples in time order: sorting all samples by
(ts, table position), ties in the order above, gives the "canonical order", and `seq_steps` holds the
n - 1 steps from one sample's seq to the next's in that order, minus one (zigzag; all zero when seq
follows time), starting from `seq_first`.

A signal travels quantized when `quanta` gives it a quantum and every value of it in the batch is finite
and representable; otherwise it travels exactly in that batch (so NaN and ±inf survive).

The decoder trusts nothing: every size, count, type, index and range is checked, the zstd frame must
declare a content size within `MAX_BODY_BYTES` before anything is allocated, and every failure is a
`WireError`. It refuses a payload only for its structure (what the encoder would never write); what a
record says is data, judged by the receiver record by record (`cloud.ingest`): a timestamp anywhere
within ±`MAX_ABS_TS_MS` (a GPS fix dated 2007), NaN, ±inf and a NUL in a name all decode. The
encoder refuses (with `WireError`) any batch the decoder would refuse. Version 1 (one `signal_index`
per sample, names always spelled out) was never deployed and is not decoded.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from protocols.errors import WireError
from protocols.topics import ID_MAX_LEN, is_valid_id
from protocols.wire_dict import CODEBOOKS, CURRENT, Codebook

WIRE_VERSION = 2


@dataclass(frozen=True, slots=True)
class SampleRecord:
    seq: int  # per-vehicle sequence number, >= 0, unique across samples, predictions and alerts
    ts_ms: int  # source timestamp (bus frame / GPS fix), Unix epoch milliseconds, UTC
    signal: str  # canonical catalog name, e.g. "Vehicle.Speed"
    value: float


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    seq: int
    ts_ms: int
    model: str  # e.g. "soc_drop_60min"
    model_version: str
    output: str  # e.g. "soc_drop_60min_pp", "p_large_drop_60min", "p_fault_30min" (protocols.predictions)
    value: float


@dataclass(frozen=True, slots=True)
class AlertRecord:
    seq: int
    ts_ms: int
    rule: str  # e.g. "low_soc"
    severity: str  # "info" | "warning" | "critical"
    active: bool  # True when raised, False when cleared
    value: float  # the value that triggered or cleared the rule (NaN when none)
    message: str


@dataclass(frozen=True, slots=True)
class Batch:
    vehicle_id: str
    samples: tuple[SampleRecord, ...] = ()
    predictions: tuple[PredictionRecord, ...] = ()
    alerts: tuple[AlertRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class SampleColumns:
    """Samples as columns (numpy arrays in seq order): what the decoder builds before any record object,
    for a consumer (the cloud receiver) that works on columns and would only take the records apart again."""

    seq: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    signal_index: npt.NDArray[np.int32]  # into `signals`
    value: npt.NDArray[np.float64]
    signals: tuple[str, ...]

    @classmethod
    def of(cls, samples: Sequence[SampleRecord]) -> SampleColumns:
        index: dict[str, int] = {}
        return cls(
            seq=np.array([s.seq for s in samples], dtype=np.int64),
            ts_ms=np.array([s.ts_ms for s in samples], dtype=np.int64),
            signal_index=np.array([index.setdefault(s.signal, len(index)) for s in samples], dtype=np.int32),
            value=np.array([s.value for s in samples], dtype=np.float64),
            signals=tuple(index),
        )

    def __len__(self) -> int:
        return len(self.seq)

    def where(self, keep: npt.NDArray[np.bool_]) -> SampleColumns:
        """The samples where `keep` is true (signal names unchanged)."""
        return SampleColumns(
            self.seq[keep], self.ts_ms[keep], self.signal_index[keep], self.value[keep], self.signals
        )

    def records(self) -> tuple[SampleRecord, ...]:
        names = self.signals
        return tuple(
            SampleRecord(seq, ts, names[k], v)
            for seq, ts, k, v in zip(
                self.seq.tolist(), self.ts_ms.tolist(), self.signal_index.tolist(), self.value.tolist(),
                strict=True,
            )
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ColumnarBatch:
    """A `Batch` whose samples are columns (`decode_columnar_batch`)."""

    vehicle_id: str
    samples: SampleColumns
    predictions: tuple[PredictionRecord, ...] = ()
    alerts: tuple[AlertRecord, ...] = ()

    @classmethod
    def of(cls, batch: Batch) -> ColumnarBatch:
        return cls(batch.vehicle_id, SampleColumns.of(batch.samples), batch.predictions, batch.alerts)


# --- format constants and limits -------------------------------------------------------------------------

MAGIC: Final = b"VG"
FLAG_ZSTD: Final = 0x01
"""The body is one zstd frame with content size and checksum. Required in version 2; other bits reserved."""
HEADER: Final = MAGIC + bytes((WIRE_VERSION, FLAG_ZSTD, CURRENT))
"""What `encode_batch` writes: the current codebook's id closes the header."""
HEADER_LEN: Final = len(HEADER)

ZSTD_LEVEL: Final = 19
"""Default compression level. On a minute of telemetry (~4 KB of body) level 19 is ~3 % smaller than
level 9 for ~1 ms instead of ~0.4 ms of compression (x86; the column building costs more); zstd scales
its window down to the input, so memory stays small."""

MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
"""Largest payload (header + compressed body) accepted or produced."""
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
"""Largest decompressed body; a frame declaring more is refused before decompression."""
MAX_SAMPLES: Final = 250_000
MAX_PREDICTIONS: Final = 50_000
MAX_ALERTS: Final = 10_000
MAX_SIGNALS: Final = 4_096
"""Distinct signal names in one batch."""
MAX_NAME_BYTES: Final = 128
"""UTF-8 length of a signal, model, model version, output or rule name."""
MAX_MESSAGE_BYTES: Final = 1_024
"""UTF-8 length of an alert message."""
MAX_SEQ: Final = 2**53 - 1
"""Sequence numbers are 0..MAX_SEQ (exact in float64 and JSON)."""
MAX_ABS_TS_MS: Final = 2**53 - 1
MAX_ABS_QUANTUM_STEPS: Final = 2**53
"""A quantized value is at most this many quanta away from zero, or its signal travels exactly."""
SEVERITIES: Final = frozenset({"info", "warning", "critical"})
STATUS_STATES: Final = frozenset({"online", "offline"})
MAX_STATUS_BYTES: Final = 4_096

_WIDTHS: Final = (0, 1, 2, 4, 8)
_MAX_STEP: Final = 2 * MAX_ABS_QUANTUM_STEPS  # |step[j] - step[j-1]|: a slope
_MAX_TS_STEP: Final = 2 * MAX_ABS_TS_MS
_MAX_WINDOW_BYTES: Final = MAX_BODY_BYTES

_IntArray = npt.NDArray[np.int64]
_UIntArray = npt.NDArray[np.uint64]
_FloatArray = npt.NDArray[np.float64]
_T = TypeVar("_T")


# --- fixed-width columns ----------------------------------------------------------------------------------


def _zigzag(values: _IntArray) -> _UIntArray:
    return ((values << 1) ^ (values >> 63)).view(np.uint64)


def _unzigzag(values: _UIntArray) -> _IntArray:
    half = (values >> np.uint64(1)).astype(np.int64)
    return half ^ -((values & np.uint64(1)).astype(np.int64))


def _pack_column(values: _UIntArray) -> list[object]:
    """`[width, planes]` for unsigned values: the narrowest width, bytes split into planes."""
    top = int(values.max()) if values.size else 0
    width = next(w for w in _WIDTHS if top < 1 << (8 * w))
    if width == 0:
        return [0, b""]
    fixed = values.astype(f"<u{width}")
    return [width, _to_planes(fixed.view(np.uint8), width)]


def _to_planes(raw: npt.NDArray[np.uint8], width: int) -> bytes:
    return raw.reshape(-1, width).T.tobytes()


def _from_planes(planes: bytes, width: int) -> npt.NDArray[np.uint8]:
    return np.frombuffer(planes, dtype=np.uint8).reshape(width, -1).T.reshape(-1)


def _unpack_column(column: object, n: int, what: str) -> _UIntArray:
    parts = _list(column, what)
    if len(parts) != 2:
        raise WireError(f"{what}: a column is [width, planes]")
    width, planes = parts
    if type(width) is not int or width not in _WIDTHS or not isinstance(planes, bytes):
        raise WireError(f"{what}: bad column width or planes")
    if len(planes) != n * width:
        raise WireError(f"{what}: {len(planes)} bytes for {n} elements of width {width}")
    if width == 0:
        return np.zeros(n, dtype=np.uint64)
    return _from_planes(planes, width).view(f"<u{width}").astype(np.uint64)


def _pack_floats(values: _FloatArray) -> bytes:
    return _to_planes(values.astype("<f8").view(np.uint8), 8)


def _unpack_floats(planes: object, n: int, what: str) -> _FloatArray:
    if not isinstance(planes, bytes) or len(planes) != 8 * n:
        raise WireError(f"{what}: expected {n} float64 values")
    return _from_planes(planes, 8).view("<f8").astype(np.float64)


def _later(counts: _IntArray) -> npt.NDArray[np.bool_]:
    """For signals of `counts` samples laid out one after the other: True except at each one's first."""
    later = np.ones(int(counts.sum()), dtype=bool)
    later[np.cumsum(counts) - counts] = False
    return later


def _running_by_signal(
    firsts: _IntArray, deltas: _IntArray, counts: _IntArray, delta_bound: int, bound: int, what: str
) -> _IntArray:
    """Signal after signal (`counts[k]` elements each, every count >= 1): `firsts[k]`, then running sums
    of its `counts[k] - 1` next `deltas`, each |delta| <= delta_bound, every result checked within ±bound.

    One cumulative sum for all signals, which int64 may wrap; each result is its signal's first plus the
    difference of two such sums, exact modulo 2**64. Results within ±bound are therefore exact, because
    the one before each is (induction from `firsts`) and a step adds at most delta_bound."""
    assert bound + delta_bound < 2**63
    if firsts.size and (int(firsts.max()) > bound or int(firsts.min()) < -bound):
        raise WireError(f"{what}: value out of range")
    if deltas.size and (int(deltas.max()) > delta_bound or int(deltas.min()) < -delta_bound):
        raise WireError(f"{what}: delta out of range")
    later = _later(counts)
    steps = np.zeros(later.size, dtype=np.int64)
    steps[later] = deltas
    sums = np.cumsum(steps, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    result: _IntArray = sums - np.repeat(sums[starts] - firsts, counts)
    if result.size and (int(result.max()) > bound or int(result.min()) < -bound):
        raise WireError(f"{what}: value out of range")
    return result


# --- encoding ---------------------------------------------------------------------------------------------


def _int(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool):
        raise WireError(f"{what} must be an integer, not bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]  # TypeError below when not an index
    except TypeError:
        raise WireError(f"{what} must be an integer, not {type(value).__name__}") from None
    if not low <= number <= high:
        raise WireError(f"{what} {number} out of range [{low}, {high}]")
    return number


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer):
        raise WireError(f"{what} must be a float, not {type(value).__name__}")
    return float(value)


def _text(value: object, max_bytes: int, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what} must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise WireError(f"{what} is not encodable as UTF-8") from None
    if size > max_bytes or (size == 0 and not allow_empty):
        raise WireError(f"{what} must be {0 if allow_empty else 1}..{max_bytes} UTF-8 bytes, not {size}")
    return value


def _vehicle(value: object) -> str:
    if not is_valid_id(value):
        raise WireError(f"invalid vehicle id {value!r}: 1-{ID_MAX_LEN} of A-Z a-z 0-9 _ . -")
    assert isinstance(value, str)
    return value


def _quantum(quanta: Mapping[str, float], signal: str) -> float | None:
    if signal not in quanta:
        return None
    quantum = quanta[signal]
    if isinstance(quantum, bool) or not isinstance(quantum, float | int):
        raise WireError(f"quantum of {signal!r} must be a number")
    if not (math.isfinite(quantum) and quantum > 0):
        raise WireError(f"quantum of {signal!r} must be finite and positive, not {quantum!r}")
    return float(quantum)


def _quantize(values: _FloatArray, quantum: float) -> _IntArray | None:
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
        seqs[i] = _int(sample.seq, 0, MAX_SEQ, "sample seq")
        stamps[i] = _int(sample.ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "sample ts_ms")
        values[i] = _float(sample.value, "sample value")
        rows = rows_of.get(sample.signal)
        if rows is None:
            if len(rows_of) == MAX_SIGNALS:
                raise WireError(f"more than MAX_SIGNALS={MAX_SIGNALS} signals in one batch")
            rows = rows_of[_text(sample.signal, MAX_NAME_BYTES, "signal name")] = []
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
    value_deltas: list[_IntArray] = [np.empty(0, dtype=np.int64)]
    exact_values: list[_FloatArray] = [np.empty(0, dtype=np.float64)]
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
        _pack_column(_zigzag(np.diff(canonical_seqs) - 1)),
        ts_base,
        [
            (np.diff(np.array(codes, dtype=np.int64), prepend=-1) - 1).tolist(),
            spelled,
            distinct,
            _pack_column(np.array(quantum_index, dtype=np.uint64)),
            _pack_column(_zigzag(np.array(bases, dtype=np.int64))),
        ],
        _pack_column(counts.view(np.uint64)),
        _pack_column((first_ts - ts_base).view(np.uint64)),
        _pack_column(_zigzag(np.diff(stamps_grouped)[later[1:]])),
        _pack_column(_zigzag(np.concatenate(value_deltas))),
        _pack_floats(np.concatenate(exact_values)),
    ]


def _seq_of(record: SampleRecord) -> int:
    return _int(record.seq, 0, MAX_SEQ, "sample seq")


def _prediction_row(record: PredictionRecord) -> list[object]:
    if not isinstance(record, PredictionRecord):
        raise WireError(f"predictions must be PredictionRecord, not {type(record).__name__}")
    return [
        _int(record.seq, 0, MAX_SEQ, "prediction seq"),
        _int(record.ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "prediction ts_ms"),
        _text(record.model, MAX_NAME_BYTES, "model"),
        _text(record.model_version, MAX_NAME_BYTES, "model version", allow_empty=True),
        _text(record.output, MAX_NAME_BYTES, "output"),
        _float(record.value, "prediction value"),
    ]


def _alert_row(record: AlertRecord) -> list[object]:
    if not isinstance(record, AlertRecord):
        raise WireError(f"alerts must be AlertRecord, not {type(record).__name__}")
    if record.severity not in SEVERITIES:
        raise WireError(f"alert severity {record.severity!r} not one of {sorted(SEVERITIES)}")
    if not isinstance(record.active, bool):
        raise WireError("alert active must be a bool")
    return [
        _int(record.seq, 0, MAX_SEQ, "alert seq"),
        _int(record.ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "alert ts_ms"),
        _text(record.rule, MAX_NAME_BYTES, "rule"),
        record.severity,
        record.active,
        _float(record.value, "alert value"),
        _text(record.message, MAX_MESSAGE_BYTES, "alert message", allow_empty=True),
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
    body = msgpack.packb([_vehicle(batch.vehicle_id), samples, predictions, alerts], use_bin_type=True)
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


# --- decoding ---------------------------------------------------------------------------------------------


def _list(value: object, what: str, length: int | None = None) -> list[object]:
    if not isinstance(value, list):
        raise WireError(f"{what}: expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise WireError(f"{what}: expected {length} elements, got {len(value)}")
    return value


def _wire_int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise WireError(f"{what}: expected an integer in [{low}, {high}]")
    return value


def _wire_float(value: object, what: str) -> float:
    if type(value) is not float:
        raise WireError(f"{what}: expected a float")
    return value


def _wire_text(value: object, max_bytes: int, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what}: expected a string")
    return _text(value, max_bytes, what, allow_empty=allow_empty)


def _body(payload: object) -> tuple[object, Codebook]:
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
        decompressor = zstandard.ZstdDecompressor(
            dict_data=codebook.zstd_dict, max_window_size=_MAX_WINDOW_BYTES
        )
        body = decompressor.decompress(frame, max_output_size=MAX_BODY_BYTES, allow_extra_data=False)
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


def _decode_signal_table(value: object, codebook: Codebook) -> tuple[list[str], _FloatArray, _IntArray]:
    """Names, quanta (0: exact) and bases of a batch's signals, in table order."""
    code_steps, spelled, distinct, quantum_index, bases_column = _list(value, "signal table", 5)
    names: list[str] = []
    code = -1
    for step in _list(code_steps, "codes"):
        code += 1 + _wire_int(step, 0, len(codebook.names), "code step")
        if code >= len(codebook.names):
            raise WireError(f"code {code} not in codebook {codebook.id}")
        names.append(codebook.names[code])
    names.extend(_wire_text(name, MAX_NAME_BYTES, "signal name") for name in _list(spelled, "names"))
    if len(names) > MAX_SIGNALS:
        raise WireError(f"more than MAX_SIGNALS={MAX_SIGNALS} signals")
    if len(set(names)) != len(names):
        raise WireError("signal listed twice")

    quanta = [_wire_float(quantum, "quantum") for quantum in _list(distinct, "quanta")]
    if not all(math.isfinite(q) and q > 0 for q in quanta) or any(
        a >= b for a, b in itertools.pairwise(quanta)
    ):
        raise WireError("quanta must be finite, positive and ascending")
    raw_index = _unpack_column(quantum_index, len(names), "quantum index")
    if raw_index.size and int(raw_index.max()) > len(quanta):
        raise WireError("quantum index out of range")
    index = raw_index.astype(np.int64)
    if np.bincount(index, minlength=len(quanta) + 1)[1:].min(initial=1) == 0:
        raise WireError("quantum listed but unused")
    signal_quanta = np.concatenate(([0.0], quanta))[index]

    bases = _unzigzag(_unpack_column(bases_column, len(names), "bases"))
    if bases.size and (int(bases.max()) > MAX_ABS_QUANTUM_STEPS or int(bases.min()) < -MAX_ABS_QUANTUM_STEPS):
        raise WireError("base out of range")
    if bases[signal_quanta == 0].any():
        raise WireError("exact signal with a base")
    return names, signal_quanta, bases


def _decode_samples(value: object, codebook: Codebook) -> SampleColumns:
    parts = _list(value, "samples", 10)
    n = _wire_int(parts[0], 0, MAX_SAMPLES, "sample count")
    seq_first = _wire_int(parts[1], 0, MAX_SEQ, "first seq")
    ts_base = _wire_int(parts[3], -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "ts base")
    names, quanta, bases = _decode_signal_table(parts[4], codebook)
    m = len(names)
    if (n == 0) != (m == 0):
        raise WireError("signal table size does not fit the sample count")
    counts = _unpack_column(parts[5], m, "counts")
    if counts.size and (int(counts.min()) == 0 or int(counts.max()) > n or int(counts.sum()) != n):
        raise WireError("per-signal counts do not add up to the sample count")
    counts_i = counts.astype(np.int64)
    offsets = _unpack_column(parts[6], m, "first ts")
    if offsets.size and int(offsets.max()) > _MAX_TS_STEP:
        raise WireError("first ts out of range")
    first_ts = np.int64(ts_base) + offsets.astype(np.int64)
    if first_ts.size and int(first_ts.max()) > MAX_ABS_TS_MS:
        raise WireError("first ts out of range")
    ts_deltas = _unzigzag(_unpack_column(parts[7], n - m, "ts deltas"))
    quantized = quanta > 0
    n_quantized = int(counts_i[quantized].sum())
    value_deltas = _unzigzag(_unpack_column(parts[8], n_quantized - int(quantized.sum()), "value deltas"))
    exact = _unpack_floats(parts[9], n - n_quantized, "exact values")

    # Signal by signal, in table order ("grouped"): timestamps and values.
    signal = np.repeat(np.arange(m), counts_i)
    stamps = _running_by_signal(first_ts, ts_deltas, counts_i, _MAX_TS_STEP, MAX_ABS_TS_MS, "ts_ms")
    quantized_counts = counts_i[quantized]
    slopes = _running_by_signal(  # each signal's first slope is 0, not sent
        np.zeros(quantized_counts.size, dtype=np.int64), value_deltas, quantized_counts, 2 * _MAX_STEP,
        _MAX_STEP, "value slope",
    )  # fmt: skip
    steps = _running_by_signal(
        bases[quantized], slopes[_later(quantized_counts)], quantized_counts, _MAX_STEP,
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
    seq_steps = _unzigzag(_unpack_column(parts[2], max(n - 1, 0), "seq steps"))
    if seq_steps.size and (int(seq_steps.max()) > MAX_SEQ or int(seq_steps.min()) < -MAX_SEQ - 1):
        raise WireError("seq step out of range")
    seqs = np.empty(n, dtype=np.int64)
    run = np.array([n] if n else [], dtype=np.int64)  # one run through all samples
    first = np.full(run.size, seq_first, dtype=np.int64)
    seqs[canonical] = _running_by_signal(first, seq_steps + 1, run, MAX_SEQ + 1, MAX_SEQ, "seq")
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
    rows = _list(value, what)
    if len(rows) > limit:
        raise WireError(f"{what}: {len(rows)} records exceed the limit of {limit}")
    return [row(_list(item, what, width)) for item in rows]


def _decode_prediction(row: list[object]) -> PredictionRecord:
    seq, ts_ms, model, version, output, value = row
    return PredictionRecord(
        _wire_int(seq, 0, MAX_SEQ, "prediction seq"),
        _wire_int(ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "prediction ts_ms"),
        _wire_text(model, MAX_NAME_BYTES, "model"),
        _wire_text(version, MAX_NAME_BYTES, "model version", allow_empty=True),
        _wire_text(output, MAX_NAME_BYTES, "output"),
        _wire_float(value, "prediction value"),
    )


def _decode_alert(row: list[object]) -> AlertRecord:
    seq, ts_ms, rule, severity, active, value, message = row
    if not isinstance(severity, str) or severity not in SEVERITIES:
        raise WireError("alert severity unknown")
    if not isinstance(active, bool):
        raise WireError("alert active must be a bool")
    return AlertRecord(
        _wire_int(seq, 0, MAX_SEQ, "alert seq"),
        _wire_int(ts_ms, -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "alert ts_ms"),
        _wire_text(rule, MAX_NAME_BYTES, "rule"),
        severity,
        active,
        _wire_float(value, "alert value"),
        _wire_text(message, MAX_MESSAGE_BYTES, "alert message", allow_empty=True),
    )


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate a payload; raises `WireError` on anything malformed, never anything else."""
    batch = decode_columnar_batch(payload)
    return Batch(batch.vehicle_id, batch.samples.records(), batch.predictions, batch.alerts)


def decode_columnar_batch(payload: bytes) -> ColumnarBatch:
    """As `decode_batch`, the samples left as columns (same checks, no object per sample)."""
    body, codebook = _body(payload)
    vehicle, samples, predictions, alerts = _list(body, "body", 4)
    batch = ColumnarBatch(
        vehicle_id=_vehicle(vehicle),
        samples=_decode_samples(samples, codebook),
        predictions=tuple(_decode_rows(predictions, MAX_PREDICTIONS, 6, "predictions", _decode_prediction)),
        alerts=tuple(_decode_rows(alerts, MAX_ALERTS, 7, "alerts", _decode_alert)),
    )
    if batch.predictions or batch.alerts:
        seqs = batch.samples.seq.tolist() + [r.seq for r in batch.predictions] + [r.seq for r in batch.alerts]
        if len(set(seqs)) != len(seqs):
            raise WireError("a seq is used twice in one batch")
    return batch


# --- status (retained) ------------------------------------------------------------------------------------

StatusInfo = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Status:
    """What the retained status topic says: "online" (published on connect) or "offline" (the last will)."""

    state: str
    ts_ms: int
    info: Mapping[str, StatusInfo] = field(default_factory=dict)


def encode_status(state: str, ts_ms: int, **info: StatusInfo) -> bytes:
    """A small JSON object, e.g. `{"state":"online","ts_ms":…,"agent_version":"0.1.0"}`; info values are
    JSON scalars (finite numbers)."""
    if state not in STATUS_STATES:
        raise WireError(f"status state {state!r} not one of {sorted(STATUS_STATES)}")
    document: dict[str, StatusInfo] = {"state": state, "ts_ms": _int(ts_ms, 0, MAX_ABS_TS_MS, "status ts_ms")}
    for key, value in info.items():
        if not isinstance(value, StatusInfo):
            raise WireError(f"status info {key!r} must be a JSON scalar")
        document[key] = value
    try:
        encoded = json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, UnicodeEncodeError) as err:
        raise WireError(f"status not encodable: {err}") from err
    if len(encoded) > MAX_STATUS_BYTES:
        raise WireError(f"status of {len(encoded)} bytes exceeds MAX_STATUS_BYTES={MAX_STATUS_BYTES}")
    return encoded


def _reject_constant(name: str) -> object:
    raise WireError(f"status contains {name}")


def decode_status(payload: bytes) -> Status:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"status payload must be bytes, not {type(payload).__name__}")
    if len(payload) > MAX_STATUS_BYTES:
        raise WireError("status payload too large")
    try:
        document = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WireError(f"status is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise WireError("status must be a JSON object")
    state = document.pop("state", None)
    ts_ms = document.pop("ts_ms", None)
    if not isinstance(state, str) or state not in STATUS_STATES:
        raise WireError("status state must be 'online' or 'offline'")
    if not all(isinstance(value, StatusInfo) for value in document.values()):
        raise WireError("status info values must be JSON scalars")
    return Status(state, _wire_int(ts_ms, 0, MAX_ABS_TS_MS, "status ts_ms"), document)
