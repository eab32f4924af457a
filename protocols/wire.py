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

The code, one concept per module (this one re-exports their public names): `wire_records` (records,
and samples as columns), `wire_layout` (constants, limits, fixed-width columns), `wire_fields` (checks
of one field), `wire_encode`, `wire_decode` (one payload), `wire_group` (a group of payloads at once,
each with the result `wire_decode` gives it alone), `wire_status` (the retained status).
"""

from __future__ import annotations

from protocols.wire_decode import (
    decode_batch,
    decode_columnar_batch,
)
from protocols.wire_encode import (
    encode_batch,
)
from protocols.wire_group import (
    decode_columnar_batches,
)
from protocols.wire_layout import (
    FLAG_ZSTD,
    HEADER,
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
    SEVERITIES,
    WIRE_VERSION,
    ZSTD_LEVEL,
)
from protocols.wire_records import (
    AlertRecord,
    Batch,
    ColumnarBatch,
    PredictionRecord,
    SampleColumns,
    SampleRecord,
)
from protocols.wire_status import (
    MAX_STATUS_BYTES,
    STATUS_STATES,
    Status,
    StatusInfo,
    decode_status,
    encode_status,
)

__all__ = [
    "FLAG_ZSTD",
    "HEADER",
    "HEADER_LEN",
    "MAGIC",
    "MAX_ABS_QUANTUM_STEPS",
    "MAX_ABS_TS_MS",
    "MAX_ALERTS",
    "MAX_BODY_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_PREDICTIONS",
    "MAX_SAMPLES",
    "MAX_SEQ",
    "MAX_SIGNALS",
    "MAX_STATUS_BYTES",
    "SEVERITIES",
    "STATUS_STATES",
    "WIRE_VERSION",
    "ZSTD_LEVEL",
    "AlertRecord",
    "Batch",
    "ColumnarBatch",
    "PredictionRecord",
    "SampleColumns",
    "SampleRecord",
    "Status",
    "StatusInfo",
    "decode_batch",
    "decode_columnar_batch",
    "decode_columnar_batches",
    "decode_status",
    "encode_batch",
    "encode_status",
]
