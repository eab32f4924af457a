"""Read-side queries of the fleet views: last state per bus, time series, alerts, predictions vs outcome.

Everything here reads the tables the receiver writes (and the rollups `samples_1m/1h/1d`, on both
flavours views current at every commit: minutes over the sample blocks, hours and days over the
refreshed tables plus the rollup log, cloud/sql/0007_current_rollups.*.sql), so the same SQL serves
both flavours. Samples are read through
`samples_between()` and `latest_sample()`, which read only the blocks of a time range (and, given a
bus and signal, only theirs), never through the `samples` view, which unnests every block. Inputs
arrive validated by `cloud.api`; nothing here parses requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from protocols import signals
from protocols.predictions import SOC_DROP_HORIZON_MIN, SOC_DROP_PP

Connection = psycopg.AsyncConnection[tuple[object, ...]]

PACK_POWER: Final = "pack_power_kw"
"""A derived signal: pack voltage × pack current / 1000 (positive = discharge), per time bucket."""
SOC_DROP_OUTPUT: Final = SOC_DROP_PP  # the agent names its SOC-drop forecast so (protocols.predictions)
PREDICTION_HORIZON: Final = timedelta(minutes=SOC_DROP_HORIZON_MIN)
# An outcome is the last SOC reading at most this long before the instant it stands for.
READING_TOLERANCE: Final = timedelta(minutes=5)
# The latest predictions of a bus are looked for this far back from its last message.
LAST_STATE_LOOKBACK: Final = timedelta(days=7)
RAW_POWER_BUCKET: Final = timedelta(seconds=10)
# A latitude and a longitude read at most this far apart make one position: the heartbeat
# (`max_interval_s`) of both in protocols/catalog.toml. Within it, a coordinate not sent again has
# not moved beyond its deadband (2e-5°, about 2 m), so a standing bus still has a position.
LOCATION_PAIRING: Final = timedelta(seconds=30)


class Resolution(StrEnum):
    RAW = "raw"
    MINUTE = "1m"
    HOUR = "1h"
    DAY = "1d"

    @property
    def bucket(self) -> timedelta:
        return _BUCKETS[self]


_BUCKETS: Final = {
    Resolution.RAW: timedelta(seconds=1),  # for point-count estimates: the fastest signals are 1 Hz
    Resolution.MINUTE: timedelta(minutes=1),
    Resolution.HOUR: timedelta(hours=1),
    Resolution.DAY: timedelta(days=1),
}
_ROLLUP_TABLE: Final = {
    Resolution.MINUTE: "samples_1m",
    Resolution.HOUR: "samples_1h",
    Resolution.DAY: "samples_1d",
}


@dataclass(frozen=True, slots=True)
class Reading:
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    rule: str
    severity: str
    since: datetime
    value: float | None
    message: str


@dataclass(frozen=True, slots=True)
class LatestPrediction:
    model: str
    model_version: str
    output: str
    ts: datetime
    value: float


@dataclass(slots=True)
class BusState:
    vehicle_id: str
    fleet: str
    vin: str | None
    battery_capacity_kwh: float | None
    first_seen: datetime
    last_seen: datetime
    online: bool | None  # None: no status message received yet
    soc_pct: Reading | None = None
    speed_kmh: Reading | None = None
    pack_power_kw: Reading | None = None
    latitude: float | None = None
    longitude: float | None = None
    location_at: datetime | None = None
    active_alerts: list[ActiveAlert] = field(default_factory=list)
    predictions: list[LatestPrediction] = field(default_factory=list)

    @property
    def risk(self) -> LatestPrediction | None:
        """The highest of the latest probability outputs (named `p_…`), or None without any."""
        probabilities = [p for p in self.predictions if p.output.startswith("p_")]
        return max(probabilities, key=lambda p: p.value, default=None)

    @property
    def data_until(self) -> datetime | None:
        """The newest source timestamp among the last-state readings."""
        stamps = [r.ts for r in (self.soc_pct, self.speed_kmh, self.pack_power_kw) if r is not None]
        stamps += [self.location_at] if self.location_at else []
        return max(stamps, default=None)


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    ts: datetime
    avg: float | None
    min: float | None
    max: float | None
    n: int


@dataclass(frozen=True, slots=True)
class AlertEvent:
    vehicle_id: str
    seq: int
    ts: datetime
    rule: str
    severity: str
    active: bool
    value: float | None
    message: str


@dataclass(frozen=True, slots=True)
class PredictionOutcome:
    ts: datetime
    model: str
    model_version: str
    predicted_drop_pct: float
    soc_at_prediction_pct: float | None
    soc_after_horizon_pct: float | None  # None until the horizon has passed (or no reading then)

    @property
    def actual_drop_pct(self) -> float | None:
        if self.soc_at_prediction_pct is None or self.soc_after_horizon_pct is None:
            return None
        return self.soc_at_prediction_pct - self.soc_after_horizon_pct

    @property
    def predicted_soc_pct(self) -> float | None:
        """The SOC the prediction expects at ts + horizon."""
        if self.soc_at_prediction_pct is None:
            return None
        return self.soc_at_prediction_pct - self.predicted_drop_pct


# --- last state ------------------------------------------------------------------------------------------

# The agent samples latitude and longitude apart (`paired_position`): each coordinate's latest
# reading, and the other's latest within the pairing tolerance of it. That is the other's latest
# reading itself unless it is newer than the tolerance allows: only then is an earlier one looked
# up (else the bound is NULL, which the index scans answer at once with no row). Joined to `vehicles v`.
LOCATION_JOINS: Final = b"""
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(lat)s) lat ON true
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(lon)s) lon ON true
LEFT JOIN LATERAL latest_sample(
    v.vehicle_id, %(lon)s, CASE WHEN lon.ts > lat.ts + %(pairing)s THEN lat.ts + %(pairing)s END
) lon_earlier ON lon_earlier.ts >= lat.ts - %(pairing)s
LEFT JOIN LATERAL latest_sample(
    v.vehicle_id, %(lat)s, CASE WHEN lat.ts > lon.ts + %(pairing)s THEN lon.ts + %(pairing)s END
) lat_earlier ON lat_earlier.ts >= lon.ts - %(pairing)s
"""
LOCATION_COLUMNS: Final = b"""
       lat.ts AS lat_ts, lat.value AS lat,
       CASE WHEN lon.ts > lat.ts + %(pairing)s THEN lon_earlier.ts
            WHEN lon.ts >= lat.ts - %(pairing)s THEN lon.ts END AS lon_near_ts,
       CASE WHEN lon.ts > lat.ts + %(pairing)s THEN lon_earlier.value
            WHEN lon.ts >= lat.ts - %(pairing)s THEN lon.value END AS lon_near,
       lon.ts AS lon_ts, lon.value AS lon,
       CASE WHEN lat.ts > lon.ts + %(pairing)s THEN lat_earlier.ts
            WHEN lat.ts >= lon.ts - %(pairing)s THEN lat.ts END AS lat_near_ts,
       CASE WHEN lat.ts > lon.ts + %(pairing)s THEN lat_earlier.value
            WHEN lat.ts >= lon.ts - %(pairing)s THEN lat.value END AS lat_near
