"""The samples of a day range as intervals: what every KPI query in SQL starts from (same on both flavours).

Pack power P = V·I (I positive = discharge), each signal's last reading held until its next one;
each interval between consecutive readings of any of V, I, speed counts for its duration when
it is at most `MAX_HOLD_S` long (a longer gap is missing data, not energy). An interval belongs
to the day (and hour) it starts in. It is moving when the speed exceeds `MOVING_SPEED_KMH`, and
charging when P < 0 and the bus stands (speed ≤ `MOVING_SPEED_KMH`).

Days are calendar days in the time zone given (the fleet's local time), not UTC. Samples are read
with `samples_between()`, which reads only the blocks (and partitions) of the range.

`INTERVALS_CTE` is the head of a WITH clause; a concept adds its own parts after it (`charging.SESSIONS_CTE`,
`trips.TRIP_MARKS_CTE`, `gps_distance.GPS_LEGS_CTE`), each beginning with a comma. A query reads the parts it
refers to: PostgreSQL does not compute a WITH query nothing refers to.
"""

from __future__ import annotations

from datetime import date
from typing import Final, TypeVar

import psycopg
from psycopg.rows import class_row

from protocols.signals import LATITUDE, LONGITUDE, ODOMETER, PACK_CURRENT, PACK_VOLTAGE, SOC, SPEED

# Signal names: canonical catalog names, from protocols.signals.
TRAVELED_DISTANCE: Final = ODOMETER  # km
__all__ = ["LATITUDE", "LONGITUDE", "PACK_CURRENT", "PACK_VOLTAGE", "SOC", "SPEED", "TRAVELED_DISTANCE"]

MOVING_SPEED_KMH: Final = 2.0
MAX_HOLD_S: Final = 60.0
MIN_DISTANCE_FOR_RATE_KM: Final = 0.1

# The samples of the range, V/I/speed held between readings, and the intervals between consecutive
# readings with their power and whether the bus was moving or charging.
INTERVALS_CTE: Final = b"""
WITH bounds AS NOT MATERIALIZED (  -- inlined where used: constants the planner prunes partitions by
    SELECT %(day_from)s::date::timestamp AT TIME ZONE %(tz)s AS t_from,
           (%(day_to)s::date + 1)::timestamp AT TIME ZONE %(tz)s AS t_to
),
s AS (
    SELECT vehicle_id, ts, (ts AT TIME ZONE %(tz)s)::date AS day, signal, value
    FROM bounds, samples_between(bounds.t_from, bounds.t_to)
    WHERE signal IN (%(odo)s, %(soc)s, %(volt)s, %(curr)s, %(speed)s, %(lat)s, %(lon)s)
      AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
),
instants AS (   -- one row per reading instant of V, I or speed
    SELECT vehicle_id, ts,
           max(value) FILTER (WHERE signal = %(volt)s) AS v,
           max(value) FILTER (WHERE signal = %(curr)s) AS i,
           max(value) FILTER (WHERE signal = %(speed)s) AS speed
    FROM s WHERE signal IN (%(volt)s, %(curr)s, %(speed)s)
    GROUP BY vehicle_id, ts
),
numbered AS (   -- count(x) over time numbers the runs that start at each reading of x
    SELECT *, count(v) OVER w AS run_v, count(i) OVER w AS run_i, count(speed) OVER w AS run_speed,
           lead(ts) OVER w AS next_ts
    FROM instants WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)
),
held AS (       -- each signal's last reading carried forward within its run
    SELECT vehicle_id, ts, next_ts,
           max(v) OVER (PARTITION BY vehicle_id, run_v) AS v,
           max(i) OVER (PARTITION BY vehicle_id, run_i) AS i,
           max(speed) OVER (PARTITION BY vehicle_id, run_speed) AS speed
    FROM numbered
),
intervals AS (
    SELECT vehicle_id, ts, next_ts, (ts AT TIME ZONE %(tz)s)::date AS day,
           date_trunc('hour', ts, %(tz)s) AS hour,
           extract(epoch FROM next_ts - ts)::float8 AS dt_s, v * i AS power_w, speed,
           coalesce(speed > %(moving)s, false) AS moving,
           (v * i < 0 AND coalesce(speed, 0) <= %(moving)s) AS charging
    FROM held
    WHERE next_ts IS NOT NULL AND extract(epoch FROM next_ts - ts) <= %(max_hold)s
)"""


# The queries take the bus as an optional filter (`%(vehicle)s IS NULL OR vehicle_id = …`), which
# reaches the blocks' index only in a plan made for the values given, so they run unprepared
# (`prepare=False`): never with a prepared statement's generic plan. Planning costs a few ms.
def query_params(
    day_from: date, day_to: date, tz: str, vehicle_id: str | None, **concept_params: object
) -> dict[str, object]:
    """The parameters of `INTERVALS_CTE` for the range, with those of the parts a query adds."""
    return {
        "day_from": day_from,
        "day_to": day_to,
        "tz": tz,
        "vehicle": vehicle_id,
        "odo": TRAVELED_DISTANCE,
        "soc": SOC,
        "volt": PACK_VOLTAGE,
        "curr": PACK_CURRENT,
        "speed": SPEED,
        "lat": LATITUDE,
        "lon": LONGITUDE,
        "moving": MOVING_SPEED_KMH,
        "max_hold": MAX_HOLD_S,
        "min_km": MIN_DISTANCE_FOR_RATE_KM,
        **concept_params,
    }


_Row = TypeVar("_Row")


async def fetch_rows(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    query: bytes | str,
    params: dict[str, object],
    row_type: type[_Row],
) -> list[_Row]:
    """The rows of `query` as `row_type`, planned for the values given (`prepare=False`, above)."""
    async with conn.cursor(row_factory=class_row(row_type)) as cur:
        await cur.execute(query, params, prepare=False)
        return await cur.fetchall()
