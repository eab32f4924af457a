"""Driver alerts, the stage: samples, predictions and DM1 reports in, alert changes out to the buffer, log
and LEDs.

    samples + predictions ─► AlertEngine (pure, source time) ──┐
    DM1 reports (per bus) ─► DtcAlerts (agent.diagnostics) ────┴─► Alert on every change
                                                               ├─► `derived` (buffered, published at once)
                                                               ├─► one structured driver log line
                                                               └─► LED class devices (agent/leds.py)

What a rule reads, which readings belong together and how long a condition must persist before it is
raised are in `agent.alert_rules`; levels, hysteresis, persistence and hold times in `agent.alert_engine`.
DTC alerts (one per active diagnostic trouble code of each ECU, cleared when the ECU no longer reports
it or stops sending DM1) are in `agent.diagnostics`; the stage expires them on its own source time.

LEDs: one place (`AlertStage.active`) decides them from every active alert, whatever its source: steady for
warning and info, blinking for critical (see `agent.leds`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.alert_engine import SWEEP_EVERY_S, AlertEngine, Evidence, Level, Readings, Rule
from agent.alert_rules import (
    FAULT_RISK_OUTPUT,
    LARGE_DROP_OUTPUT,
    SOC_DROP_OUTPUT,
    build_rules,
    fault_risk_levels,
)
from agent.diagnostics import Dm1Report, DtcAlerts
from agent.leds import Leds, led_patterns
from agent.records import Alert, Prediction, Sample, Severity
from agent.settings import AlertSettings
from protocols.predictions import FAULT_RISK_MODEL

__all__ = [  # what this module offered before the engine and the rules had their own modules
    "FAULT_RISK_OUTPUT",
    "LARGE_DROP_OUTPUT",
    "SOC_DROP_OUTPUT",
    "AlertEngine",
    "AlertInput",
    "AlertStage",
    "AlertStats",
    "Evidence",
    "Level",
    "Readings",
    "Rule",
    "build_rules",
    "fault_risk_levels",
    "log_alert",
]

log = logging.getLogger(__name__)
driver_log = logging.getLogger("agent.alerts.driver")


AlertInput = Sample | Prediction | Dm1Report
FAULT_RISK_THRESHOLD_KEY: Final = "alarm_probability"
CONSUME_BATCH: Final = 2_000  # inputs judged between two yields to the event loop


def log_alert(alert: Alert) -> None:
    """The driver log line: one stable message, the details also as fields (journald: ALERT_RULE=, ...)."""
    level = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}.get(
        alert.severity, logging.WARNING
    )
    if not alert.active:
        level = logging.INFO
    driver_log.log(
        level,
        "driver alert %s %s %s: %s",
        alert.rule,
        alert.severity,
        "raised" if alert.active else "cleared",
        alert.message,
        extra={
            "alert_rule": alert.rule,
            "alert_severity": alert.severity,
            "alert_active": alert.active,
            "alert_value": alert.value,
            "alert_ts": alert.ts,
        },
    )


@dataclass
class AlertStats:
    raised: int = 0
    cleared: int = 0
    inputs: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)


class AlertStage:
    """Consumes samples and predictions, publishes alert changes to `derived`, the log and the LEDs."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.engine = AlertEngine(
            build_rules(settings),
            min_hold_s=settings.min_hold_s,
            prediction_max_age_s=settings.prediction_max_age_s,
        )
        self.led_names: dict[Severity, str | None] = {
            "info": settings.led_info,
            "warning": settings.led_warning,
            "critical": settings.led_critical,
        }
        self.leds = Leds(
            settings.led_root, blink_on_ms=settings.blink_on_ms, blink_off_ms=settings.blink_off_ms
        )
        self.stats = AlertStats()
        self.dtcs: dict[str, DtcAlerts] = {}  # bus → its DTC alerts
        self._dtcs_swept = -math.inf  # stream time of the last DTC expiry sweep
        self._stop = asyncio.Event()
        self._leds_changed = asyncio.Event()

    def model_loaded(self, model: str, thresholds: Mapping[str, float]) -> None:
        """The fault-risk rule takes its threshold from the model's metadata unless the settings fix it."""
        threshold = thresholds.get(FAULT_RISK_THRESHOLD_KEY)
        if (
            model == FAULT_RISK_MODEL
            and threshold is not None
            and self.settings.fault_risk_probability is None
        ):
            self.engine.set_levels(
                "fault_risk", fault_risk_levels(threshold, self.settings.probability_hysteresis)
            )

    def stop(self) -> None:
        self._stop.set()

    def dtc_alerts(self, bus: str) -> DtcAlerts:
        """The DTC alerts of `bus` (a resumed replay warms them up with the DM1s it skips)."""
        tracker = self.dtcs.get(bus)
        if tracker is None:
            tracker = self.dtcs[bus] = DtcAlerts()
        return tracker

    def active(self) -> dict[str, Severity]:
        """Rule → severity of every raised alert: the rules' and every bus's DTCs."""
        active = self.engine.active()
        for tracker in self.dtcs.values():
            active.update(tracker.active())
        return active

    def observe(self, item: AlertInput) -> list[Alert]:
        """One input through the rules, or a DM1 through its bus's DTC alerts (pure apart from counting)."""
        self.stats.inputs += 1
        if isinstance(item, Dm1Report):
            tracker = self.dtc_alerts(item.bus)
            changes = tracker.observe(item.ts, item.source, item.dm1)
            return changes + tracker.expire(self.engine.readings.now)  # the bus's other ECUs
        if isinstance(item, Prediction):
            changes = self.engine.update(item.ts, item.output, item.value)
        else:
            changes = self.engine.update(item.ts, item.signal, item.value)
        now = self.engine.readings.now
        if self.dtcs and abs(now - self._dtcs_swept) >= SWEEP_EVERY_S:  # abs: a clock stepped back
            self._dtcs_swept = now
            for tracker in self.dtcs.values():
                changes += tracker.expire(now)
        return changes

    async def run(self, inbox: asyncio.Queue[AlertInput], derived: asyncio.Queue[Prediction | Alert]) -> None:
        await asyncio.to_thread(self.leds.show, led_patterns((), self.led_names))
        try:
            async with asyncio.TaskGroup() as group:
                blinker = group.create_task(self._soft_blink(), name="alerts:blink")
                await self._consume(inbox, derived)
                blinker.cancel()
        finally:
            self.leds.all_off()  # a stopped agent cannot keep an LED truthful

    async def _consume(
        self, inbox: asyncio.Queue[AlertInput], derived: asyncio.Queue[Prediction | Alert]
    ) -> None:
        while True:
            if self._stop.is_set() and inbox.empty():
                return
            try:
                first = await asyncio.wait_for(inbox.get(), timeout=0.5)
            except TimeoutError:
                continue
            changes: list[Alert] = self.observe(first)
            for _ in range(CONSUME_BATCH - 1):  # then yield to the loop
                if inbox.empty():
                    break
                changes += self.observe(inbox.get_nowait())
            if changes:
                await self._publish(changes, derived)

    async def _publish(self, changes: Sequence[Alert], derived: asyncio.Queue[Prediction | Alert]) -> None:
        for alert in changes:
            log_alert(alert)
            if alert.active:
                self.stats.raised += 1
            else:
                self.stats.cleared += 1
            self.stats.by_rule[alert.rule] = self.stats.by_rule.get(alert.rule, 0) + 1
            await derived.put(alert)
        patterns = led_patterns(self.active().values(), self.led_names)
        await asyncio.to_thread(self.leds.show, patterns)
        if self.leds.soft_blink:
            self._leds_changed.set()

    async def _soft_blink(self) -> None:
        """Blinks the LEDs that have no `timer` trigger by writing `brightness` on and off."""
        on = True
        while True:
            if not self.leds.soft_blink:
                self._leds_changed.clear()
                await self._leds_changed.wait()
                on = True
            await asyncio.to_thread(self.leds.blink_step, on)
            await asyncio.sleep((self.settings.blink_on_ms if on else self.settings.blink_off_ms) / 1000.0)
            on = not on
