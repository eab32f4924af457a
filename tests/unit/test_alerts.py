"""agent.alerts, agent.alert_engine, agent.alert_rules: every rule raises and clears with hysteresis, once per
change, after its persistence and hold time, from readings that belong together; LEDs in a temporary directory
laid out like /sys/class/leds."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from agent.alert_engine import AlertEngine, Readings
from agent.alert_rules import (
    CELL_PAIR_WINDOW_S,
    FAULT_RISK_OUTPUT,
    LARGE_DROP_OUTPUT,
    SOC_DROP_OUTPUT,
    STALE_AFTER_S,
    build_rules,
)
from agent.alerts import AlertInput, AlertStage
from agent.decode import Decoder
from agent.diagnostics import Dm1Report
from agent.leds import LedPattern, Leds, led_patterns
from agent.records import Alert, Prediction, Sample, Severity
from agent.settings import AlertSettings
from protocols.catalog import Priority, load_catalog
from protocols.j1939 import PGN_DM1, pgn_id
from protocols.signals import (
    CELL_TEMP_MAX,
    CELL_V_MAX,
    CELL_V_MIN,
    DERATED,
    FAULT_FLAGS,
    INSULATION,
    PACK_CURRENT,
    PACK_VOLTAGE,
    SOC,
)
from tests.unit.test_j1939 import CATALOG as J1939_CATALOG
from tests.unit.test_j1939 import dm1_payload, dtc_bytes
from tests.unit.test_j1939 import frame as j1939_frame

T0 = 1_700_000_000.0
HOLD_S = 30.0


def _engine(*, persistence: bool = True, **overrides: object) -> AlertEngine:
    """The shipped rules; `persistence=False` sets every rule's persistence to zero (the tests of levels,
    hysteresis, hold time and time steps, which are the engine's, not a rule's)."""
    settings = AlertSettings(min_hold_s=HOLD_S, **overrides)  # type: ignore[arg-type]
    rules = build_rules(settings)
    if not persistence:
        rules = [replace(rule, raise_after_s=0.0, clear_after_s=0.0) for rule in rules]
    return AlertEngine(
        rules,
        min_hold_s=settings.min_hold_s,
        prediction_max_age_s=settings.prediction_max_age_s,
    )


def _feed(
    engine: AlertEngine, name: str, values: list[float], start: float = T0, step: float = 1.0
) -> list[Alert]:
    alerts: list[Alert] = []
    for i, value in enumerate(values):
        alerts += engine.update(start + i * step, name, value)
    return alerts


def _summary(alerts: list[Alert], rule: str) -> list[tuple[str, bool]]:
    return [(a.severity, a.active) for a in alerts if a.rule == rule]


# --- thresholds, hysteresis, de-duplication, hold time --------------------------------------------------


def test_low_soc_warning_then_critical_then_eases_and_clears_with_hysteresis() -> None:
    engine = _engine(persistence=False)
    # GIVEN SOC falling through 20 % (warning) and 10 % (critical), wobbling around each threshold
    falling = [25.0, 20.0, 20.5, 19.8, 21.0, 15.0, 10.0, 10.5, 9.9, 11.0]
    alerts = _feed(engine, SOC, falling)
    # THEN one warning and one escalation, no duplicates while the wobble stays inside the hysteresis band
    assert _summary(alerts, "low_soc") == [("warning", True), ("critical", True)]
    assert alerts[0].ts == T0 + 1 and alerts[0].value == 20.0 and "state of charge low" in alerts[0].message
    # WHEN SOC recovers past 12 % (critical clears) and 22 % (warning clears), after the hold time
    rising = [11.9, 12.5, 13.0, 21.9, 22.5, 30.0]
    alerts = _feed(engine, SOC, rising, start=T0 + 100, step=40.0)
    assert _summary(alerts, "low_soc") == [("warning", True), ("warning", False)]
    assert alerts[0].ts == T0 + 140 and alerts[0].value == 12.5
    assert alerts[1].ts == T0 + 260
    assert engine.active() == {}


def test_an_alert_is_held_for_the_minimum_hold_time_then_clears() -> None:
    engine = _engine(persistence=False)
    alerts = _feed(engine, CELL_TEMP_MAX, [40.0, 46.0])  # warning at 45 degC
    assert _summary(alerts, "over_temperature") == [("warning", True)]
    # WHEN the temperature falls back below the clear threshold (42 degC) 5 s later
    alerts = _feed(engine, CELL_TEMP_MAX, [35.0] * 40, start=T0 + 6)
    # THEN it clears only once the alert has been up for HOLD_S of source time
    assert len(alerts) == 1 and not alerts[0].active
    assert alerts[0].ts == pytest.approx(T0 + 1 + HOLD_S)


def test_escalation_is_immediate_even_within_the_hold_time() -> None:
    engine = _engine(persistence=False)
    alerts = _feed(engine, CELL_TEMP_MAX, [46.0, 51.0])
    assert _summary(alerts, "over_temperature") == [("warning", True), ("critical", True)]


def test_the_hold_time_is_source_time_not_wall_clock() -> None:
    engine = _engine(persistence=False)
    _feed(engine, CELL_TEMP_MAX, [46.0])
    # samples arriving fast (a replay) but 1 s apart in source time: no clear before HOLD_S of them
    assert _feed(engine, CELL_TEMP_MAX, [30.0] * 20, start=T0 + 1) == []


@pytest.mark.parametrize("flag", FAULT_FLAGS)
def test_each_bms_fault_flag_is_a_critical_alert(flag: str) -> None:
    engine = _engine()
    alerts = _feed(engine, flag, [0.0, 1.0, 1.0, 1.0])
    kind = flag.rsplit(".", 1)[-1]
    assert _summary(alerts, f"bms_fault:{kind}") == [("critical", True)]
    alerts = _feed(engine, flag, [0.0, 0.0], start=T0 + 100)
    assert _summary(alerts, f"bms_fault:{kind}") == [("critical", False)]


def test_derate_is_a_warning() -> None:
    engine = _engine()
    assert _summary(_feed(engine, DERATED, [0.0, 1.0, 1.0]), "derate") == [("warning", True)]
    assert _summary(_feed(engine, DERATED, [0.0], start=T0 + 60), "derate") == [("warning", False)]


def test_insulation_is_judged_in_ohm_per_volt_of_the_pack_voltage() -> None:
    engine = _engine()
    engine.update(T0, PACK_VOLTAGE, 650.0)
    # 500 Ohm/V x 650 V = 325 kOhm (warning); 100 Ohm/V x 650 V = 65 kOhm (critical) — UN ECE R100
    alerts = _feed(engine, INSULATION, [5000.0, 330.0, 320.0, 300.0, 66.0, 64.0], start=T0 + 1)
    assert _summary(alerts, "insulation_low") == [("warning", True), ("critical", True)]
    assert alerts[0].value == pytest.approx(320_000 / 650)
    # clearing needs 20 % above each threshold: critical below 78 kOhm, warning below 390 kOhm; the pack
    # voltage keeps coming (its heartbeat), each insulation reading is judged with the voltage of its moment
    alerts = []
    for i, kohm in enumerate([75.0, 80.0, 380.0, 400.0]):
        engine.update(T0 + 99 + 40 * i, PACK_VOLTAGE, 650.0)
        alerts += engine.update(T0 + 100 + 40 * i, INSULATION, kohm)
    assert _summary(alerts, "insulation_low") == [("warning", True), ("warning", False)]


def test_insulation_without_a_pack_voltage_holds() -> None:
    engine = _engine()
    assert _feed(engine, INSULATION, [10.0, 10.0]) == []


def test_insulation_is_not_judged_against_a_stale_pack_voltage() -> None:
    engine = _engine()
    # GIVEN a pack voltage last heard more than its staleness limit before the insulation reading
    engine.update(T0, PACK_VOLTAGE, 650.0)
    stale = T0 + STALE_AFTER_S[PACK_VOLTAGE] + 1.0
    assert engine.update(stale, INSULATION, 60.0) == []
    # WHEN a voltage of the reading's moment comes, then the next insulation reading: THEN it is judged
    engine.update(stale + 1.0, PACK_VOLTAGE, 650.0)
    assert _summary(engine.update(stale + 2.0, INSULATION, 60.0), "insulation_low") == [("critical", True)]


def test_insulation_uses_the_pack_voltage_as_of_its_reading_not_a_later_one() -> None:
    engine = _engine()
    engine.update(T0, PACK_VOLTAGE, 650.0)
    alerts = engine.update(T0 + 1, INSULATION, 300.0)  # 461 Ohm/V at 650 V: a warning
    assert _summary(alerts, "insulation_low") == [("warning", True)]
    # a later voltage does not re-scale the earlier reading (300 kOhm at 60 V would read 5000 Ohm/V: clear)
    assert _feed(engine, PACK_VOLTAGE, [60.0] * 40, start=T0 + 2) == []
    assert engine.active() == {"insulation_low": "warning"}


# --- cell imbalance: max and min of one frame, at rest, for 30 s ------------------------------------------


def _frame(engine: AlertEngine, ts: float, vmax: float, vmin: float) -> list[Alert]:
    """One BMS_CellVoltage frame as the decoder delivers it: two samples with the frame's stamp."""
    return engine.update(ts, CELL_V_MAX, vmax) + engine.update(ts, CELL_V_MIN, vmin)


