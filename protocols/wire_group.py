"""Decoding a group of payloads at once, with the result of `decode_columnar_batch` for each.

A payload's structure (body, signal table, column shapes, predictions, alerts) is read one payload at a
time, in Python; the numbers (columns, running sums by signal, values, canonical order and sequence
numbers) are worked out once over the columns of the whole group laid end to end, each check done per
element, so a group costs a few dozen numpy calls instead of a few dozen per payload.

A payload that fails any check here, or whose samples would not decode, is decoded again alone by
`decode_columnar_batch`: its result, the `WireError` it raises included, is exactly what that says.
The group never relaxes a check; it only tells the bad payloads apart from the good ones.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

from protocols.errors import WireError
from protocols.wire_decode import (
    check_unique_seqs,
    decode_alerts,
    decode_columnar_batch,
    decode_predictions,
    read_body,
    table_names,
    table_quanta,
)
from protocols.wire_dict import Codebook
from protocols.wire_fields import vehicle_field, wire_int, wire_list
from protocols.wire_layout import (
    MAX_ABS_QUANTUM_STEPS,
    MAX_ABS_TS_MS,
    MAX_SAMPLES,
    MAX_SEQ,
    MAX_SIGNALS,
    MAX_STEP,
    MAX_TS_STEP,
    WIDTHS,
    FloatArray,
    IntArray,
)
from protocols.wire_records import AlertRecord, ColumnarBatch, PredictionRecord, SampleColumns

PASS_SAMPLES: Final = 16_384
"""Samples worked out in one numeric pass: the group's columns are cut into passes of about this many, so
its arrays stay small enough for the CPU's caches and the allocator's free lists."""

_BoolArray = npt.NDArray[np.bool_]
_Column = tuple[int, bytes]  # [width, planes] of an integer column


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a tenth of reading a payload
class _Message:
    """One payload read for its structure; the columns still as planes."""

    vehicle_id: str
    n: int
    seq_first: int
    ts_base: int
    names: tuple[str, ...]
    quanta: list[float]
    quantum_index: _Column
    bases: _Column
    counts: _Column
    first_ts: _Column
    ts_deltas: _Column
    value_deltas: _Column  # its size depends on the counts: checked with them
    exact: bytes  # likewise
    seq_steps: _Column
    predictions: tuple[PredictionRecord, ...]
    alerts: tuple[AlertRecord, ...]


def decode_columnar_batches(payloads: Sequence[bytes]) -> list[ColumnarBatch | WireError]:
    """Per payload, what `decode_columnar_batch` returns for it alone, or the `WireError` it raises."""
    results: list[ColumnarBatch | WireError | None] = [None] * len(payloads)
    read: dict[int, _Message] = {}
    reading = _Reading()
    for i, payload in enumerate(payloads):
        try:
            read[i] = _read(payload, reading)
        except WireError:
            results[i] = _alone(payload)
    for part in _passes(list(read), read):
        pending = part
        while pending:
            outcome = _decode_samples([read[i] for i in pending])
            if isinstance(outcome, set):  # positions in `pending` of the payloads that failed a check
                for k in outcome:
                    results[pending[k]] = _alone(payloads[pending[k]])
                pending = [i for k, i in enumerate(pending) if k not in outcome]
                continue
            for i, samples in zip(pending, outcome, strict=True):
                message = read[i]
                batch = ColumnarBatch(message.vehicle_id, samples, message.predictions, message.alerts)
                try:
                    check_unique_seqs(batch)
                except WireError:
                    results[i] = _alone(payloads[i])
                else:
                    results[i] = batch
            break
    decoded: list[ColumnarBatch | WireError] = []
    for result in results:
        assert result is not None  # every payload was read, or decoded alone
        decoded.append(result)
    return decoded


def _passes(indices: list[int], read: dict[int, _Message]) -> list[list[int]]:
    """`indices` cut into runs of at most `PASS_SAMPLES` samples (or one message), one numeric pass each."""
    passes: list[list[int]] = []
    size = 0
    for i in indices:
        if not passes or size + read[i].n > PASS_SAMPLES:
            passes.append([])
            size = 0
        passes[-1].append(i)
        size += read[i].n
    return passes


def _alone(payload: bytes) -> ColumnarBatch | WireError:
    try:
        return decode_columnar_batch(payload)
    except WireError as err:
        return err


@dataclass(slots=True)
class _Reading:
    """What reading a group's payloads keeps from one payload to the next (one call, one thread)."""

    decompressors: dict[int, zstandard.ZstdDecompressor] = field(default_factory=dict)
    tables: dict[tuple[int, tuple[int, ...]], tuple[str, ...]] = field(default_factory=dict)
    """Signal names by codebook and code steps: the buses of a fleet send the same tables."""


