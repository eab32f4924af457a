"""KPIs per bus per day and for the fleet, in SQL from the samples and `alerts` (same on both flavours).

Definitions (first version):
- distance_km: odometer (`TRAVELED_DISTANCE`) at the day's last reading minus its first.
- gps_distance_km: sum of great-circle (haversine) distances between consecutive GPS fixes; a leg
  whose implied speed exceeds `MAX_GPS_SPEED_KMH` is a GPS glitch and is left out. A fix is every
  instant with a latitude or a longitude reading, the other coordinate held from its last reading
  (at most `MAX_HOLD_S` old): the agent keeps each coordinate by its own deadband, so a bus driving
  north sends latitudes and only a heartbeat longitude. The implied speed is taken over the time
  since the leg's starting position was first reported (at most `MAX_STALE_FIX_S`), not since its
  last repeat: a logger that repeats its last fix every second until the receiver has a new one
  (the Twizy logs: a new position every ~10 s) would otherwise show every real leg as a 1 s jump.
- soc_start_pct / soc_end_pct / soc_min_pct: first, last and lowest SOC reading of the day.
- Pack power P = V·I (I positive = discharge), each signal's last reading held until its next one;
  each interval between consecutive readings of any of V, I, speed counts for its duration when
  it is at most `MAX_HOLD_S` long (a longer gap is missing data, not energy). An interval belongs
  to the day (and hour) it starts in.
- energy_used_kwh: ∫P dt over intervals that are not charging (so regenerative braking while
  moving is credited); energy_charged_kwh: ∫−P dt over charging intervals (P < 0 and speed ≤ 2 km/h).
- kwh_per_km: energy_used_kwh / distance_km (NULL below 0.1 km).
- moving_hours: total length of intervals with speed > `MOVING_SPEED_KMH`.
- utilization_pct: moving_hours as a share of the calendar day's length (23 or 25 h on DST days).
- Charging session: a run of contiguous charging intervals lasting at least `MIN_CHARGING_S` (a
  shorter one is regeneration while rolling to a stop). charging_events counts the sessions that
  start that day; a session already running at the start of the queried range starts there.
- Trip: a period of movement, from its first moving interval to the end of its last, whose stops
  inside are all shorter than the trip gap (`TRIP_GAP_S` unless given: bus stops and lights stay
  inside a trip, a layover ends it). A stretch without readings counts as a stop. Per trip: moving
  time, distance from the odometer (last reading in the trip minus the first) and from GPS (the legs
  between fixes within the trip, as gps_distance_km), energy used as energy_used_kwh (internal stops
  included, charging left out), kWh/km, SOC and position at the first and last reading within it.
  Trips are cut at the range's ends, as charging sessions are; trip_count counts those starting
  that day.
- alerts_raised / critical_alerts: alerts raised (active = true) that day, all and critical.
- Fleet energy (`fleet_energy`): the buses' energy summed per hour and per day; total, daily
  average over the calendar days of the range (a day without data counts as 0), the 7-day rolling
  average ending on each day, the peak day, the peak hour of use and the peak hour of charging
  (the depot's grid demand).
Days are calendar days in the time zone given (the fleet's local time), not UTC. Samples are read
with `samples_between()`, which reads only the blocks (and partitions) of the range.

Kept days: the receiver keeps each bus's daily KPIs, trips and charging sessions of every ended day
of the fleet's time zone in tables (`keep_day`, from `Store.materialize_kpis`), each bus-day computed
by the queries below on that day alone. A write marks its bus-days in `kpi_days_pending`; a day
stays there until it has ended and been recomputed. `kept_daily_kpis`, `kept_trips` and
`kept_charging_sessions` answer from the tables and compute the pending bus-days (today) on demand,
one day at a time: the same rows either way. A trip or session over midnight is cut there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
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
MAX_GPS_SPEED_KMH: Final = 150.0
# A position repeated unchanged is one fix reported again; a repeat this long is a bus standing still,
# whose next leg is judged over this much time at most (a glitch of a standing bus stays a glitch).
MAX_STALE_FIX_S: Final = 30.0
MIN_CHARGING_S: Final = 120.0
TRIP_GAP_S: Final = 300.0  # a stop (or a stretch without data) at least this long ends a trip
EARTH_RADIUS_KM: Final = 6371.0088  # mean radius (IUGG)
ROLLING_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class DailyKpi:
    vehicle_id: str
    day: date
    distance_km: float | None
    soc_start_pct: float | None
    soc_end_pct: float | None
    soc_min_pct: float | None
    energy_used_kwh: float | None
    energy_charged_kwh: float | None
    kwh_per_km: float | None
    moving_hours: float | None
    alerts_raised: int
    critical_alerts: int
    gps_distance_km: float | None = None
    utilization_pct: float | None = None
    charging_events: int = 0
    trip_count: int = 0


@dataclass(frozen=True, slots=True)
class ChargingSession:
    vehicle_id: str
    started_at: datetime
    ended_at: datetime
    energy_added_kwh: float
    max_power_kw: float


@dataclass(frozen=True, slots=True)
class Trip:
    vehicle_id: str
    started_at: datetime
    ended_at: datetime
    duration_s: float
    moving_s: float
    distance_km: float | None  # odometer
    gps_distance_km: float | None
    energy_used_kwh: float | None
    kwh_per_km: float | None
    soc_start_pct: float | None
    soc_end_pct: float | None
    start_lat: float | None
    start_lon: float | None
    end_lat: float | None
    end_lon: float | None


@dataclass(frozen=True, slots=True)
class HourlyEnergy:
    hour: datetime  # start of the hour in the fleet's time zone, as an instant
    day: date  # the local day the hour belongs to
    used_kwh: float
    charged_kwh: float


@dataclass(frozen=True, slots=True)
class FleetEnergyDay:
    day: date
    used_kwh: float
    charged_kwh: float
    used_rolling_7d_kwh: float  # mean daily use over this day and the 6 before


@dataclass(frozen=True, slots=True)
class FleetEnergy:
    day_from: date
    day_to: date
    days: list[FleetEnergyDay]
    total_used_kwh: float
    total_charged_kwh: float
    daily_avg_used_kwh: float
    daily_avg_charged_kwh: float
    peak_day: date | None
    peak_day_used_kwh: float
    peak_hour: datetime | None
    peak_hour_used_kwh: float
    peak_charging_hour: datetime | None
    peak_charging_hour_kwh: float


# Shared by every query below: the samples of the range, V/I/speed held between readings, and the
# intervals between consecutive readings with their power and whether the bus was moving or charging;
# then charging sessions, trip starts and GPS legs built on them. A query reads the parts it refers
# to: PostgreSQL does not compute a WITH query nothing refers to.
_INTERVALS_CTE: Final = b"""
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
),
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
),
trip_marks AS (     -- a moving interval starts a trip unless a moving one ended less than the gap before
    SELECT *, sum(starts::int) OVER (PARTITION BY vehicle_id ORDER BY ts) AS trip
    FROM (
        SELECT *, moving AND coalesce(
                   extract(epoch FROM ts - max(next_ts) FILTER (WHERE moving) OVER earlier) >= %(trip_gap)s,
                   true) AS starts
        FROM intervals
        WINDOW earlier AS (PARTITION BY vehicle_id ORDER BY ts
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ) marked
),
coordinates AS ( -- one row per instant with a latitude or a longitude reading
    SELECT vehicle_id, day, ts,
           max(value) FILTER (WHERE signal = %(lat)s) AS lat,
           max(value) FILTER (WHERE signal = %(lon)s) AS lon
    FROM s WHERE signal IN (%(lat)s, %(lon)s) GROUP BY vehicle_id, day, ts
),
coordinate_runs AS (
    SELECT *, count(lat) OVER w AS run_lat, count(lon) OVER w AS run_lon
    FROM coordinates WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)
),
fixes AS (      -- one row per GPS fix with a plausible position: each coordinate held, as V and I are
    SELECT vehicle_id, day, ts, lat, lon FROM (
        SELECT vehicle_id, day, ts,
               max(lat) OVER (PARTITION BY vehicle_id, run_lat) AS lat,
               min(ts) OVER (PARTITION BY vehicle_id, run_lat) AS lat_ts,
               max(lon) OVER (PARTITION BY vehicle_id, run_lon) AS lon,
               min(ts) OVER (PARTITION BY vehicle_id, run_lon) AS lon_ts
        FROM coordinate_runs
    ) f
    WHERE lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180 AND NOT (lat = 0 AND lon = 0)
      AND extract(epoch FROM ts - lat_ts) <= %(max_hold)s AND extract(epoch FROM ts - lon_ts) <= %(max_hold)s
),
fix_positions AS ( -- each fix with the time its position was first reported (a repeat is the same fix)
    SELECT *, min(ts) OVER (PARTITION BY vehicle_id, position_run) AS position_since
    FROM (
        SELECT *, sum(moved::int) OVER (PARTITION BY vehicle_id ORDER BY ts) AS position_run
        FROM (
            SELECT *, (lat, lon) IS DISTINCT FROM (lag(lat) OVER w, lag(lon) OVER w) AS moved
            FROM fixes WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)
        ) m
    ) r
),
gps_legs AS (   -- great-circle legs between consecutive fixes, less those a GPS glitch implies
    SELECT * FROM (
        SELECT vehicle_id, lag(ts) OVER w AS from_ts, lag(day) OVER w AS from_day, ts, day,
               extract(epoch FROM ts - lag(ts) OVER w)::float8 AS dt_s,
               extract(epoch FROM ts - lag(position_since) OVER w)::float8 AS since_s,
               2 * %(earth_km)s * asin(least(1.0, sqrt(
                   sin(radians(lat - lag(lat) OVER w) / 2) ^ 2
                   + cos(radians(lag(lat) OVER w)) * cos(radians(lat))
                     * sin(radians(lon - lag(lon) OVER w) / 2) ^ 2))) AS km
        FROM fix_positions WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)
    ) l
    WHERE km IS NOT NULL
      AND km * 3600 <= %(max_gps_kmh)s * greatest(dt_s, least(since_s, %(max_stale_fix)s), 1e-3)
)
"""

_DAILY_KPIS_SQL: Final = (
    _INTERVALS_CTE
    + b"""
