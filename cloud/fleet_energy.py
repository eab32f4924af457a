"""The fleet's energy per hour and per day, in SQL from the samples' intervals (`kpi_intervals`).

The buses' energy used (∫P dt, not charging) and charged (∫−P dt, charging) summed per hour and
per day; total, daily average over the calendar days of the range (a day without data counts as
0), the `ROLLING_DAYS`-day rolling average ending on each day, the peak day, the peak hour of use
and the peak hour of charging (the depot's grid demand).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

import psycopg

from cloud.kpi_intervals import INTERVALS_CTE, fetch_rows, query_params

ROLLING_DAYS: Final = 7


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


HOURLY_ENERGY_SQL: Final = (
    INTERVALS_CTE
    + b"""
SELECT hour, day,
       coalesce(sum(power_w * dt_s) FILTER (WHERE NOT charging), 0) / 3.6e6 AS used_kwh,
       coalesce(sum(-power_w * dt_s) FILTER (WHERE charging), 0) / 3.6e6 AS charged_kwh
FROM intervals GROUP BY hour, day ORDER BY hour
"""
)


async def hourly_energy(
    conn: psycopg.AsyncConnection[tuple[object, ...]], day_from: date, day_to: date, *, tz: str = "UTC"
) -> list[HourlyEnergy]:
    """The whole fleet's energy used and charged per hour (hours with data only)."""
    return await fetch_rows(conn, HOURLY_ENERGY_SQL, query_params(day_from, day_to, tz, None), HourlyEnergy)


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