def _at_rest(engine: AlertEngine, ts: float, amps: float = 5.0, soc: float = 60.0) -> None:
    engine.update(ts, PACK_CURRENT, amps)
    engine.update(ts, SOC, soc)


def test_cell_imbalance_max_and_min_of_different_moments_do_not_alert() -> None:
    # The samples the agent kept around a false alarm on a healthy simulated bus (seed 1, 11 137 s in): the
    # minimum of 11 136.6 s, taken under 45 A of discharge, beside the maximum of the next frame, taken as
    # regenerative braking began; the minimum of that frame arrives just after it. The true spread was 5 mV.
    engine = _engine()
    t = T0
    _at_rest(engine, t, amps=45.3, soc=60.0)
    alerts = _frame(engine, t + 0.6, 3.306, 3.302)
    engine.update(t + 1.0, PACK_CURRENT, 41.3)
    alerts += engine.update(t + 1.6, CELL_V_MAX, 3.363)  # 61 mV against the previous frame's minimum
    alerts += engine.update(t + 1.6, CELL_V_MIN, 3.356)
    for k in range(2, 80):  # frames of that moment keep coming: 4-7 mV
        engine.update(t + k, PACK_CURRENT, 20.0)
        alerts += _frame(engine, t + k + 0.6, 3.322, 3.318)
    assert alerts == []


