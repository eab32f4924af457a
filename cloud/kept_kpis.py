"""Kept days: each bus's daily KPIs, trips and charging sessions of every ended day, in tables.

The receiver keeps each bus's daily KPIs, trips and charging sessions of every ended day of the
fleet's time zone in the tables of migration 0005 (`keep_day`, from `Store.materialize_kpis`),
each bus-day computed by the on-demand queries (`daily_kpis`, `trips`, `charging`) on that day
alone. A write marks its bus-days in `kpi_days_pending`; a day stays there until it has ended and
been recomputed. `kept_daily_kpis`, `kept_trips` and `kept_charging_sessions` answer from the
tables and compute the pending bus-days (today) on demand, one day at a time: the same rows either
way. A trip or session over midnight is cut there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import date
from typing import Final, TypeVar

import psycopg

from cloud.charging import CHARGING_SESSIONS_SQL, ChargingSession, charging_sessions
from cloud.daily_kpis import DAILY_KPIS_SQL, DailyKpi, daily_kpis, day_params
from cloud.kpi_intervals import fetch_rows
from cloud.settings import WebSettings
from cloud.trips import TRIP_GAP_S, TRIPS_SQL, Trip, trips


@dataclass(frozen=True, slots=True)
class KeptDays:
    """What the tables hold: days of `time_zone`, trips ended by `trip_gap_s` (the [web] settings)."""

    time_zone: str = "UTC"
    trip_gap_s: float = TRIP_GAP_S

    @classmethod
    def of(cls, web: WebSettings) -> KeptDays:
        """The kept days of the fleet's settings: its time zone and trip gap."""
        return cls(web.time_zone, web.trip_gap_s)


def _columns(row_type: type[object]) -> str:
    return ", ".join(f.name for f in fields(row_type))  # type: ignore[arg-type]


_DAILY_COLUMNS: Final = _columns(DailyKpi)
_TRIP_COLUMNS: Final = _columns(Trip)
_SESSION_COLUMNS: Final = _columns(ChargingSession)

# Replace one bus-day's rows by what the on-demand queries compute for it.
_KEEP_DAY_SQL: Final = (
    ("DELETE FROM daily_kpis WHERE vehicle_id = %(vehicle)s AND day = %(day_from)s", b""),
    ("DELETE FROM trips WHERE vehicle_id = %(vehicle)s AND day = %(day_from)s", b""),
    ("DELETE FROM charging_sessions WHERE vehicle_id = %(vehicle)s AND day = %(day_from)s", b""),
    (f"INSERT INTO daily_kpis ({_DAILY_COLUMNS}) SELECT {_DAILY_COLUMNS} FROM (", DAILY_KPIS_SQL),
    (f"INSERT INTO trips (day, {_TRIP_COLUMNS}) SELECT %(day_from)s, {_TRIP_COLUMNS} FROM (", TRIPS_SQL),
    (
        f"INSERT INTO charging_sessions (day, {_SESSION_COLUMNS})"
        f" SELECT %(day_from)s, {_SESSION_COLUMNS} FROM (",
        CHARGING_SESSIONS_SQL,
    ),
)


async def keep_day(
    conn: psycopg.AsyncConnection[tuple[object, ...]], vehicle_id: str, day: date, kept: KeptDays
) -> None:
    """Recompute one bus-day into the tables (within the caller's transaction)."""
    params = day_params(day, day, kept.time_zone, vehicle_id, kept.trip_gap_s)
    async with conn.cursor() as cur:
        for head, query in _KEEP_DAY_SQL:
            statement = head.encode() + (query + b") AS fresh" if query else b"")
            await cur.execute(statement, params, prepare=False)


_PENDING_SQL: Final = """
SELECT vehicle_id, day FROM kpi_days_pending
WHERE day BETWEEN %(day_from)s AND %(day_to)s
  AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
"""
# Kept rows of the range, less the bus-days read as pending (passed as arrays: the same snapshot of them).
_NOT_PENDING: Final = """
WHERE day BETWEEN %(day_from)s AND %(day_to)s
  AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
  AND (vehicle_id, day) NOT IN (SELECT * FROM unnest(%(p_bus)s::text[], %(p_day)s::date[]))
"""
_KEPT_DAILY_SQL: Final = f"SELECT {_DAILY_COLUMNS} FROM daily_kpis {_NOT_PENDING} ORDER BY vehicle_id, day"
_KEPT_TRIPS_SQL: Final = f"SELECT {_TRIP_COLUMNS} FROM trips {_NOT_PENDING} ORDER BY vehicle_id, started_at"
_KEPT_SESSIONS_SQL: Final = (
    f"SELECT {_SESSION_COLUMNS} FROM charging_sessions {_NOT_PENDING} ORDER BY vehicle_id, started_at"
)


