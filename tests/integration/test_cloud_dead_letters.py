"""Records refused one by one and bounded dead letters, against the real PostgreSQL, on both flavours
(the 40-day backlog in compressed chunks on TimescaleDB only).

What the receiver does with a message goes ingest_message → Store.write here, as in the receiver's
writer, without the broker: good records stored, each refused one kept (listed) in one dead letter a
message; payloads cut with their length and SHA-256; retention and size cap pruned by the maintenance;
a bus back after 40 days offline has its backlog stored.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from cloud.dead_letters import ROW_OVERHEAD_BYTES, dead_letter_bytes
from cloud.ingest import BatchMessage, DeadLetter, Ingested, ingest_message
from cloud.schema import Flavour, existing_partitions, shipped_versions
from cloud.settings import DatabaseSettings, IngestSettings
from cloud.store import Store
from protocols.topics import telemetry_topic
from protocols.wire import Batch, PredictionRecord, SampleRecord, encode_batch

from .conftest import Database

pytestmark = pytest.mark.asyncio

NOW = datetime.now(UTC).replace(microsecond=0)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = IngestSettings()
TOPIC = telemetry_topic("f1", "bus-1")
SPEED = "Vehicle.Speed"


def settings_of(db: Database, **dead_letters: int) -> DatabaseSettings:
    return DatabaseSettings.model_validate({"dsn": db.dsn, "schema": db.schema, **dead_letters})


@pytest.fixture
async def migrated(pg_schema: Database) -> AsyncIterator[Database]:
    migrator = await Store.open(settings_of(pg_schema), require_schema=False)
    try:
        await migrator.migrate()
    finally:
        await migrator.close()
    yield pg_schema


async def open_store(db: Database, **dead_letters: int) -> Store:
    return await Store.open(settings_of(db, **dead_letters))


async def rows(store: Store, query: str, *params: object) -> list[tuple[object, ...]]:
    cur = await store.connection.execute(query.encode(), params or None)
    return await cur.fetchall()


async def scalar(store: Store, query: str, *params: object) -> object:
    return (await rows(store, query, *params))[0][0]


def received(batch: Batch, at: datetime = NOW) -> Ingested:
    return ingest_message(TOPIC, encode_batch(batch), at, LIMITS)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_refused_records_are_one_dead_letter_and_the_good_ones_are_stored(migrated: Database) -> None:
    # GIVEN a minute of speed samples with a 2007 GPS fix, a NaN, a +inf and a -inf prediction among them
    fix_2007_ms = int(datetime(2007, 3, 1, tzinfo=UTC).timestamp() * 1000)
    start_ms = NOW_MS - 120_000
    good = [SampleRecord(i, start_ms + i * 1000, SPEED, float(i)) for i in range(60)]
    bad = [
        SampleRecord(60, fix_2007_ms, "Vehicle.CurrentLocation.Latitude", 52.5),
        SampleRecord(61, start_ms + 500, SPEED, math.nan),
        SampleRecord(62, start_ms + 1500, SPEED, math.inf),
    ]
    prediction = PredictionRecord(63, NOW_MS, "soc_drop", "1", "soc_drop_60min_pp", -math.inf)
    payload = encode_batch(Batch("bus-1", samples=(*good, *bad), predictions=(prediction,)))
    message = ingest_message(TOPIC, payload, NOW, LIMITS)
    assert isinstance(message, BatchMessage)

    # WHEN it is stored, twice (a redelivery)
    store = await open_store(migrated)
    try:
        first = await store.write([message])
        again = await store.write([message])

        # THEN the 60 good samples are stored once, and no non-finite value reached the rollups
        assert (first.samples_inserted, again.samples_inserted, first.dead_letters) == (60, 0, [])
        assert await scalar(store, "SELECT count(*) FROM samples") == 60
        assert await scalar(store, "SELECT sum(n) FROM samples_1m") == 60
        assert await scalar(store, "SELECT count(*) FROM predictions") == 0
        await store.refresh_rollups(keep_days=False)
        for table in ("samples_1m", "samples_1h", "samples_1d"):
            finite = "SELECT bool_and(total + min_value + max_value < 'Infinity') FROM " + table
            assert await scalar(store, finite) is True, table
        # AND each receipt left one dead letter listing the refused records with their reasons
        dead = await rows(
            store,
            "SELECT reason, refused_records, refused, payload, payload_bytes, payload_sha256, vehicle_id"
            " FROM dead_letters ORDER BY id",
        )
        assert len(dead) == 2 and dead[0] == dead[1]
        reason, refused_records, refused, stored, size, sha256, vehicle = dead[0]
        assert reason == "4 of 64 records refused: ts_too_old 1, value_not_finite 3"
        assert refused_records == 4
        refused_2007 = {"seq": 60, "ts_ms": fix_2007_ms, "name": "Vehicle.CurrentLocation.Latitude"}
        assert refused == [
            {**refused_2007, "reason": "ts_too_old", "value": 52.5},
            {"seq": 61, "ts_ms": start_ms + 500, "name": SPEED, "reason": "value_not_finite", "value": "nan"},
            {
                "seq": 62,
                "ts_ms": start_ms + 1500,
                "name": SPEED,
                "reason": "value_not_finite",
                "value": "inf",
            },
            {
                "seq": 63,
                "ts_ms": NOW_MS,
                "name": "soc_drop_60min_pp",
                "reason": "value_not_finite",
                "value": "-inf",
            },
        ]
        assert (stored, size, sha256, vehicle) == (
            payload,
            len(payload),
            hashlib.sha256(payload).digest(),
            "bus-1",
        )
        # AND the bus is told every seq is handled, the refused ones included
        assert message.handled_seqs().tolist() == list(range(64))
    finally:
        await store.close()


async def test_a_nul_in_a_name_is_refused_and_listed_without_it(migrated: Database) -> None:
    batch = Batch(
        "bus-1", samples=(SampleRecord(1, NOW_MS, "Bad\x00Name", 1.0), SampleRecord(2, NOW_MS, SPEED, 2.0))
    )
    store = await open_store(migrated)
    try:
        await store.write([received(batch)])
        assert await scalar(store, "SELECT count(*) FROM samples") == 1
        refused = await scalar(store, "SELECT refused FROM dead_letters")
        assert refused == [
            {"seq": 1, "ts_ms": NOW_MS, "name": "Bad\\0Name", "reason": "nul_in_text", "value": 1.0}
        ]
    finally:
        await store.close()


async def test_payloads_are_cut_with_their_length_and_sha256_and_listings_capped(migrated: Database) -> None:
    # GIVEN a 2 MiB garbage message (one was kept whole before) and a message of 500 refused records
    garbage = bytes(range(256)) * 8192
    dead = DeadLetter(TOPIC, "bus-1", "payload too large: 2097152 bytes > 1048576", garbage, NOW)
    noise = random.Random(7)  # values that do not compress: a payload over 1000 bytes
    future = Batch(
        "bus-1",
        samples=tuple(SampleRecord(i, NOW_MS + 86_400_000, SPEED, noise.random()) for i in range(500)),
    )
    store = await open_store(migrated, dead_letter_payload_max_bytes=1000, dead_letter_max_listed_records=100)
    try:
        # WHEN both are stored
        await store.write([dead, received(future)])

        # THEN each payload is cut to 1000 bytes, its original length and SHA-256 kept
        stored = await rows(
            store,
            "SELECT octet_length(payload), payload_bytes, payload_sha256, refused_records,"
            " jsonb_array_length(refused) FROM dead_letters ORDER BY id",
        )
        payload = encode_batch(future)
        assert len(payload) > 1000
        assert stored == [
            (1000, len(garbage), hashlib.sha256(garbage).digest(), 0, None),
            (1000, len(payload), hashlib.sha256(payload).digest(), 500, 100),  # 500 counted, 100 listed
        ]
        assert await scalar(store, "SELECT payload FROM dead_letters ORDER BY id LIMIT 1") == garbage[:1000]
        assert await scalar(store, "SELECT count(*) FROM samples") == 0
    finally:
        await store.close()


async def test_maintenance_prunes_by_retention_then_size_cap(migrated: Database) -> None:
    cap = 1024 * 1024
    # A writer whose cap is large enough never to prune on its own, and the maintenance's store.
    writer = await open_store(migrated, dead_letter_payload_max_bytes=100_000)
    store = await open_store(
        migrated,
        dead_letter_retention_days=30,
        dead_letter_max_total_bytes=cap,
        dead_letter_payload_max_bytes=100_000,
    )
    try:
        # GIVEN 5 dead letters older than the retention, then 20 of ~100 kB each (~2 MB: twice the cap)
        old = [
            DeadLetter(TOPIC, "bus-1", f"old {i}", b"x" * 10, NOW - timedelta(days=40 - i)) for i in range(5)
        ]
        recent = [
            DeadLetter(TOPIC, "bus-1", f"recent {i:02}", bytes([i]) * 150_000, NOW - timedelta(hours=20 - i))
            for i in range(20)
        ]
        await writer.write([*old, *recent])
        expired_before = counter("voltgate_cloud_dead_letters_pruned_total", cause="retention")
        capped_before = counter("voltgate_cloud_dead_letters_pruned_total", cause="size_cap")

        # WHEN the maintenance prunes them
        pruned = await store.prune_dead_letters(NOW)

        # THEN those past the retention are gone, then the oldest until the rest fits under the cap
        per_row = 100_000 + len("recent 00") + len(TOPIC) + ROW_OVERHEAD_BYTES
        kept = cap // per_row
        assert (pruned.expired, pruned.over_cap, pruned.truncated) == (5, 20 - kept, 0)
        reasons = [r for (r,) in await rows(store, "SELECT reason FROM dead_letters ORDER BY received_at")]
        assert reasons == [f"recent {i:02}" for i in range(20 - kept, 20)]  # the newest kept
        assert await dead_letter_bytes(store.connection) <= cap
        assert counter("voltgate_cloud_dead_letters_pruned_total", cause="retention") == expired_before + 5
        assert (
            counter("voltgate_cloud_dead_letters_pruned_total", cause="size_cap") == capped_before + 20 - kept
        )
        # AND a second run finds nothing more to do
        again = await store.prune_dead_letters(NOW)
        assert (again.expired, again.over_cap, again.truncated) == (0, 0, 0)
    finally:
        await writer.close()
        await store.close()


async def test_a_flood_of_bad_messages_is_pruned_between_maintenances(migrated: Database) -> None:
    cap, cut = 1024 * 1024, 100_000
    store = await open_store(migrated, dead_letter_max_total_bytes=cap, dead_letter_payload_max_bytes=cut)
    try:
        # GIVEN no maintenance runs; WHEN 30 groups of one 150 kB garbage message each are written
        for i in range(30):
            stats = await store.write([DeadLetter(TOPIC, "bus-1", f"garbage {i}", bytes([i]) * 150_000, NOW)])
            assert stats.dead_letter_bytes == cut + len(f"garbage {i}") + len(TOPIC) + ROW_OVERHEAD_BYTES
            # THEN the writer prunes after each tenth of the cap: never more than the cap, a tenth and a group
            assert await dead_letter_bytes(store.connection) <= cap + cap // 10 + stats.dead_letter_bytes
        reasons = [r for (r,) in await rows(store, "SELECT reason FROM dead_letters ORDER BY id")]
        assert 0 < len(reasons) < 30
        assert reasons == [f"garbage {i}" for i in range(30 - len(reasons), 30)]  # the newest kept
    finally:
        await store.close()


async def test_migration_6_keeps_length_and_sha256_of_old_rows_then_maintenance_cuts_them(
    pg_schema: Database,
) -> None:
    # GIVEN a schema at version 5 holding a 2 MiB dead letter, kept whole as version 5 did
    store = await Store.open(settings_of(pg_schema, dead_letter_payload_max_bytes=4096), require_schema=False)
    try:
        await store.migrate(up_to=5)
        big = b"\xab" * (2 * 1024 * 1024)
        await store.connection.execute(
            b"INSERT INTO dead_letters (received_at, topic, reason, payload) VALUES (%s, 't', 'r', %s)",
            (NOW, big),
        )
        # WHEN it is migrated and the maintenance runs
        assert await store.migrate() == shipped_versions(from_version=6)
        await store.maintain()

        # THEN the payload is cut, its original length and hash kept
        row = await rows(
            store, "SELECT octet_length(payload), payload_bytes, payload_sha256 FROM dead_letters"
        )
        assert row == [(4096, len(big), hashlib.sha256(big).digest())]
    finally:
        await store.close()


async def test_a_40_day_old_backlog_is_stored(migrated: Database) -> None:
    # GIVEN a bus back after 40 days offline: its buffer holds three days of samples from 40 days ago
    start = NOW - timedelta(days=40)
    batches = []
    for day in range(3):
        first_ms = int((start + timedelta(days=day)).timestamp() * 1000)
        samples = tuple(SampleRecord(day * 100 + i, first_ms + i * 1000, SPEED, float(i)) for i in range(100))
        batches.append(Batch("bus-1", samples=samples))
    store = await open_store(migrated)
    try:
        # WHEN the backlog arrives, and then the hourly maintenance runs
        messages = [received(batch) for batch in batches]
        assert all(isinstance(m, BatchMessage) and not m.refused for m in messages)
        stats = await store.write(messages)
        await store.maintain()
        await store.refresh_rollups(keep_days=False)

        # THEN every sample is stored, in daily partitions made for those past days, and rolled up
        assert stats.samples_inserted == 300
        assert await scalar(store, "SELECT count(*) FROM samples") == 300
        assert await scalar(store, "SELECT min(ts) FROM samples") == start
        assert await scalar(store, "SELECT sum(n) FROM samples_1d") == 300
        if migrated.flavour == "native":  # (TimescaleDB makes its chunks by itself)
            partitions = await existing_partitions(store.connection, migrated.schema)
            days = {(start + timedelta(days=d)).date() for d in range(3)}
            assert {("sample_blocks", day) for day in days} <= partitions
        assert await scalar(store, "SELECT count(*) FROM dead_letters") == 0
    finally:
        await store.close()


@pytest.mark.flavour("timescale")
async def test_a_40_day_old_backlog_lands_in_compressed_chunks_on_timescaledb(migrated: Database) -> None:
    db = migrated
    store = await open_store(db)
    try:
        assert store.flavour is Flavour.TIMESCALE
        # GIVEN another bus's samples of 40 days ago, stored and compressed (the compression policy's work)
        start_ms = int((NOW - timedelta(days=40)).timestamp() * 1000)
        other = Batch(
            "bus-2", samples=tuple(SampleRecord(i, start_ms + i * 1000, SPEED, 1.0) for i in range(100))
        )
        await store.write([ingest_message(telemetry_topic("f1", "bus-2"), encode_batch(other), NOW, LIMITS)])
        await store.connection.execute(
            b"SELECT compress_chunk(c) FROM show_chunks('sample_blocks', older_than => interval '2 days') c"
        )
        compressed = (
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_schema = %s AND hypertable_name = 'sample_blocks' AND is_compressed"
        )
        assert await scalar(store, compressed, db.schema) >= 1
        # WHEN bus-1's backlog of the same hours arrives, twice (a redelivery), and the maintenance runs
        mine = Batch(
            "bus-1", samples=tuple(SampleRecord(i, start_ms + i * 1000, SPEED, 2.0) for i in range(100))
        )
        first = await store.write([received(mine)])
        again = await store.write([received(mine)])
        await store.maintain()
        # THEN it is stored once, and its hour and day are current without any refresh
        assert (first.samples_inserted, again.samples_inserted) == (100, 0)
        assert await scalar(store, "SELECT count(*) FROM samples WHERE vehicle_id = 'bus-1'") == 100
        for rollup in ("samples_1m", "samples_1h", "samples_1d"):
            query = f"SELECT sum(n), sum(total) FROM {rollup} WHERE vehicle_id = 'bus-1'"
            assert tuple(map(int, (await rows(store, query))[0])) == (100, 200), rollup
    finally:
        await store.close()
