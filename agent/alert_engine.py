"""The pure core of the driver alerts: readings that belong together, levels with hysteresis and persistence.

    samples + predictions ─► Readings (recent history, source time) ─► Rule.measure ─► Evidence | None
                                                                         └─► AlertEngine: levels ─► Alert

A rule turns readings into `Evidence`: one number and the source time it describes. A rule that combines
signals builds its evidence only from readings that belong together (see `agent.alert_rules`): the inputs
of one moment within a coherence window of each other, a slow context signal "as of" that moment and not
older than its staleness limit. When they do not belong together the rule has no evidence (None) and holds
where it is; predictions older than `prediction_max_age_s` count as absent, which clears a prediction rule.

Levels (least urgent first): level i is *reached* at `raise_at` and *released* beyond `clear_at`
(hysteresis). A level is raised only when evidence spanning the rule's `raise_after_s` of source time all
reached it (persistence, as a BMS debounces an alarm): the first such evidence starts the count, each new
one that does not reach it restarts it, and a later one at least `raise_after_s` after the first confirms.
Dropping a level is the same with `clear_after_s` on the released side, and never before the alert has been
up `min_hold_s` of stream time. Evidence counts once: re-judging the same readings (the sweep every second,
another input arriving) neither confirms nor restarts anything, so a reading that stops coming cannot raise
an alert by being looked at again. Only changes are emitted: a condition that persists is one alert.

"Now" (for hold times, stale predictions and the sweep) is the input stream's own (`agent.clock.StreamClock`):
an input stamped far from it (beyond `MAX_JUMP_S`, e.g. +30 days) is left out and counted
(`AlertEngine.time_outliers`), so it can neither raise an alert nor freeze a hold timer. Stamps that stay on
a new time base are a step: forward, it is a gap (holds elapse, predictions go stale); back (a clock stepped
back by NTP), readings, evidence times and hold timers are re-based onto the new stamps.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from agent.clock import StreamClock
from agent.records import Alert, Severity

SWEEP_EVERY_S: Final = 1.0  # all rules are re-judged at least this often (source time): holds, stale inputs
HISTORY_S: Final = 600.0  # readings kept per input for "as of" look-ups (beyond every staleness limit)


@dataclass(frozen=True, slots=True)
class Level:
    severity: Severity
    raise_at: float
    clear_at: float


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a rule measured, and the source time of the readings it measured it from."""

    value: float
    ts: float


class Readings:
    """Recent readings (source time, value) of every input the rules read, oldest first per input."""

    def __init__(self, prediction_max_age_s: float, history_s: float = HISTORY_S) -> None:
        self._history: dict[str, deque[tuple[float, float]]] = {}
        self._max_age_s = prediction_max_age_s
        self._history_s = history_s
        self.now = -math.inf

    def set(self, ts: float, name: str, value: float) -> None:
        self.advance(ts)
        history = self._history.setdefault(name, deque())
        if not history or ts >= history[-1][0]:
            history.append((ts, value))
        else:  # a stamp a little behind this input's newest (another source, a replay): keep time order
            history.insert(bisect.bisect_right(history, ts, key=_ts), (ts, value))
        cut = self.now - self._history_s
        while len(history) > 1 and history[1][0] <= cut:  # the one before the cut answers "as of" the cut
            history.popleft()

    def advance(self, ts: float) -> None:
        """An input no rule reads: it only moves "now"."""
        self.now = max(self.now, ts)

    def shift(self, by_s: float) -> None:
        """Re-base every reading by `by_s` seconds (the stream's clock stepped and stayed)."""
        self._history = {
            name: deque((ts + by_s, value) for ts, value in history)
            for name, history in self._history.items()
        }
        self.now += by_s

    def latest(self, name: str) -> tuple[float, float] | None:
        """(source time, value) of the newest reading; None if none, or if the newest is unknown (NaN)."""
        history = self._history.get(name)
        if not history or math.isnan(history[-1][1]):
            return None
        return history[-1]

    def signal(self, name: str) -> float | None:
        got = self.latest(name)
        return None if got is None else got[1]

    def as_of(self, name: str, ts: float, max_age_s: float) -> float | None:
        """The value `name` had at `ts`: its newest reading at or before `ts`, unless that is older than
        `max_age_s` (the signal had gone quiet: stale) or unknown (NaN)."""
        history = self._history.get(name)
        if not history:
            return None
        i = bisect.bisect_right(history, ts, key=_ts) - 1
        if i < 0:
            return None
        seen, value = history[i]
        if ts - seen > max_age_s or math.isnan(value):
            return None
        return value

    def prediction(self, output: str) -> tuple[float, float] | None:
        """(source time, value) of the newest prediction, unless older than `prediction_max_age_s`."""
        got = self.latest(output)
        if got is None or self.now - got[0] > self._max_age_s:
            return None
        return got


def _ts(reading: tuple[float, float]) -> float:
    return reading[0]


