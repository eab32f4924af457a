"""The fleet views over HTTP (aiohttp): the JSON API, the web page and /metrics on one port.

    GET /                                   the fleet page (index.html, app.js, style.css; no CDN)
    GET /metrics                            Prometheus text format (this process's registry)
    GET /api/health                         database reachable and schema current
    GET /api/buses                          every bus with its last state, active alerts and risk
    GET /api/buses/{bus}                    one bus
    GET /api/buses/{bus}/series             ?signal=&from=&to=[&resolution=auto|raw|1m|1h|1d]
    GET /api/buses/{bus}/predictions        ?from=&to=    predicted SOC drop vs the SOC 60 min later
    GET /api/buses/{bus}/charging           ?from=&to=[&tz=]    charging sessions (dates)
    GET /api/buses/{bus}/trips              ?from=&to=[&tz=]    trips (dates; gap: web.trip_gap_s)
    GET /api/alerts                         [?from=&to=&bus=&severity=&limit=]
    GET /api/kpis/daily                     ?from=&to=[&tz=&bus=]   per bus per day (dates, inclusive)
    GET /api/kpis/fleet                     ?from=&to=[&tz=]        fleet energy KPIs (dates, inclusive)

Daily KPIs in `web.time_zone` (the default `tz`) come from the table the receiver keeps for ended
days, each bus-day computed on its own; a bus-day not kept yet (today, late data) is computed on
demand the same way (`cloud.kpis`). Trips and charging sessions of one day in that time zone come
from their kept tables too (cut at midnight, as any range's ends cut them); over several days they
are computed on demand, so one that runs over midnight stays whole. Another `tz` is computed on demand.

Instants are ISO 8601 with a UTC offset (`2024-05-14T06:00:00Z`); dates are `YYYY-MM-DD`. A bad
parameter is a 400, an unknown bus a 404, both with `{"error": reason}`; the database being down or
too slow is a 503. Reads go through a small connection pool whose sessions are read-only and carry a
statement timeout. The server is started by `FleetViews.start` (from `run` or `serve` in `app.py`).

With `web.api_tokens` set, a request needs `Authorization: Bearer <one of them>` (else a 401 with
`WWW-Authenticate: Bearer`) unless its route is in `_OPEN_ROUTES`: the page's files, /metrics and
/api/health; a route added later needs the token unless listed there. The page's files hold no data,
and a browser cannot send the header when it opens a page: the page's script sends the token the
page was opened with (`/#token=…`) on each API call. Without tokens, a non-loopback `web.host` is refused
when the settings are validated, unless `web.open_without_tokens` says it is meant (then a warning at start).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cloud import kpis, schema
from cloud.errors import ConfigError, StoreError
from cloud.settings import DatabaseSettings, WebSettings, is_loopback
from cloud.web import queries
from cloud.web.queries import Resolution
from protocols.topics import is_valid_id

log = logging.getLogger(__name__)

MAX_POINTS: Final = 20_000
MAX_ALERTS: Final = 1_000
MAX_PREDICTIONS: Final = 5_000
DEFAULT_ALERT_WINDOW: Final = timedelta(days=7)
# Finest resolution whose point count stays readable on a chart, by the span asked for.
AUTO_RESOLUTION: Final = (
    (timedelta(hours=2), Resolution.RAW),
    (timedelta(days=2), Resolution.MINUTE),
    (timedelta(days=120), Resolution.HOUR),
)
_SIGNAL = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,127}$")
_SEVERITIES: Final = ("info", "warning", "critical")
_PAGE_FILES: Final = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
# The page loads nothing from anywhere else: the browser enforces "works without internet".
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
# Routes open without a token when tokens are set: the page's files (no data), Prometheus' scrape
# (as configured, on its own), the health check.
_OPEN_ROUTES: Final = frozenset({*_PAGE_FILES, "/metrics", "/api/health"})
_REALM: Final = 'Bearer realm="voltgate"'

HTTP_REQUESTS = Counter(
    "voltgate_cloud_http_requests_total", "Fleet-view HTTP requests, by route and status", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "voltgate_cloud_http_request_seconds",
    "Time to answer a fleet-view HTTP request, by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)

Pool = AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestError(Exception):
    """A request the API refuses: `status` (400 or 404) and a reason for the caller."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# --- parameter parsing (pure) -----------------------------------------------------------------------------


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 instant with a UTC offset (a bare date means its midnight UTC)."""
    # A '+' in an unencoded query string arrives as a space.
    candidate = text.strip().replace(" ", "+")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", candidate):
            return datetime.combine(date.fromisoformat(candidate), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise RequestError(f"{name}={text!r} is not an ISO 8601 instant, e.g. 2024-05-14T06:00:00Z") from None
    if moment.tzinfo is None:
        raise RequestError(f"{name}={text!r} has no UTC offset; add 'Z' or e.g. '+03:00'")
    return moment.astimezone(UTC)


def parse_day(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise RequestError(f"{name}={text!r} is not a date (YYYY-MM-DD)") from None


def instant_range(
    query: Mapping[str, str], max_days: int, *, default_span: timedelta | None = None
) -> tuple[datetime, datetime]:
    """`from` and `to` as instants, `from` < `to`, at most `max_days` apart."""
    if default_span is not None and "to" not in query:
        t_to = datetime.now(UTC)
    else:
        t_to = parse_instant("to", _required(query, "to"))
    if default_span is not None and "from" not in query:
        t_from = t_to - default_span
    else:
        t_from = parse_instant("from", _required(query, "from"))
    if t_to <= t_from:
        raise RequestError(f"'to' ({t_to.isoformat()}) must be after 'from' ({t_from.isoformat()})")
    if t_to - t_from > timedelta(days=max_days):
        raise RequestError(
            f"the range is {(t_to - t_from).days} days; at most {max_days} days may be asked for"
        )
    return t_from, t_to


def day_range(query: Mapping[str, str], max_days: int) -> tuple[date, date]:
    """`from` and `to` as dates, inclusive, `from` <= `to`, at most `max_days` days."""
    d_from = parse_day("from", _required(query, "from"))
    d_to = parse_day("to", _required(query, "to"))
    if d_to < d_from:
        raise RequestError(f"'to' ({d_to}) must not be before 'from' ({d_from})")
    if (d_to - d_from).days + 1 > max_days:
        raise RequestError(
            f"the range is {(d_to - d_from).days + 1} days; at most {max_days} days may be asked for"
        )
    return d_from, d_to


def time_zone(query: Mapping[str, str], default: str) -> str:
    name = query.get("tz", default)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RequestError(f"tz={name!r} is not a known IANA time zone, e.g. Africa/Nairobi") from None
    return name


def choose_resolution(text: str, span: timedelta) -> Resolution:
    """`auto` picks by span; an explicit resolution must not yield more than MAX_POINTS buckets."""
    if text == "auto":
        return next((r for limit, r in AUTO_RESOLUTION if span <= limit), Resolution.DAY)
    try:
        resolution = Resolution(text)
    except ValueError:
        choices = ", ".join(["auto", *(r.value for r in Resolution)])
        raise RequestError(f"resolution={text!r} is not one of {choices}") from None
    points = span / resolution.bucket
    if points > MAX_POINTS:
        raise RequestError(
            f"resolution {resolution.value} over {span} is up to {points:.0f} points (at most {MAX_POINTS});"
            " choose a coarser resolution or a shorter range"
        )
    return resolution


def bounded_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(f"{name}={text!r} is not an integer") from None
    if not low <= value <= high:
        raise RequestError(f"{name}={value} is out of range {low}..{high}")
    return value


def _required(query: Mapping[str, str], name: str) -> str:
    value = query.get(name)
    if value is None or not value.strip():
        raise RequestError(f"parameter '{name}' is required")
    return value


def _bus_id(text: str) -> str:
    if not is_valid_id(text):
        raise RequestError(f"bus id {text!r} is malformed: expected 1-64 of A-Z a-z 0-9 _ . -")
    return text


def jsonable(value: object) -> object:
    """Dataclasses, dates and floats as JSON can carry them: non-finite floats become null."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(jsonable(body), allow_nan=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


