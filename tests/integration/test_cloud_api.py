"""The fleet views' JSON API against the real PostgreSQL, with data written through the real store.

A small fleet drives a synthetic service day (stop-and-go between stops, a loop through Nairobi, one
bus charging at the depot at the end) whose every reading is kept in `FleetTruth`, so the answers
can be checked exactly. The builder is shared with the browser and Grafana tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
import pytest

from cloud import app, gps_distance, kpi_intervals, trips
from cloud.api import FleetViews, is_loopback
from cloud.errors import StoreError
from cloud.ingest import BatchMessage, Ingested, StatusMessage, ingest_message
from cloud.schema import latest_version
from cloud.settings import CloudSettings, DatabaseSettings, IngestSettings, WebSettings
from cloud.store import Store
from protocols import signals
from protocols.topics import status_topic, telemetry_topic
from protocols.wire import AlertRecord, Batch, PredictionRecord, SampleRecord, encode_batch, encode_status

from .conftest import Database, migrated_store

START = datetime(2024, 5, 14, 5, 0, tzinfo=UTC)
FLEET = "nairobi-east"
CAPACITY_KWH = 350.0
MESSAGE_SPAN_S = 600  # one wire batch per bus per 10 minutes, as the agent would send
PREDICTION_EVERY_S = 300
DEPOT = (-1.2921, 36.8219)
BATTERY_TEMP_MAX = "Vehicle.Powertrain.TractionBattery.Temperature.Max"  # °C, hottest module
LOOP_KM = 17.0  # the route: a circle of this length starting at the depot
LOOP_RADIUS_DEG = math.degrees(LOOP_KM / (2 * math.pi) / gps_distance.EARTH_RADIUS_KM)


@dataclass(frozen=True)
class BusPlan:
    vehicle_id: str
    v_max_kmh: float = 40.0
    soc_start_pct: float = 92.0
    charging_h: tuple[tuple[float, float], ...] = ()  # [from, to) hours after the start at the depot charger
    prediction_bias_pct: float = 0.5
    online: bool = True  # its last status: online, or the last will ("offline")
    alerts: tuple[
        tuple[float, str, str, bool, float, str], ...
    ] = ()  # (hour, rule, severity, active, value, msg)


@dataclass
class BusTruth:
    ts: list[datetime] = field(default_factory=list)
    soc: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    volt: list[float] = field(default_factory=list)
    curr: list[float] = field(default_factory=list)
    odo: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    temp: list[float] = field(default_factory=list)
    predictions: list[tuple[datetime, float]] = field(default_factory=list)  # (ts, predicted drop)

    def soc_at(self, moment: datetime) -> float:
        return self.soc[self.ts.index(moment)]


def speed_profile_kmh(t_s: float, v_max: float) -> tuple[float, float]:
    """(speed, acceleration m/s²) of a 180 s stop-to-stop cycle: dwell, accelerate, cruise, brake."""
    phase = t_s % 180
    if phase < 25:
        return 0.0, 0.0
    if phase < 60:
        a = v_max / 3.6 / 35
        return a * (phase - 25) * 3.6, a
    if phase < 145:
        return v_max * (0.9 + 0.1 * math.sin((phase - 60) / 85 * math.pi)), 0.0
    a = -v_max * 0.9 / 3.6 / 35
    return max(0.0, v_max * 0.9 + a * (phase - 145) * 3.6), a


def plan_samples(plan: BusPlan, start: datetime, hours: float, step_s: int) -> tuple[BusTruth, list[Batch]]:
    """The bus's readings every `step_s` and its predictions and alerts, as wire batches per 10 minutes."""
    truth = BusTruth()
    n = int(hours * 3600 / step_s) + 1
    offset_s = sum(map(ord, plan.vehicle_id)) % 180  # the buses are not all at a stop at once
    soc, odo = plan.soc_start_pct, 48_210.0 + 97 * offset_s
    temp = 27.0
    for k in range(n):
        t_s = k * step_s
        if not any(a * 3600 <= t_s < b * 3600 for a, b in plan.charging_h):
            traffic = 0.8 + 0.2 * math.sin(2 * math.pi * (t_s + 40 * offset_s) / 5400)
            speed, accel = speed_profile_kmh(t_s + offset_s, plan.v_max_kmh * traffic)
            power_kw = 9.0 + 0.45 * speed + (0.9 * speed * accel * 3.6 if accel > 0 else 0.0)
            power_kw += 0.8 * speed * accel * 3.6 if accel < 0 else 0.0  # regeneration while braking
        else:  # at the depot charger, 150 kW until the pack is full
            speed, power_kw = 0.0, -150.0 if soc < 99.5 else 0.0
        volt = 640.0 - 0.08 * power_kw
        curr = power_kw * 1000 / volt
        theta = (odo % LOOP_KM) / LOOP_KM * 2 * math.pi
        truth.ts.append(start + timedelta(seconds=t_s))
        truth.soc.append(round(soc, 3))
        truth.speed.append(round(speed, 2))
        truth.volt.append(round(volt, 2))
        truth.curr.append(round(curr, 2))
        truth.odo.append(round(odo, 3))
        truth.lat.append(DEPOT[0] + LOOP_RADIUS_DEG * math.sin(theta))
        truth.lon.append(
            DEPOT[1] + LOOP_RADIUS_DEG / math.cos(math.radians(DEPOT[0])) * (1 - math.cos(theta))
        )
        truth.temp.append(round(temp, 2))
        soc -= power_kw * step_s / 3600 / CAPACITY_KWH * 100
        temp += (27.0 + 0.12 * abs(power_kw) - temp) * min(1.0, step_s / 900)  # first-order lag
        odo += speed * step_s / 3600
    horizon = int(3600 / step_s)
    for k in range(0, n, PREDICTION_EVERY_S // step_s):
        # the synthetic predictor knows the next hour (or, near the end, assumes the last hour repeats)
        later = min(k + horizon, n - 1)
        first = k if later - k >= horizon // 2 else max(0, later - horizon)
        rate = (truth.soc[first] - truth.soc[later]) / max(later - first, 1) * horizon
        truth.predictions.append((truth.ts[k], round(rate + plan.prediction_bias_pct, 3)))
    return truth, _batches(plan, truth, step_s)


def _batches(plan: BusPlan, truth: BusTruth, step_s: int) -> list[Batch]:
    per_message = MESSAGE_SPAN_S // step_s
    seq = 0
    batches: list[Batch] = []
    readings = (
        (signals.SOC, truth.soc),
        (signals.SPEED, truth.speed),
        (signals.PACK_VOLTAGE, truth.volt),
        (signals.PACK_CURRENT, truth.curr),
        (signals.ODOMETER, truth.odo),
        (signals.LATITUDE, truth.lat),
        (signals.LONGITUDE, truth.lon),
        (BATTERY_TEMP_MAX, truth.temp),
    )
    predicted = dict(truth.predictions)
    alerts_at = {truth.ts[0] + timedelta(hours=a[0]): a for a in plan.alerts}
    for first in range(0, len(truth.ts), per_message):
        samples: list[SampleRecord] = []
        predictions: list[PredictionRecord] = []
        alerts: list[AlertRecord] = []
        for k in range(first, min(first + per_message, len(truth.ts))):
            ts_ms = int(truth.ts[k].timestamp() * 1000)
            for name, values in readings:
                samples.append(SampleRecord(seq, ts_ms, name, values[k]))
                seq += 1
            if (drop := predicted.get(truth.ts[k])) is not None:
                p_large = min(1.0, max(0.0, (drop - 4.0) / 6))
                predictions.append(
                    PredictionRecord(seq, ts_ms, "soc_drop", "1.0.0", "soc_drop_60min_pp", drop)
                )
                predictions.append(
                    PredictionRecord(seq + 1, ts_ms, "soc_drop_60min", "1.0.0", "p_large_drop", p_large)
                )
                seq += 2
            for moment, (_, rule, severity, active, value, message) in alerts_at.items():
                if truth.ts[k] <= moment < truth.ts[k] + timedelta(seconds=step_s):
                    alerts.append(AlertRecord(seq, ts_ms, rule, severity, active, value, message))
                    seq += 1
        batches.append(Batch(plan.vehicle_id, tuple(samples), tuple(predictions), tuple(alerts)))
    return batches


def fleet_messages(
    plans: list[BusPlan], start: datetime, hours: float, step_s: int, fleet: str = FLEET
) -> tuple[dict[str, BusTruth], list[Ingested]]:
    """Every bus's batches, encoded on the wire and ingested as the receiver would, plus statuses."""
    limits = IngestSettings()
    truths: dict[str, BusTruth] = {}
    messages: list[Ingested] = []
    for i, plan in enumerate(plans):
        truth, batches = plan_samples(plan, start, hours, step_s)
        truths[plan.vehicle_id] = truth
        for batch in batches:
            newest = max(s.ts_ms for s in batch.samples)
            received = datetime.fromtimestamp(newest / 1000 + 2, UTC)
            topic = telemetry_topic(fleet, plan.vehicle_id)
            messages.append(ingest_message(topic, encode_batch(batch), received, limits))
        received = truth.ts[-1] + timedelta(seconds=3)
        status = encode_status(
            "online" if plan.online else "offline",
            int(received.timestamp() * 1000),
            vin=f"YV3T2U820R{i:07d}",
            battery_capacity_kwh=CAPACITY_KWH,
        )
        messages.append(ingest_message(status_topic(fleet, plan.vehicle_id), status, received, limits))
    assert all(isinstance(m, BatchMessage | StatusMessage) for m in messages), messages[:1]
    return truths, messages


PLANS = [
    BusPlan(
        "KBZ-101A",
        v_max_kmh=42.0,
        alerts=((0.5, "cell_overtemp", "critical", True, 58.5, "cell temperature 58.5 °C"),),
    ),
    BusPlan(
        "KBZ-102B",
        v_max_kmh=36.0,
        soc_start_pct=71.0,
        prediction_bias_pct=-0.4,
        alerts=(
            (0.25, "low_soc", "warning", True, 68.0, "SOC below 70 %"),
            (1.0, "low_soc", "warning", False, 72.0, "SOC recovered"),
        ),
    ),
    BusPlan("KBZ-103C", v_max_kmh=45.0, soc_start_pct=60.0, charging_h=((1.5, 2.01),)),
]


async def write_all(store: Store, messages: list[Ingested]) -> None:
    for first in range(0, len(messages), 50):
        await store.write(messages[first : first + 50])
    await store.refresh_rollups()  # hours and days, as the receiver does every few minutes


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    truths: dict[str, BusTruth]
    flavour: str  # of the database under it

    async def get(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(self.url + path, params=params) as response:
            body = await response.json()
            assert response.content_type == "application/json"
            return response.status, body

    async def ok(self, path: str, **params: str) -> dict[str, Any]:
        status, body = await self.get(path, **params)
        assert status == 200, body
        return body


@contextlib.asynccontextmanager
async def fleet_day_api(db: Database) -> AsyncIterator[Api]:
    """The fleet views over `PLANS`' two hours written into `db` (shared with the OpenAPI tests)."""
    store = await migrated_store(db)
    truths, messages = fleet_messages(PLANS, START, hours=2, step_s=10)
    try:
        await write_all(store, messages)
    finally:
        await store.close()
    database = DatabaseSettings.model_validate({"dsn": db.dsn, "schema": db.schema})
    views = await FleetViews.start(WebSettings(port=0, max_range_days=60), database)
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(views.url, http, truths, db.flavour)
    finally:
        await views.stop()


@pytest.fixture
async def api(pg_schema: Database) -> AsyncIterator[Api]:
    async with fleet_day_api(pg_schema) as served:
        yield served


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_health_reports_the_schema(api: Api) -> None:
    body = await api.ok("/api/health")
    assert body == {"status": "ok", "schema_version": latest_version(), "flavour": api.flavour}


async def test_bus_list_shows_each_bus_last_state(api: Api) -> None:
    body = await api.ok("/api/buses")

    buses = {b["id"]: b for b in body["buses"]}
    assert sorted(buses) == ["KBZ-101A", "KBZ-102B", "KBZ-103C"]
    first, truth = buses["KBZ-101A"], api.truths["KBZ-101A"]
    assert first["fleet"] == FLEET
    assert first["online"] is True
    assert first["vin"] == "YV3T2U820R0000000"
    assert first["battery_capacity_kwh"] == CAPACITY_KWH
    assert first["soc_pct"] == {"ts": iso(truth.ts[-1]), "value": pytest.approx(truth.soc[-1])}
    assert first["speed_kmh"]["value"] == pytest.approx(truth.speed[-1])
    assert first["pack_power_kw"]["value"] == pytest.approx(truth.volt[-1] * truth.curr[-1] / 1000)
    assert first["location"] == {
        "lat": pytest.approx(truth.lat[-1]),
        "lon": pytest.approx(truth.lon[-1]),
        "ts": iso(truth.ts[-1]),
    }
    assert first["data_until"] == iso(truth.ts[-1])
    # THEN a raised alert that was never cleared is active; a raised-then-cleared one is not
    assert [(a["rule"], a["severity"]) for a in first["active_alerts"]] == [("cell_overtemp", "critical")]
    assert buses["KBZ-102B"]["active_alerts"] == []
    # the risk is the latest probability output; the latest SOC-drop prediction is listed too
    last_ts, last_drop = truth.predictions[-1]
    assert first["risk"]["output"] == "p_large_drop"
    assert first["risk"]["ts"] == iso(last_ts)
    outputs = {p["output"]: p["value"] for p in first["predictions"]}
    assert outputs["soc_drop_60min_pp"] == pytest.approx(last_drop)


async def test_one_bus_and_an_unknown_bus(api: Api) -> None:
    body = await api.ok("/api/buses/KBZ-103C")
    assert body["id"] == "KBZ-103C"
    assert body["pack_power_kw"]["value"] < 0  # charging at the depot

    status, error = await api.get("/api/buses/KBZ-999Z")
    assert (status, error) == (404, {"error": "unknown bus 'KBZ-999Z'"})


async def test_raw_series_returns_every_reading_in_the_range(api: Api) -> None:
    truth = api.truths["KBZ-101A"]
    t_from, t_to = truth.ts[0], truth.ts[0] + timedelta(minutes=30)

    body = await api.ok(
        "/api/buses/KBZ-101A/series", signal=signals.SOC, **{"from": iso(t_from), "to": iso(t_to)}
    )

    assert body["resolution"] == "raw"
    assert body["truncated"] is False
    points = body["points"]
    assert isinstance(points, list)
    assert [p["ts"] for p in points] == [iso(t) for t in truth.ts[:180]]  # [from, to): 30 min at 10 s
    assert [p["avg"] for p in points] == pytest.approx(truth.soc[:180])


async def test_long_ranges_come_from_the_rollups(api: Api) -> None:
    truth = api.truths["KBZ-102B"]
    t_from = truth.ts[0]

    minutes = await api.ok(
        "/api/buses/KBZ-102B/series",
        signal=signals.SPEED,
        **{"from": iso(t_from), "to": iso(t_from + timedelta(hours=6))},
    )
    hours = await api.ok(
        "/api/buses/KBZ-102B/series",
        signal=signals.SPEED,
        resolution="1h",
        **{"from": iso(t_from), "to": iso(t_from + timedelta(days=3))},
    )
    days = await api.ok(
        "/api/buses/KBZ-102B/series",
        signal=signals.SPEED,
        resolution="1d",
        **{"from": iso(t_from - timedelta(days=10)), "to": iso(t_from + timedelta(days=50))},
    )

    assert (minutes["resolution"], hours["resolution"], days["resolution"]) == ("1m", "1h", "1d")
    first_minute = minutes["points"][0]
    assert first_minute["n"] == 6
    assert first_minute["avg"] == pytest.approx(sum(truth.speed[:6]) / 6)
    assert first_minute["max"] == pytest.approx(max(truth.speed[:6]))
    assert len(minutes["points"]) == 121  # 2 h + the final reading's minute
    assert [p["n"] for p in hours["points"]] == [360, 360, 1]
    assert [p["n"] for p in days["points"]] == [721]


async def test_every_resolution_is_current_right_after_a_write(pg_schema: Database) -> None:
    # GIVEN half an hour of one bus ending a few minutes ago, written and committed, never refreshed
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=40)
    truths, messages = fleet_messages(PLANS[:1], start, hours=0.5, step_s=10)
    bus, truth = next(iter(truths.items()))
    store = await migrated_store(pg_schema)
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    views = await FleetViews.start(WebSettings(port=0), database)
    try:
        for first in range(0, len(messages), 50):
            await store.write(messages[first : first + 50])

        async def series() -> dict[str, list[tuple[float, int]]]:
            found: dict[str, list[tuple[float, int]]] = {}
            span = {"from": iso(start - timedelta(days=1)), "to": iso(start + timedelta(days=1))}
            async with aiohttp.ClientSession() as http:
                for resolution in ("1m", "1h", "1d"):
                    params = {"signal": signals.SPEED, "resolution": resolution, **span}
                    async with http.get(f"{views.url}/api/buses/{bus}/series", params=params) as response:
                        assert response.status == 200
                        body = await response.json()
                    found[resolution] = [(p["avg"], p["n"]) for p in body["points"]]
            return found

        # WHEN the minutes, hours and days are read at once, and again after the receiver's refresh
        before = await series()
        assert await store.refresh_rollups(keep_days=False)
        after = await series()
    finally:
        await views.stop()
        await store.close()

    # THEN each holds every reading (today included), the same before the refresh as after
    for resolution, points in before.items():
        assert sum(n for _, n in points) == len(truth.speed), resolution
        mean = sum(avg * n for avg, n in points) / len(truth.speed)
        assert mean == pytest.approx(sum(truth.speed) / len(truth.speed)), resolution
    for resolution, points in after.items():  # the same sums, added up in another order
        assert [n for _, n in points] == [n for _, n in before[resolution]], resolution
        assert [avg for avg, _ in points] == pytest.approx([avg for avg, _ in before[resolution]])


async def test_pack_power_is_derived_from_voltage_and_current(api: Api) -> None:
    truth = api.truths["KBZ-103C"]
    t_to = truth.ts[-1] + timedelta(seconds=1)

    raw = await api.ok(
        "/api/buses/KBZ-103C/series",
        signal="pack_power_kw",
        **{"from": iso(t_to - timedelta(minutes=10)), "to": iso(t_to)},
    )

    # the last 10 minutes are at the charger: V·I < 0, one 10 s bucket per reading
    last = raw["points"][-1]
    assert last["ts"] == iso(truth.ts[-1])
    assert last["avg"] == pytest.approx(truth.volt[-1] * truth.curr[-1] / 1000)
    assert last["avg"] == pytest.approx(-150.0, abs=0.5)


async def test_predictions_against_what_happened(api: Api) -> None:
    truth = api.truths["KBZ-102B"]

    body = await api.ok(
        "/api/buses/KBZ-102B/predictions", **{"from": iso(truth.ts[0]), "to": iso(truth.ts[-1])}
    )

    points = body["points"]
    assert isinstance(points, list)
    assert len(points) == len(truth.predictions) - 1  # `to` is exclusive: the last one is at `to`
    first = points[0]
    t0 = truth.ts[0]
    assert first["ts"] == iso(t0)
    assert first["target_ts"] == iso(t0 + timedelta(hours=1))
    assert first["soc_at_prediction_pct"] == pytest.approx(truth.soc_at(t0))
    assert first["actual_soc_pct"] == pytest.approx(truth.soc_at(t0 + timedelta(hours=1)))
    assert first["actual_drop_pct"] == pytest.approx(truth.soc_at(t0) - truth.soc_at(t0 + timedelta(hours=1)))
    assert first["predicted_soc_pct"] == pytest.approx(truth.soc_at(t0) - truth.predictions[0][1])
    # predictions made in the last hour have no outcome yet
    assert points[-1]["actual_drop_pct"] is None
    # the synthetic predictor is the truth plus a bias of −0.4 % wherever the outcome is known
    assert body["evaluated"] == 13  # predictions at 0, 5, …, 60 min have a reading 60 min later
    assert body["bias_pct"] == pytest.approx(-0.4, abs=1e-6)
    assert body["mae_pct"] == pytest.approx(0.4, abs=1e-6)


async def test_alerts_in_a_range_newest_first(api: Api) -> None:
    every = await api.ok("/api/alerts", **{"from": iso(START), "to": iso(START + timedelta(hours=3))})
    critical = await api.ok(
        "/api/alerts",
        severity="critical",
        **{"from": iso(START), "to": iso(START + timedelta(hours=3))},
    )
    one_bus = await api.ok(
        "/api/alerts",
        bus="KBZ-102B",
        limit="1",
        **{"from": iso(START), "to": iso(START + timedelta(hours=3))},
    )
    recent = await api.ok("/api/alerts")  # default: the last 7 days before now, long after the data

    assert [(a["vehicle_id"], a["rule"], a["active"]) for a in every["alerts"]] == [
        ("KBZ-102B", "low_soc", False),
        ("KBZ-101A", "cell_overtemp", True),
        ("KBZ-102B", "low_soc", True),
    ]
    assert [a["rule"] for a in critical["alerts"]] == ["cell_overtemp"]
    assert [a["active"] for a in one_bus["alerts"]] == [False]
    assert recent["alerts"] == []


async def test_daily_kpis_with_a_date_range(api: Api) -> None:
    body = await api.ok("/api/kpis/daily", **{"from": "2024-05-13", "to": "2024-05-14"})
    one = await api.ok(
        "/api/kpis/daily", bus="KBZ-101A", tz="Africa/Nairobi", **{"from": "2024-05-14", "to": "2024-05-14"}
    )

    rows = {r["vehicle_id"]: r for r in body["rows"]}
    assert sorted(rows) == ["KBZ-101A", "KBZ-102B", "KBZ-103C"]
    truth = api.truths["KBZ-101A"]
    first = rows["KBZ-101A"]
    assert first["day"] == "2024-05-14"
    assert first["distance_km"] == pytest.approx(truth.odo[-1] - truth.odo[0])
    assert first["gps_distance_km"] == pytest.approx(first["distance_km"], rel=0.01)
    assert first["soc_start_pct"] == pytest.approx(truth.soc[0])
    assert first["alerts_raised"] == 1
    assert rows["KBZ-103C"]["charging_events"] == 1
    assert rows["KBZ-103C"]["energy_charged_kwh"] == pytest.approx(75.0, rel=0.01)  # 150 kW for 30 min
    assert [r["vehicle_id"] for r in one["rows"]] == ["KBZ-101A"]
    assert one["tz"] == "Africa/Nairobi"


async def test_ended_days_come_from_the_kept_tables(api: Api, pg_schema: Database) -> None:
    # GIVEN the fixture's refresh kept 2024-05-14 (UTC, the default time zone) of every bus
    async with await psycopg.AsyncConnection.connect(pg_schema.dsn) as conn:
        await conn.execute(f'SET search_path = "{pg_schema.schema}"'.encode())
        pending = await (await conn.execute(b"SELECT count(*) FROM kpi_days_pending")).fetchone()
        # WHEN a kept row is altered behind the API's back
        await conn.execute(b"UPDATE daily_kpis SET trip_count = 99 WHERE vehicle_id = 'KBZ-101A'")
        await conn.commit()

    daily = await api.ok("/api/kpis/daily", bus="KBZ-101A", **{"from": "2024-05-14", "to": "2024-05-14"})
    other_zone = await api.ok(
        "/api/kpis/daily", bus="KBZ-101A", tz="Etc/GMT-1", **{"from": "2024-05-14", "to": "2024-05-14"}
    )

    # THEN the default time zone reads it from the table; another zone computes on demand
    assert pending == (0,)
    assert [r["trip_count"] for r in daily["rows"]] == [99]
    assert [r["trip_count"] for r in other_zone["rows"]] == [1]


async def test_fleet_energy_kpis(api: Api) -> None:
    body = await api.ok("/api/kpis/fleet", **{"from": "2024-05-14", "to": "2024-05-15"})
    daily = await api.ok("/api/kpis/daily", **{"from": "2024-05-14", "to": "2024-05-14"})

    used = sum(r["energy_used_kwh"] for r in daily["rows"])
    assert body["total_used_kwh"] == pytest.approx(used)
    assert body["daily_avg_used_kwh"] == pytest.approx(used / 2)
    assert body["peak_day"] == "2024-05-14"
    assert body["peak_hour"] in {"2024-05-14T05:00:00Z", "2024-05-14T06:00:00Z"}
    assert body["peak_charging_hour"] == "2024-05-14T06:00:00Z"  # KBZ-103C charges 06:30–07:00
    assert [d["day"] for d in body["days"]] == ["2024-05-14", "2024-05-15"]


async def test_charging_sessions_of_a_bus(api: Api) -> None:
    body = await api.ok("/api/buses/KBZ-103C/charging", **{"from": "2024-05-14", "to": "2024-05-14"})

    [session] = body["sessions"]
    assert session["started_at"] == "2024-05-14T06:30:00Z"
    assert session["energy_added_kwh"] == pytest.approx(75.0, rel=0.01)


async def test_trips_of_a_bus(api: Api) -> None:
    # GIVEN KBZ-103C's stop-and-go service (25 s at each stop), then the depot charger from 06:30
    truth = api.truths["KBZ-103C"]
    moving = [k for k in range(len(truth.ts) - 1) if truth.speed[k] > kpi_intervals.MOVING_SPEED_KMH]
    first, last = moving[0], moving[-1] + 1  # the trip's first reading and the one ending its last interval

    body = await api.ok("/api/buses/KBZ-103C/trips", **{"from": "2024-05-14", "to": "2024-05-14"})
    daily = await api.ok("/api/kpis/daily", **{"from": "2024-05-14", "to": "2024-05-14"})

    # THEN the stops stay inside one trip, which ends when the bus stops for the charger
    assert (body["bus"], body["trip_gap_s"]) == ("KBZ-103C", trips.TRIP_GAP_S)
    [trip] = body["trips"]
    assert (trip["started_at"], trip["ended_at"]) == (iso(truth.ts[first]), iso(truth.ts[last]))
    assert truth.ts[last] <= START + timedelta(hours=1.5)
    assert trip["moving_s"] == 10.0 * len(moving)
    assert trip["distance_km"] == pytest.approx(truth.odo[last] - truth.odo[first])
    assert trip["gps_distance_km"] == pytest.approx(trip["distance_km"], rel=0.01)
    used_kwh = sum(truth.volt[k] * truth.curr[k] * 10 for k in range(first, last)) / 3.6e6
    assert trip["energy_used_kwh"] == pytest.approx(used_kwh)
    assert trip["kwh_per_km"] == pytest.approx(used_kwh / trip["distance_km"])
    assert (trip["soc_start_pct"], trip["soc_end_pct"]) == pytest.approx((truth.soc[first], truth.soc[last]))
    assert (trip["end_lat"], trip["end_lon"]) == pytest.approx((truth.lat[last], truth.lon[last]))
    assert {r["vehicle_id"]: r["trip_count"] for r in daily["rows"]} == {
        "KBZ-101A": 1,
        "KBZ-102B": 1,
        "KBZ-103C": 1,
    }


async def test_metrics_count_the_api_requests(api: Api) -> None:
    await api.get("/api/buses/KBZ-999Z")

    async with api.http.get(api.url + "/metrics") as response:
        text = await response.text()

    assert response.status == 200
    assert 'voltgate_cloud_http_requests_total{route="/api/buses/{bus}",status="404"}' in text


async def test_the_page_is_served_without_outside_resources(api: Api) -> None:
    async with api.http.get(api.url + "/") as response:
        html = await response.text()
        csp = response.headers["Content-Security-Policy"]
    assert response.status == 200
    assert "default-src 'self'" in csp
    assert "http://" not in html and "https://" not in html
    for asset in ("/app.js", "/common.js", "/charts.js", "/fleet.js", "/map.js", "/style.css"):
        async with api.http.get(api.url + asset) as response:
            assert response.status == 200
            assert "https://" not in await response.text()
    # the map library is served from its installed package, as scripts and stylesheets
    for asset, kind in (("/lib/leaflet.js", "text/javascript"), ("/lib/MarkerCluster.css", "text/css")):
        async with api.http.get(api.url + asset) as response:
            assert response.status == 200 and response.content_type == kind, asset
    async with api.http.get(api.url + "/page-config.json") as response:
        assert (await response.json())["tile_url"] is None  # no tile server: a blank map, offline


BAD_REQUESTS = [
    # (path, params, status, fragment of the reason)
    ("/api/buses/bad%20id", {}, 400, "malformed"),
    (
        "/api/buses/NOPE/series",
        {"signal": signals.SOC, "from": "2024-05-14", "to": "2024-05-15"},
        404,
        "unknown bus",
    ),
    ("/api/buses/KBZ-101A/series", {"from": "2024-05-14", "to": "2024-05-15"}, 400, "'signal' is required"),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": "x;drop", "from": "2024-05-14", "to": "2024-05-15"},
        400,
        "signal",
    ),
    ("/api/buses/KBZ-101A/series", {"signal": signals.SOC, "to": "2024-05-15"}, 400, "'from' is required"),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "yesterday", "to": "2024-05-15"},
        400,
        "ISO 8601",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2024-13-40", "to": "2024-05-15"},
        400,
        "ISO 8601",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2024-05-14T05:00:00", "to": "2024-05-15"},
        400,
        "no UTC offset",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2024-05-15", "to": "2024-05-14"},
        400,
        "must be after",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2024-05-14", "to": "2024-05-14"},
        400,
        "must be after",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2023-01-01", "to": "2024-05-14"},
        400,
        "at most 60 days",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2024-05-14", "to": "2024-05-15", "resolution": "5m"},
        400,
        "not one of auto, raw, 1m, 1h, 1d",
    ),
    (
        "/api/buses/KBZ-101A/series",
        {"signal": signals.SOC, "from": "2024-05-01", "to": "2024-05-14", "resolution": "raw"},
        400,
        "coarser resolution",
    ),
    ("/api/buses/KBZ-101A/predictions", {"from": "2024-05-14"}, 400, "'to' is required"),
    ("/api/buses/NOPE/predictions", {"from": "2024-05-14", "to": "2024-05-15"}, 404, "unknown bus"),
    ("/api/buses/KBZ-101A/charging", {"from": "2024-05-14", "to": "14.05.2024"}, 400, "not a date"),
    ("/api/buses/KBZ-101A/trips", {"to": "2024-05-14"}, 400, "'from' is required"),
    ("/api/buses/KBZ-101A/trips", {"from": "2024-05-14", "to": "2024-05-31T00:00Z"}, 400, "not a date"),
    ("/api/buses/KBZ-101A/trips", {"from": "2024-05-14", "to": "2024-05-13"}, 400, "must not be before"),
    ("/api/buses/KBZ-101A/trips", {"from": "2024-01-01", "to": "2024-05-13"}, 400, "at most 60 days"),
    (
        "/api/buses/KBZ-101A/trips",
        {"from": "2024-05-14", "to": "2024-05-14", "tz": "UTC+3"},
        400,
        "time zone",
    ),
    ("/api/buses/NOPE/trips", {"from": "2024-05-14", "to": "2024-05-14"}, 404, "unknown bus"),
    ("/api/buses/bad%20id/trips", {"from": "2024-05-14", "to": "2024-05-14"}, 400, "malformed"),
    ("/api/alerts", {"from": "2024-05-14", "to": "2024-05-15", "severity": "panic"}, 400, "severity"),
    ("/api/alerts", {"from": "2024-05-14", "to": "2024-05-15", "limit": "many"}, 400, "not an integer"),
    ("/api/alerts", {"from": "2024-05-14", "to": "2024-05-15", "limit": "0"}, 400, "out of range"),
    ("/api/alerts", {"from": "2024-05-14", "to": "2024-05-15", "bus": "NOPE"}, 404, "unknown bus"),
    ("/api/kpis/daily", {"from": "2024-05-14"}, 400, "'to' is required"),
    ("/api/kpis/daily", {"from": "2024-05-14", "to": "2024-05-13"}, 400, "must not be before"),
    ("/api/kpis/daily", {"from": "2024-01-01", "to": "2024-05-13"}, 400, "at most 60 days"),
    ("/api/kpis/daily", {"from": "2024-05-14", "to": "2024-05-14", "tz": "Mars/Olympus"}, 400, "time zone"),
    ("/api/kpis/daily", {"from": "2024-05-14", "to": "2024-05-14", "bus": "NOPE"}, 404, "unknown bus"),
    ("/api/kpis/fleet", {"from": "2024-05-14", "to": "2024-02-30"}, 400, "not a date"),
    ("/api/nothing-here", {}, 404, "Not Found"),
]