"""

_BUSES_SQL: Final = (
    b"""
SELECT v.vehicle_id, v.fleet, v.vin, v.battery_capacity_kwh, v.first_seen, v.last_seen, st.online,
       soc.ts AS soc_ts, soc.value AS soc, spd.ts AS speed_ts, spd.value AS speed,
       volt.ts AS volt_ts, volt.value AS volt, curr.ts AS curr_ts, curr.value AS curr,"""
    + LOCATION_COLUMNS
    + b"""
FROM vehicles v
LEFT JOIN vehicle_status st USING (vehicle_id)
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(soc)s) soc ON true
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(speed)s) spd ON true
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(volt)s) volt ON true
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(curr)s) curr ON true"""
    + LOCATION_JOINS
    + b"""
WHERE (%(vehicle)s::text IS NULL OR v.vehicle_id = %(vehicle)s::text)
ORDER BY v.vehicle_id
"""
)

# The latest event of each (bus, rule) decides whether the rule is active now.
_ACTIVE_ALERTS_SQL: Final = b"""
SELECT vehicle_id, rule, severity, ts, value, message FROM (
    SELECT DISTINCT ON (vehicle_id, rule) vehicle_id, rule, severity, active, ts, value, message
    FROM alerts WHERE (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
    ORDER BY vehicle_id, rule, ts DESC, seq DESC
) latest
WHERE active
ORDER BY vehicle_id, CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, ts DESC
"""

_LATEST_PREDICTIONS_SQL: Final = b"""
SELECT DISTINCT ON (p.vehicle_id, p.model, p.output)
       p.vehicle_id, p.model, p.model_version, p.output, p.ts, p.value
FROM predictions p JOIN vehicles v USING (vehicle_id)
WHERE p.ts >= v.last_seen - %(lookback)s
  AND (%(vehicle)s::text IS NULL OR p.vehicle_id = %(vehicle)s::text)
ORDER BY p.vehicle_id, p.model, p.output, p.ts DESC, p.seq DESC
"""


@dataclass(frozen=True, slots=True)
class Position:
    latitude: float
    longitude: float
    at: datetime  # the newer of the two readings


def paired_position(
    lat: Reading | None, lon_near_lat: Reading | None, lon: Reading | None, lat_near_lon: Reading | None
) -> Position | None:
    """The newest position whose two coordinates were read within `LOCATION_PAIRING` of each other.

    The agent samples latitude and longitude as two signals (protocols/catalog.toml), so their
    timestamps differ by a few seconds, and at a standstill by up to their heartbeat. Given each
    coordinate's latest reading and the other's latest within the tolerance of it (None: none
    there), the pair whose older reading is newer wins; None when neither pair exists.
    """
    best: tuple[Reading, Reading] | None = None
    for a, o in ((lat, lon_near_lat), (lat_near_lon, lon)):
        if a is None or o is None:
            continue
        if best is None or min(a.ts, o.ts) > min(best[0].ts, best[1].ts):
            best = (a, o)
    if best is None:
        return None
    return Position(best[0].value, best[1].value, max(best[0].ts, best[1].ts))


def _reading(ts: object, value: object) -> Reading | None:
    if isinstance(ts, datetime) and isinstance(value, float):
        return Reading(ts, value)
    return None


async def bus_states(conn: Connection, vehicle_id: str | None = None) -> list[BusState]:
    """Every bus (or one) with its last SOC, speed, pack power, position, active alerts, predictions."""
    params = {
        "vehicle": vehicle_id,
        "lookback": LAST_STATE_LOOKBACK,
        "soc": signals.SOC,
        "speed": signals.SPEED,
        "volt": signals.PACK_VOLTAGE,
        "curr": signals.PACK_CURRENT,
        "lat": signals.LATITUDE,
        "lon": signals.LONGITUDE,
        "pairing": LOCATION_PAIRING,
    }
    states: dict[str, BusState] = {}
    async with conn.cursor() as cur:
        await cur.execute(_BUSES_SQL, params)
        for row in await cur.fetchall():
            (vid, fleet, vin, capacity, first_seen, last_seen, online) = row[:7]
            (soc_ts, soc, speed_ts, speed, volt_ts, volt, curr_ts, curr) = row[7:15]
            lat, lon_near, lon, lat_near = (_reading(*row[k : k + 2]) for k in range(15, 23, 2))
            fix = paired_position(lat, lon_near, lon, lat_near)
            assert isinstance(first_seen, datetime) and isinstance(last_seen, datetime)
            power: Reading | None = None
            if isinstance(volt, float) and isinstance(curr, float):
                assert isinstance(volt_ts, datetime) and isinstance(curr_ts, datetime)
                power = Reading(max(volt_ts, curr_ts), volt * curr / 1000.0)
            states[str(vid)] = BusState(
                vehicle_id=str(vid),
                fleet=str(fleet),
                vin=vin if isinstance(vin, str) else None,
                battery_capacity_kwh=capacity if isinstance(capacity, float) else None,
                first_seen=first_seen,
                last_seen=last_seen,
                online=online if isinstance(online, bool) else None,
                soc_pct=_reading(soc_ts, soc),
                speed_kmh=_reading(speed_ts, speed),
                pack_power_kw=power,
                latitude=fix.latitude if fix else None,
                longitude=fix.longitude if fix else None,
                location_at=fix.at if fix else None,
            )
        await cur.execute(_ACTIVE_ALERTS_SQL, params)
        for vid, rule, severity, ts, value, message in await cur.fetchall():
            assert isinstance(ts, datetime)
            if (state := states.get(str(vid))) is not None:
                number = value if isinstance(value, float) else None
                state.active_alerts.append(ActiveAlert(str(rule), str(severity), ts, number, str(message)))
        await cur.execute(_LATEST_PREDICTIONS_SQL, params)
        for vid, model, version, output, ts, value in await cur.fetchall():
            assert isinstance(ts, datetime) and isinstance(value, float)
            if (state := states.get(str(vid))) is not None:
                state.predictions.append(LatestPrediction(str(model), str(version), str(output), ts, value))
    return list(states.values())


async def bus_exists(conn: Connection, vehicle_id: str) -> bool:
    cur = await conn.execute(b"SELECT 1 FROM vehicles WHERE vehicle_id = %s", (vehicle_id,))
    return await cur.fetchone() is not None


# --- time series -----------------------------------------------------------------------------------------

_RAW_SQL: Final = b"""
SELECT ts, value AS avg, value AS min, value AS max, 1 AS n FROM samples_between(%(t_from)s, %(t_to)s)
WHERE vehicle_id = %(vehicle)s AND signal = %(signal)s
ORDER BY ts, seq LIMIT %(limit)s
"""

_RAW_POWER_SQL: Final = b"""
SELECT date_bin(%(bucket)s, ts, timestamptz 'epoch') AS ts,
       avg(value) FILTER (WHERE signal = %(volt)s) * avg(value) FILTER (WHERE signal = %(curr)s) / 1000.0
           AS avg,
       NULL::float8 AS min, NULL::float8 AS max, count(*)::int AS n
FROM samples_between(%(t_from)s, %(t_to)s)
WHERE vehicle_id = %(vehicle)s AND signal IN (%(volt)s, %(curr)s)
GROUP BY 1
HAVING count(*) FILTER (WHERE signal = %(volt)s) > 0 AND count(*) FILTER (WHERE signal = %(curr)s) > 0
ORDER BY 1 LIMIT %(limit)s
"""


def _rollup_sql(table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT bucket AS ts, total / n AS avg, min_value AS min, max_value AS max, n::int AS n FROM {}"
        " WHERE vehicle_id = %(vehicle)s AND signal = %(signal)s"
        " AND bucket >= %(t_from)s AND bucket < %(t_to)s ORDER BY bucket LIMIT %(limit)s"
    ).format(sql.Identifier(table))


def _rollup_power_sql(table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT v.bucket AS ts, (v.total / v.n) * (i.total / i.n) / 1000.0 AS avg,"
        " NULL::float8 AS min, NULL::float8 AS max, least(v.n, i.n)::int AS n"
        " FROM {table} v JOIN {table} i ON i.vehicle_id = v.vehicle_id AND i.bucket = v.bucket"
        " AND i.signal = %(curr)s"
        " WHERE v.vehicle_id = %(vehicle)s AND v.signal = %(volt)s"
        " AND v.bucket >= %(t_from)s AND v.bucket < %(t_to)s ORDER BY v.bucket LIMIT %(limit)s"
    ).format(table=sql.Identifier(table))


async def series(
    conn: Connection,
    vehicle_id: str,
    signal: str,
    t_from: datetime,
    t_to: datetime,
    resolution: Resolution,
    limit: int,
) -> list[SeriesPoint]:
    """One signal of one bus in [t_from, t_to): raw readings or rollup buckets (avg, min, max, n).

    `PACK_POWER` is derived per bucket as mean V × mean I (raw: 10-second buckets); its min/max are None.
    """
    params: dict[str, object] = {
        "vehicle": vehicle_id,
        "signal": signal,
        "t_from": t_from,
        "t_to": t_to,
        "limit": limit,
        "volt": signals.PACK_VOLTAGE,
        "curr": signals.PACK_CURRENT,
        "bucket": RAW_POWER_BUCKET,
    }
    query: bytes | sql.Composed
    if resolution is Resolution.RAW:
        query = _RAW_POWER_SQL if signal == PACK_POWER else _RAW_SQL
    else:
        table = _ROLLUP_TABLE[resolution]
        query = _rollup_power_sql(table) if signal == PACK_POWER else _rollup_sql(table)
    async with conn.cursor(row_factory=class_row(SeriesPoint)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


# --- alerts and predictions ------------------------------------------------------------------------------

_ALERTS_SQL: Final = b"""
SELECT vehicle_id, seq, ts, rule, severity, active, value, message FROM alerts
WHERE ts >= %(t_from)s AND ts < %(t_to)s
  AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
  AND (%(severity)s::text IS NULL OR severity = %(severity)s::text)
ORDER BY ts DESC, vehicle_id, seq DESC LIMIT %(limit)s
"""


async def alert_events(
    conn: Connection,
    t_from: datetime,
    t_to: datetime,
    *,
    vehicle_id: str | None,
    severity: str | None,
    limit: int,
) -> list[AlertEvent]:
    """Alerts raised and cleared in [t_from, t_to), newest first."""
    params = {"t_from": t_from, "t_to": t_to, "vehicle": vehicle_id, "severity": severity, "limit": limit}
    async with conn.cursor(row_factory=class_row(AlertEvent)) as cur:
        await cur.execute(_ALERTS_SQL, params)
        return await cur.fetchall()


_OUTCOMES_SQL: Final = b"""
SELECT p.ts, p.model, p.model_version, p.value AS predicted_drop_pct,
       at_prediction.value AS soc_at_prediction_pct, after_horizon.value AS soc_after_horizon_pct
FROM predictions p
LEFT JOIN LATERAL latest_sample(p.vehicle_id, %(soc)s, p.ts) at_prediction
    ON at_prediction.ts > p.ts - %(tolerance)s
LEFT JOIN LATERAL latest_sample(p.vehicle_id, %(soc)s, p.ts + %(horizon)s) after_horizon
    ON after_horizon.ts > p.ts + %(horizon)s - %(tolerance)s
WHERE p.vehicle_id = %(vehicle)s AND p.output = %(output)s AND p.ts >= %(t_from)s AND p.ts < %(t_to)s
ORDER BY p.ts, p.seq LIMIT %(limit)s
"""


async def prediction_outcomes(
    conn: Connection, vehicle_id: str, t_from: datetime, t_to: datetime, limit: int
) -> list[PredictionOutcome]:
    """Each SOC-drop prediction in [t_from, t_to) with the SOC then and `PREDICTION_HORIZON` later."""
    params = {
        "vehicle": vehicle_id,
        "t_from": t_from,
        "t_to": t_to,
        "limit": limit,
        "soc": signals.SOC,
        "output": SOC_DROP_OUTPUT,
        "horizon": PREDICTION_HORIZON,
        "tolerance": READING_TOLERANCE,
    }
    async with conn.cursor(row_factory=class_row(PredictionOutcome)) as cur:
        await cur.execute(_OUTCOMES_SQL, params)
        return await cur.fetchall()
