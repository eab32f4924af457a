"""The binary COPY rows of `stage_blocks` and `stage_latest`: one message's blocks
(cloud/blocks.py) laid out with numpy straight into PostgreSQL's binary COPY format, with no Python
work per block or sample. `cloud.sample_store` stages them between `COPY_SIGNATURE` and `COPY_TRAILER`.

A row is a sequence of fields, each a 4-byte length and its bytes. Each field here comes as one
stream of equal-width units for all rows (row r's units contiguous, rows in order) and its count of
units per row; `interleave` scatters the streams into rows, one fancy-indexed copy per field.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud.blocks import Blocks

# PostgreSQL's binary COPY format (the "COPY" page of its manual) and binary array format (array_recv).
COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # no flags, no extension
COPY_TRAILER: Final = struct.pack(">h", -1)
_OID_INT4: Final = 23
_OID_INT8: Final = 20
_OID_FLOAT8: Final = 701
_OID_TIMESTAMPTZ: Final = 1184
_PG_EPOCH_MS: Final = 946_684_800_000  # timestamptz counts microseconds from 2000-01-01 00:00 UTC

Bytes = npt.NDArray[np.uint8]
Lengths = npt.NDArray[np.int64]
Field = tuple[Bytes, Lengths]  # units (2-D: unit, byte), and how many units each row has


def interleave(fields: Sequence[Field], rows: int) -> bytes:
    """The rows: each row's units of every field, in field order."""
    row_len = np.zeros(rows, dtype=np.int64)
    for units, counts in fields:
        row_len += counts * units.shape[1]
    at = np.concatenate(([0], np.cumsum(row_len)[:-1])).astype(np.int64)
    out = np.empty(int(row_len.sum()), dtype=np.uint8)
    for units, counts in fields:
        width = units.shape[1]
        if len(units) == rows and np.all(counts == 1):
            out[at[:, None] + np.arange(width)] = units  # one unit per row
        elif len(units):
            first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
            # unit k of row r goes to at[r] + (k - first[r]) * width
            dst = np.repeat(at - first * width, counts) + np.arange(len(units)) * width
            out[dst[:, None] + np.arange(width)] = units
        at += counts * width
    return out.tobytes()


def _records(array: npt.NDArray[np.void]) -> Bytes:
    return array.view(np.uint8).reshape(len(array), array.dtype.itemsize)


def fixed(values: npt.NDArray[np.generic], pg_dtype: str) -> Field:
    """A fixed-width column (one value per row): its length and big-endian value per row."""
    rows = np.empty(len(values), dtype=[("length", ">i4"), ("value", pg_dtype)])
    rows["length"] = np.dtype(pg_dtype).itemsize
    rows["value"] = values
    return _records(rows), np.ones(len(values), dtype=np.int64)


def field_count(count: int, rows: int) -> Field:
    return np.tile(np.frombuffer(struct.pack(">h", count), dtype=np.uint8), (rows, 1)), np.ones(
        rows, np.int64
    )


def texts(names: Sequence[str], index: npt.NDArray[np.int64]) -> Field:
    """One text per row: names[index[r]] (units of one byte)."""
    encoded = [struct.pack(">i", len(b)) + b for b in (name.encode() for name in names)]
    pool = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    length = np.array([len(e) for e in encoded], dtype=np.int64)
    pool_at = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)
    lengths = length[index]
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pool[np.repeat(pool_at[index], lengths) + within].reshape(-1, 1), lengths


def _array_heads(n: Lengths, body: Lengths, oid: int, has_null: bool) -> npt.NDArray[np.void]:
    heads = np.zeros(len(n), dtype=[("length", ">i4"), ("ndim", ">i4"), ("has_null", ">i4"), ("oid", ">i4"),
                                    ("n", ">i4"), ("lower", ">i4")])  # fmt: skip
    heads["length"] = 20 + body
    heads["ndim"], heads["has_null"], heads["oid"], heads["n"], heads["lower"] = 1, int(has_null), oid, n, 1
    return heads


def arrays(values: npt.NDArray[np.generic], pg_dtype: str, oid: int, n: Lengths) -> list[Field]:
    """One array of a fixed-width type per row (`pg_dtype`: its big-endian numpy type, `oid`: its
    element type), row r holding the next n[r] values: its head, then its elements."""
    elements = np.empty(len(values), dtype=[("length", ">i4"), ("value", pg_dtype)])
    elements["length"], elements["value"] = np.dtype(pg_dtype).itemsize, values
    heads = _array_heads(n, elements.dtype.itemsize * n, oid, False)
    return [(_records(heads), np.ones(len(n), dtype=np.int64)), (_records(elements), n)]


