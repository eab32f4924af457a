"""Battery health per bus: the pack's capacity estimated from each charging session, and its trend.

    GET /api/buses/{bus}/health   [?from=&to=&tz=]   (dates, inclusive; default the 12 weeks to today)

Capacity from one charging session (`estimate_capacity`, pure): a charge is a coulomb count the BMS
also sees as a rise in SOC, so

    capacity_Ah = Ah_in / (ΔSOC / 100),   Ah_in = ∫ −I dt over [t_a, t_b]

where I is the pack current (A, positive = discharge; each reading held until the next, as the
daily KPIs hold it), t_a the first SOC reading at or after the charge current first reaches
`MIN_CHARGE_CURRENT_A`, t_b the last SOC reading before it last falls below it, and ΔSOC =
SOC(t_b) − SOC(t_a). Both ends are readings, so the integral covers exactly the window the SOC
rose over; the end of the charge is left out because a BMS re-anchors its SOC there (a jump to
100 % that no current carried). A session gives no estimate when its window is below
`MIN_WINDOW_PCT` (SOC's resolution would dominate) or when the readings inside it have a gap
longer than `kpis.MAX_HOLD_S` (the Ah would be unknown). Sessions are the daily KPIs' charging
sessions (`kpis.charging_sessions`: P < 0 at standstill for at least `kpis.MIN_CHARGING_S`); in
`web.time_zone` the kept ones, a session cut at midnight joined again (`joined`).

State of health: capacity / the pack's nominal Ah (`[web.operations] nominal_capacity_ah`, per bus
or fleet) when configured; else only the capacity and its trend are given. The trend over weeks:
per week (Monday to Sunday, local days) the median of its sessions' estimates, and the least-squares
slope of every estimate against time, as % of the mean capacity per 30 days.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from aiohttp import web

from cloud import kpis
from cloud.analytics_http import Connection, Pool, known_bus
from cloud.api_params import bus_id, day_range, json_response, time_zone
from cloud.settings import WebSettings
from protocols.signals import PACK_CURRENT, SOC

MIN_CHARGE_CURRENT_A: Final = 5.0  # below this the pack is not being charged (sensor offset, CV tail)
MIN_WINDOW_PCT: Final = 20.0
DEFAULT_WEEKS: Final = 12
TREND_DAYS: Final = 30.0


@dataclass(frozen=True, slots=True)
class CapacityEstimate:
    started_at: datetime  # t_a
    ended_at: datetime  # t_b
    soc_from_pct: float
    soc_to_pct: float
    ah_in: float
    capacity_ah: float
    soh_pct: float | None


@dataclass(frozen=True, slots=True)
class WeekHealth:
    week_start: date  # the Monday
    sessions: int
    capacity_ah: float  # median of the week's estimates
    soh_pct: float | None


@dataclass(frozen=True, slots=True)
class BatteryHealth:
    vehicle_id: str
    day_from: date
    day_to: date
    tz: str
    nominal_capacity_ah: float | None
    sessions_seen: int
    estimates: list[CapacityEstimate]
    weeks: list[WeekHealth]
    capacity_ah: float | None  # the latest week's median
    soh_pct: float | None
    trend_pct_per_30d: float | None


Reading = tuple[datetime, str, float]


def estimate_capacity(
    readings: Sequence[Reading], nominal_ah: float | None = None
) -> CapacityEstimate | None:
    """One session's capacity from its pack current and SOC readings, sorted by time (see above)."""
    currents = [(ts, v) for ts, s, v in readings if s == PACK_CURRENT]
    socs = [(ts, v) for ts, s, v in readings if s == SOC]
    charging = [ts for ts, v in currents if -v >= MIN_CHARGE_CURRENT_A]
    if not charging or not socs:
        return None
    first_charge = charging[0]
    # the charge ends at the first current reading after the last charging one
    last_charge = charging[-1]
    charge_end = next((ts for ts, _ in currents if ts > last_charge), last_charge)
    inside = [(ts, v) for ts, v in socs if first_charge <= ts < charge_end]
    if len(inside) < 2:
        return None
    (t_a, soc_a), (t_b, soc_b) = inside[0], inside[-1]
    window = soc_b - soc_a
    if window < MIN_WINDOW_PCT:
        return None
    ah = 0.0
    held: float | None = None
    held_since: datetime | None = None
    for ts, value in [*currents, (t_b, float("nan"))]:
        if held is not None and held_since is not None:
            lo, hi = max(held_since, t_a), min(ts, t_b)
            if hi > lo:
                if (ts - held_since).total_seconds() > kpis.MAX_HOLD_S:
                    return None  # a gap inside the window: the charge in it is unknown
                ah += -held * (hi - lo).total_seconds() / 3600.0
        if ts >= t_b:
            break
        held, held_since = value, ts
    capacity = ah / (window / 100.0)
    soh = 100.0 * capacity / nominal_ah if nominal_ah else None
    return CapacityEstimate(t_a, t_b, soc_a, soc_b, ah, capacity, soh)


