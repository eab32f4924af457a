"""The HTTP edge the fleet analytics routes share (block risk, billing, battery health).

Each analytics module adds its routes to the fleet views' aiohttp app with `add_routes(app, pool,
settings)`. A bad parameter raises `web.HTTPBadRequest` (an unknown bus `web.HTTPNotFound`) whose
reason the views' error middleware answers as `{"error": reason}` with that status, as every /api
route does; nothing here imports `cloud.api`, which imports these modules to register them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from cloud.web import queries
from protocols.topics import is_valid_id

Pool = AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]]
Connection = psycopg.AsyncConnection[tuple[object, ...]]

POOL_KEY: Final = "voltgate.analytics.pool"


def bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=reason)


def parse_day(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise bad_request(f"{name}={text!r} is not a date (YYYY-MM-DD)") from None


def required(query: Mapping[str, str], name: str) -> str:
    value = query.get(name)
    if value is None or not value.strip():
        raise bad_request(f"parameter '{name}' is required")
    return value


def day_range(query: Mapping[str, str], max_days: int) -> tuple[date, date]:
    """`from` and `to` as dates, inclusive, `from` <= `to`, at most `max_days` days."""
    d_from = parse_day("from", required(query, "from"))
    d_to = parse_day("to", required(query, "to"))
    if d_to < d_from:
        raise bad_request(f"'from' ({d_from}) is after 'to' ({d_to})")
    if (d_to - d_from).days + 1 > max_days:
        raise bad_request(
            f"the range is {(d_to - d_from).days + 1} days; at most {max_days} days may be asked for"
        )
    return d_from, d_to


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 instant with a UTC offset."""
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "+"))
    except ValueError:
        raise bad_request(f"{name}={text!r} is not an ISO 8601 instant, e.g. 2024-05-14T06:00:00Z") from None
    if moment.tzinfo is None:
        raise bad_request(f"{name}={text!r} has no UTC offset; add 'Z' or e.g. '+03:00'")
    return moment


def time_zone(query: Mapping[str, str], default: str) -> str:
    name = query.get("tz", default)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad_request(f"tz={name!r} is not a known IANA time zone, e.g. Africa/Nairobi") from None
    return name


def bus_id(text: str) -> str:
    if not is_valid_id(text):
        raise bad_request(f"bus id {text!r} is malformed: expected 1-64 of A-Z a-z 0-9 _ . -")
    return text


async def known_bus(conn: Connection, bus: str) -> None:
    if not await queries.bus_exists(conn, bus):
        raise web.HTTPNotFound(reason=f"unknown bus {bus!r}")