async def _pending(
    conn: psycopg.AsyncConnection[tuple[object, ...]], params: dict[str, object]
) -> dict[date, set[str]]:
    """The pending bus-days of the range, by day; adds them to `params` as `p_bus`/`p_day`."""
    async with conn.cursor() as cur:
        await cur.execute(_PENDING_SQL, params)
        rows = await cur.fetchall()
    by_day: dict[date, set[str]] = {}
    for bus, day in rows:
        assert isinstance(bus, str) and isinstance(day, date)
        by_day.setdefault(day, set()).add(bus)
    params["p_bus"] = [str(bus) for bus, _ in rows]
    params["p_day"] = [day for _, day in rows]
    return by_day


async def kept_daily_kpis(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    kept: KeptDays,
    *,
    vehicle_id: str | None = None,
) -> list[DailyKpi]:
    """`daily_kpis` in the kept time zone: kept rows, and each pending day computed on its own."""
    params = day_params(day_from, day_to, kept.time_zone, vehicle_id, kept.trip_gap_s)
    pending = await _pending(conn, params)
    rows = await fetch_rows(conn, _KEPT_DAILY_SQL, params, DailyKpi)
    for day, buses in sorted(pending.items()):
        fresh = await daily_kpis(
            conn, day, day, tz=kept.time_zone, vehicle_id=vehicle_id, trip_gap_s=kept.trip_gap_s
        )
        rows += [row for row in fresh if row.vehicle_id in buses]
    return sorted(rows, key=lambda row: (row.vehicle_id, row.day))


async def daily_kpis_in(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    kept: KeptDays,
    *,
    tz: str,
    vehicle_id: str | None = None,
) -> list[DailyKpi]:
    """`daily_kpis` in `tz`: kept ones in the kept time zone, else computed with the kept trip gap."""
    if tz == kept.time_zone:
        return await kept_daily_kpis(conn, day_from, day_to, kept, vehicle_id=vehicle_id)
    return await daily_kpis(conn, day_from, day_to, tz=tz, vehicle_id=vehicle_id, trip_gap_s=kept.trip_gap_s)


async def kept_trips(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    kept: KeptDays,
    vehicle_id: str,
) -> list[Trip]:
    """One bus's `trips` in the kept time zone: kept rows, and each pending day computed on its own."""

    async def one_day(day: date) -> list[Trip]:
        gap_s = kept.trip_gap_s
        return await trips(conn, day, day, tz=kept.time_zone, vehicle_id=vehicle_id, trip_gap_s=gap_s)

    return await _kept_of_one_bus(conn, day_from, day_to, kept, vehicle_id, _KEPT_TRIPS_SQL, Trip, one_day)


async def kept_charging_sessions(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    kept: KeptDays,
    vehicle_id: str,
) -> list[ChargingSession]:
    """One bus's `charging_sessions` in the kept time zone, as `kept_trips`."""

    async def one_day(day: date) -> list[ChargingSession]:
        return await charging_sessions(conn, day, day, tz=kept.time_zone, vehicle_id=vehicle_id)

    return await _kept_of_one_bus(
        conn, day_from, day_to, kept, vehicle_id, _KEPT_SESSIONS_SQL, ChargingSession, one_day
    )


_Span = TypeVar("_Span", Trip, ChargingSession)


async def _kept_of_one_bus(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    kept: KeptDays,
    vehicle_id: str,
    kept_sql: str,
    row_type: type[_Span],
    one_day: Callable[[date], Awaitable[list[_Span]]],
) -> list[_Span]:
    params = day_params(day_from, day_to, kept.time_zone, vehicle_id, kept.trip_gap_s)
    pending = await _pending(conn, params)
    rows = await fetch_rows(conn, kept_sql, params, row_type)
    for day in sorted(pending):
        rows += await one_day(day)
    return sorted(rows, key=lambda row: row.started_at)