, readings AS (
    SELECT vehicle_id, day,
           max(value) FILTER (WHERE signal = %(odo)s) - min(value) FILTER (WHERE signal = %(odo)s)
               AS distance_km,
           (array_agg(value ORDER BY ts) FILTER (WHERE signal = %(soc)s))[1] AS soc_start_pct,
           (array_agg(value ORDER BY ts DESC) FILTER (WHERE signal = %(soc)s))[1] AS soc_end_pct,
           min(value) FILTER (WHERE signal = %(soc)s) AS soc_min_pct
    FROM s WHERE signal IN (%(odo)s, %(soc)s) GROUP BY vehicle_id, day
),
gps AS (        -- a leg across midnight belongs to neither day
    SELECT vehicle_id, day, sum(km) AS gps_distance_km
    FROM gps_legs WHERE from_day = day GROUP BY vehicle_id, day
),
energy AS (
    SELECT vehicle_id, day,
           sum(power_w * dt_s) FILTER (WHERE NOT charging) / 3.6e6 AS energy_used_kwh,
           sum(-power_w * dt_s) FILTER (WHERE charging) / 3.6e6 AS energy_charged_kwh,
           coalesce(sum(dt_s) FILTER (WHERE moving), 0) / 3600.0 AS moving_hours
    FROM intervals GROUP BY vehicle_id, day
),
charging_days AS (
    SELECT vehicle_id, (started_at AT TIME ZONE %(tz)s)::date AS day, count(*) AS charging_events
    FROM sessions GROUP BY 1, 2
),
trip_days AS (
    SELECT vehicle_id, day, count(*) AS trip_count FROM trip_marks WHERE starts GROUP BY 1, 2
),
alert_days AS (
    SELECT vehicle_id, (ts AT TIME ZONE %(tz)s)::date AS day,
           count(*) FILTER (WHERE active) AS alerts_raised,
           count(*) FILTER (WHERE active AND severity = 'critical') AS critical_alerts
    FROM alerts, bounds
    WHERE ts >= bounds.t_from AND ts < bounds.t_to
      AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
    GROUP BY vehicle_id, day
)
SELECT vehicle_id, day, distance_km, soc_start_pct, soc_end_pct, soc_min_pct,
       energy_used_kwh, energy_charged_kwh,
       CASE WHEN distance_km >= %(min_km)s THEN energy_used_kwh / distance_km END AS kwh_per_km,
       moving_hours,
       coalesce(alerts_raised, 0)::int AS alerts_raised, coalesce(critical_alerts, 0)::int AS critical_alerts,
       gps_distance_km,
       100.0 * moving_hours / (extract(epoch FROM ((day + 1)::timestamp AT TIME ZONE %(tz)s)
                                                 - (day::timestamp AT TIME ZONE %(tz)s)) / 3600.0)
           AS utilization_pct,
       coalesce(charging_events, 0)::int AS charging_events,
       coalesce(trip_count, 0)::int AS trip_count
