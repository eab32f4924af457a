"""Charging sessions, in SQL from the samples' intervals (`kpi_intervals`; same on both flavours).

A charging interval is one with P < 0 while the bus stands. A charging session is a run of
contiguous charging intervals lasting at least `MIN_CHARGING_S` (a shorter one is regeneration
while rolling to a stop); its energy is ∫−P dt. Sessions are cut at the range's ends: a session
already running at the start of the queried range starts there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

import psycopg

from cloud.kpi_intervals import INTERVALS_CTE, fetch_rows, query_params

MIN_CHARGING_S: Final = 120.0

SESSION_PARAMS: Final[dict[str, object]] = {"min_charging": MIN_CHARGING_S}


@dataclass(frozen=True, slots=True)
class ChargingSession:
    vehicle_id: str
    started_at: datetime
    ended_at: datetime
    energy_added_kwh: float
    max_power_kw: float


# After `kpi_intervals.INTERVALS_CTE`: the charging sessions of the intervals.
SESSIONS_CTE: Final = b""",
session_marks AS (  -- a charging interval not continuing a charging one starts a session
    SELECT *, sum(starts::int) OVER (PARTITION BY vehicle_id ORDER BY ts) AS session
    FROM (
        SELECT *, charging AND NOT coalesce(lag(charging) OVER w AND lag(next_ts) OVER w = ts, false)
                  AS starts
        FROM intervals WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)
    ) marked
),
sessions AS (
    SELECT vehicle_id, min(ts) AS started_at, max(next_ts) AS ended_at,
           sum(-power_w * dt_s) / 3.6e6 AS energy_added_kwh, max(-power_w) / 1000.0 AS max_power_kw
    FROM session_marks WHERE charging
    GROUP BY vehicle_id, session
    HAVING extract(epoch FROM max(next_ts) - min(ts)) >= %(min_charging)s
)"""

CHARGING_SESSIONS_SQL: Final = (
    INTERVALS_CTE
    + SESSIONS_CTE
    + b"""
SELECT vehicle_id, started_at, ended_at, energy_added_kwh, max_power_kw
FROM sessions ORDER BY vehicle_id, started_at
"""
)


async def charging_sessions(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    *,
    tz: str = "UTC",
    vehicle_id: str | None = None,
) -> list[ChargingSession]:
    """Charging sessions within `day_from`..`day_to` (cut at the range's ends), by bus then start."""
    params = query_params(day_from, day_to, tz, vehicle_id, **SESSION_PARAMS)
    return await fetch_rows(conn, CHARGING_SESSIONS_SQL, params, ChargingSession)
