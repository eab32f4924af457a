"""Samples laid out as blocks of one signal and one UTC minute, and de-duplication within a group."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from cloud.blocks import blocks_of, unrepeated
from cloud.ingest import BatchMessage
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, SampleColumns, SampleRecord

T0_MS = int(datetime(2024, 5, 14, 10, 0, 30, tzinfo=UTC).timestamp() * 1000)


def message(vehicle: str, records: list[tuple[int, int, str, float]]) -> BatchMessage:
    batch = Batch(vehicle, samples=tuple(SampleRecord(*r) for r in records))
    return BatchMessage.of(
        telemetry_topic("f1", vehicle), "f1", TopicKind.TELEMETRY, batch, datetime.now(UTC), 1
    )


def test_blocks_hold_one_signal_and_one_minute_in_time_order_with_exact_aggregates() -> None:
    # GIVEN two signals sampled every 10 s for 90 s from 10:00:30, recorded out of order
    records = [
        (i * 2 + k, T0_MS + i * 10_000, name, float(i * (k + 1)))
        for i in range(9)
        for k, name in enumerate(("Vehicle.Speed", "Vehicle.Soc"))
    ]
    columns = message("bus-1", records[::-1]).samples

    blocks = blocks_of(columns)

    # THEN each signal splits at 10:01:00 into a 3-sample and a 6-sample block
    assert len(blocks) == 4
    assert (blocks.stop - blocks.start).tolist() == [3, 6, 3, 6]
    for k in range(len(blocks)):
        part = slice(int(blocks.start[k]), int(blocks.stop[k]))
        ts = blocks.ts_ms[part]
        assert np.all(np.diff(ts) > 0)
        assert len(set((ts // 60_000).tolist())) == 1
        values = blocks.value[part]
        assert (blocks.total[k], blocks.min_value[k], blocks.max_value[k]) == (
            values.sum(),
            values.min(),
            values.max(),
        )
    speed = blocks.signals.index("Vehicle.Speed")
    first = int(blocks.start[blocks.signal_index == speed][0])
    assert blocks.seq[first] == 0 and blocks.ts_ms[first] == T0_MS


def test_blocks_of_no_samples_is_empty() -> None:
    assert len(blocks_of(SampleColumns.of([]))) == 0


def test_a_group_keeps_each_vehicle_sample_once_even_when_re_sent_in_another_batch() -> None:
    # GIVEN a batch, then the agent re-sending part of it inside a larger batch, and another bus
    first = message("bus-1", [(s, T0_MS + s * 1000, "Vehicle.Speed", 1.0) for s in range(0, 60)])
    resent = message("bus-1", [(s, T0_MS + s * 1000, "Vehicle.Speed", 1.0) for s in range(30, 90)])
    other_bus = message("bus-2", [(s, T0_MS + s * 1000, "Vehicle.Speed", 1.0) for s in range(0, 60)])
    # the same seq with another ts is another sample (the agent lost its buffer and started again)
    restarted = message("bus-1", [(s, T0_MS + 86_400_000 + s, "Vehicle.Speed", 1.0) for s in range(0, 5)])

    kept = unrepeated([first, resent, other_bus, restarted])

    assert [len(c) for c in kept] == [60, 30, 60, 5]
    assert kept[1].seq.tolist() == list(range(60, 90))
    assert kept[0] is first.samples and kept[2] is other_bus.samples  # untouched, not copied
