"""The fleet API described once, as OpenAPI 3.1: every /api route, its parameters and its answers.

Served at `GET /api/openapi.json` (`cloud.api_reads`). The shapes of the rows the API passes through
as they are (readings, alerts, trips, KPIs) are derived from their dataclasses in `cloud.web.queries`
and the KPI modules, so a field added there is described here; the envelopes each route wraps them in are
written below. `tests/integration/test_cloud_openapi.py` checks the description against the router and
every GET route's real answer against its schema.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection
from datetime import date, datetime
from typing import Final

from cloud import battery_health, billing, block_risk, charging, daily_kpis, fleet_energy, trips
from cloud.api_params import MAX_POINTS, RESOLUTIONS, SEVERITIES
from cloud.rollouts import RolloutState
from cloud.web import queries
from protocols.fleet_control import OutcomeState
from protocols.topics import ID_PATTERN

OPENAPI_PATH: Final = "/api/openapi.json"
_ID_SCHEMA_PATTERN: Final = f"^{ID_PATTERN.pattern}$"  # a JSON Schema pattern may match anywhere
JsonSchema = dict[str, object]

# Rows whose every field the API passes on as the dataclass holds it (`api_params.jsonable`).
_ROWS: Final = (
    queries.Reading,
    queries.ActiveAlert,
    queries.LatestPrediction,
    queries.SeriesPoint,
    queries.AlertEvent,
    charging.ChargingSession,
    trips.Trip,
    daily_kpis.DailyKpi,
    fleet_energy.FleetEnergyDay,
    fleet_energy.FleetEnergy,
    block_risk.BlockRisk,
    billing.BillingRow,
    battery_health.CapacityEstimate,
    battery_health.WeekHealth,
    battery_health.BatteryHealth,
)


def _ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: JsonSchema) -> JsonSchema:
    return {"anyOf": [schema, {"type": "null"}]}


def _type_schema(hint: object) -> JsonSchema:
    """A Python annotation as JSON Schema, as `jsonable` writes its value."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kept = [a for a in args if a is not type(None)]
        [single] = kept  # the API's rows use `X | None` only
        return _nullable(_type_schema(single))
    if typing.get_origin(hint) is list or (typing.get_origin(hint) is tuple and args[1:] == (...,)):
        return {"type": "array", "items": _type_schema(args[0])}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _ref(hint.__name__)
    simple: dict[object, JsonSchema] = {
        str: {"type": "string"},
        int: {"type": "integer"},
        float: {"type": "number"},
        bool: {"type": "boolean"},
        datetime: {"type": "string", "format": "date-time"},
        date: {"type": "string", "format": "date"},
    }
    if hint in simple:
        return simple[hint]
    raise TypeError(f"no JSON Schema for {hint!r}")


