"""The HTTP edge the fleet analytics routes share (block risk, billing, battery health).

Each analytics module adds its routes to the fleet views' aiohttp app with `add_routes(app, pool,
settings)`. Parameters are parsed by `cloud.api_params`, as every /api route's: a bad one raises its
`RequestError` (an unknown bus one with status 404), which the views' error middleware answers as
`{"error": reason}` with that status. Nothing here imports `cloud.api`, which imports these modules
to register them.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

from cloud.api_params import RequestError
from cloud.web import queries

Pool = AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]]
Connection = psycopg.AsyncConnection[tuple[object, ...]]


async def known_bus(conn: Connection, bus: str) -> None:
    if not await queries.bus_exists(conn, bus):
        raise RequestError(f"unknown bus {bus!r}", 404)