def test_a_lone_new_maximum_beside_an_old_minimum_is_not_judged() -> None:
    engine = _engine()
    _at_rest(engine, T0)
    _frame(engine, T0 + 0.5, 3.30, 3.29)
    # only the maximum moves past its deadband for a minute: its minimum is a second or more older
    alerts: list[Alert] = []
    for k in range(1, 60):
        _at_rest(engine, T0 + k)
        alerts += engine.update(T0 + k + 0.5, CELL_V_MAX, 3.45)  # 160 mV against the old minimum
    assert alerts == []
    assert CELL_PAIR_WINDOW_S < 1.0


def test_a_true_imbalance_alerts_after_it_persisted_30_s() -> None:
    engine = _engine()
    alerts: list[Alert] = []
    for k in range(0, 60, 2):  # a pair every 2 s at rest, 110 mV apart
        _at_rest(engine, T0 + k)
        alerts += _frame(engine, T0 + k + 0.5, 3.31, 3.20)
        if k < 30:
            assert alerts == [], f"raised after {k} s"
    assert _summary(alerts, "cell_imbalance") == [("critical", True)]
    assert alerts[0].value == pytest.approx(110.0)
    assert alerts[0].ts == pytest.approx(T0 + 30.5)
    # WHEN the spread is gone for 30 s of pairs (and the hold time has passed): THEN it clears
    alerts = []
    for k in range(60, 120, 2):
        _at_rest(engine, T0 + k)
        alerts += _frame(engine, T0 + k + 0.5, 3.31, 3.30)
    assert _summary(alerts, "cell_imbalance") == [("critical", False)]


def test_a_transient_spread_that_does_not_last_does_not_alert() -> None:
    engine = _engine()
    alerts: list[Alert] = []
    for k in range(0, 120, 2):
        _at_rest(engine, T0 + k)
        spread = 0.11 if k in (20, 22) else 0.005  # two frames 110 mV apart, then normal again
        alerts += _frame(engine, T0 + k + 0.5, 3.30 + spread, 3.30)
    assert alerts == []


