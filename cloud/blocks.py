"""A message's samples laid out as `sample_blocks` rows, and de-duplication inside one write group.

A block holds the samples of one signal in one UTC minute of one message, in (ts, seq) order, with
their count, sum, minimum and maximum; the store COPYs blocks and PostgreSQL never sees a row per
sample (cloud/sql/0003_sample_blocks.native.sql says why). Everything here is numpy over the
message's `SampleColumns`: no Python object per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud.ingest import BatchMessage
from protocols.wire import SampleColumns

MS_PER_MINUTE = 60_000


@dataclass(frozen=True, slots=True)
class Blocks:
    """One message's samples sorted by (signal, minute, ts, seq); block b is positions start[b]:stop[b]."""

    signals: tuple[str, ...]
    seq: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    signal_index: npt.NDArray[np.int32]  # per block, into `signals`
    start: npt.NDArray[np.int64]
    stop: npt.NDArray[np.int64]
    total: npt.NDArray[np.float64]
    min_value: npt.NDArray[np.float64]
    max_value: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.start)


def blocks_of(columns: SampleColumns) -> Blocks:
    """Split a message's samples into blocks of one signal and one UTC minute."""
    minute = columns.ts_ms // MS_PER_MINUTE  # timestamps are past 1970 (ingest's plausibility window)
    order = np.lexsort((columns.seq, columns.ts_ms, minute, columns.signal_index))  # last key sorts first
    signal_index, minute = columns.signal_index[order], minute[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (signal_index[1:] != signal_index[:-1]) | (minute[1:] != minute[:-1])
    start = np.flatnonzero(first).astype(np.int64)
    stop = np.append(start[1:], len(order)).astype(np.int64)
    value = columns.value[order]
    return Blocks(
        signals=columns.signals,
        seq=columns.seq[order],
        ts_ms=columns.ts_ms[order],
        value=value,
        signal_index=signal_index[start],
        start=start,
        stop=stop,
        total=np.add.reduceat(value, start) if len(start) else value[:0],
        min_value=np.minimum.reduceat(value, start) if len(start) else value[:0],
        max_value=np.maximum.reduceat(value, start) if len(start) else value[:0],
    )


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
