"""Driver alerts: pure threshold rules with hysteresis, hold time and de-duplication, and their outputs.

    samples + predictions ─► AlertEngine (pure, source time) ─► Alert on every change
                                                                  ├─► `derived` (buffered, published at once)
                                                                  ├─► one structured driver log line
                                                                  └─► LED class devices (agent/leds.py)

A rule turns the latest readings into one number and compares it with its levels (e.g. warning, critical).
A level is raised when the number reaches `raise_at` and held until it passes back beyond `clear_at`
(hysteresis); escalation is immediate, but an alert stays at least `min_hold_s` of source time before it
drops a level or clears. Only changes are emitted: a condition that persists is one alert, not a stream.

Readings a rule cannot judge (a signal never seen, cell imbalance under load) hold the rule where it is;
predictions older than `prediction_max_age_s` count as absent, which clears a prediction rule, so a model
that stopped predicting (out of scope, refused) does not keep an alert up.

"Now" (for hold times, stale predictions and the sweep) is the input stream's own
(`agent.clock.StreamClock`): an input stamped far from it (beyond `MAX_JUMP_S`, e.g. +30 days) is left out
and counted (`AlertEngine.time_outliers`), so it can neither raise an alert nor freeze a hold timer. Stamps
that stay on a new time base are a step: forward, it is a gap (holds elapse, predictions go stale); back (a
clock stepped back by NTP), readings and hold timers are re-based onto the new stamps.

LEDs: steady for warning and info, blinking for critical (see `agent.leds`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.clock import StreamClock
from agent.leds import Leds, led_patterns
from agent.records import Alert, Prediction, Sample, Severity
from agent.settings import AlertSettings
from protocols.predictions import FAULT_RISK_MODEL, P_FAULT, P_LARGE_DROP, SOC_DROP_PP
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

log = logging.getLogger(__name__)
driver_log = logging.getLogger("agent.alerts.driver")


# Prediction outputs the rules read: the names agent.inference gives them (protocols.predictions).
SOC_DROP_OUTPUT: Final = SOC_DROP_PP
LARGE_DROP_OUTPUT: Final = P_LARGE_DROP
FAULT_RISK_OUTPUT: Final = P_FAULT
FAULT_RISK_THRESHOLD_KEY: Final = "alarm_probability"

SWEEP_EVERY_S: Final = (
    1.0  # all rules are re-judged at least this often (source time): hold times, stale inputs
)
CONSUME_BATCH: Final = 2_000  # inputs judged between two yields to the event loop
MIN_PACK_VOLTAGE_V: Final = 50.0  # below this the Ω/V ratio means nothing (pack sensor missing or reset)


# --- the pure core -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    severity: Severity
    raise_at: float
    clear_at: float


class Readings:
    """The latest value and source time of every signal and prediction output seen."""

    def __init__(self, prediction_max_age_s: float) -> None:
        self._values: dict[str, tuple[float, float]] = {}
        self._max_age_s = prediction_max_age_s
        self.now = -math.inf

    def set(self, ts: float, name: str, value: float) -> None:
        self._values[name] = (ts, value)
        self.now = max(self.now, ts)

    def shift(self, by_s: float) -> None:
        """Re-base every reading by `by_s` seconds (the stream's clock stepped and stayed)."""
        self._values = {name: (ts + by_s, value) for name, (ts, value) in self._values.items()}
        self.now += by_s

    def signal(self, name: str) -> float | None:
        got = self._values.get(name)
        return None if got is None or math.isnan(got[1]) else got[1]

    def prediction(self, output: str) -> float | None:
        got = self._values.get(output)
        if got is None or math.isnan(got[1]) or self.now - got[0] > self._max_age_s:
            return None
        return got[1]


Measure = Callable[[Readings], "float | None"]


@dataclass(slots=True)
class Rule:
    """One alert: a measure of the readings, compared with levels (least urgent first)."""

    name: str
    inputs: frozenset[str]
    measure: Measure
    levels: tuple[Level, ...]
    above: bool  # True: raised when the measure is at or above `raise_at`; False: at or below
    unit: str
    text: str  # what the driver is told, e.g. "battery state of charge low"
    clear_when_unknown: bool = False  # predictions: an absent one clears; signals: an absent one holds

    def target(self, x: float | None, current: int) -> int:
        """The level index the measure `x` asks for, given the current one (-1: none)."""
        if x is None:
            return -1 if self.clear_when_unknown else current
        best = -1
        for i, level in enumerate(self.levels):
            reached = x >= level.raise_at if self.above else x <= level.raise_at
            holding = x > level.clear_at if self.above else x < level.clear_at
            if reached or (current >= i and holding):
                best = i
        return best


@dataclass(slots=True)
class _RuleState:
    level: int = -1
    since: float = -math.inf
    value: float = math.nan


class AlertEngine:
    """Feed readings with `update`; get the `Alert`s that changed. Pure: no I/O, no wall clock."""

    def __init__(self, rules: Iterable[Rule], *, min_hold_s: float, prediction_max_age_s: float) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self.min_hold_s = min_hold_s
        self.readings = Readings(prediction_max_age_s)
        self._state = {name: _RuleState() for name in self.rules}
        self._by_input: dict[str, list[Rule]] = {}
        for rule in self.rules.values():
            for name in rule.inputs:
                self._by_input.setdefault(name, []).append(rule)
        self._last_sweep = -math.inf
        self.clock = StreamClock()
        self.time_outliers = 0  # inputs stamped far from the stream's now, left out

    def set_levels(self, rule: str, levels: tuple[Level, ...]) -> None:
        """Change a rule's thresholds (the fault-risk model's own, when it is loaded)."""
        self.rules[rule].levels = levels

    def active(self) -> dict[str, Severity]:
        """Rule → severity of every raised alert."""
        return {
            name: self.rules[name].levels[state.level].severity
            for name, state in self._state.items()
            if state.level >= 0
        }

    def update(self, ts: float, name: str, value: float) -> list[Alert]:
        seen = self.clock.judge(ts)
        if not seen.plausible:
            self.time_outliers += 1
            return []
        if seen.stepped_s is not None and seen.stepped_s < 0:
            self._shift(seen.stepped_s)
        self.readings.set(ts, name, value)
        now = self.readings.now
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            rules: Iterable[Rule] = self.rules.values()
        else:
            rules = self._by_input.get(name, ())
        changes = [self._judge(rule, now) for rule in rules]
        return [alert for alert in changes if alert is not None]

    def _shift(self, by_s: float) -> None:
        self.readings.shift(by_s)
        for state in self._state.values():
            state.since += by_s
        self._last_sweep += by_s

    def _judge(self, rule: Rule, now: float) -> Alert | None:
        state = self._state[rule.name]
        if state.level >= len(rule.levels):  # levels replaced by fewer ones
            state.level = len(rule.levels) - 1
        x = rule.measure(self.readings)
        target = rule.target(x, state.level)
        if target == state.level or (target < state.level and now - state.since < self.min_hold_s):
            return None
        previous = state.level
        state.level, state.since = target, now
        state.value = math.nan if x is None else x
        if target >= 0:
            level = rule.levels[target]
            return Alert(now, rule.name, level.severity, True, state.value, _message(rule, level, x))
        gone = rule.levels[previous]
        return Alert(now, rule.name, gone.severity, False, state.value, _message(rule, gone, x))


def _message(rule: Rule, level: Level, x: float | None) -> str:
    """What the driver and the office read: "battery state of charge low: 9.5 % (critical at <= 10 %)"."""
    unit = f" {rule.unit}" if rule.unit else ""
    shown = "unknown" if x is None else f"{x:.3g}{unit}"
    relation = ">=" if rule.above else "<="
    return f"{rule.text}: {shown} ({level.severity} at {relation} {level.raise_at:g}{unit})"


# --- the rules ---------------------------------------------------------------------------------------------


def _signal(name: str) -> Measure:
    return lambda r: r.signal(name)


def _prediction(output: str) -> Measure:
    return lambda r: r.prediction(output)


def _predicted_soc(r: Readings) -> float | None:
    soc, drop = r.signal(SOC), r.prediction(SOC_DROP_OUTPUT)
    return None if soc is None or drop is None else soc - drop


def _insulation_ohm_per_v(r: Readings) -> float | None:
    kohm, volts = r.signal(INSULATION), r.signal(PACK_VOLTAGE)
    if kohm is None or volts is None or volts < MIN_PACK_VOLTAGE_V:
        return None
    return kohm * 1000.0 / volts


def _cell_spread_mv(settings: AlertSettings) -> Measure:
    def measure(r: Readings) -> float | None:
        vmax, vmin = r.signal(CELL_V_MAX), r.signal(CELL_V_MIN)
        amps, soc = r.signal(PACK_CURRENT), r.signal(SOC)
        if vmax is None or vmin is None or amps is None or soc is None:
            return None
        if abs(amps) > settings.cell_imbalance_max_current_a:
            return None  # under load the spread is mostly internal resistance, not imbalance
        if not settings.cell_imbalance_soc_min_pct <= soc <= settings.cell_imbalance_soc_max_pct:
            return None  # at the knees of the LFP curve a few mAh of mismatch read as 100 mV
        return (vmax - vmin) * 1000.0

    return measure


def _two_levels(warning: float, critical: float, hysteresis: float, *, above: bool) -> tuple[Level, Level]:
    sign = -1.0 if above else 1.0
    return (
        Level("warning", warning, warning + sign * hysteresis),
        Level("critical", critical, critical + sign * hysteresis),
    )


def fault_risk_levels(probability: float, hysteresis: float) -> tuple[Level, ...]:
    return (Level("warning", probability, max(0.0, probability - hysteresis)),)


def build_rules(settings: AlertSettings) -> list[Rule]:
    """Every rule of the agent, thresholds from `settings` (see `AlertSettings` for their sources)."""
    s = settings
    ratio_w, ratio_c = s.insulation_warning_ohm_per_v, s.insulation_critical_ohm_per_v
    fault_p = s.fault_risk_probability
    rules = [
        Rule(
            "low_soc",
            frozenset({SOC}),
            _signal(SOC),
            _two_levels(s.soc_low_warning_pct, s.soc_low_critical_pct, s.soc_hysteresis_pp, above=False),
            above=False,
            unit="%",
            text="battery state of charge low",
        ),
        Rule(
            "soc_reserve",
            frozenset({SOC, SOC_DROP_OUTPUT}),
            _predicted_soc,
            (Level("warning", s.soc_reserve_pct, s.soc_reserve_pct + s.soc_hysteresis_pp),),
            above=False,
            unit="%",
            text="state of charge in 60 minutes predicted below reserve",
            clear_when_unknown=True,
        ),
        Rule(
            "large_drop",
            frozenset({LARGE_DROP_OUTPUT}),
            _prediction(LARGE_DROP_OUTPUT),
            (
                Level(
                    "info",
                    s.large_drop_probability,
                    max(0.0, s.large_drop_probability - s.probability_hysteresis),
                ),
            ),
            above=True,
            unit="",
            text="probability of a large state-of-charge drop within 60 minutes",
            clear_when_unknown=True,
        ),
        Rule(
            "fault_risk",
            frozenset({FAULT_RISK_OUTPUT}),
            _prediction(FAULT_RISK_OUTPUT),
            fault_risk_levels(fault_p, s.probability_hysteresis) if fault_p is not None else (),
            above=True,
            unit="",
            text="probability of a battery fault or derate within 30 minutes",
            clear_when_unknown=True,
        ),
        Rule(
            "derate",
            frozenset({DERATED}),
            _signal(DERATED),
            (Level("warning", 0.5, 0.5),),
            above=True,
            unit="",
            text="battery power derated",
        ),
        Rule(
            "over_temperature",
            frozenset({CELL_TEMP_MAX}),
            _signal(CELL_TEMP_MAX),
            _two_levels(s.cell_temp_warning_c, s.cell_temp_critical_c, s.cell_temp_hysteresis_k, above=True),
            above=True,
            unit="degC",
            text="battery cell temperature high",
        ),
        Rule(
            "cell_imbalance",
            frozenset({CELL_V_MAX, CELL_V_MIN, PACK_CURRENT, SOC}),
            _cell_spread_mv(s),
            _two_levels(
                s.cell_imbalance_warning_mv,
                s.cell_imbalance_critical_mv,
                s.cell_imbalance_hysteresis_mv,
                above=True,
            ),
            above=True,
            unit="mV",
            text="battery cell voltage imbalance",
        ),
        Rule(
            "insulation_low",
            frozenset({INSULATION, PACK_VOLTAGE}),
            _insulation_ohm_per_v,
            (
                Level("warning", ratio_w, ratio_w * (1.0 + s.insulation_hysteresis)),
                Level("critical", ratio_c, ratio_c * (1.0 + s.insulation_hysteresis)),
            ),
            above=False,
            unit="Ohm/V",
            text="high-voltage insulation resistance low",
        ),
    ]
    for flag in FAULT_FLAGS:
        kind = flag.rsplit(".", 1)[-1]
        rules.append(
            Rule(
                f"bms_fault:{kind}",
                frozenset({flag}),
                _signal(flag),
                (Level("critical", 0.5, 0.5),),
                above=True,
                unit="",
                text=f"battery management system fault {kind}",
            )
        )
    return rules


# --- the async shell ---------------------------------------------------------------------------------------


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

    def observe(self, item: Sample | Prediction) -> list[Alert]:
        """One input through the rules (pure apart from counting)."""
        self.stats.inputs += 1
        if isinstance(item, Prediction):
            return self.engine.update(item.ts, item.output, item.value)
        return self.engine.update(item.ts, item.signal, item.value)

    async def run(
        self, inbox: asyncio.Queue[Sample | Prediction], derived: asyncio.Queue[Prediction | Alert]
    ) -> None:
        await asyncio.to_thread(self.leds.show, led_patterns((), self.led_names))
        try:
            async with asyncio.TaskGroup() as group:
                blinker = group.create_task(self._soft_blink(), name="alerts:blink")
                await self._consume(inbox, derived)
                blinker.cancel()
        finally:
            self.leds.all_off()  # a stopped agent cannot keep an LED truthful

    async def _consume(
        self, inbox: asyncio.Queue[Sample | Prediction], derived: asyncio.Queue[Prediction | Alert]
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
        patterns = led_patterns(self.engine.active().values(), self.led_names)
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