async def test_bad_requests_get_a_reason(api: Api) -> None:
    wrong: list[str] = []
    for path, params, status, fragment in BAD_REQUESTS:
        got_status, body = await api.get(path, **params)
        error = body.get("error")
        if got_status != status or not isinstance(error, str) or fragment not in error:
            wrong.append(f"{path} {params}: {got_status} {body}")
    assert wrong == []


async def test_serve_runs_the_fleet_views_until_stopped(pg_schema: Database) -> None:
    store = await migrated_store(pg_schema)
    await store.close()
    with socket.socket() as probe:  # a free port for the server to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = CloudSettings.model_validate(
        {
            "database": {"dsn": pg_schema.dsn, "schema": pg_schema.schema},
            "web": {"port": port},
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(app.serve(settings, stop), name="serve-under-test")
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # until it listens (or stopped early)
                if task.done():
                    break
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/buses") as response:
                        body = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert not task.done(), task.exception()
        assert body["buses"] == [] and body["time_zone"] == "UTC"
    finally:
        stop.set()
        await task


async def test_serve_refuses_an_unmigrated_schema(pg_schema: Database) -> None:
    settings = CloudSettings.model_validate({"database": {"dsn": pg_schema.dsn, "schema": pg_schema.schema}})

    with pytest.raises(StoreError, match="voltgate-cloud migrate"):
        await app.serve(settings, asyncio.Event())


# --- access control ------------------------------------------------------------------------------------

TOKENS = ("k7Qm2x9PzR4vW8tY1uLs", "second-token_for.the~ops/team+=")


@dataclass
class Guarded:
    url: str
    http: aiohttp.ClientSession

    async def get(self, path: str, token: str | None = None, **headers: str) -> aiohttp.ClientResponse:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.get(self.url + path, headers=headers) as response:
            await response.read()
            return response


@pytest.fixture
async def guarded(pg_schema: Database, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Guarded]:
    # GIVEN the fleet views with two tokens, over an empty schema
    caplog.set_level(logging.DEBUG)
    store = await migrated_store(pg_schema)
    await store.close()
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    settings = WebSettings.model_validate({"port": 0, "api_tokens": list(TOKENS)})
    views = await FleetViews.start(settings, database)
    try:
        async with aiohttp.ClientSession() as http:
            yield Guarded(views.url, http)
    finally:
        await views.stop()


async def test_with_tokens_the_api_needs_one(guarded: Guarded, caplog: pytest.LogCaptureFixture) -> None:
    missing = await guarded.get("/api/buses")
    wrong = await guarded.get("/api/buses", token="k7Qm2x9PzR4vW8tY1uLt")
    prefix = await guarded.get("/api/buses", token=TOKENS[0][:-1])
    basic = await guarded.get(
        "/api/kpis/daily?from=2024-05-14&to=2024-05-14", Authorization="Basic dm9sdDpnYXRl"
    )
    unknown = await guarded.get("/api/nothing-here")

    for refused in (missing, wrong, prefix, basic, unknown):
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer ")
        assert isinstance((await refused.json())["error"], str)
    assert "error=" not in missing.headers["WWW-Authenticate"]  # no token sent: a bare challenge
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert (await missing.json())["error"] == "this API needs a token: send 'Authorization: Bearer <token>'"
    # the token is never repeated back, nor logged (at start or since)
    assert TOKENS[0][:-1] not in await prefix.text()
    logged = "\n".join(r.getMessage() for r in caplog.get_records("setup") + caplog.get_records("call"))
    assert "fleet views: /api needs a bearer token (2 configured)" in logged
    assert not any(secret in logged or secret[:-1] in logged for secret in TOKENS)


async def test_with_tokens_either_token_opens_the_api(guarded: Guarded) -> None:
    first = await guarded.get("/api/buses", token=TOKENS[0])
    second = await guarded.get("/api/kpis/daily?from=2024-05-14&to=2024-05-14", token=TOKENS[1])
    unknown = await guarded.get("/api/nothing-here", token=TOKENS[0])
    lower = await guarded.get("/api/buses", Authorization=f"bearer  {TOKENS[1]}")

    assert (first.status, second.status, lower.status) == (200, 200, 200)
    assert (await first.json())["buses"] == []
    assert unknown.status == 404


async def test_with_tokens_health_page_and_metrics_stay_open(guarded: Guarded) -> None:
    # The page's files hold no data; its script sends the token to the API (`/#token=…`).
    for path in ("/api/health", "/", "/map.js", "/lib/leaflet.js", "/page-config.json", "/metrics"):
        response = await guarded.get(path)
        assert response.status == 200, path
    # ... and the open metrics count the refused API requests (this test's own, whatever ran before it)
    assert (await guarded.get("/api/buses")).status == 401
    metrics = await (await guarded.get("/metrics")).text()
    assert 'voltgate_cloud_http_requests_total{route="/api/buses",status="401"}' in metrics


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("fleet.example.org", False),
    ],
)
def test_which_hosts_serve_this_machine_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_an_open_api_on_every_interface_is_warned_about(
    pg_schema: Database, caplog: pytest.LogCaptureFixture
) -> None:
    store = await migrated_store(pg_schema)
    await store.close()
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})

    for host in ("127.0.0.1", "0.0.0.0"):
        caplog.clear()
        views = await FleetViews.start(WebSettings(host=host, port=0, open_without_tokens=True), database)
        await views.stop()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if host == "127.0.0.1":
            assert warnings == []
        else:
            [warning] = warnings
            assert warning.startswith("fleet views on 0.0.0.0:") and "web.api_tokens" in warning


async def test_with_tokens_the_description_says_so_and_needs_one(guarded: Guarded) -> None:
    refused = await guarded.get("/api/openapi.json")
    described = await guarded.get("/api/openapi.json", token=TOKENS[1])

    assert refused.status == 401
    body = await described.json()
    assert body["security"] == [{"bearer": []}]
    assert body["paths"]["/api/health"]["get"]["security"] == []  # as served: open without a token