FROM readings
FULL JOIN energy USING (vehicle_id, day)
FULL JOIN gps USING (vehicle_id, day)
FULL JOIN charging_days USING (vehicle_id, day)
FULL JOIN trip_days USING (vehicle_id, day)
FULL JOIN alert_days USING (vehicle_id, day)
ORDER BY vehicle_id, day
"""
)

_HOURLY_ENERGY_SQL: Final = (
    _INTERVALS_CTE
    + b"""
SELECT hour, day,
       coalesce(sum(power_w * dt_s) FILTER (WHERE NOT charging), 0) / 3.6e6 AS used_kwh,
       coalesce(sum(-power_w * dt_s) FILTER (WHERE charging), 0) / 3.6e6 AS charged_kwh
FROM intervals GROUP BY hour, day ORDER BY hour
"""
)

_CHARGING_SESSIONS_SQL: Final = (
    _INTERVALS_CTE
    + b"""
SELECT vehicle_id, started_at, ended_at, energy_added_kwh, max_power_kw
FROM sessions ORDER BY vehicle_id, started_at
"""
)

_TRIPS_SQL: Final = (
    _INTERVALS_CTE
    + b"""
, trip_spans AS (   -- a trip's intervals, each with the trip's span (its moving intervals, first to last)
    SELECT *, min(ts) OVER t AS trip_start, max(next_ts) FILTER (WHERE moving) OVER t AS trip_end
    FROM trip_marks WHERE trip > 0
    WINDOW t AS (PARTITION BY vehicle_id, trip)
),
trips AS (          -- the stop that ends a trip is not part of it
    SELECT vehicle_id, trip, min(trip_start) AS started_at, min(trip_end) AS ended_at,
           coalesce(sum(dt_s) FILTER (WHERE moving), 0) AS moving_s,
           sum(power_w * dt_s) FILTER (WHERE NOT charging) / 3.6e6 AS energy_used_kwh
    FROM trip_spans WHERE ts < trip_end
    GROUP BY vehicle_id, trip
),
trip_events AS (    -- kind 0 a trip's start, 1 an odometer or SOC reading, 2 a GPS fix, 3 a GPS leg
    SELECT vehicle_id, started_at AS ts, 0 AS kind, trip, started_at, ended_at, NULL::text AS signal,
           NULL::float8 AS value, NULL::float8 AS lat, NULL::float8 AS lon, NULL::timestamptz AS from_ts,
           NULL::float8 AS km
    FROM trips
    UNION ALL
    SELECT vehicle_id, ts, 1, NULL, NULL, NULL, signal, value, NULL, NULL, NULL, NULL
    FROM s WHERE signal IN (%(odo)s, %(soc)s)
    UNION ALL
    SELECT vehicle_id, ts, 2, NULL, NULL, NULL, NULL, NULL, lat, lon, NULL, NULL FROM fixes
    UNION ALL
    SELECT vehicle_id, ts, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, from_ts, km FROM gps_legs
),
in_trips AS (       -- each event after a trip's start with that trip (the latest one started), if within it
    SELECT * FROM (
        SELECT vehicle_id, ts, kind, signal, value, lat, lon, from_ts, km,
               max(trip) OVER w AS trip, max(started_at) OVER w AS trip_start,
               max(ended_at) OVER w AS trip_end
        FROM trip_events
        WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts, kind ROWS UNBOUNDED PRECEDING)
    ) e
    WHERE kind > 0 AND ts <= trip_end AND (kind < 3 OR from_ts >= trip_start)
),
trip_readings AS MATERIALIZED (  -- once: joined to `trips`, it is estimated at a row and rescanned per trip
    SELECT vehicle_id, trip,
           max(value) FILTER (WHERE signal = %(odo)s) - min(value) FILTER (WHERE signal = %(odo)s)
               AS distance_km,
           sum(km) FILTER (WHERE kind = 3) AS gps_distance_km,
           (array_agg(value ORDER BY ts) FILTER (WHERE signal = %(soc)s))[1] AS soc_start_pct,
           (array_agg(value ORDER BY ts DESC) FILTER (WHERE signal = %(soc)s))[1] AS soc_end_pct,
           (array_agg(lat ORDER BY ts) FILTER (WHERE kind = 2))[1] AS start_lat,
           (array_agg(lon ORDER BY ts) FILTER (WHERE kind = 2))[1] AS start_lon,
           (array_agg(lat ORDER BY ts DESC) FILTER (WHERE kind = 2))[1] AS end_lat,
           (array_agg(lon ORDER BY ts DESC) FILTER (WHERE kind = 2))[1] AS end_lon
    FROM in_trips GROUP BY vehicle_id, trip
)
SELECT vehicle_id, started_at, ended_at, extract(epoch FROM ended_at - started_at)::float8 AS duration_s,
       moving_s, distance_km, gps_distance_km, energy_used_kwh,
       CASE WHEN distance_km >= %(min_km)s THEN energy_used_kwh / distance_km END AS kwh_per_km,
       soc_start_pct, soc_end_pct, start_lat, start_lon, end_lat, end_lon