def row_schema(cls: type) -> JsonSchema:
    """A dataclass as a JSON object with every field required."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return {
        "type": "object",
        "properties": {name: _type_schema(hints[name]) for name in names},
        "required": names,
        "additionalProperties": False,
    }


def _object(properties: dict[str, JsonSchema], *, extra: bool = False) -> JsonSchema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": extra,
    }


_INSTANT: Final[JsonSchema] = {"type": "string", "format": "date-time"}
_DAY: Final[JsonSchema] = {"type": "string", "format": "date"}
_NUMBER: Final[JsonSchema] = {"type": "number"}
_TEXT: Final[JsonSchema] = {"type": "string"}


def _envelopes() -> dict[str, JsonSchema]:
    """What the routes answer around the rows (`cloud.api_reads`)."""
    bus = _object(
        {
            "id": _TEXT,
            "fleet": _TEXT,
            "vin": _nullable(_TEXT),
            "battery_capacity_kwh": _nullable(_NUMBER),
            "online": _nullable({"type": "boolean"}),
            "first_seen": _INSTANT,
            "last_seen": _INSTANT,
            "data_until": _nullable(_INSTANT),
            "soc_pct": _nullable(_ref("Reading")),
            "speed_kmh": _nullable(_ref("Reading")),
            "pack_power_kw": _nullable(_ref("Reading")),
            "location": _nullable(_object({"lat": _NUMBER, "lon": _NUMBER, "ts": _nullable(_INSTANT)})),
            "active_alerts": {"type": "array", "items": _ref("ActiveAlert")},
            "predictions": {"type": "array", "items": _ref("LatestPrediction")},
            "risk": _nullable(_object({"output": _TEXT, "value": _NUMBER, "ts": _INSTANT, "model": _TEXT})),
        }
    )
    outcome = _object(
        {
            "ts": _INSTANT,
            "target_ts": _INSTANT,
            "model": _TEXT,
            "model_version": _TEXT,
            "predicted_drop_pct": _NUMBER,
            "actual_drop_pct": _nullable(_NUMBER),
            "soc_at_prediction_pct": _nullable(_NUMBER),
            "predicted_soc_pct": _nullable(_NUMBER),
            "actual_soc_pct": _nullable(_NUMBER),
        }
    )
    fleet = row_schema(fleet_energy.FleetEnergy)
    fleet_properties = typing.cast(dict[str, JsonSchema], fleet["properties"])
    return {
        "Error": _object({"error": _TEXT}),
        "Health": _object(
            {"status": {"const": "ok"}, "schema_version": {"type": "integer"}, "flavour": _TEXT}
        ),
        "Bus": bus,
        "BusList": _object(
            {"as_of": _INSTANT, "time_zone": _TEXT, "buses": {"type": "array", "items": _ref("Bus")}}
        ),
        "Series": _object(
            {
                "bus": _TEXT,
                "signal": _TEXT,
                "from": _INSTANT,
                "to": _INSTANT,
                "resolution": {"enum": [r for r in RESOLUTIONS if r != "auto"]},
                "truncated": {"type": "boolean"},
                "points": {"type": "array", "items": _ref("SeriesPoint"), "maxItems": MAX_POINTS},
            }
        ),
        "PredictionOutcome": outcome,
        "Predictions": _object(
            {
                "bus": _TEXT,
                "from": _INSTANT,
                "to": _INSTANT,
                "horizon_min": _NUMBER,
                "evaluated": {"type": "integer", "minimum": 0},
                "mae_pct": _nullable(_NUMBER),
                "bias_pct": _nullable(_NUMBER),
                "points": {"type": "array", "items": _ref("PredictionOutcome")},
            }
        ),
        "ChargingSessions": _object(
            {
                "bus": _TEXT,
                "from": _DAY,
                "to": _DAY,
                "tz": _TEXT,
                "sessions": {"type": "array", "items": _ref("ChargingSession")},
            }
        ),
        "Trips": _object(
            {
                "bus": _TEXT,
                "from": _DAY,
                "to": _DAY,
                "tz": _TEXT,
                "trip_gap_s": _NUMBER,
                "trips": {"type": "array", "items": _ref("Trip")},
            }
        ),
        "Alerts": _object(
            {"from": _INSTANT, "to": _INSTANT, "alerts": {"type": "array", "items": _ref("AlertEvent")}}
        ),
        "DailyKpis": _object(
            {"from": _DAY, "to": _DAY, "tz": _TEXT, "rows": {"type": "array", "items": _ref("DailyKpi")}}
        ),
        "BlockRisks": _object(
            {
                "at": _INSTANT,
                "time_zone": _TEXT,
                "reserve_soc_pct": _NUMBER,
                "buses": {"type": "array", "items": _ref("BlockRisk")},
            }
        ),
        "Billing": _object(
            {
                "from": _DAY,
                "to": _DAY,
                "tz": _TEXT,
                "period": {"enum": [p.value for p in billing.Period]},
                "columns": {"type": "array", "items": {"enum": list(billing.COLUMNS)}},
                "rows": {"type": "array", "items": _ref("BillingRow")},
            }
        ),
        **_control_envelopes(),
        "FleetKpis": {
            **fleet,
            "properties": {**fleet_properties, "tz": _TEXT},
            "required": [*fleet_properties, "tz"],
        },
    }


def _control_envelopes() -> dict[str, JsonSchema]:
    """/api/buses/{bus}/control (`cloud.fleet_http`): desired against applied; outcomes as the bus reports."""
    revision = _nullable({"type": "integer", "minimum": 1})
    applied = _nullable(_ref("AppliedOutcome"))
    return {
        "AppliedOutcome": _object(
            {
                "revision": {"type": "integer", "minimum": 0},
                "state": {"enum": [s.value for s in OutcomeState]},
                "detail": _TEXT,
                "running": _TEXT,
            }
        ),
        "BusControl": _object(
            {
                "bus": _TEXT,
                "fleet": _TEXT,
                "reported_at": _nullable(_INSTANT),
                "config": _object({"desired_revision": revision, "applied": applied}),
                "models": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": _TEXT,
                            "desired_revision": revision,
                            "rollout": _nullable(_TEXT),
                            "rollout_state": _nullable({"enum": [s.value for s in RolloutState]}),
                            "applied": applied,
                        }
                    ),
                },
            }
        ),
    }


def _param(
    name: str, where: str, schema: JsonSchema, description: str, *, required: bool = False
) -> JsonSchema:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


_BUS_PATH: Final = _param("bus", "path", {"type": "string", "pattern": _ID_SCHEMA_PATTERN}, "the bus's id")
_TZ: Final = _param(
    "tz", "query", _TEXT, "an IANA time zone for the days (default: the receiver's web.time_zone)"
)


def _instants(required: bool) -> list[JsonSchema]:
    text = "ISO 8601 with a UTC offset (a bare date is its midnight UTC)"
    return [
        _param("from", "query", _TEXT, f"start, inclusive: {text}", required=required),
        _param("to", "query", _TEXT, f"end, exclusive: {text}", required=required),
    ]


def _days() -> list[JsonSchema]:
    return [
        _param("from", "query", _DAY, "the first day, YYYY-MM-DD", required=True),
        _param("to", "query", _DAY, "the last day, inclusive", required=True),
    ]


def _get(
    summary: str,
    answer: str,
    parameters: list[JsonSchema],
    *,
    bus: bool = False,
    open_route: bool = False,
    csv: bool = False,
) -> JsonSchema:
    content: dict[str, object] = {"application/json": {"schema": _ref(answer)}}
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    responses: dict[str, object] = {
        "200": {"description": "the answer", "content": content},
        "400": {"$ref": "#/components/responses/BadRequest"},
        "503": {"$ref": "#/components/responses/Unavailable"},
    }
    if bus:
        responses["404"] = {"$ref": "#/components/responses/UnknownBus"}
    if not open_route:
        responses["401"] = {"$ref": "#/components/responses/NeedsToken"}
    operation: JsonSchema = {"summary": summary, "parameters": parameters, "responses": responses}
    if open_route:
        operation["security"] = []  # open even when web.api_tokens is set
    return {"get": operation}


def _paths(signals: Collection[str]) -> dict[str, JsonSchema]:
    signal = _param(
        "signal",
        "query",
        {"enum": sorted(signals)},
        "a catalog signal, or pack_power_kw (V × I)",
        required=True,
    )
    resolution = _param(
        "resolution", "query", {"enum": list(RESOLUTIONS), "default": "auto"},
        f"raw readings or rollup buckets; auto picks by span; at most {MAX_POINTS} buckets",
    )  # fmt: skip
    return {
        "/api/health": _get("database reachable and schema current", "Health", [], open_route=True),
        "/api/buses": _get("every bus with its last state, active alerts and risk", "BusList", []),
        "/api/buses/{bus}": _get("one bus", "Bus", [_BUS_PATH], bus=True),
        "/api/buses/{bus}/series": _get(
            "one signal of one bus over time",
            "Series",
            [_BUS_PATH, signal, *_instants(True), resolution],
            bus=True,
        ),
        "/api/buses/{bus}/predictions": _get(
            "predicted SOC drop beside the SOC an hour later",
            "Predictions",
            [_BUS_PATH, *_instants(True)],
            bus=True,
        ),
        "/api/buses/{bus}/charging": _get(
            "charging sessions of the days", "ChargingSessions", [_BUS_PATH, *_days(), _TZ], bus=True
        ),
        "/api/buses/{bus}/trips": _get("trips of the days", "Trips", [_BUS_PATH, *_days(), _TZ], bus=True),
        "/api/alerts": _get(
            "alert events, newest first (default: the last 7 days)",
            "Alerts",
            [
                *_instants(False),
                _param("bus", "query", {"type": "string", "pattern": _ID_SCHEMA_PATTERN}, "one bus only"),
                _param("severity", "query", {"enum": list(SEVERITIES)}, "one severity only"),
                _param(
                    "limit", "query", {"type": "integer", "minimum": 1, "default": 200}, "at most this many"
                ),
            ],
            bus=True,
        ),
        "/api/kpis/daily": _get(
            "KPIs per bus per day",
            "DailyKpis",
            [
                *_days(),
                _TZ,
                _param("bus", "query", {"type": "string", "pattern": _ID_SCHEMA_PATTERN}, "one bus only"),
            ],
            bus=True,
        ),
        "/api/kpis/fleet": _get("the fleet's energy over the days", "FleetKpis", [*_days(), _TZ]),
        "/api/fleet/block-risk": _get(
            "every bus's risk of not finishing its block, highest first",
            "BlockRisks",
            [_param("at", "query", _TEXT, "the instant, ISO 8601 with a UTC offset (default: now)")],
        ),
        "/api/reports/billing": _get(
            "kilometres and energy per bus per period, with data-quality flags",
            "Billing",
            [
                *_days(),
                _param(
                    "period", "query", {"enum": [p.value for p in billing.Period], "default": "day"}, "period"
                ),
                _param(
                    "format", "query", {"enum": ["json", "csv"], "default": "json"}, "csv: one row a line"
                ),
                _TZ,
                _param("bus", "query", {"type": "string", "pattern": _ID_SCHEMA_PATTERN}, "one bus only"),
            ],
            bus=True,
            csv=True,
        ),
        "/api/buses/{bus}/health": _get(
            "battery capacity and state of health from charging sessions, per week",
            "BatteryHealth",
            [
                _BUS_PATH,
                _param(
                    "from",
                    "query",
                    _DAY,
                    f"the first day (default: {battery_health.DEFAULT_WEEKS} weeks back)",
                ),
                _param("to", "query", _DAY, "the last day, inclusive (default: today)"),
                _TZ,
            ],
            bus=True,
        ),
        "/api/buses/{bus}/control": _get(
            "the bus's desired configuration and models beside what it reports applied (fleet control)",
            "BusControl",
            [_BUS_PATH],
            bus=True,
        ),
        OPENAPI_PATH: _get("this description", "OpenApi", []),
    }


def _error(description: str) -> JsonSchema:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def openapi_document(signals: Collection[str], *, needs_token: bool) -> dict[str, object]:
    """The description; `signals` are the names `/api/buses/{bus}/series` accepts; with `needs_token`
    (web.api_tokens set) the routes but /api/health ask for a bearer token."""
    schemas: dict[str, JsonSchema] = {cls.__name__: row_schema(cls) for cls in _ROWS}
    schemas.update(_envelopes())
    schemas["OpenApi"] = {"type": "object", "required": ["openapi", "paths"]}
    document: dict[str, object] = {
        "openapi": "3.1.0",
        "info": {
            "title": "voltgate fleet API",
            "version": "1",
            "description": "Read-only views of the fleet's stored data. Instants are ISO 8601 with a UTC"
            " offset, dates YYYY-MM-DD. A bad parameter is a 400 and an unknown bus a 404, each with"
            ' {"error": reason}; the database down or too slow is a 503.',
        },
        "paths": _paths(signals),
        "components": {
            "schemas": schemas,
            "responses": {
                "BadRequest": _error("a parameter the API cannot use, with the reason"),
                "UnknownBus": _error("no bus with that id"),
                "NeedsToken": _error("web.api_tokens is set and the request carries none of them"),
                "Unavailable": _error("the database is down or took too long"),
            },
        },
    }
    if needs_token:
        components = typing.cast(dict[str, object], document["components"])
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
