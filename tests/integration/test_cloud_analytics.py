"""Fleet analytics (block risk, billing, battery health) through the real aiohttp app on the real
PostgreSQL, with simulated buses stored through the real receiver store.

Three simulated buses on the same morning (the simulator's physics, CAN and NMEA, decoded by the
agent's decoder): SIM-LOW leaves the depot at 05:30 Nairobi time with 24 % SOC, SIM-FULL with a
full pack, each for 25 minutes of route 102; SIM-AGED, a pack at 90 % of its nominal capacity,
charges at the depot from 55 % in the hour before. A hand-made bus (ODO-X) has an odometer reset
and a data gap whose kilometres are worked out below.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from cloud.api import FleetViews
from cloud.ingest import BatchMessage
from cloud.kpis import KeptDays
from cloud.settings import BusOperations, DatabaseSettings, OperationsSettings, WebSettings
from protocols.predictions import SOC_DROP_MODEL, SOC_DROP_PP
from protocols.signals import ODOMETER, SOC
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, PredictionRecord, SampleRecord
from simulator.battery import CELL_CAPACITY_AH
from simulator.bus import BusConfig

from .conftest import Database, migrated_store
from .sim_fleet import SimulatedBus, bus_messages, simulate_bus

pytestmark = pytest.mark.asyncio

FLEET = "nairobi-east"
DEPARTURE = datetime(2024, 3, 4, 2, 30, tzinfo=UTC)  # 05:30 in Nairobi, the simulator's departure
DAY = DEPARTURE.date()
AGED_SOH_PCT = 90.0
BLOCK_KM = 120.0
FORECAST_DROP_PP = 9.0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimulatedBus]:
    work = tmp_path_factory.mktemp("sim")
    runs = {
        "SIM-LOW": (BusConfig(seed=3, initial_soc_pct=24.0, start_utc=DEPARTURE), 1500.0),
        "SIM-FULL": (BusConfig(seed=4, initial_soc_pct=100.0, start_utc=DEPARTURE), 1500.0),
        "SIM-AGED": (
            BusConfig(
                seed=5, soh_pct=AGED_SOH_PCT, initial_soc_pct=55.0, start_utc=DEPARTURE - timedelta(hours=1)
            ),
            3600.0,
        ),
    }
    # a 1 s physics step: every CAN message at most once a second (the agent's policy keeps less)
    return {
        bus: simulate_bus(bus, config, duration, work, dt_s=1.0) for bus, (config, duration) in runs.items()
    }


def odometer_readings(start: datetime) -> list[tuple[datetime, float]]:
    """ODO-X: a reading every 30 s from `start` for 2 h at 30 km/h (0.25 km a reading) from 5000 km;
    none from 40 to 60 minutes (readings 80 to 120: a 21-minute gap the bus drove 10.5 km across);
    at 90 minutes the odometer is reset to 0 and counts on from there."""
    readings = []
    for k in range(241):
        if 80 <= k < 121:
            continue
        value = 5000.0 + 0.25 * k if k < 180 else 0.25 * (k - 180)
        readings.append((start + timedelta(seconds=30 * k), value))
    return readings


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    buses: dict[str, SimulatedBus]

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path, params=params) as response:
            if response.content_type == "text/csv":
                return response.status, await response.text()
            return response.status, await response.json()

    async def ok(self, path: str, **params: str) -> Any:
        status, body = await self.get(path, **params)
        assert status == 200, body
        return body


@pytest.fixture
async def api(pg_schema: Database, simulated: dict[str, SimulatedBus]) -> AsyncIterator[Api]:
    store = await migrated_store(pg_schema)
    try:
        for bus in simulated.values():
            messages = bus_messages(bus, FLEET)
            for first in range(0, len(messages), 20):
                await store.write(messages[first : first + 20])
        # the on-device forecast for SIM-LOW at its last SOC reading
        low_soc_ts = max(ts for ts, signal, _ in simulated["SIM-LOW"].samples if signal == SOC)
        forecast = PredictionRecord(
            10_000_000, round(low_soc_ts * 1000), SOC_DROP_MODEL, "1.0.0", SOC_DROP_PP, FORECAST_DROP_PP
        )
        odo_start = datetime(2024, 3, 5, 6, tzinfo=UTC)
        odo = tuple(
            SampleRecord(k, int(ts.timestamp() * 1000), ODOMETER, value)
            for k, (ts, value) in enumerate(odometer_readings(odo_start))
        )
        received = odo_start + timedelta(hours=3)
        await store.write(
            [
                BatchMessage.of(
                    telemetry_topic(FLEET, "SIM-LOW"),
                    FLEET,
                    TopicKind.TELEMETRY,
                    Batch("SIM-LOW", predictions=(forecast,)),
                    received,
                    1,
                ),
                BatchMessage.of(
                    telemetry_topic(FLEET, "ODO-X"),
                    FLEET,
                    TopicKind.TELEMETRY,
                    Batch("ODO-X", odo),
                    received,
                    1,
                ),
            ]
        )
    finally:
        await store.close()
    operations = OperationsSettings(
        block_km=BLOCK_KM, buses={"SIM-AGED": BusOperations(nominal_capacity_ah=CELL_CAPACITY_AH)}
    )
    settings = WebSettings(port=0, max_range_days=60, operations=operations)
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    views = await FleetViews.start(settings, database)
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(views.url, http, simulated)
    finally:
        await views.stop()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_a_low_bus_with_a_long_block_left_is_told_to_divert(api: Api) -> None:
    at = DEPARTURE + timedelta(minutes=26)

    body = await api.ok("/api/fleet/block-risk", at=iso(at))

    ranked = body["buses"]
    # buses without a risk come last, by id
    assert [b["vehicle_id"] for b in ranked] == ["SIM-LOW", "SIM-FULL", "ODO-X", "SIM-AGED"]
    low, full, aged = ranked[0], ranked[1], ranked[3]
    # THEN the low bus has far less range above the reserve than block left, and is told so
    assert low["divert"] is True
    assert low["risk"] > 2
    assert low["remaining_source"] == "block_km"
    low_odo = [v for _, s, v in api.buses["SIM-LOW"].samples if s == ODOMETER]
    assert low["driven_today_km"] == pytest.approx(low_odo[-1] - low_odo[0])
    assert low["remaining_km"] == pytest.approx(BLOCK_KM - low["driven_today_km"])
    low_socs = [(ts, v) for ts, s, v in api.buses["SIM-LOW"].samples if s == SOC]
    assert low["soc_pct"] == pytest.approx(low_socs[-1][1]) and low["soc_pct"] < 24.0
    assert low["soc_needed_pct"] > low["soc_pct"]
    assert 0.5 < low["kwh_per_km"] < 3.0  # a 12 m e-bus in town
    assert low["range_km"] == pytest.approx(
        (low["soc_pct"] - 15.0) / 100 * low["usable_kwh"] / low["kwh_per_km"]
    )
    assert low["margin_km"] == pytest.approx(low["range_km"] - low["remaining_km"])
    # the on-device forecast beside it
    assert low["forecast_drop_pp"] == pytest.approx(FORECAST_DROP_PP)
    assert low["forecast_soc_pct"] == pytest.approx(low["soc_pct"] - FORECAST_DROP_PP)
    assert low["forecast_hours_to_reserve"] == pytest.approx((low["soc_pct"] - 15.0) / FORECAST_DROP_PP)
    # the full bus can finish
    assert full["divert"] is False
    assert full["range_km"] > full["remaining_km"] > 100
    assert full["forecast_drop_pp"] is None
    # a bus that has not driven has no kWh/km: no answer, and the reason
    assert aged["divert"] is None and "kWh/km" in aged["reason"]
    # its usable energy is its reported capacity at the state of health its charge measured
    health = await api.ok("/api/buses/SIM-AGED/health", **{"from": DAY.isoformat(), "to": DAY.isoformat()})
    assert aged["soh_pct"] == pytest.approx(health["soh_pct"]) and aged["soh_pct"] < 95
    assert aged["capacity_source"] == "status+soh"
    assert aged["usable_kwh"] == pytest.approx(full["usable_kwh"] * aged["soh_pct"] / 100)
    assert (full["capacity_source"], full["soh_pct"]) == ("status", None)


async def test_block_risk_at_an_earlier_instant_reads_the_data_of_then(api: Api) -> None:
    at = DEPARTURE + timedelta(minutes=10)

    body = await api.ok("/api/fleet/block-risk", at=iso(at))

    low = next(b for b in body["buses"] if b["vehicle_id"] == "SIM-LOW")
    then = [(ts, v) for ts, s, v in api.buses["SIM-LOW"].samples if s == SOC and ts <= at.timestamp()]
    assert low["soc_pct"] == pytest.approx(then[-1][1])
    assert low["soc_at"] == iso(datetime.fromtimestamp(then[-1][0], UTC))
    assert low["forecast_drop_pp"] is None  # the forecast was made later
    status, error = await api.get("/api/fleet/block-risk", at="yesterday")
    assert status == 400 and "ISO 8601" in error["error"]


async def test_billing_km_are_the_stored_odometer_delta_and_csv_matches_json(api: Api) -> None:
    params = {"from": DAY.isoformat(), "to": DAY.isoformat(), "period": "day"}

    body = await api.ok("/api/reports/billing", **params)
    status, text = await api.get("/api/reports/billing", format="csv", **params)

    rows = {r["vehicle_id"]: r for r in body["rows"]}
    for bus in ("SIM-LOW", "SIM-FULL"):
        odo = [v for _, s, v in api.buses[bus].samples if s == ODOMETER]
        assert rows[bus]["odometer_km"] == pytest.approx(odo[-1] - odo[0], abs=1e-9)
        assert rows[bus]["odometer_km"] > 3.0
        assert rows[bus]["gps_km"] == pytest.approx(rows[bus]["odometer_km"], rel=0.1)
        assert rows[bus]["energy_used_kwh"] > 0
        assert rows[bus]["flags"] == []
    assert rows["SIM-AGED"]["charging_hours"] > 0.5
    # THEN the CSV holds the same rows, column for column
    assert status == 200
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == body["columns"]
    assert len(parsed) == len(body["rows"])
    for line, row in zip(parsed, body["rows"], strict=True):
        for name, value in row.items():
            cell = line[name]
            if name == "flags":
                assert (cell.split(";") if cell else []) == value
            elif value is None:
                assert cell == ""
            elif isinstance(value, float):
                assert float(cell) == value
            else:
                assert cell == str(value)


async def test_billing_flags_an_odometer_reset_and_a_data_gap(api: Api) -> None:
    day = date(2024, 3, 5)

    body = await api.ok("/api/reports/billing", bus="ODO-X", **{"from": "2024-03-04", "to": "2024-03-06"})
    week = await api.ok(
        "/api/reports/billing", bus="ODO-X", period="week", **{"from": "2024-03-04", "to": "2024-03-06"}
    )

    by_day = {r["period_start"]: r for r in body["rows"]}
    row = by_day[day.isoformat()]
    # THEN 179 forward steps of 0.25 km before the reset (the gap's 42 of them among them), none for
    # the step back to 0, then 60 steps of 0.25 km
    assert row["odometer_km"] == pytest.approx(0.25 * 179 + 0.25 * 60)
    assert row["km_over_gaps"] == pytest.approx(10.5)
    assert (row["data_gaps"], row["odometer_rollbacks"], row["odometer_jumps"]) == (1, 1, 0)
    assert row["longest_gap_min"] == pytest.approx(21.0)
    assert row["flags"] == ["data_gap", "odometer_rollback"]
    assert by_day["2024-03-04"]["flags"] == ["no_data"]
    [whole] = week["rows"]
    assert (whole["period_start"], whole["period_end"], whole["days"]) == ("2024-03-04", "2024-03-06", 3)
    assert whole["odometer_km"] == pytest.approx(row["odometer_km"])
    assert whole["flags"] == ["no_data", "data_gap", "odometer_rollback"]


async def test_billing_ranges_add_up_across_their_boundary(api: Api) -> None:
    # GIVEN days seven hours behind UTC: ODO-X's local midnight falls at 07:00 UTC, mid-drive
    zone = {"bus": "ODO-X", "tz": "Etc/GMT+7"}

    first = await api.ok("/api/reports/billing", **zone, **{"from": "2024-03-04", "to": "2024-03-04"})
    second = await api.ok("/api/reports/billing", **zone, **{"from": "2024-03-05", "to": "2024-03-05"})
    both = await api.ok(
        "/api/reports/billing", **zone, period="week", **{"from": "2024-03-04", "to": "2024-03-05"}
    )

    # THEN the step over midnight is billed once, on the second day (it starts from the first's last reading)
    [day1], [day2], [whole] = first["rows"], second["rows"], both["rows"]
    assert day1["odometer_km"] == pytest.approx(0.25 * 79)  # 06:00 to 06:39:30 UTC
    assert day1["odometer_km"] + day2["odometer_km"] == pytest.approx(whole["odometer_km"])
    assert whole["odometer_km"] == pytest.approx(0.25 * 179 + 0.25 * 60)
    # the 21-minute gap ends at 07:00:30 UTC: it is the second day's
    assert (day1["data_gaps"], day2["data_gaps"]) == (0, 1)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"from": "2024-03-06", "to": "2024-03-04"},
            "'to' (2024-03-04) must not be before 'from' (2024-03-06)",
        ),
        (
            {"from": "2024-01-01", "to": "2024-03-04"},
            "the range is 64 days; at most 60 days may be asked for",
        ),
        ({"from": "2024-13-01", "to": "2024-03-04"}, "from='2024-13-01' is not a date (YYYY-MM-DD)"),
        ({"to": "2024-03-04"}, "parameter 'from' is required"),
        (
            {"from": "2024-03-04", "to": "2024-03-04", "period": "year"},
            "period='year' is not one of day, week, month",
        ),
    ],
)
async def test_bad_billing_ranges_are_400_with_the_reason(
    api: Api, params: dict[str, str], message: str
) -> None:
    status, body = await api.get("/api/reports/billing", **params)

    assert (status, body) == (400, {"error": message})


async def test_analytics_routes_refuse_a_parameter_as_every_api_route_does(api: Api) -> None:
    # GIVEN the same bad parameters to an analytics route and to a core one
    cases = [
        {"from": "2024-03-06", "to": "2024-03-04"},
        {"from": "2024-03-04", "to": "2024-03-04", "tz": "Mars/Olympus"},
        {"from": "2024-03-04"},
    ]
    for params in cases:
        billing = await api.get("/api/reports/billing", **params)
        health = await api.get("/api/buses/SIM-AGED/health", **params)
        daily = await api.get("/api/kpis/daily", **params)
        # THEN each is the same 400 with the same reason
        assert billing == health == daily and billing[0] == 400, params
    at_core = await api.get("/api/buses/SIM-LOW/series", signal=SOC, **{"from": "soon", "to": "2024-03-05"})
    at_risk = await api.get("/api/fleet/block-risk", at="soon")
    assert at_risk == (400, {"error": at_core[1]["error"].replace("from=", "at=")})


async def test_battery_health_recovers_the_simulated_pack_capacity(api: Api) -> None:
    body = await api.ok("/api/buses/SIM-AGED/health", **{"from": DAY.isoformat(), "to": DAY.isoformat()})

    # the simulator's pack: every cell (a parallel group) has its nominal Ah × SOH, spread ±1 %
    capacity_ah = CELL_CAPACITY_AH * AGED_SOH_PCT / 100
    [estimate] = body["estimates"]
    assert estimate["soc_to_pct"] - estimate["soc_from_pct"] > 40
    assert estimate["capacity_ah"] == pytest.approx(capacity_ah, rel=0.03)
    assert body["capacity_ah"] == pytest.approx(capacity_ah, rel=0.03)
    assert body["soh_pct"] == pytest.approx(AGED_SOH_PCT, abs=3)
    assert [w["week_start"] for w in body["weeks"]] == ["2024-03-04"]
    # a bus that never charged has no estimate; an unknown bus is a 404
    low = await api.ok("/api/buses/SIM-LOW/health", **{"from": DAY.isoformat(), "to": DAY.isoformat()})
    assert (low["estimates"], low["capacity_ah"], low["soh_pct"]) == ([], None, None)
    status, error = await api.get("/api/buses/NOPE-1/health")
    assert (status, error) == (404, {"error": "unknown bus 'NOPE-1'"})


async def test_a_charge_over_local_midnight_is_one_session_again(
    pg_schema: Database, simulated: dict[str, SimulatedBus]
) -> None:
    # GIVEN a fleet two hours behind UTC: SIM-AGED's charge (01:30 to ~02:28 UTC) runs over local
    # midnight, so the receiver keeps it as two sessions, one on each local day
    zone = "Atlantic/South_Georgia"
    store = await migrated_store(pg_schema, KeptDays(zone, 300.0))
    try:
        messages = bus_messages(simulated["SIM-AGED"], FLEET)
        for first in range(0, len(messages), 20):
            await store.write(messages[first : first + 20])
    finally:
        await store.close()
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    views = await FleetViews.start(WebSettings(port=0, time_zone=zone), database)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                views.url + "/api/buses/SIM-AGED/health", params={"from": "2024-03-03", "to": "2024-03-04"}
            ) as response,
        ):
            assert response.status == 200
            body = await response.json()
    finally:
        await views.stop()

    # THEN the health view joins them again: one session, one estimate over the whole window
    assert body["sessions_seen"] == 1
    [estimate] = body["estimates"]
    assert estimate["capacity_ah"] == pytest.approx(CELL_CAPACITY_AH * AGED_SOH_PCT / 100, rel=0.03)
