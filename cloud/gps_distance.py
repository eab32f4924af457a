"""Distance from GPS: great-circle legs between consecutive fixes, GPS glitches left out (in SQL).

gps_distance_km is the sum of great-circle (haversine) distances between consecutive GPS fixes; a
leg whose implied speed exceeds `MAX_GPS_SPEED_KMH` is a GPS glitch and is left out. A fix is every
instant with a latitude or a longitude reading, the other coordinate held from its last reading
(at most `kpi_intervals.MAX_HOLD_S` old): the agent keeps each coordinate by its own deadband, so a
bus driving north sends latitudes and only a heartbeat longitude. A position out of range or at
(0, 0) is no fix. The implied speed is taken over the time since the leg's starting position was
first reported (at most `MAX_STALE_FIX_S`), not since its last repeat: a logger that repeats its
last fix every second until the receiver has a new one (the Twizy logs: a new position every
~10 s) would otherwise show every real leg as a 1 s jump.
"""

from __future__ import annotations

from typing import Final

MAX_GPS_SPEED_KMH: Final = 150.0
# A position repeated unchanged is one fix reported again; a repeat this long is a bus standing still,
# whose next leg is judged over this much time at most (a glitch of a standing bus stays a glitch).
MAX_STALE_FIX_S: Final = 30.0
EARTH_RADIUS_KM: Final = 6371.0088  # mean radius (IUGG)

GPS_PARAMS: Final[dict[str, object]] = {
    "max_gps_kmh": MAX_GPS_SPEED_KMH,
    "max_stale_fix": MAX_STALE_FIX_S,
    "earth_km": EARTH_RADIUS_KM,
}

# After `kpi_intervals.INTERVALS_CTE` (it reads the samples `s`): the fixes and the legs between them.
GPS_LEGS_CTE: Final = b""",
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
)"""
