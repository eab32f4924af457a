"""Will each bus finish its block? The buses ranked by the risk of running out before the block ends.

    GET /api/fleet/block-risk   [?at=]   (an instant; default now)

A block is a bus's day of service (its duty), not a block of stored samples (`cloud.blocks`).
Per bus, at the instant `at` (days are local days of `web.time_zone`; settings from
`[web.operations]`, per bus or the fleet default):

    driven_today_km   = odometer at `at` − the day's first odometer reading
    typical_day_km    = median distance of the bus's last `lookback_days` ended days (≥ 1 km)
    remaining_km      = block_km − driven_today_km                             (block_km set)
                      = typical_day_km × (block_end − at) / (block_end − block_start)
                                                                (block hours set, no block_km)
                      = typical_day_km − driven_today_km                         (neither)
                        never below 0, and 0 once `at` is past block_end
    kwh_per_km        = Σ energy used / Σ odometer km over the last `lookback_days` days, today
                        included (the daily KPIs of `cloud.kpis`)
    rated_kwh         = usable_energy_kwh, else the pack capacity the bus reports in its status
    usable_kwh        = rated_kwh × soh_pct / 100 where the bus has a state of health, else rated_kwh
                        (`capacity_source`: settings | status, `+soh` when scaled)
    energy_left_kwh   = max(0, SOC − reserve_soc_pct) / 100 × usable_kwh
    range_km          = energy_left_kwh / kwh_per_km
    soc_needed_pct    = reserve_soc_pct + 100 × remaining_km × kwh_per_km / usable_kwh
    margin_km         = range_km − remaining_km
    divert            = margin_km < 0    (equivalently SOC < soc_needed_pct)
    risk              = remaining_km / range_km   (∞ with no energy left above the reserve)

The state of health is battery health's (`cloud.battery_health`): the median capacity of the
charging sessions of the bus's latest week with an estimate, within the `lookback_days` to `at`,
over its `nominal_capacity_ah` (so only buses with that configured have one; a pack whose estimate
exceeds nominal is taken at 100 %). A worn pack's range is that much shorter than its rating says.

Buses are ranked by risk, highest first (an infinite risk, no energy above the reserve, is null in
the JSON and ranks first); a bus whose risk cannot be computed (no SOC, no kWh/km yet, no pack
capacity) comes last with `divert` null and the reason. SOC is the last reading at `at`, its age
given (and said in the reason past `STALE_SOC_MIN`). Beside it, the on-device
forecast: the latest SOC-drop prediction (`protocols.predictions.SOC_DROP_PP`, percentage points
over the next `SOC_DROP_HORIZON_MIN` minutes) gives the SOC expected then and, at that rate, the
hours until the reserve; `forecast_short` says whether that comes before the block's end (when
its hours are set). The forecast informs; `divert` is decided by the figures above.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from aiohttp import web

from cloud import battery_health, kpis
from cloud.analytics_http import Connection, Pool
from cloud.api_params import json_response, parse_instant
from cloud.settings import BusOperations, OperationsSettings, WebSettings
from protocols.predictions import SOC_DROP_HORIZON_MIN, SOC_DROP_PP
from protocols.signals import ODOMETER, SOC

MIN_DAY_KM: Final = 1.0  # a day with less is a day off, not a typical day
# A forecast made this long before the SOC reading it is set beside is too old to show.
FORECAST_MAX_AGE: Final = timedelta(minutes=30)
STALE_SOC_MIN: Final = 30.0  # an older SOC reading is said so in the reason (the bus may be offline)


@dataclass(frozen=True, slots=True)
class BusFigures:
    """What the database says about one bus at the instant asked for (inputs of `assess`)."""

    vehicle_id: str
    soc_pct: float | None
    soc_at: datetime | None
    battery_capacity_kwh: float | None
    driven_today_km: float | None
    typical_day_km: float | None
    kwh_per_km: float | None
    predicted_drop_pp: float | None  # the latest SOC-drop forecast, if recent
    predicted_at: datetime | None
    soh_pct: float | None = None  # battery health's latest estimate (needs nominal_capacity_ah)


@dataclass(frozen=True, slots=True)
class BlockRisk:
    vehicle_id: str
    divert: bool | None
    reason: str
    risk: float | None
    soc_pct: float | None
    soc_at: datetime | None
    soc_age_min: float | None  # how old the SOC reading is at the instant asked for
    reserve_soc_pct: float
    soc_needed_pct: float | None
    usable_kwh: float | None
    capacity_source: str | None  # settings | status, "+soh" when scaled by the state of health
    soh_pct: float | None
    energy_left_kwh: float | None
    kwh_per_km: float | None
    range_km: float | None
    remaining_km: float | None
    remaining_source: str | None  # block_km | block_hours | typical_day
    driven_today_km: float | None
    typical_day_km: float | None
    margin_km: float | None
    block_end: datetime | None
    forecast_drop_pp: float | None
    forecast_at: datetime | None
    forecast_soc_pct: float | None  # expected SOC SOC_DROP_HORIZON_MIN minutes after forecast_at
    forecast_hours_to_reserve: float | None
    forecast_short: bool | None


def _local(day: date, hhmm: str, zone: ZoneInfo) -> datetime:
    hour, minute = (int(part) for part in hhmm.split(":"))
    return datetime.combine(day, time(hour, minute), zone).astimezone(UTC)


def remaining_km(
    ops: BusOperations, figures: BusFigures, at: datetime, zone: ZoneInfo
) -> tuple[float | None, str | None, datetime | None]:
    """(remaining km, where it came from, the block's end instant if its hours are set)."""
    day = at.astimezone(zone).date()
    start = _local(day, ops.block_start, zone) if ops.block_start else None
    end = _local(day, ops.block_end, zone) if ops.block_end else None
    if start is not None and end is not None and end <= start:
        end += timedelta(days=1)  # a block running past midnight
        if at < end - timedelta(days=1):  # ... and `at` is in its hours after midnight: yesterday's
            start, end = start - timedelta(days=1), end - timedelta(days=1)
    driven = figures.driven_today_km or 0.0
    left: float | None
    if ops.block_km is not None:
        left, source = ops.block_km - driven, "block_km"
    elif start is not None and end is not None and figures.typical_day_km is not None:
        share = min(1.0, (end - at) / (end - start))
        left, source = figures.typical_day_km * share, "block_hours"
    elif figures.typical_day_km is not None:
        left, source = figures.typical_day_km - driven, "typical_day"
    else:
        return None, None, end
    if end is not None and at >= end:
        left = 0.0
    return max(0.0, left), source, end


def usable_energy(ops: BusOperations, figures: BusFigures) -> tuple[float | None, str | None]:
    """(usable kWh, where it came from): the rated energy, scaled by the state of health if known."""
    if ops.usable_energy_kwh is not None:
        rated, source = ops.usable_energy_kwh, "settings"
    elif figures.battery_capacity_kwh is not None:
        rated, source = figures.battery_capacity_kwh, "status"
    else:
        return None, None
    if figures.soh_pct is None:
        return rated, source
    return rated * min(figures.soh_pct, 100.0) / 100.0, f"{source}+soh"


def _capacity_said(usable: float, source: str | None, soh_pct: float | None) -> str:
    rated = "usable_energy_kwh" if source and source.startswith("settings") else "the reported pack capacity"
    if soh_pct is None:
        return f"usable {usable:.0f} kWh ({rated}; no state-of-health estimate)"
    return f"usable {usable:.0f} kWh ({rated} at a state of health of {min(soh_pct, 100.0):.0f} %)"


def assess(figures: BusFigures, settings: OperationsSettings, at: datetime, zone: ZoneInfo) -> BlockRisk:
    """Pure: the block-risk figures and the divert answer for one bus (formula in the docstring)."""
    ops = settings.for_bus(figures.vehicle_id)
    reserve = settings.reserve_soc_pct
    usable, capacity_source = usable_energy(ops, figures)
    left, source, end = remaining_km(ops, figures, at, zone)
    soc, rate = figures.soc_pct, figures.kwh_per_km
    energy = range_km = needed = margin = risk = None
    divert: bool | None = None
    if soc is None:
        reason = "no SOC reading"
    elif usable is None:
        reason = "pack capacity unknown: the bus has not reported it; set usable_energy_kwh"
    elif rate is None or rate <= 0:
        reason = f"no kWh/km yet: no distance driven in the last {settings.lookback_days} days"
    elif left is None:
        reason = "block length unknown: set block_km, or wait for a day of driving"
    else:
        energy = max(0.0, soc - reserve) / 100.0 * usable
        range_km = energy / rate
        needed = reserve + 100.0 * left * rate / usable
        margin = range_km - left
        risk = left / range_km if range_km > 0 else (float("inf") if left > 0 else 0.0)
        divert = margin < 0
        verdict = "divert to charge" if divert else "can finish"
        reason = (
            f"{verdict}: {left:.1f} km left ({source}) against {range_km:.1f} km of range above the"
            f" {reserve:g} % reserve; needs {needed:.1f} % SOC, has {soc:.1f} %;"
            f" {_capacity_said(usable, capacity_source, figures.soh_pct)}"
        )
    age_min = (at - figures.soc_at) / timedelta(minutes=1) if figures.soc_at else None
    if age_min is not None and age_min > STALE_SOC_MIN:
        reason = f"the SOC reading is {age_min:.0f} min old; " + reason
    drop, forecast_soc, hours_to_reserve, short = figures.predicted_drop_pp, None, None, None
    if drop is not None and soc is not None:
        forecast_soc = soc - drop
        if drop > 0:
            hours_to_reserve = max(0.0, soc - reserve) / drop * SOC_DROP_HORIZON_MIN / 60.0
            if end is not None:
                short = at + timedelta(hours=hours_to_reserve) < end
    return BlockRisk(
        vehicle_id=figures.vehicle_id,
        divert=divert,
        reason=reason,
        risk=risk,
        soc_pct=soc,
        soc_at=figures.soc_at,
        soc_age_min=age_min,
        reserve_soc_pct=reserve,
        soc_needed_pct=needed,
        usable_kwh=usable,
        capacity_source=capacity_source,
        soh_pct=figures.soh_pct,
        energy_left_kwh=energy,
        kwh_per_km=rate,
        range_km=range_km,
        remaining_km=left,
        remaining_source=source,
        driven_today_km=figures.driven_today_km,
        typical_day_km=figures.typical_day_km,
        margin_km=margin,
        block_end=end,
        forecast_drop_pp=drop,
        forecast_at=figures.predicted_at,
        forecast_soc_pct=forecast_soc,
        forecast_hours_to_reserve=hours_to_reserve,
        forecast_short=short,
    )


def ranked(risks: list[BlockRisk]) -> list[BlockRisk]:
    """Highest risk first; buses without a risk last, by id."""
    return sorted(risks, key=lambda r: (r.risk is None, -(r.risk or 0.0), r.vehicle_id))


# Each bus's pack capacity, its last SOC reading at `at` and its latest SOC-drop forecast at `at`.
_BUS_STATE_SQL: Final = b"""
SELECT v.vehicle_id, v.battery_capacity_kwh, soc.ts, soc.value, p.ts, p.value
FROM vehicles v
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(soc)s, %(at)s) soc ON true
LEFT JOIN LATERAL (
    SELECT ts, value FROM predictions
    WHERE vehicle_id = v.vehicle_id AND output = %(output)s AND ts <= %(at)s AND ts > %(at)s - %(max_age)s
    ORDER BY ts DESC, seq DESC LIMIT 1
) p ON true
ORDER BY v.vehicle_id
"""

# Each bus's first and last odometer reading of the day so far.
_DRIVEN_TODAY_SQL: Final = b"""
SELECT vehicle_id, (array_agg(value ORDER BY ts DESC, seq DESC))[1] - (array_agg(value ORDER BY ts, seq))[1]
FROM samples_between(%(t_from)s, %(t_to)s) WHERE signal = %(odo)s
GROUP BY vehicle_id
"""


@dataclass(frozen=True, slots=True)
class _State:
    capacity_kwh: float | None
    soc: tuple[datetime, float] | None
    forecast: tuple[datetime, float] | None


def _pair(ts: object, value: object) -> tuple[datetime, float] | None:
    return (ts, value) if isinstance(ts, datetime) and isinstance(value, float) else None


async def _states(conn: Connection, at: datetime) -> dict[str, _State]:
    params = {"soc": SOC, "at": at, "output": SOC_DROP_PP, "max_age": FORECAST_MAX_AGE}
    async with conn.cursor() as cur:
        await cur.execute(_BUS_STATE_SQL, params)
        return {
            str(bus): _State(
                capacity if isinstance(capacity, float) else None, _pair(s_ts, s), _pair(p_ts, p)
            )
            for bus, capacity, s_ts, s, p_ts, p in await cur.fetchall()
        }


async def _driven_today(conn: Connection, day_start: datetime, at: datetime) -> dict[str, float]:
    async with conn.cursor() as cur:
        await cur.execute(_DRIVEN_TODAY_SQL, {"t_from": day_start, "t_to": at, "odo": ODOMETER})
        return {str(bus): max(0.0, float(km)) for bus, km in await cur.fetchall() if isinstance(km, float)}


def _recent(rows: list[kpis.DailyKpi], today: date) -> tuple[float | None, float | None]:
    """(typical day km over the ended days, kWh/km over all) from one bus's daily KPIs."""
    ended = [r.distance_km for r in rows if r.day < today and r.distance_km and r.distance_km >= MIN_DAY_KM]
    rated = [r for r in rows if r.distance_km and r.energy_used_kwh is not None]
    km = sum(r.distance_km or 0.0 for r in rated)
    rate = sum(r.energy_used_kwh or 0.0 for r in rated) / km if km >= kpis.MIN_DISTANCE_FOR_RATE_KM else None
    return (statistics.median(ended) if ended else None), rate


async def state_of_health(
    conn: Connection, settings: WebSettings, vehicle_id: str, at: datetime, kept: kpis.KeptDays
) -> float | None:
    """The bus's latest state of health from charges ended by `at` within `lookback_days` (None
    without `nominal_capacity_ah` or an estimate)."""
    nominal = settings.operations.for_bus(vehicle_id).nominal_capacity_ah
    if nominal is None:
        return None
    today = at.astimezone(ZoneInfo(settings.time_zone)).date()
    day_from = today - timedelta(days=settings.operations.lookback_days)
    health = await battery_health.battery_health(
        conn, vehicle_id, day_from, today, tz=settings.time_zone, nominal_ah=nominal, kept=kept
    )
    before = [e for e in health.estimates if e.ended_at <= at]
    summary = battery_health.summarize(
        vehicle_id, day_from, today, settings.time_zone, before, health.sessions_seen, nominal
    )
    return summary.soh_pct


async def block_risks(conn: Connection, settings: WebSettings, at: datetime) -> list[BlockRisk]:
    """Every bus's block risk at `at`, ranked."""
    zone = ZoneInfo(settings.time_zone)
    today = at.astimezone(zone).date()
    day_start = datetime.combine(today, time(), zone).astimezone(UTC)
    ops = settings.operations
    states = await _states(conn, at)
    driven = await _driven_today(conn, day_start, at)
    kept = kpis.KeptDays(settings.time_zone, settings.trip_gap_s)
    days = await kpis.kept_daily_kpis(conn, today - timedelta(days=ops.lookback_days), today, kept)
    by_bus: dict[str, list[kpis.DailyKpi]] = {}
    for row in days:
        by_bus.setdefault(row.vehicle_id, []).append(row)
    risks = []
    for bus, state in states.items():
        typical, rate = _recent(by_bus.get(bus, []), today)
        soc, forecast = state.soc, state.forecast
        if forecast is not None and (soc is None or abs(soc[0] - forecast[0]) > FORECAST_MAX_AGE):
            forecast = None
        figures = BusFigures(
            vehicle_id=bus,
            soc_pct=soc[1] if soc else None,
            soc_at=soc[0] if soc else None,
            battery_capacity_kwh=state.capacity_kwh,
            driven_today_km=driven.get(bus),
            typical_day_km=typical,
            kwh_per_km=rate,
            predicted_drop_pp=forecast[1] if forecast else None,
            predicted_at=forecast[0] if forecast else None,
            soh_pct=await state_of_health(conn, settings, bus, at, kept),
        )
        risks.append(assess(figures, ops, at, zone))
    return ranked(risks)


def add_routes(app: web.Application, pool: Pool, settings: WebSettings) -> None:
    """GET /api/fleet/block-risk on the fleet views' app."""

    async def block_risk(request: web.Request) -> web.Response:
        text = request.query.get("at")
        at = parse_instant("at", text) if text else datetime.now(UTC)
        async with pool.connection() as conn:
            risks = await block_risks(conn, settings, at)
        return json_response(
            {
                "at": at,
                "time_zone": settings.time_zone,
                "reserve_soc_pct": settings.operations.reserve_soc_pct,
                "buses": risks,
            }
        )

    app.router.add_get("/api/fleet/block-risk", block_risk)