def _read(payload: bytes, reading: _Reading) -> _Message:
    """A payload's structure, as `decode_columnar_batch` checks it (the messages may differ)."""
    body, codebook = read_body(payload, reading.decompressors)
    vehicle, samples, predictions, alerts = wire_list(body, "body", 4)
    vehicle_id = vehicle_field(vehicle)
    parts = wire_list(samples, "samples", 10)
    n = wire_int(parts[0], 0, MAX_SAMPLES, "sample count")
    code_steps, spelled, distinct, quantum_index, bases = wire_list(parts[4], "signal table", 5)
    names = _table_names(code_steps, spelled, codebook, reading.tables)
    m = len(names)
    if (n == 0) != (m == 0) or n < m:
        raise WireError("signal table size does not fit the sample count")
    exact = parts[9]
    if not isinstance(exact, bytes) or len(exact) % 8:
        raise WireError("exact values: not float64 values")
    return _Message(
        vehicle_id=vehicle_id,
        n=n,
        seq_first=wire_int(parts[1], 0, MAX_SEQ, "first seq"),
        ts_base=wire_int(parts[3], -MAX_ABS_TS_MS, MAX_ABS_TS_MS, "ts base"),
        names=names,
        quanta=_table_quanta(distinct),
        quantum_index=_column(quantum_index, m),
        bases=_column(bases, m),
        counts=_column(parts[5], m),
        first_ts=_column(parts[6], m),
        ts_deltas=_column(parts[7], n - m),
        value_deltas=_column(parts[8], None),
        exact=exact,
        seq_steps=_column(parts[2], max(n - 1, 0)),
        predictions=decode_predictions(predictions),
        alerts=decode_alerts(alerts),
    )


def _table_names(
    code_steps: object,
    spelled: object,
    codebook: Codebook,
    tables: dict[tuple[int, tuple[int, ...]], tuple[str, ...]],
) -> tuple[str, ...]:
    """`wire_decode.table_names` for a table of codes alone, with its checks done a list at a time (and
    once per distinct table in `tables`)."""
    if not isinstance(code_steps, list) or spelled != [] or not set(map(type, code_steps)) <= {int}:
        return tuple(table_names(code_steps, spelled, codebook))
    key = (codebook.id, tuple(code_steps))  # exact ints only (True == 1 would share a key)
    names = tables.get(key)
    if names is None:
        codes = list(itertools.accumulate(map((1).__add__, code_steps), initial=-1))[1:]
        if code_steps and (
            min(code_steps) < 0 or codes[-1] >= len(codebook.names) or len(codes) > MAX_SIGNALS
        ):
            raise WireError("code steps out of range")
        names = tables[key] = tuple(map(codebook.names.__getitem__, codes))
    return names


def _table_quanta(distinct: object) -> list[float]:
    """`wire_decode.table_quanta`, its checks done a list at a time."""
    if not isinstance(distinct, list) or not set(map(type, distinct)) <= {float}:
        return table_quanta(distinct)
    if distinct and (
        not all(map(math.isfinite, distinct))
        or distinct[0] <= 0
        or any(map(operator.ge, distinct, distinct[1:]))
    ):
        raise WireError("quanta must be finite, positive and ascending")
    return distinct


def _column(value: object, n: int | None) -> _Column:
    """`wire_layout.column_parts` (`column_shape` when `n` is None) in one expression."""
    if (
        type(value) is list
        and len(value) == 2
        and type(value[0]) is int
        and value[0] in WIDTHS
        and type(value[1]) is bytes
        and (n is None or len(value[1]) == n * value[0])
    ):
        return value[0], value[1]
    raise WireError("bad column")