FROM trips LEFT JOIN trip_readings USING (vehicle_id, trip)
ORDER BY vehicle_id, started_at
"""
)


# The queries take the bus as an optional filter (`%(vehicle)s IS NULL OR vehicle_id = …`), which
# reaches the blocks' index only in a plan made for the values given, so they run unprepared
# (`prepare=False`): never with a prepared statement's generic plan. Planning costs a few ms.
def _params(
    day_from: date, day_to: date, tz: str, vehicle_id: str | None, trip_gap_s: float = TRIP_GAP_S
) -> dict[str, object]:
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
        "max_gps_kmh": MAX_GPS_SPEED_KMH,
        "max_stale_fix": MAX_STALE_FIX_S,
        "min_charging": MIN_CHARGING_S,
        "earth_km": EARTH_RADIUS_KM,
        "trip_gap": trip_gap_s,
    }


_Row = TypeVar("_Row")


async def _rows(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    query: bytes | str,
    params: dict[str, object],
    row_type: type[_Row],
) -> list[_Row]:
    """The rows of `query` as `row_type`, planned for the values given (`prepare=False`, above)."""
    async with conn.cursor(row_factory=class_row(row_type)) as cur:
        await cur.execute(query, params, prepare=False)
        return await cur.fetchall()


async def daily_kpis(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    *,
    tz: str = "UTC",
    vehicle_id: str | None = None,
    trip_gap_s: float = TRIP_GAP_S,
) -> list[DailyKpi]:
    """KPIs per bus per day for `day_from`..`day_to` inclusive, days in time zone `tz`."""
    return await _rows(conn, _DAILY_KPIS_SQL, _params(day_from, day_to, tz, vehicle_id, trip_gap_s), DailyKpi)


async def charging_sessions(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    *,
    tz: str = "UTC",
    vehicle_id: str | None = None,
) -> list[ChargingSession]:
    """Charging sessions within `day_from`..`day_to` (cut at the range's ends), by bus then start."""
    params = _params(day_from, day_to, tz, vehicle_id)
    return await _rows(conn, _CHARGING_SESSIONS_SQL, params, ChargingSession)


async def trips(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    *,
    tz: str = "UTC",
    vehicle_id: str | None = None,
    trip_gap_s: float = TRIP_GAP_S,
) -> list[Trip]:
    """Trips within `day_from`..`day_to` (cut at the range's ends), by bus then start."""
    return await _rows(conn, _TRIPS_SQL, _params(day_from, day_to, tz, vehicle_id, trip_gap_s), Trip)


async def hourly_energy(
    conn: psycopg.AsyncConnection[tuple[object, ...]], day_from: date, day_to: date, *, tz: str = "UTC"
) -> list[HourlyEnergy]:
    """The whole fleet's energy used and charged per hour (hours with data only)."""
    return await _rows(conn, _HOURLY_ENERGY_SQL, _params(day_from, day_to, tz, None), HourlyEnergy)


async def fleet_energy(
    conn: psycopg.AsyncConnection[tuple[object, ...]], day_from: date, day_to: date, *, tz: str = "UTC"
) -> FleetEnergy:
    """Fleet-level energy KPIs for `day_from`..`day_to` (the 6 days before feed the rolling mean)."""
    hours = await hourly_energy(conn, day_from - timedelta(days=ROLLING_DAYS - 1), day_to, tz=tz)
    return summarize_fleet_energy(hours, day_from, day_to)


def summarize_fleet_energy(hours: Sequence[HourlyEnergy], day_from: date, day_to: date) -> FleetEnergy:
    """Pure: totals, averages, rolling means and peaks from hourly figures (which may start earlier)."""
    used: dict[date, float] = {}
    charged: dict[date, float] = {}
    for h in hours:
        used[h.day] = used.get(h.day, 0.0) + h.used_kwh
        charged[h.day] = charged.get(h.day, 0.0) + h.charged_kwh
    n_days = (day_to - day_from).days + 1
    calendar = [day_from + timedelta(days=k) for k in range(n_days)]
    days = [
        FleetEnergyDay(
            day,
            used.get(day, 0.0),
            charged.get(day, 0.0),
            sum(used.get(day - timedelta(days=k), 0.0) for k in range(ROLLING_DAYS)) / ROLLING_DAYS,
        )
        for day in calendar
    ]
    in_range = [h for h in hours if day_from <= h.day <= day_to]
    peak_day = max(days, key=lambda d: d.used_kwh, default=None)
    peak_use = max(in_range, key=lambda h: h.used_kwh, default=None)
    peak_charge = max(in_range, key=lambda h: h.charged_kwh, default=None)
    total_used = sum(d.used_kwh for d in days)
    total_charged = sum(d.charged_kwh for d in days)
    return FleetEnergy(
        day_from=day_from,
        day_to=day_to,
        days=days,
        total_used_kwh=total_used,
        total_charged_kwh=total_charged,
        daily_avg_used_kwh=total_used / n_days if n_days > 0 else 0.0,
        daily_avg_charged_kwh=total_charged / n_days if n_days > 0 else 0.0,
        peak_day=peak_day.day if peak_day and peak_day.used_kwh > 0 else None,
        peak_day_used_kwh=peak_day.used_kwh if peak_day else 0.0,
        peak_hour=peak_use.hour if peak_use and peak_use.used_kwh > 0 else None,
        peak_hour_used_kwh=max(peak_use.used_kwh, 0.0) if peak_use else 0.0,
        peak_charging_hour=peak_charge.hour if peak_charge and peak_charge.charged_kwh > 0 else None,
        peak_charging_hour_kwh=max(peak_charge.charged_kwh, 0.0) if peak_charge else 0.0,
    )


# Kept days: the tables of migration 0005, one local day of one bus at a time.


@dataclass(frozen=True, slots=True)
class KeptDays:
    """What the tables hold: days of `time_zone`, trips ended by `trip_gap_s` (the [web] settings)."""

    time_zone: str = "UTC"
    trip_gap_s: float = TRIP_GAP_S


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
    (f"INSERT INTO daily_kpis ({_DAILY_COLUMNS}) SELECT {_DAILY_COLUMNS} FROM (", _DAILY_KPIS_SQL),
    (f"INSERT INTO trips (day, {_TRIP_COLUMNS}) SELECT %(day_from)s, {_TRIP_COLUMNS} FROM (", _TRIPS_SQL),
    (
        f"INSERT INTO charging_sessions (day, {_SESSION_COLUMNS})"
        f" SELECT %(day_from)s, {_SESSION_COLUMNS} FROM (",
        _CHARGING_SESSIONS_SQL,
    ),
)


async def keep_day(
    conn: psycopg.AsyncConnection[tuple[object, ...]], vehicle_id: str, day: date, kept: KeptDays
) -> None:
    """Recompute one bus-day into the tables (within the caller's transaction)."""
    params = _params(day, day, kept.time_zone, vehicle_id, kept.trip_gap_s)
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
    params = _params(day_from, day_to, kept.time_zone, vehicle_id, kept.trip_gap_s)
    pending = await _pending(conn, params)
    rows = await _rows(conn, _KEPT_DAILY_SQL, params, DailyKpi)
    for day, buses in sorted(pending.items()):
        fresh = await daily_kpis(
            conn, day, day, tz=kept.time_zone, vehicle_id=vehicle_id, trip_gap_s=kept.trip_gap_s
        )
        rows += [row for row in fresh if row.vehicle_id in buses]
    return sorted(rows, key=lambda row: (row.vehicle_id, row.day))


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
    params = _params(day_from, day_to, kept.time_zone, vehicle_id, kept.trip_gap_s)
    pending = await _pending(conn, params)
    rows = await _rows(conn, kept_sql, params, row_type)
    for day in sorted(pending):
        rows += await one_day(day)
    return sorted(rows, key=lambda row: row.started_at)
