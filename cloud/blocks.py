"""A message's samples laid out as `sample_blocks` rows, and de-duplication inside one write group.

A block holds one vehicle's samples of one UTC minute from one message, all signals, in (signal id,
ts, seq) order: a run per signal, coded as its first sample and the differences from the sample
before (cloud/sql/0008_signal_blocks.native.sql says why, 0013_run_code.sql how). A sample takes the
scaled path (its value as integer steps of its signal's quantum) when quantum * steps gives its value
back bit for bit, else the float path (the value as it is). Per block and signal the n / total / min /
max of the samples go to the rollup log. Everything here is numpy over the message's `SampleColumns`:
no Python object per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud.ingest import BatchMessage
from protocols.wire import SampleColumns

MS_PER_MINUTE: Final = 60_000
STEP_LIMIT: Final = 1 << 30  # steps at most this far from zero: their differences fit int4
SEQ_SPAN_BITS: Final = 30  # a block's seqs share seq >> 30: their differences fit int4


CODE_FIELDS: Final = 6  # in `code`: per run 3 (count, first ts, base steps), per sample 3 (block_code)
HEAD_BYTES: Final = 8  # a block's code starts with its fields' widths and its tick (block_code)
RUN_CODE: Final = 128  # added to the first width: tells this code from 0010's (whose first byte is a width)


@dataclass(frozen=True, slots=True)
class Blocks:
    """A group's samples in block order; block b is positions start[b]:stop[b]."""

    message: npt.NDArray[np.int64]  # per block: index into the group
    minute_ms: npt.NDArray[np.int64]
    seq_min: npt.NDArray[np.int64]
    seq_max: npt.NDArray[np.int64]
    ts_first_ms: npt.NDArray[np.int64]
    ts_last_ms: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    stop: npt.NDArray[np.int64]
    signal_list: npt.NDArray[np.int32]  # per block its distinct signal ids, ascending, one after the other
    signal_count: npt.NDArray[np.int64]  # how many per block
    code: npt.NDArray[np.uint8]  # per block code_size bytes, one after the other
    code_size: npt.NDArray[np.int64]
    exact: npt.NDArray[np.float64]  # per sample, block order; meaningful where `scaled` is false
    scaled: npt.NDArray[np.bool_]
    # rollup statistics, one entry per block and signal name (block order)
    stat_block: npt.NDArray[np.int64]
    stat_signal: npt.NDArray[np.int32]  # the signal's float-path id: stands for its name
    stat_n: npt.NDArray[np.int64]
    stat_total: npt.NDArray[np.float64]
    stat_min: npt.NDArray[np.float64]
    stat_max: npt.NDArray[np.float64]
    stat_last_ts_ms: npt.NDArray[np.int64]  # the block's latest sample of the signal (by ts, then seq)
    stat_last_seq: npt.NDArray[np.int64]
    stat_last_value: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.start)


@dataclass(frozen=True, slots=True)
class GroupSamples:
    """A write group's samples as one set of columns: per sample its message (index into the group),
    seq, ts, value, its signal's quantum (NaN: none) and its signal's two ids in `sample_signals`
    (scaled path, float path; the float path's id stands for the signal's name)."""

    message: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quantum: npt.NDArray[np.float64]
    scaled_id: npt.NDArray[np.int32]
    float_id: npt.NDArray[np.int32]

    @classmethod
    def of(
        cls,
        messages: Sequence[SampleColumns],
        signal_table: Callable[
            [Sequence[str]], tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.int32]]
        ],
    ) -> GroupSamples:
        """The samples of `messages`; `signal_table` gives per signal name its quantum and ids. The
        messages of one agent version mostly carry the same name table: each distinct one is looked up
        once."""
        tables: dict[tuple[str, ...], int] = {}  # distinct name table -> its offset in `names`
        size = 0
        for m in messages:
            if m.signals not in tables:
                tables[m.signals] = size
                size += len(m.signals)
        names = [name for table in tables for name in table]
        quantum, scaled_id, float_id = signal_table(names)
        offset = [tables[m.signals] for m in messages]
        index = np.concatenate(
            [m.signal_index + k for m, k in zip(messages, offset, strict=True)] or [np.zeros(0, np.int64)]
        )
        return cls(
            message=np.repeat(np.arange(len(messages)), [len(m) for m in messages]).astype(np.int64),
            seq=np.concatenate([m.seq for m in messages] or [np.zeros(0, np.int64)]),
            ts_ms=np.concatenate([m.ts_ms for m in messages] or [np.zeros(0, np.int64)]),
            value=np.concatenate([m.value for m in messages] or [np.zeros(0, np.float64)]),
            quantum=quantum[index] if len(quantum) else np.zeros(0, np.float64),
            scaled_id=scaled_id[index] if len(scaled_id) else np.zeros(0, np.int32),
            float_id=float_id[index] if len(float_id) else np.zeros(0, np.int32),
        )

    def __len__(self) -> int:
        return len(self.seq)


