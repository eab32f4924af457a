"""The store against the real PostgreSQL, on both flavours (plain and with TimescaleDB): migrations,
idempotent writes, rollups current at every commit, partitions (plain PostgreSQL's own)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from cloud.errors import RejectedDataError, StoreError
from cloud.ingest import BatchMessage, DeadLetter, StatusMessage
from cloud.schema import Flavour, existing_partitions, latest_version, shipped_versions
from cloud.settings import DatabaseSettings
from cloud.store import Store
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import AlertRecord, Batch, PredictionRecord, SampleRecord

from .conftest import Database

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 5, 14, 23, 59, 0, tzinfo=UTC)  # a batch that straddles midnight UTC
T0_MS = int(T0.timestamp() * 1000)


def db_settings(db: Database) -> DatabaseSettings:
    return DatabaseSettings.model_validate({"dsn": db.dsn, "schema": db.schema})


def sample_batch(vehicle: str, first_seq: int, n: int, *, step_ms: int = 1000) -> BatchMessage:
    samples = tuple(
        SampleRecord(first_seq + i, T0_MS + (first_seq + i) * step_ms, "Vehicle.Speed", float(i))
        for i in range(n)
    )
    batch = Batch(vehicle, samples=samples)
    return BatchMessage.of(telemetry_topic("f1", vehicle), "f1", TopicKind.TELEMETRY, batch, T0, 123)


async def count(store: Store, query: str) -> int:
    cur = await store.connection.execute(query.encode())
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


async def test_migrations_are_idempotent_and_recorded(pg_schema: Database) -> None:
    settings = db_settings(pg_schema)
    store = await Store.open(settings, require_schema=False)
    try:
        assert await store.migrate() == shipped_versions(from_version=1)
        assert await store.migrate() == []
        assert store.flavour is Flavour(pg_schema.flavour)
        cur = await store.connection.execute(
            b"SELECT version, flavour FROM schema_migrations ORDER BY version"
        )
        assert await cur.fetchall() == [
            (1, "any"),
            (2, pg_schema.flavour),
            (3, pg_schema.flavour),
            (4, "any"),
            (5, "any"),
            (6, "any"),
            (7, pg_schema.flavour),
            (8, pg_schema.flavour),
            (9, "any"),
            (10, "any"),
            (11, "any"),
            (12, "any"),
            (13, "any"),
            (14, "any"),
            (15, "any"),
            (17, "any"),
        ]
    finally:
        await store.close()


async def test_open_refuses_an_unmigrated_schema(pg_schema: Database) -> None:
    with pytest.raises(StoreError, match="voltgate-cloud migrate"):
        await Store.open(db_settings(pg_schema))


async def test_open_gives_one_sentence_when_the_database_is_unreachable() -> None:
    settings = DatabaseSettings.model_validate(
        {"dsn": "postgresql://postgres@127.0.0.1:1/test", "schema": "x", "connect_timeout_s": 1}
    )
    with pytest.raises(StoreError, match="cannot connect to the database"):
        await Store.open(settings)


async def test_a_batch_is_stored_once_and_its_redelivery_changes_nothing(store: Store) -> None:
    # GIVEN a batch of 120 samples over two UTC days (partitions are created on demand)
    message = sample_batch("bus-1", 0, 120)
    first = await store.write([message])
    assert (first.samples_staged, first.samples_inserted, first.duplicates) == (120, 120, 0)
    snapshot = await store.connection.execute(b"SELECT * FROM samples ORDER BY seq")
    rows_before = await snapshot.fetchall()
    rollup = await store.connection.execute(b"SELECT * FROM samples_1m ORDER BY bucket")
    rollup_before = await rollup.fetchall()

    # WHEN the same batch arrives again, alone and then mixed with a new one
    again = await store.write([message])
    mixed = await store.write([message, sample_batch("bus-1", 120, 10)])

    # THEN nothing is inserted twice and the rollups count each sample once
    assert (again.samples_inserted, again.duplicates) == (0, 120)
    assert (mixed.samples_inserted, mixed.duplicates) == (10, 120)
    assert await count(store, "SELECT count(*) FROM samples") == 130
    after = await store.connection.execute(b"SELECT * FROM samples WHERE seq < 120 ORDER BY seq")
    assert await after.fetchall() == rows_before
    assert rollup_before[0][3] == 60  # the 23:59 minute holds 60 samples
    # and every rollup is current at once (the hours and days still read the log), then the same
    # after the refresh has moved the log into the tables
    for refreshed in (False, True):
        assert await count(store, "SELECT count(*) FROM rollup_log_minutes") == (0 if refreshed else 3)
        assert await count(store, "SELECT sum(n) FROM samples_1m") == 130
        assert await count(store, "SELECT sum(n) FROM samples_1h") == 130
        assert await count(store, "SELECT sum(n) FROM samples_1d") == 130
        assert await count(store, "SELECT count(*) FROM samples_1d") == 2  # 14 and 15 May
        assert await count(store, "SELECT count(*) FROM samples_1h") == 2  # 23:00 and 00:00
        total = sum(range(120)) + sum(range(10))
        assert await count(store, "SELECT sum(total)::bigint FROM samples_1d") == total
        if not refreshed:
            assert await store.refresh_rollups() == 3  # the three minutes logged
            assert await store.refresh_rollups() == 0  # everything logged was taken once
    assert await count(store, "SELECT count(*) FROM ingest_ledger") == 4  # every receipt is in the ledger
    assert await count(store, "SELECT count(*) FROM vehicles WHERE vehicle_id = 'bus-1'") == 1


async def test_predictions_alerts_status_and_dead_letters_in_one_transaction(store: Store) -> None:
    batch = Batch(
        "bus-2",
        predictions=(PredictionRecord(7, T0_MS, "soc_drop", "1.0.0", "soc_drop_60min_pp", 4.5),),
        alerts=(AlertRecord(8, T0_MS, "low_soc", "warning", True, math.nan, "SOC below 20 %"),),
    )
    message = BatchMessage.of(telemetry_topic("f1", "bus-2"), "f1", TopicKind.ALERTS, batch, T0, 50)
    status = StatusMessage(
        "voltgate/v1/f1/bus-2/status",
        "f1",
        "bus-2",
        True,
        {"vin": "YV3T2U829LA123456", "battery_capacity_kwh": 396},
        T0,
    )
    dead = DeadLetter("voltgate/v1/f1/bus-2/telemetry", "bus-2", "malformed payload: x", b"\x00\xff", T0)

    stats = await store.write([message, status, dead])
    again = await store.write([message, status, dead])

    assert (stats.predictions_inserted, stats.alerts_inserted, stats.statuses) == (1, 1, 1)
    assert (again.predictions_inserted, again.alerts_inserted, again.duplicates) == (0, 0, 2)
    cur = await store.connection.execute(b"SELECT vin, battery_capacity_kwh, fleet FROM vehicles")
    assert await cur.fetchall() == [("YV3T2U829LA123456", 396.0, "f1")]
    cur = await store.connection.execute(b"SELECT online FROM vehicle_status WHERE vehicle_id = 'bus-2'")
    assert await cur.fetchone() == (True,)
    cur = await store.connection.execute(b"SELECT reason, payload FROM dead_letters")
    assert await cur.fetchall() == [("malformed payload: x", b"\x00\xff")] * 2


@pytest.mark.flavour("native")
async def test_maintenance_creates_partitions_ahead_and_drops_expired_ones(store: Store) -> None:
    today = date(2024, 5, 14)
    await store.write([sample_batch("bus-3", 0, 1)])  # creates sample_blocks_p20240514 on demand
    old = BatchMessage.of(
        telemetry_topic("f1", "bus-3"),
        "f1",
        TopicKind.TELEMETRY,
        Batch("bus-3", samples=(SampleRecord(1000, T0_MS - 200 * 86_400_000, "Vehicle.Speed", 1.0),)),
        T0,
        10,
    )
    await store.write([old])

    await store.maintain(today)

    cur = await store.connection.execute(
        b"SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        b" WHERE i.inhparent = 'sample_blocks'::regclass ORDER BY 1"
    )
    names = [r[0] for r in await cur.fetchall()]
    ahead = [f"sample_blocks_p{(today + timedelta(days=d)):%Y%m%d}" for d in (-1, 0, 1, 2)]
    assert names == ahead, "yesterday, today and the days ahead exist; the 200-day-old one is dropped"
    assert await count(store, "SELECT count(*) FROM samples") == 1


async def test_data_the_database_refuses_is_reported_as_rejected_not_as_an_outage(store: Store) -> None:
    # ingest_message keeps NUL out; built by hand here to stand for any row PostgreSQL refuses
    poison = Batch("bus-4", samples=(SampleRecord(1, T0_MS, "Vehicle.\x00Speed", 1.0),))
    message = BatchMessage.of(telemetry_topic("f1", "bus-4"), "f1", TopicKind.TELEMETRY, poison, T0, 10)
    with pytest.raises(RejectedDataError):
        await store.write([message, sample_batch("bus-4", 10, 5)])
    assert await count(store, "SELECT count(*) FROM samples") == 0  # nothing of the group committed
    assert (
        await store.write([sample_batch("bus-4", 10, 5)])
    ).samples_inserted == 5  # connection still usable


def speed_batch(vehicle: str, seqs: range, *, ts_offset_ms: int = 0) -> BatchMessage:
    """Samples whose value is their seq, one a second; `seqs` need not start at a batch boundary."""
    samples = tuple(SampleRecord(s, T0_MS + ts_offset_ms + s * 1000, "Vehicle.Speed", float(s)) for s in seqs)
    return BatchMessage.of(
        telemetry_topic("f1", vehicle), "f1", TopicKind.TELEMETRY, Batch(vehicle, samples=samples), T0, 10
    )


async def stored_seqs(store: Store, vehicle: str) -> list[int]:
    cur = await store.connection.execute(
        b"SELECT seq FROM samples WHERE vehicle_id = %s ORDER BY seq", (vehicle,)
    )
    return [int(str(r[0])) for r in await cur.fetchall()]


async def test_samples_re_sent_in_other_batches_are_stored_once_with_exact_rollups(store: Store) -> None:
    # GIVEN 60 stored samples (seq 0-59)
    assert (await store.write([speed_batch("bus-5", range(0, 60))])).samples_inserted == 60

    # WHEN the agent re-sends some of them cut differently: inside a larger batch, then a batch
    # around a gap, then (within one group) the same records twice
    resent = await store.write([speed_batch("bus-5", range(30, 90))])
    around = await store.write([speed_batch("bus-5", range(85, 95)), speed_batch("bus-5", range(100, 110))])
    twice = await store.write([speed_batch("bus-5", range(95, 100)), speed_batch("bus-5", range(90, 105))])

    # THEN every sample is stored once, and the rollups count each once
    assert (resent.samples_inserted, resent.duplicates) == (30, 30)
    assert (around.samples_inserted, around.duplicates) == (15, 5)
    assert (twice.samples_inserted, twice.duplicates) == (5, 15)
    assert await stored_seqs(store, "bus-5") == list(range(110))
    assert await count(store, "SELECT sum(n) FROM samples_1m") == 110
    await store.refresh_rollups()
    assert await count(store, "SELECT sum(total)::bigint FROM samples_1d") == sum(range(110))
    assert await count(store, "SELECT min(min_value)::bigint FROM samples_1h") == 0
    assert await count(store, "SELECT max(max_value)::bigint FROM samples_1h") == 109
    # blocks stay within one UTC minute, each signal's samples in time order
    assert (
        await count(
            store,
            "SELECT count(*) FROM sample_blocks WHERE date_bin('1 minute', ts_first, 'epoch')"
            " <> date_bin('1 minute', ts_last, 'epoch')",
        )
        == 0
    )
    assert (
        await count(
            store,
            "SELECT count(*) FROM (SELECT e.ts, lag(e.ts) OVER (PARTITION BY b.vehicle_id, b.minute,"
            " b.seq_min, e.signal_id ORDER BY e.i) AS prev FROM sample_blocks AS b,"
            " block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e) AS x"
            " WHERE x.prev > x.ts",
        )
        == 0
    )


async def test_the_same_seq_at_another_time_is_a_new_sample(store: Store) -> None:
    # An agent that lost its buffer starts its sequence again at 0, a day later.
    await store.write([speed_batch("bus-6", range(0, 10))])
    again = await store.write([speed_batch("bus-6", range(0, 10), ts_offset_ms=86_400_000)])
    assert again.samples_inserted == 10
    assert await count(store, "SELECT count(*) FROM samples WHERE vehicle_id = 'bus-6'") == 20


async def test_two_replicas_writing_overlapping_batches_at_once_store_each_sample_once(
    pg_schema: Database, store: Store
) -> None:
    # GIVEN a second connection (another replica) and, per round, the same records cut into
    # different batches for each replica
    other = await Store.open(db_settings(pg_schema))
    try:
        for round_no in range(5):
            base = round_no * 1000
            vehicles = [f"bus-{v}" for v in range(20)]
            mine = [speed_batch(v, range(base, base + 600)) for v in vehicles]
            theirs = [speed_batch(v, range(base + 300, base + 900)) for v in reversed(vehicles)]
            # WHEN both write at the same moment
            a, b = await asyncio.gather(store.write(mine), other.write(theirs))
            # THEN together they inserted each sample once
            assert a.samples_inserted + b.samples_inserted == 20 * 900
        assert await count(store, "SELECT count(*) FROM samples") == 5 * 20 * 900
        assert await count(
            store, "SELECT count(*) FROM (SELECT DISTINCT vehicle_id, seq FROM samples) d"
        ) == (5 * 20 * 900)
        # two replicas refreshing at once: one does it, the other finds it locked (None) or done (0)
        refreshed = await asyncio.gather(store.refresh_rollups(), other.refresh_rollups())
        assert sorted(refreshed, key=bool)[0] in (None, 0) and sorted(refreshed, key=bool)[1]
        assert await count(store, "SELECT sum(n) FROM samples_1d") == 5 * 20 * 900
    finally:
        await other.close()


@pytest.mark.flavour("native")
async def test_migration_3_turns_stored_sample_rows_into_blocks(pg_schema: Database) -> None:
    # GIVEN a schema at version 2 holding sample rows over midnight UTC
    settings = db_settings(pg_schema)
    store = await Store.open(settings, require_schema=False)
    try:
        assert await store.migrate(up_to=2) == [1, 2]
        await store.connection.execute(
            b"CREATE TABLE samples_p20240514 PARTITION OF samples"
            b" FOR VALUES FROM ('2024-05-14') TO ('2024-05-15');"
            b"CREATE TABLE samples_p20240515 PARTITION OF samples"
            b" FOR VALUES FROM ('2024-05-15') TO ('2024-05-16')"
        )
        await store.connection.execute(
            b"INSERT INTO samples SELECT 'bus-7', s, %s::timestamptz + s * interval '1 second',"
            b" CASE WHEN s %% 2 = 0 THEN 'Vehicle.Speed' ELSE 'Vehicle.Soc' END, s"
            b" FROM generate_series(0, 179) s",
            (T0,),
        )
        before = await (await store.connection.execute(b"SELECT * FROM samples ORDER BY seq")).fetchall()

        # WHEN it is migrated
        assert await store.migrate() == shipped_versions(from_version=3)

        # THEN the same samples read back (through version 3's blocks of one signal and one minute),
        # now as blocks of one minute, all signals
        after = await (await store.connection.execute(b"SELECT * FROM samples ORDER BY seq")).fetchall()
        assert after == before
        assert await count(store, "SELECT count(*) FROM sample_blocks") == 3  # 23:59, 00:00, 00:01
        assert await existing_partitions(store.connection, pg_schema.schema) == {
            ("sample_blocks", date(2024, 5, 14)),
            ("sample_blocks", date(2024, 5, 15)),
        }
    finally:
        await store.close()


async def rollup_rows(store: Store, rollup: str) -> list[tuple[object, ...]]:
    query = f"SELECT bucket, n, total, min_value, max_value FROM {rollup} ORDER BY bucket"
    cur = await store.connection.execute(query.encode())
    return await cur.fetchall()


@pytest.mark.flavour("native")
async def test_migration_7_keeps_the_refreshed_hours_and_days_and_adds_the_pending_log(
    pg_schema: Database,
) -> None:
    # GIVEN a schema at version 6: an hour and a day refreshed, and a minute of that hour still logged
    store = await Store.open(db_settings(pg_schema), require_schema=False)
    hour, day = T0.replace(minute=0), T0.replace(hour=0, minute=0)
    try:
        assert await store.migrate(up_to=6) == [1, 2, 3, 4, 5, 6]
        conn = store.connection
        await conn.execute(
            b"INSERT INTO samples_1h VALUES ('bus-8', 'Vehicle.Speed', %s, 10, 20, 1, 3)", (hour,)
        )
        await conn.execute(
            b"INSERT INTO samples_1d VALUES ('bus-8', 'Vehicle.Speed', %s, 10, 20, 1, 3)", (day,)
        )
        minute = hour + timedelta(minutes=7)
        await conn.execute(
            b"INSERT INTO rollup_log VALUES ('bus-8', 'Vehicle.Speed', %s, 5, 5, 0, 4)", (minute,)
        )

        # WHEN it is migrated (to 7, then on to the latest: 0013 adds a second log beside this one),
        # and later refreshed
        assert await store.migrate(up_to=7) == [7]
        before = [await rollup_rows(store, "samples_1h"), await rollup_rows(store, "samples_1d")]
        assert (await store.migrate())[-1] == latest_version()
        assert [await rollup_rows(store, "samples_1h"), await rollup_rows(store, "samples_1d")] == before
        assert await store.refresh_rollups(keep_days=False) == 1
        after = [await rollup_rows(store, "samples_1h"), await rollup_rows(store, "samples_1d")]
    finally:
        await store.close()

    # THEN the hour and the day read the same before and after the refresh, the logged minute in them
    assert before == after == [[(hour, 15, 25.0, 0.0, 4.0)], [(day, 15, 25.0, 0.0, 4.0)]]


@pytest.mark.flavour("native")
async def test_a_migration_that_meets_a_concurrent_catalog_update_is_applied_again(
    pg_schema: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a schema at version 6, and another session that has updated samples_1h's catalog row (as a
    # TimescaleDB job updates its aggregates' rows) and not committed yet
    store = await Store.open(db_settings(pg_schema), require_schema=False)
    other = await psycopg.AsyncConnection.connect(pg_schema.dsn)
    try:
        assert await store.migrate(up_to=6) == [1, 2, 3, 4, 5, 6]
        await other.execute(f'GRANT SELECT ON "{pg_schema.schema}".samples_1h TO PUBLIC'.encode())

        # WHEN migration 7 (which renames samples_1h) waits for it, and the other session commits
        migrating = asyncio.create_task(store.migrate(up_to=7))
        waiting = b"SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
        pid = store.connection.info.backend_pid
        async with await psycopg.AsyncConnection.connect(pg_schema.dsn, autocommit=True) as watch:
            for _ in range(600):
                if await (await watch.execute(waiting, (pid,))).fetchone() == ("Lock",):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("migration 7 never waited for the other session")
        await other.commit()

        # THEN its first attempt failed on the concurrent update, and it was applied again
        assert await migrating == [7]
    finally:
        await other.close()
        await store.close()
    assert "migration 7 met a concurrent catalog update (tuple concurrently updated); retrying" in caplog.text
