"""The fleet views over HTTP (aiohttp): the JSON API, the web page and /metrics on one port.

    GET /                                   the fleet page and its files (cloud.web.assets; no CDN)
    GET /metrics                            Prometheus text format (this process's registry)
    GET /api/health                         database reachable and schema current
    GET /api/buses                          every bus with its last state, active alerts and risk
    GET /api/buses/{bus}                    one bus
    GET /api/buses/{bus}/series             ?signal=&from=&to=[&resolution=auto|raw|1m|1h|1d] (catalog names)
    GET /api/buses/{bus}/predictions        ?from=&to=    predicted SOC drop vs the SOC 60 min later
    GET /api/buses/{bus}/charging           ?from=&to=[&tz=]    charging sessions (dates)
    GET /api/buses/{bus}/trips              ?from=&to=[&tz=]    trips (dates; gap: web.trip_gap_s)
    GET /api/buses/{bus}/control            desired config and models vs applied (cloud.fleet_http)
    GET /api/alerts                         [?from=&to=&bus=&severity=&limit=]
    GET /api/kpis/daily                     ?from=&to=[&tz=&bus=]   per bus per day (dates, inclusive)
    GET /api/kpis/fleet                     ?from=&to=[&tz=]        fleet energy KPIs (dates, inclusive)
    GET /api/openapi.json                   these routes as OpenAPI 3.1 (cloud.openapi)

Instants are ISO 8601 with a UTC offset (`2024-05-14T06:00:00Z`); dates are `YYYY-MM-DD`. A bad
parameter is a 400, an unknown bus a 404, both with `{"error": reason}`; the database being down or
too slow is a 503. Reads go through a small connection pool whose sessions are read-only and carry a
statement timeout. The server is started by `FleetViews.start` (from `run` or `serve` in `app.py`).
The parameters are parsed by `cloud.api_params`, the /api routes answered by `cloud.api_reads`, tokens
checked by `cloud.api_access`.

With `web.api_tokens` set, a request needs `Authorization: Bearer <one of them>` (else a 401 with
`WWW-Authenticate: Bearer`) unless its route is in `_OPEN_ROUTES`: the page's files, /metrics and
/api/health; a route added later needs the token unless listed there. The page's files hold no data,
and a browser cannot send the header when it opens a page: the page's script sends the token the
page was opened with (`/#token=…`) on each API call. Without tokens, a non-loopback `web.host` is refused
when the settings are validated, unless `web.open_without_tokens` says it is meant (then a warning at start).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final, Self

import psycopg
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cloud import battery_health, billing, block_risk, fleet_http, schema
from cloud.api_access import Handler, bearer_auth, token_digests
from cloud.api_params import RequestError, json_response
from cloud.api_reads import FleetReads, Pool
from cloud.errors import ConfigError, StoreError
from cloud.settings import DatabaseSettings, WebSettings, is_loopback
from cloud.web import assets

log = logging.getLogger(__name__)

# The page's files (cloud.web.assets) carry a Content-Security-Policy letting the page load nothing
# from anywhere else (but the map's tiles, when web.map_tile_url is set): the browser enforces
# "works without internet".
_PAGE_HEADERS: Final = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# Routes open without a token when tokens are set: the page's files (no data), Prometheus' scrape
# (as configured, on its own), the health check.
_OPEN_ROUTES: Final = frozenset({*assets.PAGE_PATHS, "/metrics", "/api/health"})

HTTP_REQUESTS = Counter(
    "voltgate_cloud_http_requests_total", "Fleet-view HTTP requests, by route and status", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "voltgate_cloud_http_request_seconds",
    "Time to answer a fleet-view HTTP request, by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)


@dataclass(frozen=True, slots=True)
class _Context:
    pool: Pool
    settings: WebSettings
    schema_name: str
    page: dict[str, tuple[bytes, str]]


class _Api:
    """The routes that are not /api: the page's files and /metrics (the /api routes: `FleetReads`)."""

    def __init__(self, context: _Context) -> None:
        self._settings = context.settings
        self._page = context.page
        self.reads = FleetReads(context.pool, context.settings, context.schema_name)

    async def page(self, request: web.Request) -> web.Response:
        body, content_type = self._page[request.path]
        csp = assets.content_security_policy(self._settings)
        headers = {**_PAGE_HEADERS, "Content-Type": content_type, "Content-Security-Policy": csp}
        return web.Response(body=body, headers=headers)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


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
        return json_response({"error": err.reason}, err.status)
    except web.HTTPException as err:
        status = err.status
        if request.path.startswith("/api/"):
            return json_response({"error": err.reason}, err.status)
        raise
    except psycopg.errors.QueryCanceled:
        status = 503
        return json_response({"error": "the database took too long; ask for a shorter range"}, 503)
    except (psycopg.OperationalError, PoolTimeout) as err:
        status = 503
        log.warning(
            "fleet views: database unavailable: %s", str(err).strip().splitlines()[0] if str(err) else err
        )
        return json_response({"error": "the database is unavailable"}, 503)
    finally:
        HTTP_REQUESTS.labels(route, str(status)).inc()
        HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)


def create_app(pool: Pool, settings: WebSettings, schema_name: str) -> web.Application:
    api = _Api(_Context(pool, settings, schema_name, assets.page_files(settings)))
    middlewares: list[Middleware] = [_errors_and_metrics]
    if settings.api_tokens:
        digests = token_digests([t.get_secret_value() for t in settings.api_tokens])
        middlewares.append(bearer_auth(digests, _OPEN_ROUTES))
    app = web.Application(middlewares=middlewares)
    for path in assets.PAGE_PATHS:
        app.router.add_get(path, api.page)
    app.router.add_get("/metrics", api.metrics)
    api.reads.add_routes(app.router)
    for analytics in (block_risk, billing, battery_health, fleet_http):  # each adds its routes
        analytics.add_routes(app, pool, settings)
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
