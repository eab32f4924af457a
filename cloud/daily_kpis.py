"""KPIs per bus per day, in one SQL query from the samples and `alerts` (same on both flavours).

Definitions (first version):
- distance_km: odometer (`TRAVELED_DISTANCE`) at the day's last reading minus its first.
- gps_distance_km: the day's GPS legs (`gps_distance`); a leg across midnight belongs to neither day.
- soc_start_pct / soc_end_pct / soc_min_pct: first, last and lowest SOC reading of the day.
- energy_used_kwh: ∫P dt over the day's intervals (`kpi_intervals`) that are not charging (so
  regenerative braking while moving is credited); energy_charged_kwh: ∫−P dt over charging intervals.
- kwh_per_km: energy_used_kwh / distance_km (NULL below `MIN_DISTANCE_FOR_RATE_KM`).
- moving_hours: total length of intervals with speed > `MOVING_SPEED_KMH`.
- utilization_pct: moving_hours as a share of the calendar day's length (23 or 25 h on DST days).
- charging_events: the charging sessions (`charging`) that start that day.
- trip_count: the trips (`trips`) that start that day.
- alerts_raised / critical_alerts: alerts raised (active = true) that day, all and critical.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

import psycopg

from cloud.charging import SESSION_PARAMS, SESSIONS_CTE
from cloud.gps_distance import GPS_LEGS_CTE, GPS_PARAMS
from cloud.kpi_intervals import INTERVALS_CTE, fetch_rows, query_params
from cloud.trips import TRIP_GAP_S, TRIP_MARKS_CTE


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


DAILY_KPIS_SQL: Final = (
    INTERVALS_CTE
    + SESSIONS_CTE
    + TRIP_MARKS_CTE
    + GPS_LEGS_CTE
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


def day_params(
    day_from: date, day_to: date, tz: str, vehicle_id: str | None, trip_gap_s: float = TRIP_GAP_S
) -> dict[str, object]:
    """The parameters of `DAILY_KPIS_SQL`: those of every part it reads."""
    return query_params(day_from, day_to, tz, vehicle_id, trip_gap=trip_gap_s, **SESSION_PARAMS, **GPS_PARAMS)


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
    params = day_params(day_from, day_to, tz, vehicle_id, trip_gap_s)
    return await fetch_rows(conn, DAILY_KPIS_SQL, params, DailyKpi)