def _decode_samples(group: list[_Message]) -> list[SampleColumns] | set[int]:
    """The samples of each message, or the positions of those that fail a check (at the first check
    any message fails: the caller decodes those alone and the rest again without them).

    The same steps and checks as `wire_decode._decode_samples`, over the group's columns laid end to
    end: signals (M of them) message after message, samples (N) likewise."""
    k = len(group)
    ns = [message.n for message in group]
    ms = [len(message.names) for message in group]
    n_of = np.array(ns, dtype=np.int64)
    m_of = np.array(ms, dtype=np.int64)
    message_of_signal = np.repeat(np.arange(k), m_of)

    # Per signal: quantum, base, count and first timestamp.
    quantum_index = _join_columns([message.quantum_index for message in group], ms).view(np.uint64)
    n_quanta = np.array([len(message.quanta) for message in group], dtype=np.int64)
    if (bad := quantum_index > np.repeat(n_quanta, m_of).astype(np.uint64)).any():
        return _messages_at(bad, m_of)
    slot_base = np.cumsum(n_quanta + 1) - (n_quanta + 1)  # where each message's [0.0, *quanta] starts
    slot = np.repeat(slot_base, m_of) + quantum_index.astype(np.int64)
    unused = np.bincount(slot, minlength=int((n_quanta + 1).sum())) == 0
    unused[slot_base] = False  # slot 0 (exact) need not be used
    if unused.any():
        return _messages_at(unused, n_quanta + 1)
    quanta = np.array([q for message in group for q in (0.0, *message.quanta)], dtype=np.float64)[slot]
    bases = _join_columns([message.bases for message in group], ms, signed=True)
    counts = _join_columns([message.counts for message in group], ms).view(np.uint64)
    bad = (bases > MAX_ABS_QUANTUM_STEPS) | (bases < -MAX_ABS_QUANTUM_STEPS) | ((quanta == 0) & (bases != 0))
    bad |= (counts == 0) | (counts > np.repeat(n_of, m_of).astype(np.uint64))
    if bad.any():
        return _messages_at(bad, m_of)
    counts_i = counts.astype(np.int64)
    if (bad := np.bincount(message_of_signal, weights=counts_i, minlength=k) != n_of).any():
        return set(np.flatnonzero(bad).tolist())
    offsets = _join_columns([message.first_ts for message in group], ms).view(np.uint64)
    if (bad := offsets > MAX_TS_STEP).any():
        return _messages_at(bad, m_of)
    first_ts = np.repeat(np.array([message.ts_base for message in group], dtype=np.int64), m_of)
    first_ts += offsets.astype(np.int64)
    if (bad := first_ts > MAX_ABS_TS_MS).any():
        return _messages_at(bad, m_of)

    # The columns whose sizes the counts give.
    quantized = quanta > 0
    quantized_counts = counts_i[quantized]
    n_quantized = np.bincount(message_of_signal, weights=counts_i * quantized, minlength=k).astype(np.int64)
    m_quantized = np.bincount(message_of_signal, weights=quantized.astype(np.int64), minlength=k).astype(
        np.int64
    )
    value_sizes = (n_quantized - m_quantized).tolist()
    exact_sizes = (n_of - n_quantized).tolist()
    wrong_size = {
        i
        for i, (message, values, exacts) in enumerate(zip(group, value_sizes, exact_sizes, strict=True))
        if len(message.value_deltas[1]) != values * message.value_deltas[0]
        or len(message.exact) != 8 * exacts
    }
    if wrong_size:
        return wrong_size
    ts_deltas = _join_columns([message.ts_deltas for message in group], n_of - m_of, signed=True)
    value_deltas = _join_columns([message.value_deltas for message in group], value_sizes, signed=True)
    exact = _join_floats([message.exact for message in group], exact_sizes)

    # Signal by signal, message after message: timestamps and values.
    stamps, out_of_range = _running_by_signal(first_ts, ts_deltas, counts_i, MAX_TS_STEP, MAX_ABS_TS_MS)
    if out_of_range is not None:
        return _messages_at(out_of_range, n_of)
    zeros = np.zeros(quantized_counts.size, dtype=np.int64)  # each signal's first slope is 0, not sent
    slopes, out_of_range = _running_by_signal(zeros, value_deltas, quantized_counts, 2 * MAX_STEP, MAX_STEP)
    if out_of_range is not None:
        return _messages_at(out_of_range, n_quantized)
    # slopes are 0 at each signal's first: the steps of the next running sum as they stand (each within
    # ±MAX_STEP, checked above)
    steps, out_of_range = _running_sums(bases[quantized], slopes, quantized_counts, MAX_ABS_QUANTUM_STEPS)
    if out_of_range is not None:
        return _messages_at(out_of_range, n_quantized)
    with np.errstate(all="ignore"):
        scaled = steps.astype(np.float64) * np.repeat(quanta[quantized], quantized_counts)
    if not (finite := np.isfinite(scaled)).all():
        return _messages_at(~finite, n_quantized)
    if not exact.size:
        values = scaled
    elif not scaled.size:
        values = exact
    else:
        values = np.empty(stamps.size, dtype=np.float64)
        quantized_rows = np.repeat(quantized, counts_i)
        values[quantized_rows] = scaled
        values[~quantized_rows] = exact

    # Sequence numbers along each message's canonical order, then its samples in seq order.
    # The samples are in table order within each message: a stable sort by timestamp is its canonical order.
    canonical = _order_by_message(stamps, n_of)
    seq_steps = _join_columns([message.seq_steps for message in group], np.maximum(n_of - 1, 0), signed=True)
    if seq_steps.size and (int(seq_steps.max()) > MAX_SEQ or int(seq_steps.min()) < -MAX_SEQ - 1):
        bad = (seq_steps > MAX_SEQ) | (seq_steps < -MAX_SEQ - 1)
        return _messages_at(bad, np.maximum(n_of - 1, 0))
    runs = n_of[n_of > 0]  # one run through each message's samples
    firsts = np.array([message.seq_first for message in group if message.n], dtype=np.int64)
    seqs, out_of_range = _running_by_signal(firsts, seq_steps + 1, runs, MAX_SEQ + 1, MAX_SEQ)
    if out_of_range is not None:
        return _messages_at(out_of_range, n_of)
    if seqs.size and int(seqs.min()) < 0:
        return _messages_at(seqs < 0, n_of)
    order = canonical
    if seq_steps.size and int(seq_steps.min()) < 0:  # seq does not follow the canonical order
        by_seq = _order_by_message(seqs, n_of)  # nearly in order already: a quick sort
        order, seqs = canonical[by_seq], seqs[by_seq]
        if duplicates := _duplicates(seqs, n_of):
            return duplicates
    first_signal = np.cumsum(m_of) - m_of
    signal = np.repeat((np.arange(m_of.sum()) - np.repeat(first_signal, m_of)).astype(np.int32), counts_i)
    stamps, signal, values = stamps[order], signal[order], values[order]
    bounds = list(itertools.accumulate(ns, initial=0))
    return [
        SampleColumns(seqs[a:b], stamps[a:b], signal[a:b], values[a:b], message.names)
        for message, a, b in zip(group, bounds[:-1], bounds[1:], strict=True)
    ]


