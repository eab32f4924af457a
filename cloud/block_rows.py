"""The binary COPY rows of `stage_blocks` and `stage_block_stats`: one message's blocks
(cloud/blocks.py) laid out with numpy straight into PostgreSQL's binary COPY format, with no Python
work per block or sample. `cloud.sample_store` stages them between `COPY_SIGNATURE` and `COPY_TRAILER`.

A row is a sequence of fields, each a 4-byte length and its bytes. Each field here comes as one
byte stream for all rows (row r's bytes contiguous, rows in order) and its length per row;
`interleave` scatters the streams into rows.
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
_OID_FLOAT8: Final = 701
_PG_EPOCH_MS: Final = 946_684_800_000  # timestamptz counts microseconds from 2000-01-01 00:00 UTC

Bytes = npt.NDArray[np.uint8]
Lengths = npt.NDArray[np.int64]
Field = tuple[Bytes, Lengths]  # the rows' bytes one after the other, and each row's length


def interleave(fields: Sequence[Field], rows: int) -> bytes:
    """The rows: each row's bytes of every field, in field order."""
    row_len = np.zeros(rows, dtype=np.int64)
    for _, lengths in fields:
        row_len += lengths
    at = np.concatenate(([0], np.cumsum(row_len)[:-1])).astype(np.int64)
    out = np.empty(int(row_len.sum()), dtype=np.uint8)
    for data, lengths in fields:
        src = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        # byte j of row r's piece goes from src[r] + j to at[r] + j
        out[np.repeat(at - src, lengths) + np.arange(len(data))] = data
        at += lengths
    return out.tobytes()


def fixed(values: npt.NDArray[np.generic], pg_dtype: str) -> Field:
    """A fixed-width column (one value per row): its length and big-endian value per row."""
    rows = np.empty(len(values), dtype=[("length", ">i4"), ("value", pg_dtype)])
    rows["length"] = np.dtype(pg_dtype).itemsize
    rows["value"] = values
    return rows.view(np.uint8), np.full(len(values), rows.itemsize, dtype=np.int64)


def same_text(text: str, rows: int) -> Field:
    one = struct.pack(">i", len(text.encode())) + text.encode()
    return np.frombuffer(one * rows, dtype=np.uint8), np.full(rows, len(one), dtype=np.int64)


def texts(names: Sequence[str], index: npt.NDArray[np.int32]) -> Field:
    """One text per row: names[index[r]]."""
    encoded = [struct.pack(">i", len(b)) + b for b in (name.encode() for name in names)]
    pool = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    length = np.array([len(e) for e in encoded], dtype=np.int64)
    pool_at = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)
    lengths = length[index]
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pool[np.repeat(pool_at[index], lengths) + within], lengths


def _array_heads(n: Lengths, body: Lengths, oid: int, has_null: bool) -> Field:
    heads = np.zeros(len(n), dtype=[("length", ">i4"), ("ndim", ">i4"), ("has_null", ">i4"), ("oid", ">i4"),
                                    ("n", ">i4"), ("lower", ">i4")])  # fmt: skip
    heads["length"] = 20 + body
    heads["ndim"], heads["has_null"], heads["oid"], heads["n"], heads["lower"] = 1, int(has_null), oid, n, 1
    return heads.view(np.uint8), np.full(len(n), heads.itemsize, dtype=np.int64)


def int4_arrays(values: npt.NDArray[np.int32], n: Lengths) -> list[Field]:
    """One int4[] per row, row r holding the next n[r] values: its head, then its elements."""
    elements = np.empty(len(values), dtype=[("length", ">i4"), ("value", ">i4")])
    elements["length"], elements["value"] = 4, values
    return [_array_heads(n, 8 * n, _OID_INT4, False), (elements.view(np.uint8), 8 * n)]


def _prefixes(records: Bytes, sizes: Lengths) -> Bytes:
    """The first sizes[i] bytes of each equal-width record i, one after the other."""
    width = records.shape[1] if records.ndim == 2 else 0
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    picked: Bytes = records.reshape(-1)[np.repeat(np.arange(len(sizes)) * width, sizes) + within]
    return picked


def float8_arrays_or_null(
    values: npt.NDArray[np.float64], present: npt.NDArray[np.bool_], n: Lengths
) -> list[Field]:
    """One float8[] per row, row r over the next n[r] values, its elements NULL where not `present`;
    NULL instead of an array for a row with no value present."""
    row = np.repeat(np.arange(len(n)), n)
    has_array = np.bincount(row, weights=present, minlength=len(n)) > 0
    elements = np.empty(len(values), dtype=[("length", ">i4"), ("value", ">f8")])
    elements["length"], elements["value"] = np.where(present, 8, -1), values  # a NULL is its length -1
    sizes = np.where(has_array[row], np.where(present, 12, 4), 0).astype(np.int64)
    body = np.bincount(row, weights=sizes, minlength=len(n)).astype(np.int64)
    heads, _ = _array_heads(n, body, _OID_FLOAT8, True)
    heads_rows = heads.reshape(len(n), -1)
    heads_rows[~has_array, :4] = np.frombuffer(struct.pack(">i", -1), dtype=np.uint8)  # a NULL field
    head_sizes = np.where(has_array, heads_rows.shape[1], 4).astype(np.int64)
    return [
        (_prefixes(heads_rows, head_sizes), head_sizes),
        (_prefixes(elements.view(np.uint8).reshape(len(values), -1), sizes), body),
    ]


def _micros(ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (ms - _PG_EPOCH_MS) * 1000  # within the plausibility window: no overflow


def block_rows(first_block_no: int, vehicle_id: str, b: Blocks) -> bytes:
    """COPY rows of stage_blocks (block_no, vehicle_id, minute, seq_min, seq_max, ts_first, ts_last,
    n, signal, seq, ts, step, exact) for one message's blocks."""
    blocks = len(b)
    n = b.stop - b.start
    return interleave(
        [
            (
                np.frombuffer(struct.pack(">h", 13) * blocks, dtype=np.uint8),
                np.full(blocks, 2, dtype=np.int64),
            ),
            fixed(first_block_no + np.arange(blocks), ">i4"),
            same_text(vehicle_id, blocks),
            fixed(_micros(b.minute_ms), ">i8"),
            fixed(b.seq_min, ">i8"),
            fixed(b.seq_max, ">i8"),
            fixed(_micros(b.ts_first_ms), ">i8"),
            fixed(_micros(b.ts_last_ms), ">i8"),
            fixed(n, ">i4"),
            *int4_arrays(b.signal_id, n),
            *int4_arrays(b.seq_delta, n),
            *int4_arrays(b.ts_delta, n),
            *int4_arrays(b.step_delta, n),
            *float8_arrays_or_null(b.exact, ~b.scaled, n),
        ],
        blocks,
    )


def stats_rows(first_block_no: int, signals: Sequence[str], b: Blocks) -> bytes:
    """COPY rows of stage_block_stats (block_no, signal, n, total, min_value, max_value): per block
    and signal, what its samples add to the minute's rollup."""
    rows = len(b.stat_block)
    return interleave(
        [
            (np.frombuffer(struct.pack(">h", 6) * rows, dtype=np.uint8), np.full(rows, 2, dtype=np.int64)),
            fixed(first_block_no + b.stat_block, ">i4"),
            texts(signals, b.stat_signal),
            fixed(b.stat_n, ">i4"),
            fixed(b.stat_total, ">f8"),
            fixed(b.stat_min, ">f8"),
            fixed(b.stat_max, ">f8"),
        ],
        rows,
    )
