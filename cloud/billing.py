"""Pay-per-km report: kilometres per bus per day, week or month, with what a bill needs to trust them.

    GET /api/reports/billing   ?from=&to=&period=day|week|month[&format=json|csv][&tz=][&bus=]

`from` and `to` are local dates (inclusive) in `tz` (default `web.time_zone`), at most
`web.max_range_days` apart; a week runs Monday to Sunday, a month is a calendar month, each cut to
the range asked for. Per bus and period:

- odometer_km: the sum of the forward steps between consecutive odometer readings, the first from
  the bus's last reading before the range (a step belongs to the day of its later reading, so days
  add up to their range and consecutive ranges to the whole: no km lost at a boundary). With no
  anomaly this is the range's last reading minus the last one before it. A step backwards is an
  odometer reset or rollback (`odometer_rollbacks`): it is not billed, and the distance after it
  counts from the new reading. A step forward faster than `MAX_ODOMETER_KMH` over its interval is a jump
  (`odometer_jumps`, e.g. a replaced cluster reporting its own total): not billed either.
- gps_km: the daily KPIs' GPS distance (great-circle legs between fixes, glitches left out).
- data gaps: consecutive odometer readings more than `DATA_GAP_S` apart (the catalog sends it at
  least every minute, moving or not): their count, the longest, and the km billed across them
  (driven while the bus sent nothing: known from the odometer, not seen happen).
- gps_odometer_diff_pct: |gps_km − odometer_km| / odometer_km × 100, over periods of at least
  `MIN_COMPARE_KM`; above `GPS_DISAGREEMENT_PCT` it is flagged.
- energy_used_kwh (daily KPIs) and charging_hours (charging sessions, split at local midnight).

`flags` lists what a reader of the bill must look at: `no_data` (a day of the period without
odometer readings while the bus reported in the range), `data_gap`, `odometer_rollback`,
`odometer_jump`, `gps_odometer_disagreement`. The CSV has the JSON rows' fields as columns, in the
same order, flags joined by ';', an empty cell for null.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

from aiohttp import web

from cloud import kpis
from cloud.analytics_http import Connection, Pool, known_bus
from cloud.api_params import RequestError, bus_id, day_range, json_response, jsonable, time_zone
from cloud.settings import WebSettings
from protocols.signals import ODOMETER

DATA_GAP_S: Final = 300.0  # five missed odometer heartbeats (max_interval_s = 60 in the catalog)
MAX_ODOMETER_KMH: Final = 200.0  # faster than any bus: a jump, not driving
ODOMETER_TOLERANCE_KM: Final = 0.01  # quantum-level wobble is neither a rollback nor a step
GPS_DISAGREEMENT_PCT: Final = 10.0
MIN_COMPARE_KM: Final = 1.0


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"

    def start_of(self, day: date) -> date:
        if self is Period.WEEK:
            return day - timedelta(days=day.weekday())
        if self is Period.MONTH:
            return day.replace(day=1)
        return day

    def end_of(self, start: date) -> date:
        if self is Period.WEEK:
            return start + timedelta(days=6)
        if self is Period.MONTH:
            following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
            return following - timedelta(days=1)
        return start


@dataclass(frozen=True, slots=True)
class OdometerDay:
    vehicle_id: str
    day: date
    odometer_km: float
    readings: int
    rollbacks: int
    jumps: int
    gaps: int
    longest_gap_s: float
    km_over_gaps: float


@dataclass(frozen=True, slots=True)
class BillingRow:
    vehicle_id: str
    period: str
    period_start: date
    period_end: date
    days: int
    days_with_data: int
    odometer_km: float
    gps_km: float | None
    gps_odometer_diff_pct: float | None
    energy_used_kwh: float | None
    charging_hours: float
    odometer_readings: int
    odometer_rollbacks: int
    odometer_jumps: int
    data_gaps: int
    longest_gap_min: float
    km_over_gaps: float
    flags: tuple[str, ...]


# Consecutive odometer readings of each bus over the range; each step with the local day of its later reading.
_ODOMETER_DAYS_SQL: Final = b"""
WITH bounds AS NOT MATERIALIZED (
    SELECT %(day_from)s::date::timestamp AT TIME ZONE %(tz)s AS t_from,
           (%(day_to)s::date + 1)::timestamp AT TIME ZONE %(tz)s AS t_to
),
seeds AS (      -- each bus's last reading before the range: the first step in it starts there
    SELECT v.vehicle_id, last.ts, 0::bigint AS seq, last.value
    FROM vehicles v, bounds,
         LATERAL latest_sample(v.vehicle_id, %(odo)s, bounds.t_from - interval '1 microsecond') last
    WHERE %(vehicle)s::text IS NULL OR v.vehicle_id = %(vehicle)s::text
),
readings AS (
    SELECT vehicle_id, ts, value, lag(value) OVER w AS prev, extract(epoch FROM ts - lag(ts) OVER w) AS dt_s
    FROM (
        SELECT vehicle_id, ts, seq, value FROM bounds, samples_between(bounds.t_from, bounds.t_to)
        WHERE signal = %(odo)s AND (%(vehicle)s::text IS NULL OR vehicle_id = %(vehicle)s::text)
        UNION ALL
        SELECT vehicle_id, ts, seq, value FROM seeds
    ) odometer
    WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts, seq)
),
steps AS (
    SELECT vehicle_id, (ts AT TIME ZONE %(tz)s)::date AS day, dt_s, value - prev AS km,
           value < prev - %(tolerance)s AS rollback,
           value - prev > %(max_kmh)s * dt_s / 3600.0 + %(tolerance)s AS jump,
           dt_s > %(gap_s)s AS gap
    FROM readings, bounds WHERE ts >= bounds.t_from   -- a seed is no step of the range
)
SELECT vehicle_id, day,
       coalesce(sum(km) FILTER (WHERE km > 0 AND NOT jump), 0)::float8 AS odometer_km,
       count(*)::int AS readings,
       count(*) FILTER (WHERE rollback)::int AS rollbacks,
       count(*) FILTER (WHERE jump)::int AS jumps,
       count(*) FILTER (WHERE gap)::int AS gaps,
       coalesce(max(dt_s) FILTER (WHERE gap), 0)::float8 AS longest_gap_s,
       coalesce(sum(km) FILTER (WHERE gap AND km > 0 AND NOT jump), 0)::float8 AS km_over_gaps
