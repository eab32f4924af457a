"""Kept daily KPIs, trips and charging sessions: the tables the receiver fills for ended days.

Written through the real store, kept by the real refresh, read back and compared with the on-demand
queries of the same bus-days. On both flavours (conftest.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cloud import charging, daily_kpis, kept_kpis, trips
from cloud.ingest import BatchMessage
from cloud.schema import Flavour
from cloud.store import Store
from protocols import signals
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import AlertRecord, Batch, SampleRecord

from .conftest import Database, migrated_store

pytestmark = pytest.mark.asyncio

BUS = "bus-k"


def daytime_zone() -> str:
    """A fixed-offset zone where it is now between 08:00 and 16:00: the test never straddles midnight
    or the grace after it."""
    for hours in range(-12, 13):
        name = f"Etc/GMT{-hours:+d}" if hours else "UTC"  # Etc/GMT-3 is UTC+3
        if 8 <= datetime.now(ZoneInfo(name)).hour < 16:
            return name
    raise AssertionError("unreachable: some offset is always in daytime")


TZ = daytime_zone()
TODAY = datetime.now(ZoneInfo(TZ)).date()
DAYS = [TODAY - timedelta(days=k) for k in (3, 2, 1)]


@pytest.fixture
async def store(pg_schema: Database) -> AsyncIterator[Store]:
    opened = await migrated_store(pg_schema, kept_kpis.KeptDays(TZ))
    assert opened.flavour is Flavour(pg_schema.flavour)
    yield opened
    await opened.close()


def local_ms(day: date, hour: int, minute: int = 0, second: int = 0) -> int:
    return int(
        datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=ZoneInfo(TZ)).timestamp() * 1000
    )


class Recorder:
    def __init__(self, first_seq: int = 0) -> None:
        self.samples: list[SampleRecord] = []
        self.seq = first_seq

    def add(self, ts_ms: int, signal: str, value: float) -> None:
        self.samples.append(SampleRecord(self.seq, ts_ms, signal, value))
        self.seq += 1

    def drive(self, start_ms: int, steps: int, odometer_km: float, soc_pct: float) -> None:
        """Every 10 s: 36 km/h, 100 A at 600 V, 0.1 km and 1/18 % SOC a step, a GPS fix moving north."""
        for k in range(steps):
            t = start_ms + k * 10_000
            self.add(t, signals.SPEED, 36.0)
            self.add(t, signals.PACK_CURRENT, 100.0)
            self.add(t, signals.PACK_VOLTAGE, 600.0)
            self.add(t, signals.ODOMETER, odometer_km + 0.1 * k)
            self.add(t, signals.SOC, soc_pct - k / 18)
            self.add(t, signals.LATITUDE, -1.28 + 0.0009 * k)
            self.add(t, signals.LONGITUDE, 36.82)

    def charge(self, start_ms: int, steps: int, soc_pct: float) -> None:
        for k in range(steps):
            t = start_ms + k * 10_000
            self.add(t, signals.SPEED, 0.0)
            self.add(t, signals.PACK_CURRENT, -200.0)
            self.add(t, signals.PACK_VOLTAGE, 620.0)
            self.add(t, signals.SOC, soc_pct + k / 36)


def three_days() -> Batch:
    """Each of DAYS: an hour's drive at 06:00, another at 14:00 after a layover, and charging from
    23:00 to 01:00 the next day (over midnight). An alert on each day. Today: a drive at 03:00."""
    rec = Recorder()
    alerts: list[AlertRecord] = []
    for n, day in enumerate(DAYS):
        rec.drive(local_ms(day, 6), 360, 1000.0 + 100 * n, 90.0)
        rec.drive(local_ms(day, 14), 180, 1040.0 + 100 * n, 70.0)
        rec.charge(local_ms(day, 23), 720, 55.0)
        alerts.append(
            AlertRecord(10_000_000 + n, local_ms(day, 6, 30), "low_soc", "critical", True, 60.0, "low")
        )
    rec.drive(local_ms(TODAY, 3), 120, 1400.0, 80.0)
    return Batch(BUS, samples=tuple(rec.samples), alerts=tuple(alerts))


async def write(store: Store, batch: Batch) -> None:
    topic = telemetry_topic("f", batch.vehicle_id)
    await store.write([BatchMessage.of(topic, "f", TopicKind.TELEMETRY, batch, datetime.now(UTC), 1)])


async def pending(store: Store) -> set[date]:
    cur = await store.connection.execute(b"SELECT day FROM kpi_days_pending WHERE vehicle_id = %s", (BUS,))
    return {row[0] for row in await cur.fetchall()}  # type: ignore[misc]


async def kept_rows(store: Store, table: str, day: date) -> list[tuple[object, ...]]:
    order = "day" if table == "daily_kpis" else "started_at"
    cur = await store.connection.execute(
        f"SELECT * FROM {table} WHERE vehicle_id = %s AND day = %s ORDER BY {order}".encode(), (BUS, day)
    )
    return await cur.fetchall()


async def assert_kept_as_on_demand(store: Store, day: date) -> None:
    conn = store.connection
    # Compare as the API returns them: the tables' rows through the `kept_*` readers, the day alone.
    daily = await daily_kpis.daily_kpis(conn, day, day, tz=TZ, vehicle_id=BUS)
    found_trips = await trips.trips(conn, day, day, tz=TZ, vehicle_id=BUS)
    sessions = await charging.charging_sessions(conn, day, day, tz=TZ, vehicle_id=BUS)
    assert daily and found_trips and sessions
    kept = kept_kpis.KeptDays(TZ)
    assert await kept_kpis.kept_daily_kpis(conn, day, day, kept, vehicle_id=BUS) == daily
    assert await kept_kpis.kept_trips(conn, day, day, kept, BUS) == found_trips
    assert await kept_kpis.kept_charging_sessions(conn, day, day, kept, BUS) == sessions
    # … and the tables hold exactly those rows (not an on-demand fallback).
    assert [r[2:] for r in await kept_rows(store, "daily_kpis", day)] == [
        dataclasses.astuple(k)[2:] for k in daily
    ]
    assert [r[0:1] + r[2:] for r in await kept_rows(store, "trips", day)] == [
        dataclasses.astuple(t) for t in found_trips
    ]
    assert [r[0:1] + r[2:] for r in await kept_rows(store, "charging_sessions", day)] == [
        dataclasses.astuple(s) for s in sessions
    ]


async def test_ended_days_are_kept_as_computed_on_demand_and_today_is_not(store: Store) -> None:
    await write(store, three_days())
    assert await pending(store) == {*DAYS, TODAY}

    await store.refresh_rollups()

    assert await pending(store) == {TODAY}
    for day in DAYS:
        await assert_kept_as_on_demand(store, day)
    assert await kept_rows(store, "daily_kpis", TODAY) == []
    # The whole range: kept days from the tables, today on demand, as each day asked for alone.
    conn = store.connection
    rows = await kept_kpis.kept_daily_kpis(conn, DAYS[0], TODAY, kept_kpis.KeptDays(TZ), vehicle_id=BUS)
    each = [
        k
        for day in [*DAYS, TODAY]
        for k in await daily_kpis.daily_kpis(conn, day, day, tz=TZ, vehicle_id=BUS)
    ]
    assert rows == each
    assert [k.day for k in rows] == [*DAYS, TODAY]
    # The charging over midnight counts on both days: each day is cut at its ends.
    charging = [(k.trip_count, k.charging_events, k.critical_alerts) for k in rows[:3]]
    assert charging == [(2, 1, 1), (2, 2, 1), (2, 2, 1)]


async def test_late_data_for_a_kept_day_is_kept_again_after_the_next_refresh(store: Store) -> None:
    await write(store, three_days())
    await store.refresh_rollups()
    late_day = DAYS[1]
    before = await kept_kpis.kept_daily_kpis(store.connection, late_day, late_day, kept_kpis.KeptDays(TZ))
    assert before[0].trip_count == 2

    # GIVEN a kept day, WHEN a third drive of that day arrives late
    late = Recorder(first_seq=20_000_000)
    late.drive(local_ms(late_day, 18), 90, 1200.0, 60.0)
    await write(store, Batch(BUS, samples=tuple(late.samples)))

    # THEN the day is pending again and answered on demand until the next refresh keeps it anew
    assert await pending(store) == {late_day, TODAY}
    on_demand = await kept_kpis.kept_daily_kpis(store.connection, late_day, late_day, kept_kpis.KeptDays(TZ))
    assert on_demand[0].trip_count == 3
    assert (await kept_rows(store, "daily_kpis", late_day))[0][-1] == 2  # stale until then
    assert await store.materialize_kpis() == 1
    assert await pending(store) == {TODAY}
    await assert_kept_as_on_demand(store, late_day)
    assert (await kept_rows(store, "daily_kpis", late_day))[0][-1] == 3


async def test_a_write_during_a_recomputation_leaves_the_day_pending(store: Store) -> None:
    await write(store, three_days())
    await store.refresh_rollups()
    day = DAYS[0]
    late = Recorder(first_seq=30_000_000)
    late.drive(local_ms(day, 19), 30, 1300.0, 60.0)
    await write(store, Batch(BUS, samples=tuple(late.samples)))
    cur = await store.connection.execute(
        b"SELECT marks FROM kpi_days_pending WHERE vehicle_id = %s AND day = %s", (BUS, day)
    )
    marks = (await cur.fetchone() or (None,))[0]
    # GIVEN a recomputation that read the day's marks before another late write bumped them
    await write(store, Batch(BUS, samples=(SampleRecord(30_000_100, local_ms(day, 20), signals.SOC, 50.0),)))
    await store.connection.execute(
        b"DELETE FROM kpi_days_pending WHERE vehicle_id = %s AND day = %s AND marks = %s", (BUS, day, marks)
    )
    # THEN its removal of the mark (as `materialize_kpis` does it) leaves the day pending
    assert day in await pending(store)
