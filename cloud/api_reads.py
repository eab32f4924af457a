"""The fleet API's read routes: each validates its parameters (`cloud.api_params`) before it touches the
database, reads through `cloud.web.queries` or the KPI modules (`cloud.kept_kpis`, `cloud.daily_kpis`,
`cloud.trips`, `cloud.charging`, `cloud.fleet_energy`), and answers JSON.

Daily KPIs in `web.time_zone` (the default `tz`) come from the table the receiver keeps for ended
days, each bus-day computed on its own; a bus-day not kept yet (today, late data) is computed on
demand the same way (`cloud.kept_kpis`). Trips and charging sessions of one day in that time zone come
from their kept tables too (cut at midnight, as any range's ends cut them); over several days they
are computed on demand, so one that runs over midnight stays whole. Another `tz` is computed on demand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from cloud import charging, fleet_energy, kept_kpis, schema, trips
from cloud.api_params import (
    MAX_POINTS,
    RequestError,
    bounded_int,
    bus_id,
    choose_resolution,
    day_range,
    instant_range,
    json_response,
    jsonable,
    severity,
    signal_name,
    time_zone,
)
from cloud.openapi import OPENAPI_PATH, openapi_document
from cloud.settings import WebSettings
from cloud.web import queries
from protocols.catalog import catalog_signal_names

MAX_ALERTS: Final = 1_000
MAX_PREDICTIONS: Final = 5_000
DEFAULT_ALERT_WINDOW: Final = timedelta(days=7)
# What /series accepts: the shipped catalog's signals and the derived pack power.
KNOWN_SIGNALS: Final = frozenset({*catalog_signal_names(), queries.PACK_POWER})

Pool = AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]]


def bus_json(state: queries.BusState) -> dict[str, object]:
    location = None
    if state.latitude is not None and state.longitude is not None:
        location = {"lat": state.latitude, "lon": state.longitude, "ts": state.location_at}
    risk = state.risk
    return {
        "id": state.vehicle_id,
        "fleet": state.fleet,
        "vin": state.vin,
        "battery_capacity_kwh": state.battery_capacity_kwh,
        "online": state.online,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "data_until": state.data_until,
        "soc_pct": state.soc_pct,
        "speed_kmh": state.speed_kmh,
        "pack_power_kw": state.pack_power_kw,
        "location": location,
        "active_alerts": state.active_alerts,
        "predictions": state.predictions,
        "risk": None
        if risk is None
        else {"output": risk.output, "value": risk.value, "ts": risk.ts, "model": risk.model},
    }


def outcome_json(outcome: queries.PredictionOutcome) -> dict[str, object]:
    return {
        "ts": outcome.ts,
        "target_ts": outcome.ts + queries.PREDICTION_HORIZON,
        "model": outcome.model,
        "model_version": outcome.model_version,
        "predicted_drop_pct": outcome.predicted_drop_pct,
        "actual_drop_pct": outcome.actual_drop_pct,
        "soc_at_prediction_pct": outcome.soc_at_prediction_pct,
        "predicted_soc_pct": outcome.predicted_soc_pct,
        "actual_soc_pct": outcome.soc_after_horizon_pct,
    }


class FleetReads:
    """The /api handlers over one connection pool; `cloud.openapi` describes each."""

    def __init__(self, pool: Pool, settings: WebSettings, schema_name: str) -> None:
        self._pool = pool
        self._settings = settings
        self._schema_name = schema_name
        # The kept daily tables hold days of web.time_zone with trips ended by web.trip_gap_s (`run`).
        self._kept = kept_kpis.KeptDays.of(settings)
        self._description = openapi_document(KNOWN_SIGNALS, needs_token=bool(settings.api_tokens))

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/health", self.health)
        router.add_get("/api/buses", self.buses)
        router.add_get("/api/buses/{bus}", self.bus)
        router.add_get("/api/buses/{bus}/series", self.series)
        router.add_get("/api/buses/{bus}/predictions", self.predictions)
        router.add_get("/api/buses/{bus}/charging", self.charging)
        router.add_get("/api/buses/{bus}/trips", self.trips)
        router.add_get("/api/alerts", self.alerts)
        router.add_get("/api/kpis/daily", self.daily_kpis)
        router.add_get("/api/kpis/fleet", self.fleet_kpis)
        router.add_get(OPENAPI_PATH, self.openapi)

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(self._description)

    async def health(self, request: web.Request) -> web.Response:
        async with self._pool.connection() as conn:
            version, flavour = await schema.schema_state(conn, self._schema_name)
        return json_response({"status": "ok", "schema_version": version, "flavour": flavour.value})

    async def buses(self, request: web.Request) -> web.Response:
        async with self._pool.connection() as conn:
            states = await queries.bus_states(conn)
        return json_response(
            {
                "as_of": datetime.now(UTC),
                "time_zone": self._settings.time_zone,
                "buses": [bus_json(s) for s in states],
            }
        )

    async def bus(self, request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        async with self._pool.connection() as conn:
            states = await queries.bus_states(conn, bus)
        if not states:
            raise RequestError(f"unknown bus {bus!r}", 404)
        return json_response(bus_json(states[0]))

    async def series(self, request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        query = request.query
        signal = signal_name(query, KNOWN_SIGNALS)
        t_from, t_to = instant_range(query, self._settings.max_range_days)
        resolution = choose_resolution(query.get("resolution", "auto"), t_to - t_from)
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            points = await queries.series(conn, bus, signal, t_from, t_to, resolution, MAX_POINTS + 1)
        return json_response(
            {
                "bus": bus,
                "signal": signal,
                "from": t_from,
                "to": t_to,
                "resolution": resolution.value,
                "truncated": len(points) > MAX_POINTS,
                "points": points[:MAX_POINTS],
            }
        )

    async def predictions(self, request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        t_from, t_to = instant_range(request.query, self._settings.max_range_days)
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            outcomes = await queries.prediction_outcomes(conn, bus, t_from, t_to, MAX_PREDICTIONS)
        errors = [o.predicted_drop_pct - a for o in outcomes if (a := o.actual_drop_pct) is not None]
        return json_response(
            {
                "bus": bus,
                "from": t_from,
                "to": t_to,
                "horizon_min": queries.PREDICTION_HORIZON / timedelta(minutes=1),
                "evaluated": len(errors),
                "mae_pct": sum(abs(e) for e in errors) / len(errors) if errors else None,
                "bias_pct": sum(errors) / len(errors) if errors else None,
                "points": [outcome_json(o) for o in outcomes],
            }
        )

    async def charging(self, request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        d_from, d_to = day_range(request.query, self._settings.max_range_days)
        tz = time_zone(request.query, self._settings.time_zone)
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            if tz == self._kept.time_zone and d_from == d_to:
                sessions = await kept_kpis.kept_charging_sessions(conn, d_from, d_to, self._kept, bus)
            else:
                sessions = await charging.charging_sessions(conn, d_from, d_to, tz=tz, vehicle_id=bus)
        return json_response({"bus": bus, "from": d_from, "to": d_to, "tz": tz, "sessions": sessions})

    async def trips(self, request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        d_from, d_to = day_range(request.query, self._settings.max_range_days)
        tz = time_zone(request.query, self._settings.time_zone)
        gap_s = self._settings.trip_gap_s
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            if tz == self._kept.time_zone and d_from == d_to:
                found = await kept_kpis.kept_trips(conn, d_from, d_to, self._kept, bus)
            else:
                found = await trips.trips(conn, d_from, d_to, tz=tz, vehicle_id=bus, trip_gap_s=gap_s)
        return json_response(
            {"bus": bus, "from": d_from, "to": d_to, "tz": tz, "trip_gap_s": gap_s, "trips": found}
        )

    async def alerts(self, request: web.Request) -> web.Response:
        query = request.query
        t_from, t_to = instant_range(query, self._settings.max_range_days, default_span=DEFAULT_ALERT_WINDOW)
        bus = bus_id(query["bus"]) if "bus" in query else None
        level = severity(query)
        limit = bounded_int(query, "limit", 200, 1, MAX_ALERTS)
        async with self._pool.connection() as conn:
            if bus is not None:
                await self._known(conn, bus)
            events = await queries.alert_events(
                conn, t_from, t_to, vehicle_id=bus, severity=level, limit=limit
            )
        return json_response({"from": t_from, "to": t_to, "alerts": events})

    async def daily_kpis(self, request: web.Request) -> web.Response:
        query = request.query
        d_from, d_to = day_range(query, self._settings.max_range_days)
        tz = time_zone(query, self._settings.time_zone)
        bus = bus_id(query["bus"]) if "bus" in query else None
        async with self._pool.connection() as conn:
            if bus is not None:
                await self._known(conn, bus)
            rows = await kept_kpis.daily_kpis_in(conn, d_from, d_to, self._kept, tz=tz, vehicle_id=bus)
        return json_response({"from": d_from, "to": d_to, "tz": tz, "rows": rows})

    async def fleet_kpis(self, request: web.Request) -> web.Response:
        d_from, d_to = day_range(request.query, self._settings.max_range_days)
        tz = time_zone(request.query, self._settings.time_zone)
        async with self._pool.connection() as conn:
            energy = await fleet_energy.fleet_energy(conn, d_from, d_to, tz=tz)
        body = jsonable(energy)
        assert isinstance(body, dict)
        return json_response({**body, "tz": tz})

    @staticmethod
    async def _known(conn: psycopg.AsyncConnection[tuple[object, ...]], bus: str) -> None:
        if not await queries.bus_exists(conn, bus):
            raise RequestError(f"unknown bus {bus!r}", 404)