def float8_arrays_or_null(
    values: npt.NDArray[np.float64], present: npt.NDArray[np.bool_], n: Lengths
) -> list[Field]:
    """One float8[] per row, row r over the next n[r] values, its elements NULL where not `present`;
    NULL instead of an array for a row with no value present. Units of 4 bytes: a head is 6 (a NULL
    field 1), a value 3 (its length and 8 bytes), a NULL element 1 (its length, -1)."""
    if not present.any():  # the usual `exact`: every sample on the scaled path, every row NULL
        null = np.frombuffer(struct.pack(">i", -1), dtype=np.uint8)
        return [(np.tile(null, (len(n), 1)), np.ones(len(n), dtype=np.int64))]
    row = np.repeat(np.arange(len(n)), n)
    has_array = np.bincount(row, weights=present, minlength=len(n)) > 0
    elements = np.empty(len(values), dtype=[("length", ">i4"), ("value", ">f8")])
    elements["length"], elements["value"] = np.where(present, 8, -1), values  # a NULL is its length -1
    units_per_element = np.where(has_array[row], np.where(present, 3, 1), 0).astype(np.int64)
    body_units = np.bincount(row, weights=units_per_element, minlength=len(n)).astype(np.int64)
    heads = _array_heads(n, 4 * body_units, _OID_FLOAT8, True)
    heads["length"] = np.where(has_array, heads["length"], -1)  # a NULL field: its length -1, no bytes
    head_units = np.where(has_array, 6, 1).astype(np.int64)
    return [
        (_units(_records(heads), head_units), head_units),
        (_units(_records(elements), units_per_element), body_units),
    ]


def _units(records: Bytes, counts: Lengths) -> Bytes:
    """The first counts[i] 4-byte units of each record i, as rows of 4 bytes."""
    quads = records.reshape(len(records), -1, 4)
    keep = np.arange(quads.shape[1]) < counts[:, None]
    picked: Bytes = quads[keep]
    return picked


def _micros(ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (ms - _PG_EPOCH_MS) * 1000  # within the plausibility window: no overflow


def byteas(data: Bytes, lengths: Lengths) -> list[Field]:
    """One bytea per row, row r the next lengths[r] bytes of `data`."""
    heads = np.empty(len(lengths), dtype=[("length", ">i4")])
    heads["length"] = lengths
    return [(_records(heads), np.ones(len(lengths), dtype=np.int64)), (data.reshape(-1, 1), lengths)]


def block_rows(vehicles: Sequence[str], b: Blocks) -> bytes:
    """COPY rows of stage_blocks (block_no, vehicle_id, minute, seq_min, seq_max, ts_first, ts_last,
    n, signals, code, exact, stat_signals, stat_n, stat_total, stat_min, stat_max) for a group's blocks;
    `vehicles`: each message's vehicle. The stat_ arrays: the block's rollup statistics side by side,
    one element per signal name (its float-path id)."""
    blocks = len(b)
    n = b.stop - b.start
    stats = np.bincount(b.stat_block, minlength=blocks).astype(np.int64)
    return interleave(
        [
            field_count(16, blocks),
            fixed(np.arange(blocks), ">i4"),
            texts(vehicles, b.message),
            fixed(_micros(b.minute_ms), ">i8"),
            fixed(b.seq_min, ">i8"),
            fixed(b.seq_max, ">i8"),
            fixed(_micros(b.ts_first_ms), ">i8"),
            fixed(_micros(b.ts_last_ms), ">i8"),
            fixed(n, ">i4"),
            *arrays(b.signal_list, ">i4", _OID_INT4, b.signal_count),
            *byteas(b.code, b.code_size),
            *float8_arrays_or_null(b.exact, ~b.scaled, n),
            *arrays(b.stat_signal, ">i4", _OID_INT4, stats),
            *arrays(b.stat_n, ">i4", _OID_INT4, stats),
            *arrays(b.stat_total, ">f8", _OID_FLOAT8, stats),
            *arrays(b.stat_min, ">f8", _OID_FLOAT8, stats),
            *arrays(b.stat_max, ">f8", _OID_FLOAT8, stats),
        ],
        blocks,
    )


def latest_rows(
    vehicles: Sequence[str],
    vehicle_of_message: npt.NDArray[np.int64],
    b: Blocks,
    latest: npt.NDArray[np.int64],
) -> bytes:
    """COPY rows of stage_latest (vehicle_id, signals, ts, seq, value): per vehicle of the group, its
    latest sample of each signal side by side in arrays, by signal id (`latest`: those statistics
    entries of `b`, ordered by vehicle and signal, `group_latest`; `vehicle_of_message` numbers
    the messages' vehicles by their position in `vehicles`). A signal by its float-path id, which
    stands for its name."""
    vehicle = vehicle_of_message[b.message[b.stat_block[latest]]]
    present = np.flatnonzero(np.bincount(vehicle, minlength=len(vehicles)))
    n = np.bincount(vehicle, minlength=len(vehicles))[present].astype(np.int64)
    rows = len(present)
    return interleave(
        [
            field_count(5, rows),
            texts(vehicles, present),
            *arrays(b.stat_signal[latest], ">i4", _OID_INT4, n),
            *arrays(_micros(b.stat_last_ts_ms[latest]), ">i8", _OID_TIMESTAMPTZ, n),
            *arrays(b.stat_last_seq[latest], ">i8", _OID_INT8, n),
            *arrays(b.stat_last_value[latest], ">f8", _OID_FLOAT8, n),
        ],
        rows,
    )
