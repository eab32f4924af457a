"""The binary COPY rows of `stage_blocks`: one message's samples as sample blocks (cloud/blocks.py),
laid out with numpy straight into PostgreSQL's binary COPY format, with no Python work per block or
sample. `cloud.store` stages them with `COPY stage_blocks (block_no, seq_min, ...) FROM STDIN (FORMAT
BINARY)` between `COPY_SIGNATURE` and `COPY_TRAILER`.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud.blocks import blocks_of
from protocols.wire import SampleColumns

# PostgreSQL's binary COPY format (the "COPY" page of its manual) and binary array format (array_recv).
COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # no flags, no extension
COPY_TRAILER: Final = struct.pack(">h", -1)
_OID_INT8: Final = 20
_OID_FLOAT8: Final = 701
_OID_TIMESTAMPTZ: Final = 1184
_MICROS_PER_MINUTE: Final = 60_000_000  # the PostgreSQL epoch (2000-01-01) is on a minute, as Unix's is
_PG_EPOCH_MS: Final = 946_684_800_000  # timestamptz counts microseconds from 2000-01-01 00:00 UTC


def _field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _elements(values: npt.NDArray[np.generic], pg_dtype: str) -> npt.NDArray[np.uint8]:
    """Fixed-width binary array elements, one row of bytes each: a 4-byte length, the big-endian value."""
    elements = np.empty(len(values), dtype=[("length", ">i4"), ("value", pg_dtype)])
    elements["length"] = np.dtype(pg_dtype).itemsize
    elements["value"] = values
    return elements.view(np.uint8).reshape(len(values), -1)


# A stage_blocks COPY row: a head (field count; block_no and seq_min, each after its length), the
# vehicle and signal texts, the fixed-width fields (each after its length), and three arrays (each its
# length, a 20-byte header and 12 bytes per element).
_HEAD: Final = np.dtype(
    [("fields", ">i2"), ("l0", ">i4"), ("block_no", ">i4"), ("l1", ">i4"), ("seq_min", ">i8")]
)
_SCALARS: Final = np.dtype(
    [("l0", ">i4"), ("minute", ">i8"), ("l1", ">i4"), ("ts_first", ">i8"), ("l2", ">i4"), ("ts_last", ">i8"),
     ("l3", ">i4"), ("seq_first", ">i8"), ("l4", ">i4"), ("n", ">i4"), ("l5", ">i4"), ("total", ">f8"),
     ("l6", ">i4"), ("min_value", ">f8"), ("l7", ">i4"), ("max_value", ">f8")]
)  # fmt: skip
_ARRAY_HEAD: Final = np.dtype(
    [("length", ">i4"), ("ndim", ">i4"), ("has_null", ">i4"), ("oid", ">i4"), ("n", ">i4"), ("lower", ">i4")]
)
_ELEMENT_BYTES: Final = 12


def block_rows(first_block_no: int, vehicle_id: str, columns: SampleColumns) -> tuple[bytes, int]:
    """The COPY rows of stage_blocks for one message's samples, one per block (cloud/blocks.py), laid
    out with numpy into one buffer (no Python work per block or sample); returns them and their count."""
    b = blocks_of(columns)
    blocks = len(b)
    if not blocks:
        return b"", 0
    n = b.stop - b.start
    micros = (b.ts_ms - _PG_EPOCH_MS) * 1000  # ts is within the plausibility window: no overflow

    head = np.zeros(blocks, dtype=_HEAD)
    head["fields"], head["l0"], head["l1"] = 15, 4, 8
    head["block_no"] = first_block_no + np.arange(blocks)
    head["seq_min"] = np.minimum.reduceat(b.seq, b.start)
    vehicle = np.frombuffer(_field(vehicle_id.encode()), dtype=np.uint8)
    names = [_field(name.encode()) for name in b.signals]
    name_bytes = np.frombuffer(b"".join(names), dtype=np.uint8)
    name_len = np.array([len(x) for x in names], dtype=np.int64)
    name_at = np.concatenate(([0], np.cumsum(name_len)[:-1]))
    signal_len = name_len[b.signal_index]
    scalars = np.zeros(blocks, dtype=_SCALARS)
    for length_field in ("l0", "l1", "l2", "l3", "l5", "l6", "l7"):
        scalars[length_field] = 8
    scalars["l4"] = 4
    scalars["minute"] = micros[b.start] // _MICROS_PER_MINUTE * _MICROS_PER_MINUTE
    scalars["ts_first"], scalars["ts_last"] = micros[b.start], micros[b.stop - 1]
    scalars["seq_first"], scalars["n"] = b.seq[b.start], n
    scalars["total"], scalars["min_value"], scalars["max_value"] = b.total, b.min_value, b.max_value

    array_bytes = _ARRAY_HEAD.itemsize + _ELEMENT_BYTES * n  # one array field, with its length
    row_len = _HEAD.itemsize + len(vehicle) + signal_len + _SCALARS.itemsize + 3 * array_bytes
    row_at = np.concatenate(([0], np.cumsum(row_len)[:-1]))
    out = np.empty(int(row_len.sum()), dtype=np.uint8)

    def put(at: npt.NDArray[np.int64], rows: npt.NDArray[np.uint8]) -> None:  # equal-width rows
        out[at[:, None] + np.arange(rows.shape[1])] = rows

    put(row_at, head.view(np.uint8).reshape(blocks, -1))
    at = row_at + _HEAD.itemsize
    put(at, np.broadcast_to(vehicle, (blocks, len(vehicle))))
    at = at + len(vehicle)
    # the signal names, of unequal lengths: byte i of the run goes from its name to its block's row
    within = np.arange(int(signal_len.sum())) - np.repeat(np.cumsum(signal_len) - signal_len, signal_len)
    out[np.repeat(at, signal_len) + within] = name_bytes[
        np.repeat(name_at[b.signal_index], signal_len) + within
    ]
    at = at + signal_len
    put(at, scalars.view(np.uint8).reshape(blocks, -1))
    at = at + _SCALARS.itemsize
    block_of_sample = np.repeat(np.arange(blocks), n)
    for oid, values, pg_dtype in ((_OID_INT8, b.seq, ">i8"), (_OID_TIMESTAMPTZ, micros, ">i8"),
                                  (_OID_FLOAT8, b.value, ">f8")):  # fmt: skip
        array_head = np.zeros(blocks, dtype=_ARRAY_HEAD)
        array_head["length"] = array_bytes - 4
        array_head["ndim"], array_head["oid"], array_head["n"], array_head["lower"] = 1, oid, n, 1
        put(at, array_head.view(np.uint8).reshape(blocks, -1))
        # the elements, contiguous per block in sample order: sample i of block k lands after the header
        first = at + _ARRAY_HEAD.itemsize - _ELEMENT_BYTES * b.start
        put(first[block_of_sample] + _ELEMENT_BYTES * np.arange(len(values)), _elements(values, pg_dtype))
        at = at + array_bytes
    return out.tobytes(), blocks