def test_cell_imbalance_warning_level() -> None:
    engine = _engine()
    alerts: list[Alert] = []
    for k in range(0, 40, 2):
        _at_rest(engine, T0 + k, amps=0.0, soc=50.0)
        alerts += _frame(engine, T0 + k + 0.5, 3.31, 3.25)
    assert _summary(alerts, "cell_imbalance") == [("warning", True)]


def test_cell_imbalance_is_judged_near_rest_on_the_flat_part_of_the_curve() -> None:
    engine = _engine()
    alerts: list[Alert] = []
    for k in range(0, 60, 2):  # under load: the spread is internal resistance
        _at_rest(engine, T0 + k, amps=300.0)
        alerts += _frame(engine, T0 + k + 0.5, 3.31, 3.20)
    for k in range(60, 120, 2):  # a full pack (the LFP knee) says nothing either
        _at_rest(engine, T0 + k, soc=98.0)
        alerts += _frame(engine, T0 + k + 0.5, 3.45, 3.30)
    assert alerts == []


def test_cell_imbalance_reads_the_current_as_of_the_frame_and_never_a_stale_one() -> None:
    engine = _engine()
    alerts: list[Alert] = []
    for k in range(0, 60, 2):
        engine.update(T0 + k, SOC, 60.0)
        engine.update(T0 + k + 0.4, PACK_CURRENT, 300.0)  # under load at the frame's moment
        alerts += engine.update(T0 + k + 0.5, CELL_V_MAX, 3.31)
        engine.update(T0 + k + 0.6, PACK_CURRENT, 5.0)  # the load drops after the frame, before its minimum
        alerts += engine.update(T0 + k + 0.5, CELL_V_MIN, 3.20)
    assert alerts == []
    # a current last heard longer ago than its staleness limit says nothing about this frame
    engine = _engine()
    engine.update(T0, PACK_CURRENT, 5.0)
    alerts = []
    for k in range(int(STALE_AFTER_S[PACK_CURRENT]) + 1, 200, 2):
        engine.update(T0 + k, SOC, 60.0)
        alerts += _frame(engine, T0 + k + 0.5, 3.31, 3.20)
    assert alerts == []


def test_staleness_limits_cover_the_shipped_catalogs_heartbeats() -> None:
    catalog = load_catalog()
    for name, limit in STALE_AFTER_S.items():
        assert limit > catalog.by_name(name).policy.max_interval_s, name


# --- predictions --------------------------------------------------------------------------------------------


def test_predicted_soc_below_the_reserve_after_two_predictions() -> None:
    engine = _engine(soc_reserve_pct=15.0)
    alerts: list[Alert] = []
    for i, drop in enumerate([10.0, 16.0, 16.5, 14.0, 12.0, 12.0]):
        engine.update(T0 + 60 * i - 5, SOC, 30.0)  # SOC heartbeat
        alerts += engine.update(T0 + 60 * i, SOC_DROP_OUTPUT, drop)
    # 20 % (fine), 14 % (one prediction: not yet), 13.5 % (the second: raised), 16 % (in the band),
    # 18 % twice (released by two predictions: cleared)
    assert _summary(alerts, "soc_reserve") == [("warning", True), ("warning", False)]
    assert alerts[0].ts == T0 + 120 and alerts[0].value == pytest.approx(13.5)
    assert alerts[1].ts == T0 + 300


def test_predicted_soc_reads_the_soc_the_prediction_started_from() -> None:
    engine = _engine(soc_reserve_pct=15.0)
    alerts: list[Alert] = []
    for i in range(5):
        engine.update(T0 + 60 * i - 5, SOC, 40.0)
        alerts += engine.update(T0 + 60 * i, SOC_DROP_OUTPUT, 20.0)  # 20 % in an hour: fine
        alerts += engine.update(T0 + 60 * i + 1, SOC, 25.0)  # a later SOC does not meet this prediction
    assert alerts == []
    # a prediction with no SOC heard within its staleness limit before it is not judged
    engine = _engine(soc_reserve_pct=15.0)
    engine.update(T0, SOC, 20.0)
    late = T0 + STALE_AFTER_S[SOC] + 1.0
    assert _feed(engine, SOC_DROP_OUTPUT, [10.0, 10.0, 10.0], start=late, step=60.0) == []


