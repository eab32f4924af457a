"""The sample blocks in the real database: every value read back bit for bit through the reads, on
both the numpy-coded path (blocks inserted whole) and the SQL-coded one (blocks merged after
de-duplication), and the two codings agree."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

import psycopg
import pytest

from cloud.ingest import BatchMessage
from cloud.settings import DatabaseSettings
from cloud.store import Store
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, SampleRecord
from tests.integration.conftest import Database

pytestmark = pytest.mark.asyncio

T0_MS = int(datetime(2024, 5, 14, 12, 0, tzinfo=UTC).timestamp() * 1000)
SPEED, SOC = "Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


def message(vehicle: str, records: list[SampleRecord]) -> BatchMessage:
    batch = Batch(vehicle, samples=tuple(records))
    return BatchMessage.of(
        telemetry_topic("f1", vehicle), "f1", TopicKind.TELEMETRY, batch, datetime.now(UTC), 1
    )


def tricky_records(first_seq: int, count: int) -> list[SampleRecord]:
    """Three signals over two minutes: steps of a quantum, values that are not (the float path),
    -0.0, a huge value, a signal without a quantum, several samples at one instant, seq out of time
    order."""
    out = []
    for i in range(count):
        seq, ts = first_seq + i, T0_MS + (first_seq + i) * 700
        out.append(SampleRecord(seq, ts, SPEED, (seq % 50) * 0.25 if seq % 7 else math.pi * seq))
        out.append(SampleRecord(seq + 100_000, ts, SOC, [-0.0, 0.1 * seq, 1e300, 55.5][seq % 4]))
        out.append(SampleRecord(seq + 200_000, ts - (seq % 3), "Vendor.Unknown", seq / 3))
    return out


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


async def stored(store: Store, vehicle: str) -> list[tuple[int, int, str, bytes]]:
    cur = await store.connection.execute(
        b"SELECT seq, (extract(epoch FROM ts) * 1000)::bigint, signal, value FROM samples"
        b" WHERE vehicle_id = %s ORDER BY seq",
        (vehicle,),
    )
    return [(int(str(s)), int(str(t)), str(n), bits(float(str(v)))) for s, t, n, v in await cur.fetchall()]


def expected(records: list[SampleRecord]) -> list[tuple[int, int, str, bytes]]:
    return sorted((r.seq, r.ts_ms, r.signal, bits(r.value)) for r in records)


async def test_every_value_reads_back_bit_for_bit_whole_and_merged(store: Store) -> None:
    # GIVEN a stored message, then one re-sending half of it with new samples (merged in SQL)
    first, resent = tricky_records(0, 120), tricky_records(60, 120)
    assert (await store.write([message("bus-1", first)])).samples_inserted == len(first)
    again = await store.write([message("bus-1", resent)])

    # THEN the new samples are stored once and every sample reads back exactly
    assert again.samples_inserted == len(tricky_records(120, 60))
    assert await stored(store, "bus-1") == expected(tricky_records(0, 180))
    # latest_sample sees the float path and the scaled path alike
    cur = await store.connection.execute(b"SELECT value FROM latest_sample('bus-1', %s)", (SOC,))
    row = await cur.fetchone()
    assert row is not None and bits(float(str(row[0]))) == bits([-0.0, 0.1 * 179, 1e300, 55.5][179 % 4])


async def test_the_database_codes_a_block_as_the_receiver_does(store: Store) -> None:
    await store.write([message("bus-2", tricky_records(0, 150))])
    cur = await store.connection.execute(
        b"SELECT count(*), count(*) FILTER (WHERE b.code = (SELECT block_code("
        b" array_agg(e.signal_id ORDER BY e.i),"
        b" array_agg(e.seq - b.seq_min ORDER BY e.i),"
        b" array_agg((extract(epoch FROM e.ts - b.minute) * 1000)::integer ORDER BY e.i),"
        b" array_agg(e.steps ORDER BY e.i))"
        b" FROM block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e))"
        b" FROM sample_blocks AS b"
    )
    row = await cur.fetchone()
    assert row is not None and int(str(row[0])) >= 2 and row[0] == row[1]


async def test_a_reader_reads_the_samples_whatever_its_search_path(store: Store, pg_schema: Database) -> None:
    # GIVEN stored samples, whole and merged
    await store.write([message("bus-3", tricky_records(0, 40))])
    await store.write([message("bus-3", tricky_records(20, 40))])
    s = pg_schema.schema
    # WHEN a reader connects with the default search_path (as Grafana's role or psql may) and names
    # the schema only in its query, THEN every read decodes the blocks (the helper functions are
    # bound when the migration creates the reads, not looked up on the reader's search_path)
    with psycopg.connect(pg_schema.dsn, autocommit=True, options="-c search_path=public") as conn:
        rows = conn.execute(
            f'SELECT seq, (extract(epoch FROM ts) * 1000)::bigint, signal, value FROM "{s}".samples'
            " WHERE vehicle_id = 'bus-3' ORDER BY seq"
        ).fetchall()
        between = conn.execute(
            f'SELECT count(*) FROM "{s}".samples_between(%s, %s) WHERE vehicle_id = %s',
            (datetime.fromtimestamp(T0_MS / 1000, UTC), datetime(2100, 1, 1, tzinfo=UTC), "bus-3"),
        ).fetchone()
        latest = conn.execute(f'SELECT value FROM "{s}".latest_sample(%s, %s)', ("bus-3", SOC)).fetchone()
        minutes = conn.execute(
            f'SELECT sum(n) FROM "{s}".samples_1m WHERE vehicle_id = %s', ("bus-3",)
        ).fetchone()
    want = expected(tricky_records(0, 60))
    assert [(int(a), int(b), str(c), bits(float(d))) for a, b, c, d in rows] == sorted(want)
    assert between == (len(want),) and minutes == (len(want),)
    assert latest is not None and bits(float(str(latest[0]))) == bits([-0.0, 0.1 * 59, 1e300, 55.5][59 % 4])


async def test_latest_sample_is_kept_and_an_earlier_instant_walks_back_30_days(store: Store) -> None:
    # GIVEN a bus whose latest block holds Speed, that sent Soc 29 and 50 days before it, Cabin power
    # 31 days before it and an earlier Speed 70 days before it
    day_ms = 86_400_000
    old = [
        SampleRecord(0, T0_MS - 70 * day_ms, SPEED, 2.0),
        SampleRecord(1, T0_MS - 50 * day_ms, SOC, 45.0),
        SampleRecord(2, T0_MS - 31 * day_ms, "Vehicle.Cabin.HVAC.Power", 7.0),
    ]
    recent = [SampleRecord(3, T0_MS - 29 * day_ms, SOC, 55.5)]
    latest = [SampleRecord(10, T0_MS, SPEED, 1.0)]
    for records in (old, recent, latest):
        await store.write([message("bus-4", records)])

    async def latest_value(signal: str, at_ms: int | None = None) -> list[tuple[object, ...]]:
        at = "infinity" if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC)
        query = b"SELECT value FROM latest_sample('bus-4', %s, %s)"
        cur = await store.connection.execute(query, (signal, at))
        return await cur.fetchall()

    # THEN each signal's latest sample is the kept one, whatever its age (nothing for one never sent)
    assert await latest_value(SOC) == [(55.5,)]
    assert await latest_value(SPEED) == [(1.0,)]
    assert await latest_value("Vehicle.Cabin.HVAC.Power") == [(7.0,)]
    assert await latest_value("Vehicle.Never.Sent") == []
    # AND at an instant before the kept one the blocks are walked, 30 days back from the bus's latest
    # block at that instant: Soc 20 days before it is found, Speed 39 days before it is not
    at = T0_MS - 30 * day_ms
    assert await latest_value(SOC, at) == [(45.0,)]
    assert await latest_value(SPEED, at) == []
    assert await latest_value("Vehicle.Cabin.HVAC.Power", at) == [(7.0,)]


async def test_late_and_repeated_samples_keep_each_signals_latest_in_one_row_per_vehicle(
    store: Store,
) -> None:
    hour_ms = 3_600_000
    cabin = "Vehicle.Cabin.HVAC.Power"

    async def kept() -> list[tuple[object, ...]]:
        cur = await store.connection.execute(
            b"SELECT signal, seq, value FROM latest_samples WHERE vehicle_id = 'bus-6' ORDER BY signal"
        )
        return await cur.fetchall()

    async def row_version() -> object:
        cur = await store.connection.execute(
            b"SELECT xmin::text FROM latest_values WHERE vehicle_id = 'bus-6'"
        )
        row = await cur.fetchone()
        return row[0] if row else None

    # GIVEN a bus's latest Speed and Soc
    first = [SampleRecord(10, T0_MS, SPEED, 1.0), SampleRecord(11, T0_MS, SOC, 50.0)]
    await store.write([message("bus-6", first)])
    # WHEN an hour-old message arrives late (Speed, and Cabin power never sent before), together in one
    # group with a message whose Soc has the same ts and a later seq
    late = [SampleRecord(3, T0_MS - hour_ms, SPEED, 5.0), SampleRecord(4, T0_MS - hour_ms, cabin, 7.0)]
    tie = [SampleRecord(12, T0_MS, SOC, 49.5)]
    await store.write([message("bus-6", late), message("bus-6", tie)])
    # THEN Speed keeps its later sample, Cabin power is added, and Soc takes the later seq of the same ts
    assert await kept() == [(cabin, 4, 7.0), (SOC, 12, 49.5), (SPEED, 10, 1.0)]
    cur = await store.connection.execute(b"SELECT count(*) FROM latest_values WHERE vehicle_id = 'bus-6'")
    assert await cur.fetchone() == (1,)
    # AND a redelivery of the first message changes nothing and does not rewrite the row
    version = await row_version()
    stats = await store.write([message("bus-6", first)])
    assert stats.samples_inserted == 0
    assert await kept() == [(cabin, 4, 7.0), (SOC, 12, 49.5), (SPEED, 10, 1.0)]
    assert await row_version() == version


async def test_migration_10_codes_the_stored_blocks_again(pg_schema: Database) -> None:
    # GIVEN a schema at version 9 holding a block (compressed on TimescaleDB) coded as 0009 coded it
    # (two signals, one scaled, one on the float path, seq out of time order), written with that
    # version's own block_code
    settings = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    old = await Store.open(settings, require_schema=False)
    try:
        assert await old.migrate(up_to=9) == list(range(1, 10))
        if pg_schema.flavour == "native":
            await old.connection.execute(
                b"CREATE TABLE sample_blocks_p20240514 PARTITION OF sample_blocks"
                b" FOR VALUES FROM ('2024-05-14 00:00Z') TO ('2024-05-15 00:00Z')"
            )
        await old.connection.execute(
            b"INSERT INTO sample_signals (name, quantum)"
            b" VALUES ('Vehicle.Speed', 0.25), ('Vehicle.Soc', NULL)"
        )
        await old.connection.execute(
            b"INSERT INTO sample_blocks (vehicle_id, minute, seq_min, seq_max, ts_first, ts_last, n, signals,"
            b" code, exact)"
            b" SELECT 'bus-5', timestamptz '2024-05-14 12:00Z', 100, 105, timestamptz '2024-05-14 12:00:01Z',"
            b" timestamptz '2024-05-14 12:00:31Z', 6, ARRAY[1, 2],"
            b" block_code(ARRAY[1, 1, 1, 2, 2, 2], ARRAY[0, 2, 4, 1, 3, 5]::bigint[],"
            b" ARRAY[1000, 11000, 21100, 1000, 11000, 31000], ARRAY[4, 5, -3, 0, 0, 0]::bigint[]),"
            b" ARRAY[NULL, NULL, NULL, 0.5, '-0'::float8, 1e300]::float8[]"
        )
        if pg_schema.flavour == "timescale":  # an old chunk: compressed by then
            await old.connection.execute(b"SELECT compress_chunk(c) FROM show_chunks('sample_blocks') AS c")
        # WHEN it is migrated to version 10
        assert await old.migrate(up_to=10) == [10]
        cur = await old.connection.execute(
            b"SELECT seq, extract(epoch FROM ts - timestamptz '2024-05-14 12:00Z')::float8, signal, value"
            b" FROM samples ORDER BY seq"
        )
        rows = await cur.fetchall()
        cur = await old.connection.execute(
            b"SELECT get_byte(code, 4) | (get_byte(code, 5) << 8) FROM sample_blocks"
        )
        tick = await cur.fetchone()
        # (and on to the latest: 0012 keeps each signal's latest sample, 0013 codes new blocks as runs,
        # 0016 keeps them as one row per vehicle)
        await old.migrate()
        cur = await old.connection.execute(
            b"SELECT signal, seq, value FROM latest_samples WHERE vehicle_id = 'bus-5' ORDER BY signal"
        )
        kept = await cur.fetchall()
        cur = await old.connection.execute(
            b"SELECT seq, extract(epoch FROM ts - timestamptz '2024-05-14 12:00Z')::float8, signal, value"
            b" FROM samples ORDER BY seq"
        )
        latest_rows = await cur.fetchall()
        cur = await old.connection.execute(b"SELECT get_byte(code, 0), octet_length(code) FROM sample_blocks")
        kept_code = await cur.fetchone()
        # AND a late message re-sending two of its samples with two new ones is merged against it
        await old.connection.execute(
            b"INSERT INTO vehicles (vehicle_id, fleet, max_sample_seq, max_sample_ts)"
            b" VALUES ('bus-5', 'f1', 105, timestamptz '2024-05-14 12:00:31Z')"
        )
        minute_ms = int(datetime(2024, 5, 14, 12, 0, tzinfo=UTC).timestamp() * 1000)
        late = [
            SampleRecord(104, minute_ms + 21_100, "Vehicle.Speed", -0.75),
            SampleRecord(105, minute_ms + 31_000, "Vehicle.Soc", 1e300),
            SampleRecord(106, minute_ms + 41_000, "Vehicle.Speed", 2.0),
            SampleRecord(107, minute_ms + 51_000, "Vehicle.Soc", 3.5),
        ]
        writer = await Store.open(settings)  # a receiver's store: with its staging tables
        try:
            merged = await writer.write([message("bus-5", late)])
        finally:
            await writer.close()
        cur = await old.connection.execute(
            b"SELECT seq, extract(epoch FROM ts - timestamptz '2024-05-14 12:00Z')::float8, signal, value"
            b" FROM samples ORDER BY seq"
        )
        after_merge = await cur.fetchall()
        cur = await old.connection.execute(
            b"SELECT get_byte(code, 0) >= 128 FROM sample_blocks ORDER BY seq_min"
        )
        codes = [row[0] for row in await cur.fetchall()]
    finally:
        await old.close()
    # THEN every sample reads back as stored, and the block is in 0010's code (a 100 ms tick)
    speed, soc = "Vehicle.Speed", "Vehicle.Soc"
    assert [(int(str(s)), float(str(t)), n, bits(float(str(v)))) for s, t, n, v in rows] == [
        (100, 1.0, speed, bits(1.0)), (101, 1.0, soc, bits(0.5)), (102, 11.0, speed, bits(1.25)),
        (103, 11.0, soc, bits(-0.0)), (104, 21.1, speed, bits(-0.75)), (105, 31.0, soc, bits(1e300)),
    ]  # fmt: skip
    assert tick == (100,)
    # AND 0012 found each signal's latest sample in the stored blocks
    assert kept == [(soc, 105, 1e300), (speed, 104, -0.75)]
    # AND after 0013 the block keeps 0010's code (first byte a width; per sample 1 byte of signal, none
    # of seq (it follows time), 2 of ts, 1 of steps) and every sample still reads back as stored
    assert latest_rows == rows
    assert kept_code == (1, 6 + 6 * (1 + 0 + 2 + 1))
    # AND the late message added its two new samples only, in a block of 0013's run code
    assert merged.samples_inserted == 2
    assert [(int(str(s)), float(str(t)), n, float(str(v))) for s, t, n, v in after_merge[6:]] == [
        (106, 41.0, speed, 2.0), (107, 51.0, soc, 3.5),
    ]  # fmt: skip
    assert after_merge[:6] == rows and codes == [False, True]