def _messages_at(bad: _BoolArray, sizes: IntArray) -> set[int]:
    """The messages of the elements where `bad` is true, laid out message after message, `sizes[i]`
    elements each."""
    return set(np.searchsorted(np.cumsum(sizes), np.flatnonzero(bad), side="right").tolist())


def _duplicates(seqs: IntArray, n_of: IntArray) -> set[int]:
    """The messages (`n_of[i]` elements each, in a row, ascending) with a seq used twice."""
    repeated = np.flatnonzero(np.diff(seqs) == 0)
    if not repeated.size:
        return set()
    ends = np.cumsum(n_of)
    message = np.searchsorted(ends, repeated, side="right")
    return set(message[message == np.searchsorted(ends, repeated + 1, side="right")].tolist())


def _running_by_signal(
    firsts: IntArray, deltas: IntArray, counts: IntArray, delta_bound: int, bound: int
) -> tuple[IntArray, _BoolArray | None]:
    """`wire_layout.running_by_signal` over a group, the firsts already checked within ±bound; with the
    elements out of range (or whose delta is), or None."""
    later = np.ones(int(counts.sum()), dtype=bool)
    later[np.cumsum(counts) - counts] = False
    steps = np.zeros(later.size, dtype=np.int64)
    steps[later] = deltas
    result, bad = _running_sums(firsts, steps, counts, bound)
    if deltas.size and (int(deltas.max()) > delta_bound or int(deltas.min()) < -delta_bound):
        bad = np.zeros(result.size, dtype=bool) if bad is None else bad
        bad[later] |= (deltas > delta_bound) | (deltas < -delta_bound)
    return result, bad


def _running_sums(
    firsts: IntArray, steps: IntArray, counts: IntArray, bound: int
) -> tuple[IntArray, _BoolArray | None]:
    """Signal after signal (`counts[k]` elements each, every count >= 1), `firsts[k]` then the running
    sum of its `steps` after the first (`steps` is 0 at each first, and becomes the result); with the
    elements out of ±bound, or None.

    One cumulative sum, each signal's first element stepping from the previous signal's last to its own
    first: exact modulo 2**64, so exact within ±bound when each step is (`running_by_signal`)."""
    if not steps.size:
        return steps, None
    starts = np.cumsum(counts) - counts
    lasts = firsts + np.add.reduceat(steps, starts)  # each signal's last element
    steps[starts] = firsts
    steps[starts[1:]] -= lasts[:-1]
    result: IntArray = np.cumsum(steps, out=steps)
    if int(result.max()) > bound or int(result.min()) < -bound:
        return result, (result > bound) | (result < -bound)
    return result, None