def test_large_drop_probability_is_info_after_two_predictions() -> None:
    engine = _engine(large_drop_probability=0.8)
    alerts = _feed(engine, LARGE_DROP_OUTPUT, [0.5, 0.85, 0.75, 0.9, 0.85, 0.65, 0.6], step=60.0)
    # 0.85 then 0.75 is not two predictions at 0.8; 0.9, 0.85 is; 0.65, 0.6 release it (0.7 and below)
    assert _summary(alerts, "large_drop") == [("info", True), ("info", False)]
    assert alerts[0].ts == T0 + 240 and alerts[1].ts == T0 + 360


def test_fault_risk_uses_the_models_threshold_once_loaded() -> None:
    stage = AlertStage(AlertSettings(min_hold_s=0.0))
    # no model yet: no threshold, no alert
    assert stage.observe(Prediction(T0, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.99)) == []
    stage.model_loaded("fault_risk", {"alarm_probability": 0.97, "window_s": 1800.0})
    assert stage.observe(Prediction(T0 + 60, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.98)) == []
    alerts = stage.observe(Prediction(T0 + 120, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.99))
    assert _summary(alerts, "fault_risk") == [("warning", True)]
    assert "(warning at >= 0.97)" in alerts[0].message
    assert stage.observe(Prediction(T0 + 180, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.9)) == []
    assert stage.observe(Prediction(T0 + 240, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.5)) == []
    alerts = stage.observe(Prediction(T0 + 300, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.5))
    assert _summary(alerts, "fault_risk") == [("warning", False)]


def test_a_configured_fault_risk_threshold_wins_over_the_models() -> None:
    stage = AlertStage(AlertSettings(min_hold_s=0.0, fault_risk_probability=0.5))
    stage.model_loaded("fault_risk", {"alarm_probability": 0.97})
    stage.observe(Prediction(T0, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.6))
    alerts = stage.observe(Prediction(T0 + 60, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.6))
    assert _summary(alerts, "fault_risk") == [("warning", True)]


def test_a_stale_prediction_clears_its_alert() -> None:
    engine = _engine(prediction_max_age_s=300.0)
    alerts = _feed(engine, LARGE_DROP_OUTPUT, [0.95, 0.95], step=60.0)
    assert _summary(alerts, "large_drop") == [("info", True)]
    # GIVEN no further prediction (the bus parked: out of the model's scope), samples going on
    alerts = _feed(engine, SOC, [50.0] * 400, start=T0 + 61)
    assert _summary(alerts, "large_drop") == [("info", False)]
    assert alerts[0].ts == pytest.approx(T0 + 361)


# --- persistence of the signal rules ---------------------------------------------------------------------


def test_one_low_soc_reading_looked_at_again_does_not_raise() -> None:
    engine = _engine()
    engine.update(T0, SOC, 9.0)
    # GIVEN no further SOC reading (the BMS went quiet) while other inputs go on for minutes
    assert _feed(engine, CELL_TEMP_MAX, [25.0] * 300, start=T0 + 1) == []
    # WHEN a second reading comes at least 10 s after the first: THEN it is raised, critical at once
    assert _summary(engine.update(T0 + 301, SOC, 9.0), "low_soc") == [("critical", True)]


def test_over_temperature_needs_two_readings_5_s_apart() -> None:
    engine = _engine()
    alerts = _feed(engine, CELL_TEMP_MAX, [46.0, 45.5, 40.0, 46.0, 46.5, 47.0, 47.0, 47.5, 48.0])
    # 46 then 45.5 a second later is not 5 s; 40 restarts; 46 ... 48 over 5 s raises the warning
    assert _summary(alerts, "over_temperature") == [("warning", True)]
    assert alerts[0].ts == T0 + 8


def test_nan_values_are_unknown_and_hold() -> None:
    engine = _engine()
    _feed(engine, SOC, [5.0, 5.0], step=10.0)
    assert _feed(engine, SOC, [math.nan] * 100, start=T0 + 11) == []
    assert engine.active() == {"low_soc": "critical"}


# --- LEDs -------------------------------------------------------------------------------------------------


def _sysfs_led(root: Path, name: str, *, timer: bool = True) -> Path:
    led = root / name
    led.mkdir(parents=True)
    (led / "brightness").write_text("0\n")
    (led / "max_brightness").write_text("255\n")
    (led / "trigger").write_text("[none] timer heartbeat\n" if timer else "[none] heartbeat\n")
    return led