def scaled_steps(
    value: npt.NDArray[np.float64], quantum: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per sample, its value in steps of its quantum (NaN: none) and whether those steps give the
    value back exactly; steps are 0 where they do not."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        steps = np.rint(value / quantum)
        ok = np.isfinite(steps) & (np.abs(steps) < STEP_LIMIT)
        steps = np.where(ok, steps, 0.0) + 0.0  # + 0.0: a step of -0.0 is stored as 0
        back = steps * quantum  # as the database computes it from the stored steps
    ok &= back.view(np.int64) == value.view(np.int64)  # bit for bit: -0.0 stays on the float path
    return np.where(ok, steps, 0.0).astype(np.int64), ok


def blocks_of(samples: GroupSamples) -> Blocks:
    """Lay a group's samples out as blocks: one per message, UTC minute and seq >> 30."""
    steps, scaled = scaled_steps(samples.value, samples.quantum)
    signal_id = np.where(scaled, samples.scaled_id, samples.float_id)
    minute = samples.ts_ms // MS_PER_MINUTE  # timestamps are past 1970 (ingest's plausibility window)
    span = samples.seq >> SEQ_SPAN_BITS
    # last key sorts first
    order = np.lexsort((samples.seq, samples.ts_ms, signal_id, span, minute, samples.message))
    message, minute, span = samples.message[order], minute[order], span[order]
    seq, ts, steps, signal_id = samples.seq[order], samples.ts_ms[order], steps[order], signal_id[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (message[1:] != message[:-1]) | (minute[1:] != minute[:-1]) | (span[1:] != span[:-1])
    start = np.flatnonzero(first).astype(np.int64)
    stop = np.append(start[1:], len(order)).astype(np.int64)
    n = stop - start
    empty = not len(start)
    block_of_sample = np.repeat(np.arange(len(start)), n)
    seq_min = seq[:0] if empty else np.minimum.reduceat(seq, start)
    block_minute_ms = minute[start] * MS_PER_MINUTE
    runs = first.copy()
    runs[1:] |= signal_id[1:] != signal_id[:-1]
    value = samples.value[order]
    code, code_size = block_code(
        start, n, signal_id, seq - seq_min[block_of_sample], ts - block_minute_ms[block_of_sample], steps
    )
    stats = _statistics(block_of_sample, samples.float_id[order], value, ts, seq)
    return Blocks(
        message=message[start],
        minute_ms=block_minute_ms,
        seq_min=seq_min,
        seq_max=seq[:0] if empty else np.maximum.reduceat(seq, start),
        ts_first_ms=ts[:0] if empty else np.minimum.reduceat(ts, start),
        ts_last_ms=ts[:0] if empty else np.maximum.reduceat(ts, start),
        start=start,
        stop=stop,
        signal_list=signal_id[runs].astype(np.int32),
        signal_count=np.bincount(block_of_sample[runs], minlength=len(start)).astype(np.int64),
        code=code,
        code_size=code_size,
        exact=value,
        scaled=scaled[order],
        stat_block=stats[0],
        stat_signal=stats[1],
        stat_n=stats[2],
        stat_total=stats[3],
        stat_min=stats[4],
        stat_max=stats[5],
        stat_last_ts_ms=stats[6],
        stat_last_seq=stats[7],
        stat_last_value=stats[8],
    )


def block_code(
    start: npt.NDArray[np.int64],
    n: npt.NDArray[np.int64],
    signal_id: npt.NDArray[np.int32],
    seq_offset: npt.NDArray[np.int64],
    ts_offset_ms: npt.NDArray[np.int64],
    steps: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The `code` of every block (samples in block order; offsets from the block's seq_min and
    minute), one after the other, and each block's length in bytes (cloud/sql/0013_run_code.sql).

    A block's samples are runs, one per signal (ids ascending: the block's `signals`). Six int32
    fields, each zigzag-coded (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...); the first three have one entry
    per run, the fourth one per sample, the last two one per sample after its run's first:
      count   the run's samples
      first   the ticks of the run's first sample since the minute; a tick is the block's greatest
              common divisor of its samples' ms since the minute (1 when all are 0)
      base    the run's first steps (0 on the float path)
      seq     the sample's offset minus its rank in (ts, position) order: 0 where seq follows time
      ts      ticks since the sample before it in its run
      steps   steps minus the sample before it in its run
    A field's codes take `width` bytes (0 to 4: as many as its largest needs), split into byte planes:
    the entries' lowest bytes, then their second bytes, ... A block's code is an 8-byte head (the six
    widths, the first plus RUN_CODE; the tick as uint16 little-endian), then the planes of each field
    in order. The run heads
    apart from the per-sample differences keep those narrow: a run's first value is far from the
    previous run's last (bench/storage_layout.py measures the bytes)."""
    blocks = len(start)
    total = len(signal_id)
    block_of_sample = np.repeat(np.arange(blocks), n)
    position = np.arange(total) - start[block_of_sample]
    by_time = np.lexsort((position, ts_offset_ms, block_of_sample))
    rank = np.empty(total, dtype=np.int64)
    rank[by_time] = np.arange(total) - start[block_of_sample[by_time]]
    tick = np.gcd.reduceat(ts_offset_ms, start) if blocks else np.zeros(0, np.int64)
    tick[tick == 0] = 1
    ticks = ts_offset_ms // tick[block_of_sample]
    first = np.ones(total, dtype=bool)
    first[1:] = signal_id[1:] != signal_id[:-1]
    first[start] = True
    run_start = np.flatnonzero(first)
    runs = np.bincount(block_of_sample[run_start], minlength=blocks).astype(np.int64)
    later = ~first
    run_block, later_block = block_of_sample[run_start], block_of_sample[later]
    fields = (  # (values, block of each entry, entries per block)
        (np.diff(np.append(run_start, total)), run_block, runs),
        (ticks[run_start], run_block, runs),
        (steps[run_start], run_block, runs),
        (seq_offset - rank, block_of_sample, n),
        (_since_previous(ticks)[later], later_block, n - runs),
        (_since_previous(steps)[later], later_block, n - runs),
    )
    zigzags, widths = [], []
    for values, _, count in fields:
        as_int = values.astype(np.int32)
        zigzag = ((as_int << 1) ^ (as_int >> 31)).astype("<u4")
        largest = _largest(zigzag, count)
        zigzags.append(zigzag)
        widths.append(
            (largest > 0).astype(np.int64) + (largest > 0xFF) + (largest > 0xFFFF) + (largest > 0xFFFFFF)
        )
    width = np.stack(widths, axis=1)  # block, field
    entries = np.stack([count for _, _, count in fields], axis=1)
    plane_bytes = width * entries
    size = HEAD_BYTES + plane_bytes.sum(axis=1)
    code_at = (np.cumsum(size) - size).astype(np.int64)
    out = np.empty(int(size.sum()), dtype=np.uint8)
    head = np.concatenate([width, tick[:, None] & 0xFF, tick[:, None] >> 8], axis=1)
    head[:, 0] |= RUN_CODE
    out[code_at[:, None] + np.arange(HEAD_BYTES)] = head
    field_at = code_at + HEAD_BYTES  # the field's planes of each block start here
    for (_, entry_block, count), zigzag, w, planes in zip(
        fields, zigzags, width.T, plane_bytes.T, strict=True
    ):
        entry_start = np.cumsum(count) - count
        entry_position = np.arange(len(entry_block)) - entry_start[entry_block]
        data = zigzag.view(np.uint8).reshape(len(zigzag), 4)
        entry_width, entry_count = w[entry_block], count[entry_block]
        first_byte = field_at[entry_block] + entry_position
        for k in range(int(w.max(initial=0))):  # byte planes beyond the widest block's hold nothing
            kept = k < entry_width
            out[first_byte[kept] + k * entry_count[kept]] = data[kept, k]
        field_at = field_at + planes
    return out, size.astype(np.int64)


def _largest(zigzag: npt.NDArray[np.uint32], count: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """The largest of each block's `count` entries (entries block after block); 0 for none."""
    at = np.cumsum(count) - count
    if not len(at):
        return np.zeros(0, dtype=np.uint32)
    largest = np.maximum.reduceat(np.append(zigzag, np.uint32(0)), at)  # the 0: a last block of none
    largest[count == 0] = 0
    return largest


def _since_previous(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each value minus the one before it (the first: minus 0)."""
    out = values.copy()
    out[1:] -= values[:-1]
    return out


def _statistics(
    block_of_sample: npt.NDArray[np.int64],
    name: npt.NDArray[np.int32],
    value: npt.NDArray[np.float64],
    ts_ms: npt.NDArray[np.int64],
    seq: npt.NDArray[np.int64],
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
]:
    """Per block and signal name (both paths of a signal are one name, keyed by its float-path id):
    block, name, n, total, min and max of the values, and the ts, seq and value of its latest sample
    (the receiver's latest-value table, cloud/sql/0016_latest_values.sql)."""
    latest = np.lexsort((seq, ts_ms, name, block_of_sample))  # the same groups, each by time last
    by_signal = np.lexsort((name, block_of_sample))
    key_block, key_name = block_of_sample[by_signal], name[by_signal]
    first = np.ones(len(by_signal), dtype=bool)
    first[1:] = (key_block[1:] != key_block[:-1]) | (key_name[1:] != key_name[:-1])
    start = np.flatnonzero(first)
    value = value[by_signal]
    some = len(start) > 0
    last = latest[np.append(start[1:], len(by_signal)) - 1] if some else latest[:0]
    return (
        key_block[start],
        key_name[start].astype(np.int32),
        np.diff(np.append(start, len(by_signal))),
        np.add.reduceat(value, start) if some else value[:0],
        np.minimum.reduceat(value, start) if some else value[:0],
        np.maximum.reduceat(value, start) if some else value[:0],
        ts_ms[last],
        seq[last],
        value[last],
    )


def group_latest(vehicle_of_message: npt.NDArray[np.int64], b: Blocks) -> npt.NDArray[np.int64]:
    """The statistics entries of `b` that hold a vehicle's latest sample of a signal in the whole group
    (by ts, then seq), one per vehicle and signal, ordered by vehicle, then signal id.
    `vehicle_of_message`: per message of the group, a number standing for its vehicle."""
    vehicle = vehicle_of_message[b.message[b.stat_block]]
    order = np.lexsort((b.stat_last_seq, b.stat_last_ts_ms, b.stat_signal, vehicle))
    vehicle, signal = vehicle[order], b.stat_signal[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (vehicle[1:] != vehicle[:-1]) | (signal[1:] != signal[:-1])
    latest: npt.NDArray[np.int64] = order[last]
    return latest


def unrepeated(batches: Sequence[BatchMessage]) -> list[SampleColumns]:
    """Each message's samples less those an earlier message of the same group already carries.

    The store de-duplicates against what is committed; this covers the rest: one vehicle's records
    arriving twice within one group (a redelivery, or the agent re-sending them in another batch).
    A sample is the same when its vehicle, seq and ts are. Messages whose seq ranges do not overlap
    an earlier one's of the same vehicle (the usual case) are passed through untouched.
    """
    seen: dict[str, list[SampleColumns]] = {}
    result: list[SampleColumns] = []
    for message in batches:
        columns = message.samples
        earlier = seen.setdefault(message.vehicle_id, [])
        if len(columns) and any(_ranges_meet(columns, other) for other in earlier):
            stored = {
                (int(s), int(t))
                for other in earlier
                for s, t in zip(other.seq.tolist(), other.ts_ms.tolist(), strict=True)
            }
            pairs = zip(columns.seq.tolist(), columns.ts_ms.tolist(), strict=True)
            keep = np.fromiter((pair not in stored for pair in pairs), dtype=bool, count=len(columns))
            columns = columns.where(keep)
        if len(columns):
            earlier.append(columns)
        result.append(columns)
    return result


def _ranges_meet(a: SampleColumns, b: SampleColumns) -> bool:
    return len(b) > 0 and int(a.seq.min()) <= int(b.seq.max()) and int(b.seq.min()) <= int(a.seq.max())