def summarize(
    vehicle_id: str,
    day_from: date,
    day_to: date,
    tz: str,
    estimates: list[CapacityEstimate],
    sessions_seen: int,
    nominal_ah: float | None,
) -> BatteryHealth:
    """Pure: weekly medians, the latest capacity and the trend from a bus's estimates."""
    zone = ZoneInfo(tz)
    by_week: dict[date, list[float]] = {}
    for e in estimates:
        local = e.started_at.astimezone(zone).date()
        by_week.setdefault(local - timedelta(days=local.weekday()), []).append(e.capacity_ah)
    weeks = [
        WeekHealth(week, len(caps), med, 100.0 * med / nominal_ah if nominal_ah else None)
        for week, caps in sorted(by_week.items())
        for med in (statistics.median(caps),)
    ]
    trend: float | None = None
    if len(estimates) >= 3:
        t0 = estimates[0].started_at
        days = [(e.started_at - t0).total_seconds() / 86400.0 for e in estimates]
        caps = [e.capacity_ah for e in estimates]
        if days[-1] - days[0] >= 1.0:
            slope = statistics.linear_regression(days, caps).slope
            trend = 100.0 * slope * TREND_DAYS / statistics.fmean(caps)
    latest = weeks[-1] if weeks else None
    return BatteryHealth(
        vehicle_id=vehicle_id,
        day_from=day_from,
        day_to=day_to,
        tz=tz,
        nominal_capacity_ah=nominal_ah,
        sessions_seen=sessions_seen,
        estimates=estimates,
        weeks=weeks,
        capacity_ah=latest.capacity_ah if latest else None,
        soh_pct=latest.soh_pct if latest else None,
        trend_pct_per_30d=trend,
    )


def joined(sessions: Sequence[kpis.ChargingSession]) -> list[kpis.ChargingSession]:
    """Kept sessions joined again where one begins at most `kpis.MAX_HOLD_S` after the one before
    ends: a session cut at local midnight ends at its last reading before it and goes on from the
    first after it (a pause that short is one charge for the capacity too)."""
    out: list[kpis.ChargingSession] = []
    for s in sorted(sessions, key=lambda s: s.started_at):
        if out and (s.started_at - out[-1].ended_at).total_seconds() <= kpis.MAX_HOLD_S:
            last = out[-1]
            out[-1] = kpis.ChargingSession(
                last.vehicle_id,
                last.started_at,
                max(last.ended_at, s.ended_at),
                last.energy_added_kwh + s.energy_added_kwh,
                max(last.max_power_kw, s.max_power_kw),
            )
        else:
            out.append(s)
    return out


# The current and SOC readings of each session, one round trip: session k's window is
# [starts[k], ends[k]).
_SESSION_READINGS_SQL: Final = b"""
SELECT w.k, r.ts, r.signal, r.value
FROM unnest(%(starts)s::timestamptz[], %(ends)s::timestamptz[]) WITH ORDINALITY AS w(t0, t1, k),
     LATERAL (SELECT ts, seq, signal, value FROM samples_between(w.t0, w.t1)
              WHERE vehicle_id = %(vehicle)s AND signal IN (%(curr)s, %(soc)s)) r
ORDER BY w.k, r.ts, r.seq
"""


async def battery_health(
    conn: Connection,
    vehicle_id: str,
    day_from: date,
    day_to: date,
    *,
    tz: str,
    nominal_ah: float | None,
    kept: kpis.KeptDays | None = None,
) -> BatteryHealth:
    """The bus's capacity estimates from its charging sessions of `day_from`..`day_to` and their trend."""
    if kept is not None and kept.time_zone == tz:
        sessions = joined(await kpis.kept_charging_sessions(conn, day_from, day_to, kept, vehicle_id))
    else:
        sessions = await kpis.charging_sessions(conn, day_from, day_to, tz=tz, vehicle_id=vehicle_id)
    params = {
        "starts": [s.started_at for s in sessions],
        "ends": [s.ended_at + timedelta(seconds=1) for s in sessions],
        "vehicle": vehicle_id,
        "curr": PACK_CURRENT,
        "soc": SOC,
    }
    per_session: dict[int, list[Reading]] = {}
    async with conn.cursor() as cur:
        await cur.execute(_SESSION_READINGS_SQL, params, prepare=False)
        for k, ts, signal, value in await cur.fetchall():
            assert isinstance(k, int) and isinstance(ts, datetime) and isinstance(value, float)
            per_session.setdefault(k, []).append((ts, str(signal), value))
    estimates = [
        e for k in sorted(per_session) if (e := estimate_capacity(per_session[k], nominal_ah)) is not None
    ]
    return summarize(vehicle_id, day_from, day_to, tz, estimates, len(sessions), nominal_ah)


def add_routes(app: web.Application, pool: Pool, settings: WebSettings) -> None:
    """GET /api/buses/{bus}/health on the fleet views' app."""

    kept = kpis.KeptDays(settings.time_zone, settings.trip_gap_s)

    async def health(request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        query = request.query
        tz = time_zone(query, settings.time_zone)
        if "from" in query or "to" in query:
            d_from, d_to = day_range(query, settings.max_range_days)
        else:
            d_to = datetime.now(ZoneInfo(tz)).date()
            d_from = d_to - timedelta(days=7 * DEFAULT_WEEKS - 1)
        nominal = settings.operations.for_bus(bus).nominal_capacity_ah
        async with pool.connection() as conn:
            await known_bus(conn, bus)
            found = await battery_health(conn, bus, d_from, d_to, tz=tz, nominal_ah=nominal, kept=kept)
        return json_response(found)

    app.router.add_get("/api/buses/{bus}/health", health)
