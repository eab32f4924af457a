"""The fleet analytics' pure cores: block-risk arithmetic, capacity from a charge, billing periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from cloud import kpis
from cloud.battery_health import estimate_capacity, joined, summarize
from cloud.billing import OdometerDay, Period, billing_rows, charging_hours_by_day
from cloud.block_risk import BusFigures, assess, ranked
from cloud.settings import BusOperations, OperationsSettings, load_settings
from protocols.signals import PACK_CURRENT, SOC

UTC_ZONE = ZoneInfo("UTC")
AT = datetime(2024, 5, 14, 12, tzinfo=UTC)


def figures(vehicle_id: str = "bus-1", soc: float | None = 50.0, **changes: object) -> BusFigures:
    base: dict[str, object] = {
        "vehicle_id": vehicle_id,
        "soc_pct": soc,
        "soc_at": AT,
        "battery_capacity_kwh": 300.0,
        "driven_today_km": 60.0,
        "typical_day_km": 200.0,
        "kwh_per_km": 1.2,
        "predicted_drop_pp": None,
        "predicted_at": None,
    }
    return BusFigures(**{**base, **changes})  # type: ignore[arg-type]


def test_block_risk_arithmetic_with_the_typical_day() -> None:
    # GIVEN 50 % of 300 kWh, a 15 % reserve: 105 kWh, 87.5 km at 1.2 kWh/km; 200 − 60 = 140 km left
    risk = assess(figures(), OperationsSettings(), AT, UTC_ZONE)

    assert risk.energy_left_kwh == pytest.approx(105.0)
    assert risk.range_km == pytest.approx(87.5)
    assert (risk.remaining_km, risk.remaining_source) == (pytest.approx(140.0), "typical_day")
    assert risk.margin_km == pytest.approx(-52.5)
    assert risk.soc_needed_pct == pytest.approx(15.0 + 100 * 140 * 1.2 / 300)
    assert risk.risk == pytest.approx(140 / 87.5)
    assert risk.divert is True


def test_a_worn_pack_has_its_usable_energy_scaled_by_its_state_of_health() -> None:
    # GIVEN the same bus as above with a state of health of 80 %: 240 of its 300 kWh
    worn = assess(figures(soh_pct=80.0), OperationsSettings(), AT, UTC_ZONE)
    new = assess(figures(), OperationsSettings(), AT, UTC_ZONE)
    fresher = assess(figures(soh_pct=104.0), OperationsSettings(), AT, UTC_ZONE)

    # THEN its range above the reserve shrinks with it, and the answer says which capacity it used
    assert (worn.usable_kwh, worn.capacity_source, worn.soh_pct) == (pytest.approx(240.0), "status+soh", 80.0)
    assert worn.range_km == pytest.approx(0.35 * 240.0 / 1.2)
    assert "state of health of 80 %" in worn.reason
    assert (new.usable_kwh, new.capacity_source) == (300.0, "status")
    assert "no state-of-health estimate" in new.reason
    # an estimate above nominal (a new pack's spread) never rates the pack above its rating
    assert fresher.usable_kwh == pytest.approx(300.0)
    ops = OperationsSettings(usable_energy_kwh=280.0)
    assert assess(figures(soh_pct=90.0), ops, AT, UTC_ZONE).capacity_source == "settings+soh"
    assert assess(figures(soh_pct=90.0), ops, AT, UTC_ZONE).usable_kwh == pytest.approx(252.0)


def test_block_km_and_usable_energy_from_the_settings_per_bus() -> None:
    ops = OperationsSettings(block_km=100.0, buses={"bus-1": BusOperations(usable_energy_kwh=400.0)})

    risk = assess(figures(), ops, AT, UTC_ZONE)
    other = assess(figures("bus-2"), ops, AT, UTC_ZONE)

    assert risk.usable_kwh == 400.0 and other.usable_kwh == 300.0
    assert risk.remaining_km == pytest.approx(40.0)  # 100 km block, 60 driven
    assert risk.range_km == pytest.approx(0.35 * 400 / 1.2)
    assert risk.divert is False


def test_block_hours_scale_the_typical_day_and_end_it() -> None:
    ops = OperationsSettings(block_start="06:00", block_end="18:00")

    midday = assess(figures(), ops, AT, UTC_ZONE)  # 12:00: half the block's hours are left
    after = assess(figures(), ops, AT + timedelta(hours=7), UTC_ZONE)

    assert (midday.remaining_km, midday.remaining_source) == (pytest.approx(100.0), "block_hours")
    assert midday.block_end == datetime(2024, 5, 14, 18, tzinfo=UTC)
    assert (after.remaining_km, after.divert) == (0.0, False)


def test_forecast_beside_the_answer() -> None:
    ops = OperationsSettings(block_start="06:00", block_end="18:00")

    risk = assess(figures(predicted_drop_pp=10.0, predicted_at=AT), ops, AT, UTC_ZONE)

    assert risk.forecast_soc_pct == pytest.approx(40.0)
    assert risk.forecast_hours_to_reserve == pytest.approx(3.5)  # 35 pp at 10 pp an hour
    assert risk.forecast_short is True  # 15:30 is before 18:00


def test_unknowns_say_why_and_rank_last() -> None:
    no_soc = assess(figures("a", soc=None), OperationsSettings(), AT, UTC_ZONE)
    no_rate = assess(figures("b", kwh_per_km=None), OperationsSettings(), AT, UTC_ZONE)
    safe = assess(figures("c", soc=100.0), OperationsSettings(), AT, UTC_ZONE)
    empty = assess(figures("d", soc=10.0), OperationsSettings(), AT, UTC_ZONE)

    assert (no_soc.divert, no_soc.reason) == (None, "no SOC reading")
    assert no_rate.divert is None and "kWh/km" in no_rate.reason
    assert empty.risk == float("inf") and empty.divert is True
    assert [r.vehicle_id for r in ranked([no_soc, safe, no_rate, empty])] == ["d", "c", "a", "b"]


def test_settings_refuse_half_a_block_and_bad_times() -> None:
    with pytest.raises(ValidationError, match="go together"):
        OperationsSettings(block_start="06:00")
    with pytest.raises(ValidationError, match="HH:MM"):
        OperationsSettings(block_start="6am", block_end="18:00")
    with pytest.raises(ValidationError, match="malformed"):
        OperationsSettings(buses={"bus 1": BusOperations()})


def charge(
    capacity_ah: float, current_a: float, soc_from: float, minutes: int
) -> list[tuple[datetime, str, float]]:
    """A constant-current charge read every 10 s; SOC by coulomb counting, reported to 0.1 %; then the
    current stops and the BMS re-anchors SOC at 100 %."""
    readings = []
    t0 = AT
    for k in range(minutes * 6 + 1):
        ts = t0 + timedelta(seconds=10 * k)
        soc = soc_from + current_a * 10 * k / 3600 / capacity_ah * 100
        readings += [(ts, PACK_CURRENT, -current_a), (ts, SOC, round(soc, 1))]
    end = t0 + timedelta(seconds=10 * (minutes * 6 + 1))
    readings += [(end, PACK_CURRENT, 0.0), (end, SOC, 100.0)]
    return readings


def test_capacity_from_a_charge_leaves_the_re_anchoring_out() -> None:
    estimate = estimate_capacity(charge(400.0, 200.0, 40.0, 60), nominal_ah=500.0)

    assert estimate is not None
    assert estimate.soc_from_pct == 40.0
    assert estimate.soc_to_pct < 100.0
    assert estimate.capacity_ah == pytest.approx(400.0, rel=0.005)
    assert estimate.soh_pct == pytest.approx(80.0, rel=0.005)


def test_no_capacity_from_a_short_window_or_a_gap() -> None:
    assert estimate_capacity(charge(400.0, 200.0, 40.0, 20)) is None  # 16.7 pp
    gappy = [
        r
        for r in charge(400.0, 200.0, 40.0, 60)
        if not AT + timedelta(minutes=20) < r[0] < AT + timedelta(minutes=25)
    ]
    assert estimate_capacity(gappy) is None


def test_weekly_medians_and_trend() -> None:
    estimates = [
        e
        for k, cap in enumerate((400.0, 398.0, 396.0, 394.0))
        if (
            e := estimate_capacity(
                [(ts + timedelta(days=7 * k), s, v) for ts, s, v in charge(cap, 200.0, 30.0, 60)]
            )
        )
    ]

    health = summarize("bus-1", date(2024, 5, 13), date(2024, 6, 9), "UTC", estimates, 4, None)

    assert [w.week_start for w in health.weeks] == [
        date(2024, 5, 13) + timedelta(days=7 * k) for k in range(4)
    ]
    assert health.capacity_ah == pytest.approx(394.0, rel=0.005)
    # −2 Ah a week: −60/7 Ah per 30 days of a ~397 Ah mean
    assert health.trend_pct_per_30d == pytest.approx(-100 * 2 / 7 * 30 / 397, rel=0.05)


def test_periods_are_cut_to_the_range() -> None:
    day = OdometerDay("bus-1", date(2024, 2, 28), 10.0, 100, 0, 0, 0, 0.0, 0.0)
    later = OdometerDay("bus-1", date(2024, 3, 2), 5.0, 50, 1, 0, 0, 0.0, 0.0)

    months = billing_rows(Period.MONTH, date(2024, 2, 27), date(2024, 3, 3), [day, later], [], {})

    assert [(r.period_start, r.period_end, r.days, r.days_with_data) for r in months] == [
        (date(2024, 2, 27), date(2024, 2, 29), 3, 1),
        (date(2024, 3, 1), date(2024, 3, 3), 3, 1),
    ]
    assert [r.flags for r in months] == [("no_data",), ("no_data", "odometer_rollback")]
    assert Period.MONTH.end_of(date(2023, 12, 1)) == date(2023, 12, 31)


def test_charging_hours_split_at_local_midnight() -> None:
    session = kpis.ChargingSession(
        "bus-1",
        datetime(2024, 5, 14, 20, tzinfo=UTC),
        datetime(2024, 5, 14, 23, 30, tzinfo=UTC),
        100.0,
        150.0,
    )

    hours = charging_hours_by_day([session], ZoneInfo("Africa/Nairobi"))  # UTC+3: 23:00 to 02:30

    assert hours == {
        ("bus-1", date(2024, 5, 14)): pytest.approx(1.0),
        ("bus-1", date(2024, 5, 15)): pytest.approx(2.5),
    }


def test_an_old_soc_reading_is_said_so() -> None:
    risk = assess(figures(soc_at=AT - timedelta(hours=2)), OperationsSettings(), AT, UTC_ZONE)

    assert risk.soc_age_min == pytest.approx(120.0)
    assert risk.reason.startswith("the SOC reading is 120 min old; divert to charge")


def test_sessions_cut_at_midnight_are_joined_again() -> None:
    midnight = datetime(2024, 5, 15, tzinfo=UTC)
    # the kept session before midnight ends at its last reading, 10 s before
    before = kpis.ChargingSession(
        "bus-1", midnight - timedelta(hours=1), midnight - timedelta(seconds=10), 100.0, 150.0
    )
    after = kpis.ChargingSession("bus-1", midnight, midnight + timedelta(hours=2), 180.0, 140.0)
    later = kpis.ChargingSession(
        "bus-1", midnight + timedelta(hours=9), midnight + timedelta(hours=10), 20.0, 60.0
    )

    assert joined([later, after, before]) == [
        kpis.ChargingSession("bus-1", before.started_at, after.ended_at, 280.0, 150.0),
        later,
    ]


def test_a_block_over_midnight_is_yesterdays_until_it_ends() -> None:
    ops = OperationsSettings(block_start="18:00", block_end="02:00")

    early = assess(figures(), ops, datetime(2024, 5, 15, 1, tzinfo=UTC), UTC_ZONE)  # 1 h of 8 left
    evening = assess(figures(), ops, datetime(2024, 5, 14, 22, tzinfo=UTC), UTC_ZONE)  # 4 h of 8

    assert early.block_end == datetime(2024, 5, 15, 2, tzinfo=UTC)
    assert early.remaining_km == pytest.approx(200.0 / 8)
    assert evening.block_end == datetime(2024, 5, 15, 2, tzinfo=UTC)
    assert evening.remaining_km == pytest.approx(100.0)


def test_gps_and_odometer_disagreeing_is_flagged() -> None:
    odo = OdometerDay("bus-1", date(2024, 5, 14), 100.0, 1000, 0, 0, 0, 0.0, 0.0)
    close, far = (
        kpis.DailyKpi(
            "bus-1", date(2024, 5, 14), 100.0, None, None, None, 50.0, None, None, None, 0, 0, gps_km
        )
        for gps_km in (108.0, 115.0)
    )

    [near] = billing_rows(Period.DAY, date(2024, 5, 14), date(2024, 5, 14), [odo], [close], {})
    [off] = billing_rows(Period.DAY, date(2024, 5, 14), date(2024, 5, 14), [odo], [far], {})

    assert (near.gps_odometer_diff_pct, near.flags) == (pytest.approx(8.0), ())
    assert (off.gps_odometer_diff_pct, off.flags) == (pytest.approx(15.0), ("gps_odometer_disagreement",))
    assert off.energy_used_kwh == 50.0


def test_operations_from_a_config_file_per_bus_over_the_fleet(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text(
        "[web.operations]\nreserve_soc_pct = 20\nblock_km = 180\nnominal_capacity_ah = 488\n"
        '[web.operations.buses.KBZ-101A]\nblock_km = 220\nblock_start = "05:30"\nblock_end = "21:00"\n'
    )

    web = load_settings(config).web
    assert web is not None
    ops = web.operations

    assert ops.reserve_soc_pct == 20
    own, other = ops.for_bus("KBZ-101A"), ops.for_bus("KBZ-102B")
    assert (own.block_km, own.block_start, own.nominal_capacity_ah) == (220, "05:30", 488)
    assert (other.block_km, other.block_start, other.nominal_capacity_ah) == (180, None, 488)