def test_led_patterns_most_urgent_wins_on_a_shared_led() -> None:
    names: Mapping[Severity, str | None] = {"info": None, "warning": "amber", "critical": "amber"}
    assert led_patterns([], names) == {"amber": LedPattern.OFF}
    assert led_patterns(["warning"], names) == {"amber": LedPattern.ON}
    assert led_patterns(["warning", "critical"], names) == {"amber": LedPattern.BLINK}
    split: Mapping[Severity, str | None] = {"info": None, "warning": "amber", "critical": "red"}
    assert led_patterns(["critical"], split) == {"amber": LedPattern.OFF, "red": LedPattern.BLINK}


def test_leds_steady_blinking_and_off_in_a_sysfs_like_tree(tmp_path: Path) -> None:
    amber, red = _sysfs_led(tmp_path, "bus:amber:alert"), _sysfs_led(tmp_path, "bus:red:alert")
    leds = Leds(tmp_path, blink_on_ms=300, blink_off_ms=700)
    leds.show({"bus:amber:alert": LedPattern.ON, "bus:red:alert": LedPattern.BLINK})
    assert (amber / "trigger").read_text() == "none" and (amber / "brightness").read_text() == "255"
    assert (red / "trigger").read_text() == "timer"
    assert (red / "delay_on").read_text() == "300" and (red / "delay_off").read_text() == "700"
    assert not leds.soft_blink
    leds.show({"bus:amber:alert": LedPattern.OFF, "bus:red:alert": LedPattern.OFF})
    assert (amber / "brightness").read_text() == "0"
    assert (red / "trigger").read_text() == "none" and (red / "brightness").read_text() == "0"


def test_the_timer_trigger_is_found_even_after_the_led_was_switched_off(tmp_path: Path) -> None:
    # In this tree a write replaces the file; the kernel's `trigger` always lists what it offers.
    red = _sysfs_led(tmp_path, "red")
    leds = Leds(tmp_path, blink_on_ms=100, blink_off_ms=100)
    leds.show({"red": LedPattern.OFF})
    leds.show({"red": LedPattern.BLINK})
    assert (red / "trigger").read_text() == "timer" and not leds.soft_blink


def test_a_led_without_the_timer_trigger_blinks_in_software(tmp_path: Path) -> None:
    red = _sysfs_led(tmp_path, "red", timer=False)
    leds = Leds(tmp_path, blink_on_ms=100, blink_off_ms=100)
    leds.show({"red": LedPattern.BLINK})
    assert leds.soft_blink == {"red"} and not (red / "delay_on").exists()
    leds.blink_step(False)
    assert (red / "brightness").read_text() == "0"
    leds.blink_step(True)
    assert (red / "brightness").read_text() == "255"
    leds.show({"red": LedPattern.OFF})
    assert not leds.soft_blink and (red / "brightness").read_text() == "0"


def test_a_missing_led_is_logged_once_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    amber = _sysfs_led(tmp_path, "amber")
    leds = Leds(tmp_path, blink_on_ms=100, blink_off_ms=100)
    with caplog.at_level(logging.WARNING, logger="agent.alerts"):
        leds.show({"absent": LedPattern.ON, "amber": LedPattern.ON})
        leds.show({"absent": LedPattern.OFF, "amber": LedPattern.OFF})
    assert [r.getMessage() for r in caplog.records].count(
        f"LED absent not found under {tmp_path}; skipped"
    ) == 1
    assert (amber / "brightness").read_text() == "0"
    assert not (tmp_path / "absent").exists()


# --- the stage --------------------------------------------------------------------------------------------


