"""Daily KPIs on a synthetic day whose figures are computed by hand below."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from cloud import kpis
from cloud.ingest import BatchMessage
from cloud.store import Store
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import AlertRecord, Batch, SampleRecord

pytestmark = pytest.mark.asyncio

DAY = date(2024, 5, 14)


def ms(hour: int, minute: int = 0, second: int = 0, day: date = DAY) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


def synthetic_day(vehicle: str) -> Batch:
    """
    06:00–07:00 UTC driving, a reading every 10 s (k = 0..360): 36 km/h, 100 A at 600 V
    (voltage only every 30 s: held in between), odometer 1000 → 1036 km, SOC 80 → 60 %.
    08:00–08:30 charging at the depot (j = 0..180): 0 km/h, −200 A at 620 V, SOC 60 → 70 %.
    The hour 07:00–08:00 has no readings (a gap, not energy). One reading on the next day.
    Alerts: two raised (one critical), one cleared.
    """
    samples: list[SampleRecord] = []
    seq = 0

    def add(ts_ms: int, signal: str, value: float) -> None:
        nonlocal seq
        samples.append(SampleRecord(seq, ts_ms, signal, value))
        seq += 1

    for k in range(361):
        t = ms(6) + k * 10_000
        add(t, kpis.SPEED, 36.0)
        add(t, kpis.PACK_CURRENT, 100.0)
        if k % 3 == 0:
            add(t, kpis.PACK_VOLTAGE, 600.0)
        add(t, kpis.TRAVELED_DISTANCE, 1000.0 + 0.1 * k)
        add(t, kpis.SOC, 80.0 - k / 18)
    for j in range(181):
        t = ms(8) + j * 10_000
        add(t, kpis.SPEED, 0.0)
        add(t, kpis.PACK_CURRENT, -200.0)
        add(t, kpis.PACK_VOLTAGE, 620.0)
        add(t, kpis.TRAVELED_DISTANCE, 1036.0)
        add(t, kpis.SOC, 60.0 + j / 18)
    add(ms(0, 30, day=date(2024, 5, 15)), kpis.SOC, 95.0)  # next day: not part of the 14th
    alerts = (
        AlertRecord(seq, ms(6, 30), "low_soc", "warning", True, 65.0, "SOC low"),
        AlertRecord(seq + 1, ms(6, 45), "cell_overtemp", "critical", True, 58.0, "cell hot"),
        AlertRecord(seq + 2, ms(8, 10), "low_soc", "warning", False, 66.0, "SOC ok"),
    )
    return Batch(vehicle, samples=tuple(samples), alerts=alerts)


async def test_daily_kpis_on_a_known_day(store: Store) -> None:
    batch = synthetic_day("bus-k")
    received = datetime(2024, 5, 15, 1, tzinfo=UTC)
    await store.write(
        [BatchMessage.of(telemetry_topic("f", "bus-k"), "f", TopicKind.TELEMETRY, batch, received, 1)]
    )

    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY)

    assert (kpi.vehicle_id, kpi.day) == ("bus-k", DAY)
    assert kpi.distance_km == pytest.approx(36.0)
    assert (kpi.soc_start_pct, kpi.soc_end_pct, kpi.soc_min_pct) == pytest.approx((80.0, 70.0, 60.0))
    # driving: 360 intervals x 10 s x 600 V x 100 A = 60 kW for 1 h = 60 kWh
    assert kpi.energy_used_kwh == pytest.approx(60.0)
    # charging: 180 intervals x 10 s x 620 V x 200 A = 124 kW for 0.5 h = 62 kWh
    assert kpi.energy_charged_kwh == pytest.approx(62.0)
    assert kpi.kwh_per_km == pytest.approx(60.0 / 36.0)
    assert kpi.moving_hours == pytest.approx(1.0)
    assert (kpi.alerts_raised, kpi.critical_alerts) == (2, 1)


async def test_days_follow_the_fleet_time_zone(store: Store) -> None:
    # 00:30 UTC on the 15th is still the 14th in New York (UTC−4 in May): that SOC reading moves
    # to the 14th, where it becomes the day's last reading.
    batch = synthetic_day("bus-z")
    received = datetime(2024, 5, 15, 1, tzinfo=UTC)
    await store.write(
        [BatchMessage.of(telemetry_topic("f", "bus-z"), "f", TopicKind.TELEMETRY, batch, received, 1)]
    )

    rows = await kpis.daily_kpis(store.connection, DAY, date(2024, 5, 15), tz="America/New_York")

    assert [(r.day, r.soc_end_pct) for r in rows] == [(DAY, pytest.approx(95.0))]


async def test_utilization_and_charging_events_on_the_known_day(store: Store) -> None:
    batch = synthetic_day("bus-u")
    received = datetime(2024, 5, 15, 1, tzinfo=UTC)
    await store.write(
        [BatchMessage.of(telemetry_topic("f", "bus-u"), "f", TopicKind.TELEMETRY, batch, received, 1)]
    )

    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY)
    sessions = await kpis.charging_sessions(store.connection, DAY, DAY)

    assert kpi.utilization_pct == pytest.approx(100.0 / 24)  # 1 h moving in a 24 h day
    assert kpi.charging_events == 1
    assert kpi.gps_distance_km is None  # no GPS in this batch
    [session] = sessions
    assert (session.started_at, session.ended_at) == (
        datetime(2024, 5, 14, 8, tzinfo=UTC),
        datetime(2024, 5, 14, 8, 30, tzinfo=UTC),
    )
    assert session.energy_added_kwh == pytest.approx(62.0)
    assert session.max_power_kw == pytest.approx(124.0)


async def test_utilization_uses_the_local_day_length_on_dst_days(store: Store) -> None:
    # GIVEN the synthetic hour of driving moved to 2024-03-10, when New York springs forward (23 h day)
    day = date(2024, 3, 10)
    samples = tuple(SampleRecord(k, ms(15, day=day) + k * 10_000, kpis.SPEED, 36.0) for k in range(361))
    batch = Batch("bus-dst", samples=samples)
    received = datetime(2024, 3, 11, tzinfo=UTC)
    await store.write(
        [BatchMessage.of(telemetry_topic("f", "bus-dst"), "f", TopicKind.TELEMETRY, batch, received, 1)]
    )

    [kpi] = await kpis.daily_kpis(store.connection, day, day, tz="America/New_York")

    assert kpi.utilization_pct == pytest.approx(100.0 / 23)


async def test_gps_distance_is_haversine_without_glitches(store: Store) -> None:
    # GIVEN 101 fixes 0.001° apart going due north (one leg = R·0.001·π/180 km), a glitch fix 1° away
    # between fixes 50 and 51, a (0, 0) "no fix" and a NaN fix
    step_km = kpis.EARTH_RADIUS_KM * math.radians(0.001)
    samples: list[SampleRecord] = []
    for k in range(101):
        t = ms(9) + k * 10_000
        samples += [
            SampleRecord(2 * k, t, kpis.LATITUDE, -1.3 + 0.001 * k),
            SampleRecord(2 * k + 1, t, kpis.LONGITUDE, 36.8),
        ]
    glitch_t = ms(9) + 50 * 10_000 + 5_000
    samples += [
        SampleRecord(1000, glitch_t, kpis.LATITUDE, -0.3),
        SampleRecord(1001, glitch_t, kpis.LONGITUDE, 36.8),
        SampleRecord(1002, ms(9) + 20 * 10_000 + 5_000, kpis.LATITUDE, 0.0),
        SampleRecord(1003, ms(9) + 20 * 10_000 + 5_000, kpis.LONGITUDE, 0.0),
        SampleRecord(1004, ms(9) + 30 * 10_000 + 5_000, kpis.LATITUDE, math.nan),
        SampleRecord(1005, ms(9) + 30 * 10_000 + 5_000, kpis.LONGITUDE, 36.8),
    ]
    batch = Batch("bus-g", samples=tuple(samples))
    await store.write(
        [
            BatchMessage.of(
                telemetry_topic("f", "bus-g"),
                "f",
                TopicKind.TELEMETRY,
                batch,
                datetime(2024, 5, 15, tzinfo=UTC),
                1,
            )
        ]
    )

    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY)

    # THEN the two legs through the glitch are left out, which loses the leg 50 → 51 only
    assert kpi.gps_distance_km == pytest.approx(99 * step_km, rel=1e-6)


async def write_samples(store: Store, vehicle: str, samples: list[SampleRecord]) -> None:
    batch = Batch(vehicle, samples=tuple(samples))
    received = datetime(2024, 5, 15, tzinfo=UTC)
    await store.write(
        [BatchMessage.of(telemetry_topic("f", vehicle), "f", TopicKind.TELEMETRY, batch, received, 1)]
    )


async def test_gps_distance_pairs_coordinates_the_agent_keeps_apart(store: Store) -> None:
    # GIVEN a bus driving due north as the agent keeps it: a latitude every 10 s (it moves past the
    # deadband), the longitude (unchanged) only as its 30 s heartbeat, 3 s after a latitude
    step_km = kpis.EARTH_RADIUS_KM * math.radians(0.001)
    samples = [SampleRecord(k, ms(9) + k * 10_000, kpis.LATITUDE, -1.3 + 0.001 * k) for k in range(61)]
    samples += [SampleRecord(100 + j, ms(9) + j * 30_000 + 3_000, kpis.LONGITUDE, 36.8) for j in range(20)]
    await write_samples(store, "bus-apart", samples)

    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY)

    # THEN each reading of either is a fix with the other held (the first longitude with the first
    # latitude): every one of the 60 legs north counts, none twice
    assert kpi.gps_distance_km == pytest.approx(60 * step_km, rel=1e-6)


async def test_gps_distance_counts_a_fix_repeated_until_the_next_one(store: Store) -> None:
    # GIVEN a logger writing its last fix every second, its receiver giving a new one every 10 s, 0.001°
    # further north (40 km/h; as a 1 s leg, 400 km/h); then the bus stands 2 min and one fix jumps
    # 0.02° (2.2 km) away for a second
    step_km = kpis.EARTH_RADIUS_KM * math.radians(0.001)
    samples: list[SampleRecord] = []
    for second in range(422):
        lat = -1.3 + 0.001 * min(second // 10, 29)  # driving for 300 s, then standing
        if second == 420:
            lat += 0.02
        samples += [
            SampleRecord(2 * second, ms(10) + second * 1000, kpis.LATITUDE, lat),
            SampleRecord(2 * second + 1, ms(10) + second * 1000, kpis.LONGITUDE, 36.8),
        ]
    await write_samples(store, "bus-repeat", samples)

    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY)

    # THEN each new position counts once (29 legs); the glitch of the standing bus, judged over at most
    # MAX_STALE_FIX_S, is still one, both ways
    assert kpi.gps_distance_km == pytest.approx(29 * step_km, rel=1e-6)


async def test_fleet_energy_totals_rolling_mean_and_peaks(store: Store) -> None:
    received = datetime(2024, 5, 15, 1, tzinfo=UTC)
    await store.write(
        [
            BatchMessage.of(telemetry_topic("f", v), "f", TopicKind.TELEMETRY, synthetic_day(v), received, 1)
            for v in ("bus-a", "bus-b")
        ]
    )

    energy = await kpis.fleet_energy(store.connection, date(2024, 5, 13), DAY)

    # two buses, each 60 kWh used 06:00–07:00 and 62 kWh charged 08:00–08:30 on the 14th
    assert [(d.day, d.used_kwh, d.charged_kwh) for d in energy.days] == [
        (date(2024, 5, 13), 0.0, 0.0),
        (DAY, pytest.approx(120.0), pytest.approx(124.0)),
    ]
    assert energy.days[1].used_rolling_7d_kwh == pytest.approx(120.0 / 7)
    assert energy.total_used_kwh == pytest.approx(120.0)
    assert energy.total_charged_kwh == pytest.approx(124.0)
    assert energy.daily_avg_used_kwh == pytest.approx(60.0)
    assert (energy.peak_day, energy.peak_day_used_kwh) == (DAY, pytest.approx(120.0))
    assert (energy.peak_hour, energy.peak_hour_used_kwh) == (
        datetime(2024, 5, 14, 6, tzinfo=UTC),
        pytest.approx(120.0),
    )
    assert (energy.peak_charging_hour, energy.peak_charging_hour_kwh) == (
        datetime(2024, 5, 14, 8, tzinfo=UTC),
        pytest.approx(124.0),
    )


async def test_fleet_energy_summary_of_nothing_has_no_peaks() -> None:
    energy = kpis.summarize_fleet_energy([], DAY, DAY)

    assert (energy.total_used_kwh, energy.peak_day, energy.peak_hour, energy.peak_charging_hour) == (
        0.0,
        None,
        None,
        None,
    )


# A service with two trips: every 10 s from 05:50 to 07:30 UTC, driving (36 km/h, 100 A at 600 V)
# or stopped (10 A: the bus's auxiliaries). Each reading holds until the next, so a phase [a, b) is
# (b − a) / 10 s intervals of that state.
TRIP_PHASES = (  # (from, to, driving)
    ((5, 50), (6, 0), False),  # at the depot before leaving
    ((6, 0), (6, 10), True),
    ((6, 10), (6, 12), False),  # a 2-minute stop inside the first trip
    ((6, 12), (6, 30), True),
    ((6, 30), (6, 50), False),  # a 20-minute layover: the first trip ends
    ((6, 50), (7, 20), True),
    ((7, 20), (7, 30), False),
)
LEG_DEG = math.degrees(0.1 / kpis.EARTH_RADIUS_KM)  # 0.1 km due north: one driving interval


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, second, tzinfo=UTC)


def service_with_trips(vehicle: str) -> Batch:
    """Odometer +0.1 km, SOC −0.01 % and latitude +LEG_DEG per driving interval; GPS with every reading."""
    samples: list[SampleRecord] = []
    driven = 0  # driving intervals so far
    t = ms(5, 50)
    for (h0, m0), (h1, m1), driving in TRIP_PHASES:
        assert t == ms(h0, m0)
        while t < ms(h1, m1):
            for signal, value in (
                (kpis.SPEED, 36.0 if driving else 0.0),
                (kpis.PACK_CURRENT, 100.0 if driving else 10.0),
                (kpis.PACK_VOLTAGE, 600.0),
                (kpis.TRAVELED_DISTANCE, 1000.0 + 0.1 * driven),
                (kpis.SOC, 80.0 - 0.01 * driven),
                (kpis.LATITUDE, -1.3 + LEG_DEG * driven),
                (kpis.LONGITUDE, 36.8),
            ):
                samples.append(SampleRecord(len(samples), t, signal, value))
            driven += driving
            t += 10_000
    for signal, value in ((kpis.SPEED, 0.0), (kpis.SOC, 80.0 - 0.01 * driven)):  # the last reading, 07:30
        samples.append(SampleRecord(len(samples), t, signal, value))
    return Batch(vehicle, samples=tuple(samples))


async def write_batch(store: Store, batch: Batch) -> None:
    topic = telemetry_topic("f", batch.vehicle_id)
    received = datetime(2024, 5, 15, 1, tzinfo=UTC)
    await store.write([BatchMessage.of(topic, "f", TopicKind.TELEMETRY, batch, received, 1)])


async def test_trips_on_a_known_day(store: Store) -> None:
    await write_batch(store, service_with_trips("bus-t"))

    first, second = await kpis.trips(store.connection, DAY, DAY)
    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY)

    # THEN the 2-minute stop stays inside the first trip and the layover ends it; the dwell before
    # and after driving belongs to no trip
    assert (first.vehicle_id, first.started_at, first.ended_at) == ("bus-t", at(6, 0), at(6, 30))
    assert (first.duration_s, first.moving_s) == (1800.0, 1680.0)
    assert first.distance_km == pytest.approx(16.8)  # 168 driving intervals x 0.1 km
    assert first.gps_distance_km == pytest.approx(16.8, rel=1e-6)
    # 1680 s at 60 kW = 28 kWh, and the stop's 120 s at 6 kW = 0.2 kWh
    assert first.energy_used_kwh == pytest.approx(28.2)
    assert first.kwh_per_km == pytest.approx(28.2 / 16.8)
    assert (first.soc_start_pct, first.soc_end_pct) == pytest.approx((80.0, 78.32))
    assert (first.start_lat, first.start_lon) == pytest.approx((-1.3, 36.8))
    assert (first.end_lat, first.end_lon) == pytest.approx((-1.3 + 168 * LEG_DEG, 36.8))

    assert (second.started_at, second.ended_at) == (at(6, 50), at(7, 20))
    assert (second.duration_s, second.moving_s) == (1800.0, 1800.0)
    assert second.distance_km == pytest.approx(18.0)
    assert second.gps_distance_km == pytest.approx(18.0, rel=1e-6)
    assert second.energy_used_kwh == pytest.approx(30.0)
    assert (second.soc_start_pct, second.soc_end_pct) == pytest.approx((78.32, 76.52))
    assert second.start_lat == pytest.approx(first.end_lat)
    assert second.end_lat == pytest.approx(-1.3 + 348 * LEG_DEG)

    # AND the day counts both, its moving time is theirs, and its energy adds the stops outside them
    assert kpi.trip_count == 2
    assert kpi.moving_hours * 3600 == pytest.approx(first.moving_s + second.moving_s)
    assert kpi.energy_used_kwh == pytest.approx(28.2 + 30.0 + (10 + 20 + 10) * 60 * 6 / 3600)


async def test_a_stop_as_long_as_the_trip_gap_ends_a_trip(store: Store) -> None:
    await write_batch(store, service_with_trips("bus-g"))

    found = await kpis.trips(store.connection, DAY, DAY, trip_gap_s=120.0)
    [kpi] = await kpis.daily_kpis(store.connection, DAY, DAY, trip_gap_s=120.0)
    kept = await kpis.trips(store.connection, DAY, DAY, trip_gap_s=121.0)

    assert [(t.started_at, t.ended_at) for t in found] == [
        (at(6, 0), at(6, 10)),
        (at(6, 12), at(6, 30)),
        (at(6, 50), at(7, 20)),
    ]
    assert [t.distance_km for t in found] == pytest.approx([6.0, 10.8, 18.0])
    assert kpi.trip_count == 3
    assert [(t.started_at, t.ended_at) for t in kept] == [(at(6, 0), at(6, 30)), (at(6, 50), at(7, 20))]


async def test_trips_are_cut_at_the_ends_of_the_local_day(store: Store) -> None:
    # GIVEN Los Angeles time (UTC−7 in May): its 13 May ends at 07:00 UTC on the 14th, in the second trip
    await write_batch(store, service_with_trips("bus-c"))

    earlier = await kpis.trips(
        store.connection, date(2024, 5, 13), date(2024, 5, 13), tz="America/Los_Angeles"
    )
    [later] = await kpis.trips(store.connection, DAY, DAY, tz="America/Los_Angeles", vehicle_id="bus-c")
    [kpi_13, kpi_14] = await kpis.daily_kpis(
        store.connection, date(2024, 5, 13), DAY, tz="America/Los_Angeles"
    )

    # THEN the first part of the second trip ends at the range's last reading, the second part
    # starts at the next range's first
    assert [(t.started_at, t.ended_at) for t in earlier] == [
        (at(6, 0), at(6, 30)),
        (at(6, 50), at(6, 59, 50)),
    ]
    assert earlier[1].distance_km == pytest.approx(5.9)
    assert earlier[1].energy_used_kwh == pytest.approx(590 * 60 / 3600)
    assert (later.started_at, later.ended_at) == (at(7, 0), at(7, 20))
    assert later.distance_km == pytest.approx(12.0)
    assert later.energy_used_kwh == pytest.approx(20.0)
    assert (later.soc_start_pct, later.soc_end_pct) == pytest.approx((78.32 - 0.6, 76.52))
    # the daily query reads both days at once: the trip across local midnight is one trip, started on the 13th
    assert (kpi_13.trip_count, kpi_14.trip_count) == (2, 0)


async def test_trips_without_gps_and_where_there_is_no_data(store: Store) -> None:
    await write_batch(store, synthetic_day("bus-n"))

    assert await kpis.trips(store.connection, date(2024, 5, 13), date(2024, 5, 13)) == []
    [drive] = await kpis.trips(store.connection, DAY, DAY)
    assert (drive.started_at, drive.ended_at) == (at(6, 0), at(7, 0))
    assert drive.gps_distance_km is None and drive.start_lat is None  # no GPS in this batch
    assert drive.energy_used_kwh == pytest.approx(60.0)
