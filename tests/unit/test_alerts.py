"""agent.alerts: every rule raises and clears with hysteresis, once per change, after its hold time; LEDs
in a temporary directory laid out like /sys/class/leds."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from agent.alerts import (
    FAULT_RISK_OUTPUT,
    LARGE_DROP_OUTPUT,
    SOC_DROP_OUTPUT,
    AlertEngine,
    AlertStage,
    build_rules,
)
from agent.leds import LedPattern, Leds, led_patterns
from agent.records import Alert, Prediction, Sample, Severity
from agent.settings import AlertSettings
from protocols.catalog import Priority
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

T0 = 1_700_000_000.0
HOLD_S = 30.0


def _engine(**overrides: object) -> AlertEngine:
    settings = AlertSettings(min_hold_s=HOLD_S, **overrides)  # type: ignore[arg-type]
    return AlertEngine(
        build_rules(settings),
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
    engine = _engine()
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
    engine = _engine()
    alerts = _feed(engine, CELL_TEMP_MAX, [40.0, 46.0])  # warning at 45 degC
    assert _summary(alerts, "over_temperature") == [("warning", True)]
    # WHEN the temperature falls back below the clear threshold (42 degC) 5 s later
    alerts = _feed(engine, CELL_TEMP_MAX, [35.0] * 40, start=T0 + 6)
    # THEN it clears only once the alert has been up for HOLD_S of source time
    assert len(alerts) == 1 and not alerts[0].active
    assert alerts[0].ts == pytest.approx(T0 + 1 + HOLD_S)


def test_escalation_is_immediate_even_within_the_hold_time() -> None:
    engine = _engine()
    alerts = _feed(engine, CELL_TEMP_MAX, [46.0, 51.0])
    assert _summary(alerts, "over_temperature") == [("warning", True), ("critical", True)]


def test_the_hold_time_is_source_time_not_wall_clock() -> None:
    engine = _engine()
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
    # clearing needs 20 % above each threshold: critical below 78 kOhm, warning below 390 kOhm
    alerts = _feed(engine, INSULATION, [75.0, 80.0, 380.0, 400.0], start=T0 + 100, step=40.0)
    assert _summary(alerts, "insulation_low") == [("warning", True), ("warning", False)]


def test_insulation_without_a_pack_voltage_holds() -> None:
    engine = _engine()
    assert _feed(engine, INSULATION, [10.0, 10.0]) == []


def test_cell_imbalance_is_judged_near_rest_on_the_flat_part_of_the_curve() -> None:
    engine = _engine()
    engine.update(T0, SOC, 60.0)
    engine.update(T0, PACK_CURRENT, 300.0)  # under load: the spread is internal resistance
    engine.update(T0, CELL_V_MIN, 3.20)
    assert _feed(engine, CELL_V_MAX, [3.30, 3.31], start=T0 + 1) == []
    alerts = engine.update(T0 + 3, PACK_CURRENT, 5.0)  # near rest: 110 mV is an imbalance
    assert _summary(alerts, "cell_imbalance") == [("critical", True)]
    assert alerts[0].value == pytest.approx(110.0)
    # a full pack (the LFP knee) says nothing, and holds the alert where it is
    engine.update(T0 + 100, SOC, 98.0)
    assert _feed(engine, CELL_V_MAX, [3.21] * 3, start=T0 + 101) == []
    alerts = engine.update(T0 + 200, SOC, 60.0)  # back on the plateau: 10 mV, cleared
    assert _summary(alerts, "cell_imbalance") == [("critical", False)]


def test_cell_imbalance_warning_level() -> None:
    engine = _engine()
    for name, value in ((SOC, 50.0), (PACK_CURRENT, 0.0), (CELL_V_MIN, 3.25)):
        engine.update(T0, name, value)
    assert _summary(_feed(engine, CELL_V_MAX, [3.27, 3.31, 3.32]), "cell_imbalance") == [("warning", True)]


def test_predicted_soc_below_the_reserve() -> None:
    engine = _engine(soc_reserve_pct=15.0)
    engine.update(T0, SOC, 30.0)
    assert engine.update(T0 + 1, SOC_DROP_OUTPUT, 10.0) == []  # 20 % in an hour: fine
    alerts = engine.update(T0 + 61, SOC_DROP_OUTPUT, 16.0)  # 14 % in an hour: below the reserve
    assert _summary(alerts, "soc_reserve") == [("warning", True)]
    assert alerts[0].value == pytest.approx(14.0)
    assert engine.update(T0 + 121, SOC_DROP_OUTPUT, 14.0) == []  # 16 %: inside the 2 pp band
    assert _summary(engine.update(T0 + 181, SOC_DROP_OUTPUT, 12.0), "soc_reserve") == [("warning", False)]


def test_large_drop_probability_is_info() -> None:
    engine = _engine(large_drop_probability=0.8)
    alerts = _feed(engine, LARGE_DROP_OUTPUT, [0.5, 0.85, 0.75, 0.65], step=60.0)
    assert _summary(alerts, "large_drop") == [("info", True), ("info", False)]


def test_fault_risk_uses_the_models_threshold_once_loaded() -> None:
    stage = AlertStage(AlertSettings(min_hold_s=0.0))
    # no model yet: no threshold, no alert
    assert stage.observe(Prediction(T0, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.99)) == []
    stage.model_loaded("fault_risk", {"alarm_probability": 0.97, "window_s": 1800.0})
    alerts = stage.observe(Prediction(T0 + 60, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.98))
    assert _summary(alerts, "fault_risk") == [("warning", True)]
    assert "(warning at >= 0.97)" in alerts[0].message
    assert stage.observe(Prediction(T0 + 120, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.9)) == []
    alerts = stage.observe(Prediction(T0 + 180, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.5))
    assert _summary(alerts, "fault_risk") == [("warning", False)]


def test_a_configured_fault_risk_threshold_wins_over_the_models() -> None:
    stage = AlertStage(AlertSettings(min_hold_s=0.0, fault_risk_probability=0.5))
    stage.model_loaded("fault_risk", {"alarm_probability": 0.97})
    alerts = stage.observe(Prediction(T0, "fault_risk", "1", FAULT_RISK_OUTPUT, 0.6))
    assert _summary(alerts, "fault_risk") == [("warning", True)]


def test_a_stale_prediction_clears_its_alert() -> None:
    engine = _engine(prediction_max_age_s=300.0)
    assert _summary(engine.update(T0, LARGE_DROP_OUTPUT, 0.95), "large_drop") == [("info", True)]
    # GIVEN no further prediction (the bus parked: out of the model's scope), samples going on
    alerts = _feed(engine, SOC, [50.0] * 400, start=T0 + 1)
    assert _summary(alerts, "large_drop") == [("info", False)]
    assert alerts[0].ts == pytest.approx(T0 + 301)


def test_nan_values_are_unknown_and_hold() -> None:
    engine = _engine()
    _feed(engine, SOC, [5.0])
    assert _feed(engine, SOC, [math.nan] * 100, start=T0 + 1) == []
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
        for i, soc in enumerate([30.0, 30.0, 19.0, 19.0]):
            inbox.put_nowait(Sample(T0 + i, SOC, soc, Priority.NORMAL))
        warning = await asyncio.wait_for(derived.get(), 5)
        assert (warning.rule, warning.severity, warning.active) == ("low_soc", "warning", True)  # type: ignore[union-attr]
        await _until(lambda: (amber / "brightness").read_text() == "255")
        inbox.put_nowait(Sample(T0 + 10, SOC, 5.0, Priority.NORMAL))
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


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls files the stage writes from worker threads (nothing to wait on but the files themselves)."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # sysfs-like files offer no event
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


# --- time: one outlier changes nothing, a stepped clock is followed ---------------------------------------


def test_a_30_days_ahead_sample_neither_raises_nor_blocks_a_clear() -> None:
    engine = _engine()
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
    engine = _engine()
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