async def test_stage_publishes_changes_logs_them_and_drives_the_leds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    amber, red = _sysfs_led(tmp_path, "amber"), _sysfs_led(tmp_path, "red", timer=False)
    settings = AlertSettings(
        led_root=tmp_path,
        led_warning="amber",
        led_critical="red",
        min_hold_s=0.0,
        blink_on_ms=20,
        blink_off_ms=20,
    )
    stage = AlertStage(settings)
    inbox: asyncio.Queue[Sample | Prediction] = asyncio.Queue()
    derived: asyncio.Queue[Prediction | Alert] = asyncio.Queue()
    with caplog.at_level(logging.INFO, logger="agent.alerts.driver"):
        task = asyncio.create_task(stage.run(inbox, derived))
        for i, soc in enumerate([30.0, 30.0, 19.0, 19.0]):  # SOC readings 10 s apart: persistence
            inbox.put_nowait(Sample(T0 + 10 * i, SOC, soc, Priority.NORMAL))
        warning = await asyncio.wait_for(derived.get(), 5)
        assert (warning.rule, warning.severity, warning.active) == ("low_soc", "warning", True)  # type: ignore[union-attr]
        await _until(lambda: (amber / "brightness").read_text() == "255")
        inbox.put_nowait(Sample(T0 + 40, SOC, 5.0, Priority.NORMAL))
        inbox.put_nowait(Sample(T0 + 50, SOC, 5.0, Priority.NORMAL))
        critical = await asyncio.wait_for(derived.get(), 5)
        assert (critical.severity, critical.active) == ("critical", True)  # type: ignore[union-attr]
        # the critical LED has no timer trigger: the software blink toggles it
        await _until(lambda: (red / "brightness").read_text() == "255")
        await _until(lambda: (red / "brightness").read_text() == "0")
        await _until(lambda: (amber / "brightness").read_text() == "0")  # the warning was superseded
        stage.stop()
        await asyncio.wait_for(task, 5)
    assert derived.empty(), "no duplicates"
    lines = [r for r in caplog.records if r.name == "agent.alerts.driver"]
    assert [r.getMessage().split(":")[0] for r in lines] == [
        "driver alert low_soc warning raised",
        "driver alert low_soc critical raised",
    ]
    assert lines[1].levelno == logging.CRITICAL
    assert lines[1].alert_rule == "low_soc" and lines[1].alert_severity == "critical"  # type: ignore[attr-defined]
    assert lines[1].alert_active is True and lines[1].alert_value == 5.0  # type: ignore[attr-defined]
    # a stopped agent leaves no LED lit
    assert (red / "brightness").read_text() == "0" and (amber / "brightness").read_text() == "0"


