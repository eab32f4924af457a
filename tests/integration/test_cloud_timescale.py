"""The TimescaleDB flavour's own mechanics: hypertables and their policies, and migration 7 replacing
the continuous aggregates by the receiver's rollups with what they held.

Runs against VOLTGATE_TEST_TIMESCALE_DSN (e.g. postgresql://postgres@127.0.0.1:5433/test, a database
where `CREATE EXTENSION timescaledb` has been run; CI sets it), skipped with the reason otherwise.
What both flavours do alike (writes, rollups, reads) is tested on both in the other test modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from cloud import daily_kpis
from cloud.ingest import BatchMessage
from cloud.schema import Flavour
from cloud.settings import DatabaseSettings
from cloud.store import Store
from protocols import signals
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, SampleRecord

from .conftest import Database, migrated_store

pytestmark = [pytest.mark.asyncio, pytest.mark.flavour("timescale")]


@pytest.fixture
async def store(pg_schema: Database) -> AsyncIterator[Store]:
    opened = await migrated_store(pg_schema)
    yield opened
    await opened.close()


async def test_hypertables_and_their_policies_exist_and_no_continuous_aggregate(store: Store) -> None:
    assert store.flavour is Flavour.TIMESCALE
    await store.maintain()  # sets the raw retention policies
    conn = store.connection
    cur = await conn.execute(
        b"SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
        b" WHERE hypertable_schema = current_schema() ORDER BY 1"
    )
    assert await cur.fetchall() == [
        ("ingest_ledger", False),
        ("predictions", True),
        ("sample_blocks", True),
    ]
    cur = await conn.execute(
        b"SELECT count(*) FROM timescaledb_information.continuous_aggregates"
        b" WHERE view_schema = current_schema()"
    )
    assert await cur.fetchone() == (0,)
    cur = await conn.execute(
        b"SELECT proc_name, hypertable_name FROM timescaledb_information.jobs"
        b" WHERE hypertable_schema = current_schema() ORDER BY 1, 2"
    )
    assert {(str(p), str(h)) for p, h in await cur.fetchall()} == {
        ("policy_compression", "predictions"),
        ("policy_compression", "sample_blocks"),
        ("policy_retention", "ingest_ledger"),
        ("policy_retention", "sample_blocks"),
    }


async def test_writes_are_idempotent_and_rollups_and_kpis_current_at_once(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    t0 = int(now.timestamp() * 1000)
    samples = tuple(SampleRecord(i, t0 + i * 1000, signals.SOC, 80.0 - i / 100) for i in range(300))
    message = BatchMessage.of(
        telemetry_topic("f", "bus-t"), "f", TopicKind.TELEMETRY, Batch("bus-t", samples=samples), now, 1
    )
    first = await store.write([message])
    again = await store.write([message])
    assert (first.samples_inserted, again.samples_inserted, again.duplicates) == (300, 0, 300)

    conn = store.connection
    for view in ("samples_1m", "samples_1h", "samples_1d"):  # no refresh of any kind
        cur = await conn.execute(f"SELECT sum(n) FROM {view} WHERE vehicle_id = 'bus-t'".encode())
        assert await cur.fetchone() == (300,), view

    rows = await daily_kpis.daily_kpis(conn, now.date(), (now + timedelta(minutes=10)).date())
    assert min(r.soc_min_pct or 100.0 for r in rows) == pytest.approx(80.0 - 299 / 100)


# One block a minute of `minutes` minutes from `start`, one sample of value 1 each.
_BLOCKS = (
    b"INSERT INTO sample_blocks SELECT %(bus)s, 'Vehicle.Speed', m, m, m, 0, 1, 1, 1, 1,"
    b" ARRAY[0::bigint], ARRAY[m], ARRAY[1::float8]"
    b" FROM generate_series(%(start)s::timestamptz, %(start)s::timestamptz + (%(minutes)s - 1)"
    b" * interval '1 minute', interval '1 minute') AS m"
)


async def scalar(store: Store, query: str) -> object:
    cur = await store.connection.execute(query.encode())
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def test_migration_7_carries_over_what_the_aggregates_held_and_what_they_missed(
    pg_schema: Database,
) -> None:
    settings = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    old = await Store.open(settings, require_schema=False)
    try:
        assert await old.migrate(up_to=6) == [1, 2, 3, 4, 5, 6]
        conn = old.connection
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        # GIVEN history that only the hour aggregate still holds (60 samples, 30 days ago: raw data
        # and minute aggregate dropped by retention), history that the minute aggregate still holds
        # (90 samples over two hours 20 days ago, raw data dropped), a 5-day-old backlog that came
        # after the last refresh (40 samples, only raw) and today's data not yet materialized (30)
        await conn.execute(_BLOCKS, {"bus": "bus-a", "start": hour - timedelta(days=30), "minutes": 60})
        await conn.execute(_BLOCKS, {"bus": "bus-b", "start": hour - timedelta(days=20), "minutes": 90})
        for view in ("samples_1m", "samples_1h", "samples_1d"):
            refresh = f"CALL refresh_continuous_aggregate('{view}', NULL, now() - interval '1 day')"
            await conn.execute(refresh.encode())
        await conn.execute(b"SELECT drop_chunks('samples_1m', older_than => now() - interval '25 days')")
        await conn.execute(b"SELECT drop_chunks('sample_blocks', older_than => now() - interval '10 days')")
        await conn.execute(_BLOCKS, {"bus": "bus-c", "start": hour - timedelta(days=5), "minutes": 40})
        await conn.execute(_BLOCKS, {"bus": "bus-d", "start": hour, "minutes": 30})
        assert await scalar(old, "SELECT count(*) FROM sample_blocks") == 70
        assert await scalar(old, "SELECT sum(n) FROM samples_1m") == 90  # bus-b's minutes only
        assert await scalar(old, "SELECT sum(n) FROM samples_1h") == 150  # bus-a and bus-b

        # WHEN it is migrated to version 7 (and on)
        assert await old.migrate() == [7, 8, 9, 10, 11, 12, 13, 14, 15, 17]  # 8, 10, 13: the blocks' codes
    finally:
        await old.close()

    # THEN the hours and days hold everything, each sample once, and the aggregates are gone
    store = await Store.open(settings)
    try:
        hours = "SELECT vehicle_id, sum(n)::int, count(*)::int FROM samples_1h GROUP BY 1 ORDER BY 1"
        cur = await store.connection.execute(hours.encode())
        expected = [("bus-a", 60, 1), ("bus-b", 90, 2), ("bus-c", 40, 1), ("bus-d", 30, 1)]
        assert await cur.fetchall() == expected
        assert await scalar(store, "SELECT sum(n) FROM rollup_1d") == 220
        assert await scalar(store, "SELECT count(*) FROM rollup_log_minutes") == 0
        assert await scalar(store, "SELECT sum(n) FROM samples_1m") == 70  # as long as the raw data
        cur = await store.connection.execute(
            b"SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name LIKE '%continuous%'"
            b" AND hypertable_schema = current_schema()"
        )
        assert await cur.fetchone() == (0,)
        # AND a write, late or not, is in them at once
        late = hour - timedelta(days=20)
        samples = (SampleRecord(1, int(late.timestamp() * 1000), "Vehicle.Speed", 5.0),)
        message = BatchMessage.of(
            telemetry_topic("f", "bus-b"), "f", TopicKind.TELEMETRY, Batch("bus-b", samples=samples), hour, 1
        )
        assert (await store.write([message])).samples_inserted == 1
        assert await scalar(store, "SELECT sum(n) FROM samples_1d WHERE vehicle_id = 'bus-b'") == 91
        await store.refresh_rollups(keep_days=False)
        assert await scalar(store, "SELECT sum(n) FROM samples_1d WHERE vehicle_id = 'bus-b'") == 91
    finally:
        await store.close()