FROM steps GROUP BY vehicle_id, day ORDER BY vehicle_id, day
"""


async def odometer_days(
    conn: Connection, day_from: date, day_to: date, *, tz: str, vehicle_id: str | None
) -> list[OdometerDay]:
    params = {
        "day_from": day_from,
        "day_to": day_to,
        "tz": tz,
        "vehicle": vehicle_id,
        "odo": ODOMETER,
        "tolerance": ODOMETER_TOLERANCE_KM,
        "max_kmh": MAX_ODOMETER_KMH,
        "gap_s": DATA_GAP_S,
    }
    async with conn.cursor() as cur:
        await cur.execute(_ODOMETER_DAYS_SQL, params, prepare=False)
        return [OdometerDay(str(r[0]), *r[1:]) for r in await cur.fetchall()]  # type: ignore[arg-type]


def charging_hours_by_day(
    sessions: Iterable[kpis.ChargingSession], zone: ZoneInfo
) -> dict[tuple[str, date], float]:
    """Hours of charging per (bus, local day), a session over midnight split there."""
    hours: dict[tuple[str, date], float] = {}
    for s in sessions:
        t = s.started_at
        while t < s.ended_at:
            day = t.astimezone(zone).date()
            midnight = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
            cut = min(s.ended_at, midnight)
            key = (s.vehicle_id, day)
            hours[key] = hours.get(key, 0.0) + (cut - t).total_seconds() / 3600.0
            t = cut
    return hours


def billing_rows(
    period: Period,
    day_from: date,
    day_to: date,
    odometer: list[OdometerDay],
    daily: list[kpis.DailyKpi],
    charging: dict[tuple[str, date], float],
) -> list[BillingRow]:
    """Pure: the per-day figures summed per bus and period (cut to the range), with their flags."""
    odo = {(o.vehicle_id, o.day): o for o in odometer}
    kpi = {(k.vehicle_id, k.day): k for k in daily}
    buses = sorted({bus for bus, _ in (*odo, *kpi, *charging)})
    days = [day_from + timedelta(days=k) for k in range((day_to - day_from).days + 1)]
    rows = []
    for bus in buses:
        periods: dict[date, list[date]] = {}
        for day in days:
            periods.setdefault(period.start_of(day), []).append(day)
        for start, its_days in periods.items():
            odos = [o for d in its_days if (o := odo.get((bus, d))) is not None]
            kpis_ = [k for d in its_days if (k := kpi.get((bus, d))) is not None]
            km = sum(o.odometer_km for o in odos)
            gps_days = [k.gps_distance_km for k in kpis_ if k.gps_distance_km is not None]
            gps = sum(gps_days) if gps_days else None
            energy_days = [k.energy_used_kwh for k in kpis_ if k.energy_used_kwh is not None]
            diff = abs(gps - km) / km * 100.0 if gps is not None and km >= MIN_COMPARE_KM else None
            row = BillingRow(
                vehicle_id=bus,
                period=period.value,
                period_start=start if start >= day_from else day_from,
                period_end=min(period.end_of(start), day_to),
                days=len(its_days),
                days_with_data=len(odos),
                odometer_km=km,
                gps_km=gps,
                gps_odometer_diff_pct=diff,
                energy_used_kwh=sum(energy_days) if energy_days else None,
                charging_hours=sum(charging.get((bus, d), 0.0) for d in its_days),
                odometer_readings=sum(o.readings for o in odos),
                odometer_rollbacks=sum(o.rollbacks for o in odos),
                odometer_jumps=sum(o.jumps for o in odos),
                data_gaps=sum(o.gaps for o in odos),
                longest_gap_min=max((o.longest_gap_s for o in odos), default=0.0) / 60.0,
                km_over_gaps=sum(o.km_over_gaps for o in odos),
                flags=(),
            )
            rows.append(_flagged(row))
    return rows


def _flagged(row: BillingRow) -> BillingRow:
    flags = []
    if row.days_with_data < row.days:
        flags.append("no_data")
    if row.data_gaps:
        flags.append("data_gap")
    if row.odometer_rollbacks:
        flags.append("odometer_rollback")
    if row.odometer_jumps:
        flags.append("odometer_jump")
    if row.gps_odometer_diff_pct is not None and row.gps_odometer_diff_pct > GPS_DISAGREEMENT_PCT:
        flags.append("gps_odometer_disagreement")
    return BillingRow(**{**{f.name: getattr(row, f.name) for f in fields(row)}, "flags": tuple(flags)})


COLUMNS: Final = tuple(f.name for f in fields(BillingRow))


def to_csv(rows: list[BillingRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        record = jsonable(row)
        assert isinstance(record, dict)
        cells = [record[name] for name in COLUMNS]
        writer.writerow(";".join(c) if isinstance(c, list) else "" if c is None else c for c in cells)
    return out.getvalue()


async def billing_report(
    conn: Connection,
    settings: WebSettings,
    period: Period,
    day_from: date,
    day_to: date,
    *,
    tz: str,
    vehicle_id: str | None,
) -> list[BillingRow]:
    odometer = await odometer_days(conn, day_from, day_to, tz=tz, vehicle_id=vehicle_id)
    if tz == settings.time_zone:
        kept = kpis.KeptDays(settings.time_zone, settings.trip_gap_s)
        daily = await kpis.kept_daily_kpis(conn, day_from, day_to, kept, vehicle_id=vehicle_id)
    else:
        daily = await kpis.daily_kpis(conn, day_from, day_to, tz=tz, vehicle_id=vehicle_id)
    sessions = await kpis.charging_sessions(conn, day_from, day_to, tz=tz, vehicle_id=vehicle_id)
    return billing_rows(
        period, day_from, day_to, odometer, daily, charging_hours_by_day(sessions, ZoneInfo(tz))
    )


def add_routes(app: web.Application, pool: Pool, settings: WebSettings) -> None:
    """GET /api/reports/billing on the fleet views' app."""

    async def billing(request: web.Request) -> web.Response:
        query = request.query
        d_from, d_to = day_range(query, settings.max_range_days)
        tz = time_zone(query, settings.time_zone)
        try:
            period = Period(query.get("period", "day"))
        except ValueError:
            raise RequestError(f"period={query['period']!r} is not one of day, week, month") from None
        output = query.get("format", "json")
        if output not in ("json", "csv"):
            raise RequestError(f"format={output!r} is not one of json, csv")
        bus = bus_id(query["bus"]) if "bus" in query else None
        async with pool.connection() as conn:
            if bus is not None:
                await known_bus(conn, bus)
            rows = await billing_report(conn, settings, period, d_from, d_to, tz=tz, vehicle_id=bus)
        if output == "csv":
            name = f"billing_{d_from}_{d_to}_{period.value}.csv"
            return web.Response(
                text=to_csv(rows),
                content_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        return json_response(
            {"from": d_from, "to": d_to, "tz": tz, "period": period.value, "columns": COLUMNS, "rows": rows}
        )

    app.router.add_get("/api/reports/billing", billing)