async def test_dm1_alerts_light_the_leds_beside_the_rules_and_go_out_when_the_ecu_falls_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    amber, red = _sysfs_led(tmp_path, "amber"), _sysfs_led(tmp_path, "red")
    settings = AlertSettings(led_root=tmp_path, led_warning="amber", led_critical="red", min_hold_s=0.0)
    stage = AlertStage(settings)
    inbox: asyncio.Queue[AlertInput] = asyncio.Queue()
    derived: asyncio.Queue[Prediction | Alert] = asyncio.Queue()
    # DM1s of engine ECU 0x00 (red stop lamp, SPN 168 FMI 1), real frames through the real decoder
    decoder = Decoder(
        J1939_CATALOG,
        bus="chassis",
        on_dm1=lambda ts, sa, dm1: inbox.put_nowait(Dm1Report(ts, "chassis", sa, dm1)),
    )
    dm1_frame = pgn_id(PGN_DM1, 6, 0x00)
    with caplog.at_level(logging.INFO, logger="agent.alerts.driver"):
        task = asyncio.create_task(stage.run(inbox, derived))
        # GIVEN a low SOC (the rules' warning: amber) and the ECU's DM1 every second (critical: red blinks)
        for i in range(4):
            inbox.put_nowait(Sample(T0 + 10 * i, SOC, 30.0 if i < 2 else 19.0, Priority.NORMAL))
        for i in range(3):
            decoder.process(
                j1939_frame(dm1_frame, dm1_payload(red=1, dtcs=[dtc_bytes(168, 1, 3)]), T0 + 30 + i)
            )
        await _until(lambda: (red / "trigger").read_text() == "timer")
        await _until(lambda: (amber / "brightness").read_text() == "255")
        assert stage.active() == {"low_soc": "warning", "dm1:sa0:spn168:fmi1": "critical"}
        # WHEN the ECU falls silent while the SOC readings go on, past the DM1 timeout (source time)
        for i in range(1, 6):
            inbox.put_nowait(Sample(T0 + 32 + i, SOC, 19.0, Priority.NORMAL))
        # THEN its alert is cleared and the red LED goes out; the amber one stays for the SOC warning
        await _until(lambda: (red / "trigger").read_text() == "none")
        assert (red / "brightness").read_text() == "0" and (amber / "brightness").read_text() == "255"
        assert stage.active() == {"low_soc": "warning"}
        stage.stop()
        await asyncio.wait_for(task, 5)
    published = [(a.rule, a.severity, a.active) for a in _drain(derived) if isinstance(a, Alert)]
    assert published == [
        ("low_soc", "warning", True),
        ("dm1:sa0:spn168:fmi1", "critical", True),
        ("dm1:sa0:spn168:fmi1", "critical", False),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.alerts.driver"]
    assert lines[1].startswith("driver alert dm1:sa0:spn168:fmi1 critical raised: ECU 0x00")
    assert "no DM1 from this ECU for 4.0 s" in lines[2]
    assert stage.stats.raised == 2 and stage.stats.cleared == 1


def _drain(queue: asyncio.Queue[Prediction | Alert]) -> list[Prediction | Alert]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls files the stage writes from worker threads (nothing to wait on but the files themselves)."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # sysfs-like files offer no event
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


# --- time: one outlier changes nothing, a stepped clock is followed ---------------------------------------


def test_a_30_days_ahead_sample_neither_raises_nor_blocks_a_clear() -> None:
    engine = _engine(persistence=False)
    alerts = _feed(engine, CELL_TEMP_MAX, [40.0, 46.0])  # warning raised at T0 + 1
    assert _summary(alerts, "over_temperature") == [("warning", True)]
    # GIVEN one reading stamped 30 days ahead in the middle of the stream (hot, at that)
    assert engine.update(T0 + 2 + 30 * 86_400, CELL_TEMP_MAX, 60.0) == []
    # WHEN the temperature falls back, normally stamped
    alerts = _feed(engine, CELL_TEMP_MAX, [35.0] * 40, start=T0 + 3)
    # THEN the alert clears after its hold time, as it would have without the outlier
    assert _summary(alerts, "over_temperature") == [("warning", False)]
    assert alerts[0].ts == pytest.approx(T0 + 1 + HOLD_S)
    assert engine.time_outliers == 1 and engine.readings.now == T0 + 42


def test_a_clock_stepped_back_an_hour_keeps_hold_times_and_predictions_fresh() -> None:
    engine = _engine(persistence=False)
    _feed(engine, CELL_TEMP_MAX, [46.0] * 10)  # warning raised at T0
    engine.update(T0 + 9, LARGE_DROP_OUTPUT, 0.95)  # and an info from a prediction
    assert set(engine.active()) == {"over_temperature", "large_drop"}
    # WHEN the stamps step back by an hour and stay there, the temperature normal again
    back = T0 + 10 - 3600
    alerts = _feed(engine, CELL_TEMP_MAX, [35.0] * 60, start=back)
    # THEN it is a step: the hold time runs on the new stamps and the alert clears within it
    cleared = [a for a in alerts if a.rule == "over_temperature"]
    assert [(a.severity, a.active) for a in cleared] == [("warning", False)]
    assert back <= cleared[0].ts <= back + HOLD_S
    assert engine.clock.steps == 1
    # AND the prediction seen just before the step is still fresh (not 1 h in the future, not stale)
    assert "large_drop" in engine.active()


# --- readings: "as of" a moment -------------------------------------------------------------------------


def test_readings_answer_as_of_a_moment_in_time_order_and_forget_the_distant_past() -> None:
    readings = Readings(prediction_max_age_s=300.0, history_s=100.0)
    for ts, amps in ((T0, 10.0), (T0 + 2, 30.0), (T0 + 1, 20.0)):  # one stamp a little behind
        readings.set(ts, PACK_CURRENT, amps)
    assert readings.as_of(PACK_CURRENT, T0 + 1.5, max_age_s=5.0) == 20.0
    assert readings.as_of(PACK_CURRENT, T0 - 1, max_age_s=5.0) is None  # nothing before
    assert readings.as_of(PACK_CURRENT, T0 + 9, max_age_s=5.0) is None  # heard 7 s before: stale
    assert readings.latest(PACK_CURRENT) == (T0 + 2, 30.0)
    readings.set(T0 + 500, PACK_CURRENT, 40.0)
    readings.set(T0 + 501, SOC, math.nan)
    # the newest reading before the cut is kept: it answers for the cut itself
    assert readings.as_of(PACK_CURRENT, T0 + 401, max_age_s=1000.0) == 30.0
    assert readings.as_of(PACK_CURRENT, T0 + 1.5, max_age_s=5.0) is None
    assert readings.latest(SOC) is None and readings.as_of(SOC, T0 + 502, 10.0) is None  # NaN: unknown
