"""The hour and day rollup refresh (cloud/rollups.py) against the real database, on both flavours:
after writes and refreshes in several steps (buckets new and existing, late data into earlier hours
and days, merged blocks' rollup_log rows, data still logged), samples_1h and samples_1d equal the
aggregates computed from the stored samples themselves."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from cloud.ingest import BatchMessage
from cloud.store import Store
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, SampleRecord

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 5, 14, 22, 50, tzinfo=UTC)  # the steps cross 23:00 and midnight UTC
T0_MS = int(T0.timestamp() * 1000)
# Vehicle.Speed and the distance travel scaled (a quantum in the catalog), Test.Probe on the float path.
SIGNALS = ("Vehicle.Speed", "Vehicle.TraveledDistance", "Test.Probe")


def batch(vehicle: str, seqs: Iterable[int], *, offset_s: int = 0) -> BatchMessage:
    """One sample of each signal per seq, seq s at T0 + offset_s + s seconds, valued |s - 450| (+ the
    signal's index): falling, then rising, so later writes move the extremes of existing buckets.
    Whole values: every sum is exact whatever order it is added in."""
    samples = tuple(
        SampleRecord(s * len(SIGNALS) + k, T0_MS + (offset_s + s) * 1000 + k, name, float(abs(s - 450) + k))
        for s in seqs
        for k, name in enumerate(SIGNALS)
    )
    return BatchMessage.of(
        telemetry_topic("f1", vehicle), "f1", TopicKind.TELEMETRY, Batch(vehicle, samples=samples), T0, 10
    )


async def rows(store: Store, query: str) -> list[tuple[object, ...]]:
    cur = await store.connection.execute(query.encode())
    return await cur.fetchall()


async def scalar(store: Store, query: str) -> int:
    (row,) = await rows(store, query)
    return int(str(row[0]))


def from_samples(width: str) -> str:
    return (
        f"SELECT vehicle_id, signal, date_bin(interval '{width}', ts, timestamptz 'epoch'), count(*),"
        " sum(value), min(value), max(value) FROM samples GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )


async def assert_rollups_exact(store: Store) -> None:
    """samples_1h and samples_1d hold exactly what the stored samples sum to."""
    for view, width in (("samples_1h", "1 hour"), ("samples_1d", "1 day")):
        rollup = await rows(
            store,
            f"SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM {view} ORDER BY 1, 2, 3",
        )
        assert rollup == await rows(store, from_samples(width)), view


async def refresh(store: Store) -> int:
    """One refresh; it takes every logged minute row once and leaves the reads as they were."""
    logged = await scalar(store, "SELECT count(*) FROM rollup_log_minutes")
    taken = await store.refresh_rollups(keep_days=False)
    assert taken == logged
    assert await scalar(store, "SELECT count(*) FROM rollup_log_minutes") == 0
    await assert_rollups_exact(store)
    return taken


async def test_hours_and_days_equal_the_samples_after_refreshes_of_new_existing_late_and_merged_data(
    store: Store,
) -> None:
    # GIVEN two buses' first five minutes (22:50-22:55), bus-a's with a gap (seqs 100-119 not sent)
    await store.write([batch("bus-a", [*range(0, 100), *range(120, 300)]), batch("bus-b", range(0, 300))])
    await assert_rollups_exact(store)  # current before any refresh (the views add the logs)

    # WHEN refreshed: every hour and day row is new
    assert await refresh(store) > 0
    assert await scalar(store, "SELECT count(*) FROM rollup_1h") == 2 * len(SIGNALS)

    # WHEN the buses go on across 23:00 (the 22:00 rows exist, the 23:00 ones are new), refreshed
    await store.write([batch("bus-a", range(300, 900)), batch("bus-b", range(300, 600))])
    await refresh(store)
    assert await scalar(store, "SELECT count(*) FROM rollup_1h") == 3 * len(SIGNALS)

    # WHEN late data arrives: bus-a's gap re-sent with samples around it (merged into the stored
    # block of that minute: rollup_log rows) and its samples of ten minutes before its first (a new
    # block: the same hour in rollup_block_log), bus-b's samples of an earlier hour and of the day
    # before; in the same write groups a third bus's first, past midnight
    await store.write(
        [
            batch("bus-a", range(95, 125)),
            batch("bus-a", range(10000, 10030), offset_s=-10000 - 600),  # 22:40, whole: 22:00 in both logs
            batch("bus-b", range(5000, 5060), offset_s=-5000 - 3 * 3600),  # 19:50, the same day
            batch("bus-c", range(0, 120), offset_s=4200),  # 00:00 to 00:02 on 15 May
        ]
    )
    await store.write(
        [batch("bus-b", range(6000, 6030), offset_s=-6000 - 86_400), batch("bus-c", range(120, 900))]
    )
    assert await scalar(store, "SELECT count(*) FROM rollup_log") > 0  # the merged block's
    assert await scalar(store, "SELECT count(*) FROM rollup_block_log") > 0
    await refresh(store)

    # WHEN more arrives and is still logged: the reads add it (then a last refresh takes it, and
    # one after that finds nothing)
    await store.write([batch("bus-a", range(900, 960)), batch("bus-b", range(600, 700))])
    await assert_rollups_exact(store)
    await refresh(store)
    assert await refresh(store) == 0

    # THEN (checked after every step above) and over it all: every sample counted once
    assert await scalar(store, "SELECT sum(n) FROM samples_1d") == await scalar(
        store, "SELECT count(*) FROM samples"
    )
    assert await scalar(store, "SELECT count(DISTINCT bucket) FROM rollup_1d") == 3  # 13, 14 and 15 May