Measure = Callable[[Readings], "Evidence | None"]


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
    raise_after_s: float = 0.0  # evidence reaching a level must span this long before it is raised
    clear_after_s: float = 0.0  # ... and evidence releasing it this long before it drops

    def reached(self, x: float, level: Level) -> bool:
        return x >= level.raise_at if self.above else x <= level.raise_at

    def released(self, x: float, level: Level) -> bool:
        return x <= level.clear_at if self.above else x >= level.clear_at


@dataclass(slots=True)
class _RuleState:
    level: int = -1
    since: float = -math.inf  # stream time of the last change (for `min_hold_s`)
    value: float = math.nan
    evidence: Evidence | None = None  # the newest evidence counted
    reached_since: list[float | None] = field(default_factory=list)  # per level: start of the agreeing run
    released_since: list[float | None] = field(default_factory=list)

    def reset(self, levels: int) -> None:
        self.reached_since = [None] * levels
        self.released_since = [None] * levels
        self.evidence = None

    def count(self, rule: Rule, evidence: Evidence) -> None:
        """One new piece of evidence into the persistence runs of every level."""
        self.evidence = evidence
        for i, level in enumerate(rule.levels):
            self.reached_since[i] = _run(
                self.reached_since[i], rule.reached(evidence.value, level), evidence.ts
            )
            self.released_since[i] = _run(
                self.released_since[i], rule.released(evidence.value, level), evidence.ts
            )

    def wanted(self, rule: Rule) -> int:
        """The level the counted evidence supports (-1: none), before the hold time is applied."""
        if self.evidence is None:
            return self.level
        ts = self.evidence.ts
        raised = -1
        for i, start in enumerate(self.reached_since):
            if start is not None and ts - start >= rule.raise_after_s:
                raised = i
        if raised > self.level:
            return raised
        kept = self.level
        while kept >= 0 and not _held(self.released_since[kept], ts, rule.clear_after_s):
            kept -= 1
        return max(kept, raised)

    def shift(self, by_s: float) -> None:
        self.since += by_s
        if self.evidence is not None:
            self.evidence = Evidence(self.evidence.value, self.evidence.ts + by_s)
        self.reached_since = [None if s is None else s + by_s for s in self.reached_since]
        self.released_since = [None if s is None else s + by_s for s in self.released_since]


def _run(start: float | None, holds: bool, ts: float) -> float | None:
    if not holds:
        return None
    return ts if start is None else start


def _held(released_since: float | None, ts: float, clear_after_s: float) -> bool:
    """False once the level has been released by evidence spanning `clear_after_s`."""
    return released_since is None or ts - released_since < clear_after_s


class AlertEngine:
    """Feed readings with `update`; get the `Alert`s that changed. Pure: no I/O, no wall clock."""

    def __init__(self, rules: Iterable[Rule], *, min_hold_s: float, prediction_max_age_s: float) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self.min_hold_s = min_hold_s
        self.readings = Readings(prediction_max_age_s)
        self._state = {name: _RuleState() for name in self.rules}
        for name, rule in self.rules.items():
            self._state[name].reset(len(rule.levels))
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
        state = self._state[rule]
        state.level = min(state.level, len(levels) - 1)
        state.reset(len(levels))

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
        rules: Iterable[Rule] = self._by_input.get(name, ())
        if rules:
            self.readings.set(ts, name, value)
        else:
            self.readings.advance(ts)
        now = self.readings.now
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            rules = self.rules.values()
        changes = [self._judge(rule, now) for rule in rules]
        return [alert for alert in changes if alert is not None]

    def _shift(self, by_s: float) -> None:
        self.readings.shift(by_s)
        for state in self._state.values():
            state.shift(by_s)
        self._last_sweep += by_s

    def _judge(self, rule: Rule, now: float) -> Alert | None:
        state = self._state[rule.name]
        evidence = rule.measure(self.readings)
        if evidence is None:
            if not rule.clear_when_unknown:
                target = state.wanted(rule)  # holds; a confirmed drop may still be waiting for its hold time
            else:
                state.reset(len(rule.levels))
                target = -1
        else:
            last = state.evidence
            if last is None or (evidence != last and evidence.ts >= last.ts):  # each piece counts once
                state.count(rule, evidence)
            target = state.wanted(rule)
        if target == state.level or (target < state.level and now - state.since < self.min_hold_s):
            return None
        previous = state.level
        counted = evidence or state.evidence  # a drop confirmed earlier may come due while unknown now
        x = None if counted is None else counted.value
        state.level, state.since = target, now
        state.value = math.nan if x is None else x
        if target >= 0:
            level = rule.levels[target]
            return Alert(now, rule.name, level.severity, True, state.value, message(rule, level, x))
        gone = rule.levels[previous]
        return Alert(now, rule.name, gone.severity, False, state.value, message(rule, gone, x))


def message(rule: Rule, level: Level, x: float | None) -> str:
    """What the driver and the office read: "battery state of charge low: 9.5 % (critical at <= 10 %)"."""
    unit = f" {rule.unit}" if rule.unit else ""
    shown = "unknown" if x is None else f"{x:.3g}{unit}"
    relation = ">=" if rule.above else "<="
    return f"{rule.text}: {shown} ({level.severity} at {relation} {level.raise_at:g}{unit})"
