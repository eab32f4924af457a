"""Daily KPIs per bus, computed in SQL from `samples` and `alerts` (the same on both flavours).

Definitions (first version):
- distance_km: odometer (`TRAVELED_DISTANCE`) at the day's last reading minus its first.
- soc_start_pct / soc_end_pct / soc_min_pct: first, last and lowest SOC reading of the day.
- Pack power P = V·I (I positive = discharge), each signal's last reading held until its next one;
  each interval between consecutive readings of any of V, I, speed counts for its duration when
  it is at most `MAX_HOLD_S` long (a longer gap is missing data, not energy).
- energy_used_kwh: ∫P dt over intervals that are not charging (so regenerative braking while
  moving is credited); energy_charged_kwh: ∫−P dt over charging intervals (P < 0 and speed ≤ 2 km/h).
- kwh_per_km: energy_used_kwh / distance_km (NULL below 0.1 km).
- moving_hours: total length of intervals with speed > `MOVING_SPEED_KMH`.
- alerts_raised / critical_alerts: alerts raised (active = true) that day, all and critical.
Days are calendar days in the time zone given (the fleet's local time), not UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

import psycopg
from psycopg.rows import class_row

# Signal names: canonical catalog names (protocols/catalog.toml), in one place.
SPEED: Final = "Vehicle.Speed"  # km/h
TRAVELED_DISTANCE: Final = "Vehicle.TraveledDistance"  # km, odometer
SOC: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"  # %
PACK_VOLTAGE: Final = "Vehicle.Powertrain.TractionBattery.CurrentVoltage"  # V
PACK_CURRENT: Final = "Vehicle.Powertrain.TractionBattery.CurrentCurrent"  # A, positive = discharge
LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"  # deg
LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"  # deg

MOVING_SPEED_KMH: Final = 2.0
MAX_HOLD_S: Final = 60.0
MIN_DISTANCE_FOR_RATE_KM: Final = 0.1


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


_DAILY_KPIS_SQL: Final = b"""
WITH bounds AS (
    SELECT %(day_from)s::date::timestamp AT TIME ZONE %(tz)s AS t_from,
           (%(day_to)s::date + 1)::timestamp AT TIME ZONE %(tz)s AS t_to
),
s AS (
    SELECT vehicle_id, ts, (ts AT TIME ZONE %(tz)s)::date AS day, signal, value
    FROM samples, bounds
    WHERE ts >= bounds.t_from AND ts < bounds.t_to
      AND signal IN (%(odo)s, %(soc)s, %(volt)s, %(curr)s, %(speed)s)
      AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
),
readings AS (
    SELECT vehicle_id, day,
           max(value) FILTER (WHERE signal = %(odo)s) - min(value) FILTER (WHERE signal = %(odo)s)
               AS distance_km,
           (array_agg(value ORDER BY ts) FILTER (WHERE signal = %(soc)s))[1] AS soc_start_pct,
           (array_agg(value ORDER BY ts DESC) FILTER (WHERE signal = %(soc)s))[1] AS soc_end_pct,
           min(value) FILTER (WHERE signal = %(soc)s) AS soc_min_pct
    FROM s GROUP BY vehicle_id, day
),
instants AS (   -- one row per reading instant of V, I or speed
    SELECT vehicle_id, day, ts,
           max(value) FILTER (WHERE signal = %(volt)s) AS v,
           max(value) FILTER (WHERE signal = %(curr)s) AS i,
           max(value) FILTER (WHERE signal = %(speed)s) AS speed
    FROM s WHERE signal IN (%(volt)s, %(curr)s, %(speed)s)
    GROUP BY vehicle_id, day, ts
),
numbered AS (   -- count(x) over time numbers the runs that start at each reading of x
    SELECT *, count(v) OVER w AS run_v, count(i) OVER w AS run_i, count(speed) OVER w AS run_speed,
           lead(ts) OVER w AS next_ts
    FROM instants WINDOW w AS (PARTITION BY vehicle_id, day ORDER BY ts)
),
held AS (       -- each signal's last reading carried forward within its run
    SELECT vehicle_id, day, ts, next_ts,
           max(v) OVER (PARTITION BY vehicle_id, day, run_v) AS v,
           max(i) OVER (PARTITION BY vehicle_id, day, run_i) AS i,
           max(speed) OVER (PARTITION BY vehicle_id, day, run_speed) AS speed
    FROM numbered
),
intervals AS (
    SELECT vehicle_id, day, extract(epoch FROM next_ts - ts)::float8 AS dt_s, v * i AS power_w, speed,
           (v * i < 0 AND coalesce(speed, 0) <= %(moving)s) AS charging
    FROM held
    WHERE next_ts IS NOT NULL AND extract(epoch FROM next_ts - ts) <= %(max_hold)s
),
energy AS (
    SELECT vehicle_id, day,
           sum(power_w * dt_s) FILTER (WHERE NOT charging) / 3.6e6 AS energy_used_kwh,
           sum(-power_w * dt_s) FILTER (WHERE charging) / 3.6e6 AS energy_charged_kwh,
           coalesce(sum(dt_s) FILTER (WHERE speed > %(moving)s), 0) / 3600.0 AS moving_hours
    FROM intervals GROUP BY vehicle_id, day
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
       coalesce(alerts_raised, 0)::int AS alerts_raised, coalesce(critical_alerts, 0)::int AS critical_alerts
FROM readings
FULL JOIN energy USING (vehicle_id, day)
FULL JOIN alert_days USING (vehicle_id, day)
ORDER BY vehicle_id, day
"""


async def daily_kpis(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    *,
    tz: str = "UTC",
    vehicle_id: str | None = None,
) -> list[DailyKpi]:
    """KPIs per bus per day for `day_from`..`day_to` inclusive, days in time zone `tz`."""
    params = {
        "day_from": day_from,
        "day_to": day_to,
        "tz": tz,
        "vehicle": vehicle_id,
        "odo": TRAVELED_DISTANCE,
        "soc": SOC,
        "volt": PACK_VOLTAGE,
        "curr": PACK_CURRENT,
        "speed": SPEED,
        "moving": MOVING_SPEED_KMH,
        "max_hold": MAX_HOLD_S,
        "min_km": MIN_DISTANCE_FOR_RATE_KM,
    }
    async with conn.cursor(row_factory=class_row(DailyKpi)) as cur:
        await cur.execute(_DAILY_KPIS_SQL, params)
        return await cur.fetchall()