# --- access ----------------------------------------------------------------------------------------------


def token_digests(tokens: Collection[str]) -> frozenset[bytes]:
    """What the server keeps of its tokens: their SHA-256, so that comparing takes as long for any length."""
    return frozenset(hashlib.sha256(token.encode()).digest() for token in tokens)


def bearer_refusal(authorization: str | None, digests: Collection[bytes]) -> tuple[str, str] | None:
    """None when `authorization` carries a token of `digests`, else (reason, WWW-Authenticate value)."""
    if authorization is None:
        return "this API needs a token: send 'Authorization: Bearer <token>'", _REALM
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "the Authorization header must be 'Bearer <token>'", f'{_REALM}, error="invalid_request"'
    presented = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
    matched = False
    for digest in digests:  # every one compared, in constant time: no early exit to time
        matched |= hmac.compare_digest(presented, digest)
    if not matched:
        return "the bearer token is not valid", f'{_REALM}, error="invalid_token"'
    return None


# --- responses --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class _Context:
    pool: Pool
    settings: WebSettings
    schema_name: str
    page: dict[str, tuple[bytes, str]]


class _Api:
    """The request handlers; each validates its parameters before touching the database."""

    def __init__(self, context: _Context) -> None:
        self._pool = context.pool
        self._settings = context.settings
        self._schema_name = context.schema_name
        self._page = context.page
        # The kept daily tables hold days of web.time_zone with trips ended by web.trip_gap_s (`run`).
        self._kept = kpis.KeptDays(self._settings.time_zone, self._settings.trip_gap_s)

    async def page(self, request: web.Request) -> web.Response:
        body, content_type = self._page[request.path]
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: web.Request) -> web.Response:
        async with self._pool.connection() as conn:
            version, flavour = await schema.schema_state(conn, self._schema_name)
        return _json({"status": "ok", "schema_version": version, "flavour": flavour.value})

    async def buses(self, request: web.Request) -> web.Response:
        async with self._pool.connection() as conn:
            states = await queries.bus_states(conn)
        return _json(
            {
                "as_of": datetime.now(UTC),
                "time_zone": self._settings.time_zone,
                "buses": [bus_json(s) for s in states],
            }
        )

    async def bus(self, request: web.Request) -> web.Response:
        bus = _bus_id(request.match_info["bus"])
        async with self._pool.connection() as conn:
            states = await queries.bus_states(conn, bus)
        if not states:
            raise RequestError(f"unknown bus {bus!r}", 404)
        return _json(bus_json(states[0]))

    async def series(self, request: web.Request) -> web.Response:
        bus = _bus_id(request.match_info["bus"])
        query = request.query
        signal = _required(query, "signal")
        if not _SIGNAL.match(signal):
            raise RequestError(f"signal={signal!r} is not a signal name, e.g. Vehicle.Speed or pack_power_kw")
        t_from, t_to = instant_range(query, self._settings.max_range_days)
        resolution = choose_resolution(query.get("resolution", "auto"), t_to - t_from)
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            points = await queries.series(conn, bus, signal, t_from, t_to, resolution, MAX_POINTS + 1)
        return _json(
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
        bus = _bus_id(request.match_info["bus"])
        t_from, t_to = instant_range(request.query, self._settings.max_range_days)
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            outcomes = await queries.prediction_outcomes(conn, bus, t_from, t_to, MAX_PREDICTIONS)
        errors = [o.predicted_drop_pct - a for o in outcomes if (a := o.actual_drop_pct) is not None]
        return _json(
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
        bus = _bus_id(request.match_info["bus"])
        d_from, d_to = day_range(request.query, self._settings.max_range_days)
        tz = time_zone(request.query, self._settings.time_zone)
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            if tz == self._kept.time_zone and d_from == d_to:
                sessions = await kpis.kept_charging_sessions(conn, d_from, d_to, self._kept, bus)
            else:
                sessions = await kpis.charging_sessions(conn, d_from, d_to, tz=tz, vehicle_id=bus)
        return _json({"bus": bus, "from": d_from, "to": d_to, "tz": tz, "sessions": sessions})

    async def trips(self, request: web.Request) -> web.Response:
        bus = _bus_id(request.match_info["bus"])
        d_from, d_to = day_range(request.query, self._settings.max_range_days)
        tz = time_zone(request.query, self._settings.time_zone)
        gap_s = self._settings.trip_gap_s
        async with self._pool.connection() as conn:
            await self._known(conn, bus)
            if tz == self._kept.time_zone and d_from == d_to:
                found = await kpis.kept_trips(conn, d_from, d_to, self._kept, bus)
            else:
                found = await kpis.trips(conn, d_from, d_to, tz=tz, vehicle_id=bus, trip_gap_s=gap_s)
        return _json({"bus": bus, "from": d_from, "to": d_to, "tz": tz, "trip_gap_s": gap_s, "trips": found})

    async def alerts(self, request: web.Request) -> web.Response:
        query = request.query
        t_from, t_to = instant_range(query, self._settings.max_range_days, default_span=DEFAULT_ALERT_WINDOW)
        bus = _bus_id(query["bus"]) if "bus" in query else None
        severity = query.get("severity")
        if severity is not None and severity not in _SEVERITIES:
            raise RequestError(f"severity={severity!r} is not one of {', '.join(_SEVERITIES)}")
        limit = bounded_int(query, "limit", 200, 1, MAX_ALERTS)
        async with self._pool.connection() as conn:
            if bus is not None:
                await self._known(conn, bus)
            events = await queries.alert_events(
                conn, t_from, t_to, vehicle_id=bus, severity=severity, limit=limit
            )
        return _json({"from": t_from, "to": t_to, "alerts": events})

    async def daily_kpis(self, request: web.Request) -> web.Response:
        query = request.query
        d_from, d_to = day_range(query, self._settings.max_range_days)
        tz = time_zone(query, self._settings.time_zone)
        bus = _bus_id(query["bus"]) if "bus" in query else None
        async with self._pool.connection() as conn:
            if bus is not None:
                await self._known(conn, bus)
            if tz == self._kept.time_zone:
                rows = await kpis.kept_daily_kpis(conn, d_from, d_to, self._kept, vehicle_id=bus)
            else:
                rows = await kpis.daily_kpis(
                    conn, d_from, d_to, tz=tz, vehicle_id=bus, trip_gap_s=self._settings.trip_gap_s
                )
        return _json({"from": d_from, "to": d_to, "tz": tz, "rows": rows})

    async def fleet_kpis(self, request: web.Request) -> web.Response:
        d_from, d_to = day_range(request.query, self._settings.max_range_days)
        tz = time_zone(request.query, self._settings.time_zone)
        async with self._pool.connection() as conn:
            energy = await kpis.fleet_energy(conn, d_from, d_to, tz=tz)
        body = jsonable(energy)
        assert isinstance(body, dict)
        return _json({**body, "tz": tz})

    @staticmethod
    async def _known(conn: psycopg.AsyncConnection[tuple[object, ...]], bus: str) -> None:
        if not await queries.bus_exists(conn, bus):
            raise RequestError(f"unknown bus {bus!r}", 404)


def _route_of(request: web.Request) -> str:
    route = request.match_info.route
    return route.resource.canonical if route.resource is not None else "unmatched"


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = _route_of(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except RequestError as err:
        status = err.status
        return _json({"error": err.reason}, err.status)
    except web.HTTPException as err:
        status = err.status
        if request.path.startswith("/api/"):
            return _json({"error": err.reason}, err.status)
        raise
    except psycopg.errors.QueryCanceled:
        status = 503
        return _json({"error": "the database took too long; ask for a shorter range"}, 503)
    except (psycopg.OperationalError, PoolTimeout) as err:
        status = 503
        log.warning(
            "fleet views: database unavailable: %s", str(err).strip().splitlines()[0] if str(err) else err
        )
        return _json({"error": "the database is unavailable"}, 503)
    finally:
        HTTP_REQUESTS.labels(route, str(status)).inc()
        HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)


def _bearer_auth(digests: frozenset[bytes]) -> Middleware:
    """Refuses a request for a route not in `_OPEN_ROUTES` (or an unknown /api/ path) without a token."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        needs_token = (
            resource.canonical not in _OPEN_ROUTES
            if resource is not None
            else request.path.startswith("/api/")
        )
        if needs_token and (refusal := bearer_refusal(request.headers.get("Authorization"), digests)):
            reason, challenge = refusal
            response = _json({"error": reason}, 401)
            response.headers["WWW-Authenticate"] = challenge
            return response
        return await handler(request)

    return require_token


def _page_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("cloud").joinpath("web")
    return {path: (folder.joinpath(name).read_bytes(), kind) for path, (name, kind) in _PAGE_FILES.items()}


def create_app(pool: Pool, settings: WebSettings, schema_name: str) -> web.Application:
    api = _Api(_Context(pool, settings, schema_name, _page_files()))
    middlewares: list[Middleware] = [_errors_and_metrics]
    if settings.api_tokens:
        middlewares.append(_bearer_auth(token_digests([t.get_secret_value() for t in settings.api_tokens])))
    app = web.Application(middlewares=middlewares)
    for path in _PAGE_FILES:
        app.router.add_get(path, api.page)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/health", api.health)
    app.router.add_get("/api/buses", api.buses)
    app.router.add_get("/api/buses/{bus}", api.bus)
    app.router.add_get("/api/buses/{bus}/series", api.series)
    app.router.add_get("/api/buses/{bus}/predictions", api.predictions)
    app.router.add_get("/api/buses/{bus}/charging", api.charging)
    app.router.add_get("/api/buses/{bus}/trips", api.trips)
    app.router.add_get("/api/alerts", api.alerts)
    app.router.add_get("/api/kpis/daily", api.daily_kpis)
    app.router.add_get("/api/kpis/fleet", api.fleet_kpis)
    return app


class FleetViews:
    """The running server: `start` opens the pool, checks the schema and binds; `stop` undoes all."""

    def __init__(self, runner: web.AppRunner, pool: Pool, url: str) -> None:
        self._runner = runner
        self._pool = pool
        self.url = url

    @classmethod
    async def start(cls, settings: WebSettings, database: DatabaseSettings) -> Self:
        pool = await _open_pool(settings, database)
        try:
            runner = web.AppRunner(create_app(pool, settings, database.schema_name), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, settings.host, settings.port).start()
            except OSError as err:
                await runner.cleanup()
                raise ConfigError(
                    f"cannot serve the fleet views on {settings.host}:{settings.port}: {err.strerror or err}"
                ) from err
        except BaseException:
            await pool.close()
            raise
        host, port = runner.addresses[0][:2]
        if settings.api_tokens:
            log.info("fleet views: /api needs a bearer token (%d configured)", len(settings.api_tokens))
        elif not is_loopback(settings.host):
            log.warning(
                "fleet views on %s:%d are open to anyone who can reach them (web.open_without_tokens);"
                " set web.api_tokens to require a bearer token",
                settings.host,
                port,
            )
        return cls(runner, pool, f"http://{host}:{port}")

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._pool.close()


async def _open_pool(settings: WebSettings, database: DatabaseSettings) -> Pool:
    timeout_ms = int(settings.statement_timeout_s * 1000)
    pool: Pool = AsyncConnectionPool(
        database.dsn.get_secret_value(),
        kwargs={
            "autocommit": True,
            "connect_timeout": database.connect_timeout_s,
            "application_name": "voltgate-cloud-web",
            # jit off: reads decode sample blocks in many small plan steps per block; compiling those
            # (a bus list's six latest_sample() calls) took seconds, running them milliseconds.
            "options": f"-c search_path={database.schema_name},public -c timezone=UTC -c jit=off"
            f" -c statement_timeout={timeout_ms} -c default_transaction_read_only=on",
        },
        min_size=1,
        max_size=settings.db_pool_size,
        open=False,
        check=AsyncConnectionPool.check_connection,
        name="fleet-views",
    )
    try:
        await pool.open(wait=True, timeout=float(database.connect_timeout_s))
        async with pool.connection() as conn:
            version, _ = await schema.schema_state(conn, database.schema_name)
        schema.require_current(version)
    except (PoolTimeout, psycopg.Error) as err:
        await pool.close()
        raise StoreError(
            f"the fleet views cannot reach the database: {str(err).strip() or type(err).__name__}"
        ) from err
    except BaseException:
        await pool.close()
        raise
    return pool