def _order_by_message(key: IntArray, n_of: IntArray) -> IntArray:
    """Per message (its `n_of[i]` elements in a row), the stable order of its elements by `key`: one
    sort of one int64 key over the group, each message's elements staying in its place."""
    runs = n_of[n_of > 0]
    if not runs.size:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(runs) - runs
    lows = np.minimum.reduceat(key, starts).tolist()
    highs = np.maximum.reduceat(key, starts).tolist()
    offsets = list(
        itertools.accumulate((high - low + 1 for low, high in zip(lows, highs, strict=True)), initial=0)
    )
    if offsets[-1] >= 2**63:  # too wide for one int64 key
        return np.lexsort((key, np.repeat(np.arange(runs.size), runs)))
    # offset + key - low, in int64 arithmetic that may wrap before it lands within [0, 2**63)
    shifts = [(offset - low + 2**63) % 2**64 - 2**63 for offset, low in zip(offsets[:-1], lows, strict=True)]
    combined = key + np.repeat(np.array(shifts, dtype=np.int64), runs)
    if offsets[-1] > 2**32:
        return np.argsort(combined, kind="stable")
    # A stable sort of 16-bit keys is a radix sort: by the low half, then stably by the high half.
    order = np.argsort(combined.astype(np.uint16), kind="stable")
    if offsets[-1] > 2**16:
        order = order[np.argsort((combined >> 16).astype(np.uint16)[order], kind="stable")]
    return order


def _join_columns(
    columns: Sequence[_Column], sizes: Sequence[int] | IntArray, *, signed: bool = False
) -> IntArray:
    """Integer columns of `sizes[i]` elements each (`column_parts` checked), unpacked one after another;
    zigzag-decoded when `signed`."""
    sizes = [int(size) for size in sizes]
    widths = {width for width, _ in columns}
    if len(widths) <= 1:
        return _unpack_joined([planes for _, planes in columns], sum(sizes), max(widths, default=0), signed)
    joined = np.zeros(sum(sizes), dtype=np.int64)
    starts = list(itertools.accumulate(sizes, initial=0))
    for width in widths - {0}:
        members = [i for i, (w, _) in enumerate(columns) if w == width]
        member_sizes = np.array([sizes[i] for i in members], dtype=np.int64)
        values = _unpack_joined([columns[i][1] for i in members], int(member_sizes.sum()), width, signed)
        shift = np.array([starts[i] for i in members], dtype=np.int64) - (
            np.cumsum(member_sizes) - member_sizes
        )
        joined[np.arange(values.size) + np.repeat(shift, member_sizes)] = values
    return joined


def _unpack_joined(planes: list[bytes], n: int, width: int, signed: bool) -> IntArray:
    """Columns of one width, `planes` theirs, `n` elements in all, unpacked one after another, as int64
    (an unsigned element of 8 bytes wraps; the caller compares its bit pattern as uint64)."""
    if width == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    unsigned = np.dtype(f"u{width}")
    if width == 1:
        values = np.frombuffer(b"".join(planes), dtype=np.uint8)
    else:
        stacked = np.concatenate(
            [np.frombuffer(p, dtype=np.uint8).reshape(width, -1) for p in planes], axis=1
        )
        values = stacked[0].astype(unsigned)
        for plane in range(1, width):
            values |= stacked[plane].astype(unsigned) << (8 * plane)
    if signed:  # zigzag: 2k → k, 2k + 1 → -k - 1, in the column's own width
        values = ((values >> 1) ^ -(values & 1)).view(f"i{width}")
    return values.astype(np.int64)


def _join_floats(planes: list[bytes], sizes: list[int]) -> FloatArray:
    if sum(sizes) == 0:
        return np.zeros(0, dtype=np.float64)
    rows = [np.frombuffer(p, dtype=np.uint8).reshape(8, -1) for p in planes]
    raw = np.ascontiguousarray(np.concatenate(rows, axis=1).T)  # one row of 8 bytes per value
    return raw.view("<f8").reshape(-1).astype(np.float64)
