"""Time you can trust: is a source's timestamp plausible? (pure; no wall clock read here)

Timestamps come from the source: a live CAN frame carries the host's receive time (SocketCAN, SLCAN:
the kernel's or python-can's `time.time()`), a replayed log its recorded time, a GPS sample its fix time.
Each source is judged against a reference of its own, because their time bases differ:

* **A live source** (a CAN bus) is judged against the host's monotonic clock anchored at start:
  expected = anchor_wall + (monotonic now − anchor_monotonic). The monotonic clock is never stepped, so a
  frame whose stamp strays more than `max_skew_s` from it is either an outlier (one bad stamp) or the host
  clock was stepped (NTP, ±1 h). The skew allowed covers the queueing between the interface and the judge
  (seconds when backlogged); NTP slews move the monotonic clock along with the wall clock, so only steps
  show. No live stamp before 2024 (`EARLIEST_PLAUSIBLE_TS`) is plausible: a gateway booted without a
  real-time clock stamps 1970 until NTP answers, and an interface counting from its own power-up is not in
  Unix time either.
* **A replayed log** has its own past time base and, played as fast as possible, no relation to the wall
  clock at all: it is anchored on its own first timestamp and judged by jumps — a stamp more than
  `max_jump_s` away from the log's running time (its newest plausible stamp) is off.
* **The GPS** is judged like a live source, its fix time against the monotonic anchor, with two
  additions. A receiver past its week-number rollover reports dates exactly 1024 weeks (619,315,200 s) in
  the past (a fix "in 2007"): a stamp before 2024 that lands after it when 1024 (or 2048) weeks are added
  is corrected so, counted, and then judged like any other (not only when it lands within the skew: on a
  gateway whose own clock is wrong the corrected fix is what re-anchors the GPS). Once a run of
  consecutive fixes has agreed with the anchor for `step_confirm_s` monotonic seconds, GPS time is
  *trusted*, and the host clock's offset from it (`host_minus_gps_s`, wall clock minus fix time at the
  judge, so it includes the few hundred milliseconds a fix takes to arrive) is exported; `doctor` shows
  it. A host clock that is wrong (no RTC, no network) makes the GPS disagree with the anchor from the
  start: the GPS re-anchors on its own time (a step, below) and is trusted then.

**A step is not an outlier.** A stamp off its reference starts (or extends) a *run*: consecutive off
stamps that agree with each other (live: the same offset from the monotonic clock within `max_skew_s`;
own time: each within `max_jump_s` of the run's latest). A run of at least `step_confirm_samples` stamps
spanning at least `step_confirm_s` (monotonic seconds for live sources and GPS, source seconds for a log)
is a new time base: the source re-anchors once on it (logged once per source, counted in
`voltgate_clock_steps_total`), and the stamp that confirmed it is plausible again. An on-time stamp breaks
a run, so one outlier — even one frame decoding to five samples with the same stamp — never re-anchors
anything. The stamps of a run before its confirmation stay implausible: a few seconds of a stepped
source, kept out of inference, in exchange for never following a burst of bad stamps.

**What happens to an implausible sample** (`agent.app` decides): it is counted per source and reason
(`voltgate_timestamps_implausible_total{source,reason}`: ahead, behind, too_old, invalid), logged once per
kind, kept out of inference and alerts, and still committed to the buffer with its original timestamp —
nothing a source produced is lost on the bus; the cloud refuses it, record by record, with its reason
(and keeps it as a dead letter), or stores it if its own window allows.

`StreamClock` (own-time judging) is also what the inference and alert stages use as their notion of
"now": a stream's newest plausible time, which one sample far ahead (or far behind) never moves; a
confirmed step moves it — forward it is a gap, back (time cannot run backwards) the stage re-bases what it
holds by `stepped_s`.

Limits, by design: stamps are judged where the samples fan out (`agent.app`), so the monotonic time is read
when the gate sees them, not at the interface (hence the generous skew); the stamps of one run before its
confirmation are held out even when the step was real; and where the host clock is far off GPS time (no
NTP, no RTC), CAN and GPS stamps are two time bases: each passes its own gate, but the analysis stages
follow the busier stream and leave the other out (`voltgate_analysis_time_outliers`), while the log line
and `voltgate_host_clock_offset_seconds` say why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal

from agent.settings import ClockSettings

log = logging.getLogger(__name__)

GPS_WEEK_ROLLOVER_S: Final = 1024 * 7 * 86_400  # 619,315,200 s: the 10-bit GPS week number wraps
EARLIEST_PLAUSIBLE_TS: Final = 1_704_067_200.0  # 2024-01-01T00:00:00Z: no live stamp is older than this code
# The inference and alert stages' own guard uses the defaults of `agent.settings.ClockSettings`.
DEFAULT_LIMITS: Final = ClockSettings()
MAX_SKEW_S: Final = DEFAULT_LIMITS.max_skew_s  # 60 s
MAX_JUMP_S: Final = DEFAULT_LIMITS.max_jump_s  # 300 s
STEP_CONFIRM_SAMPLES: Final = DEFAULT_LIMITS.step_confirm_samples  # 5
STEP_CONFIRM_S: Final = DEFAULT_LIMITS.step_confirm_s  # 3 s
ROLLOVER_CORRECTION: Final = "gps_week_rollover"

SourceKind = Literal["live", "replay", "gps"]


class Reason(StrEnum):
    AHEAD = "ahead"  # later than the source's reference by more than allowed
    BEHIND = "behind"  # earlier than it by more than allowed
    TOO_OLD = "too_old"  # a live or GPS stamp before 2024 (a 1970 boot clock, an uncorrectable fix)
    INVALID = "invalid"  # not a finite number


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict on one stamp: the stamp to use (corrected for a GPS week rollover), why it is not
    plausible (None: it is), and by how much the source re-anchored with it (None: it did not)."""

    ts: float
    reason: Reason | None = None
    stepped_s: float | None = None
    rollover_weeks: int = 0

    @property
    def plausible(self) -> bool:
        return self.reason is None


@dataclass(slots=True)
class _Run:
    """Consecutive off-reference stamps that agree with each other: a step in the making."""

    key: float  # live: their offset (stamp − monotonic); own time: the newest stamp of the run
    first: float  # live: monotonic time of the first; own time: the oldest stamp of the run
    last: float  # the same, of the latest
    count: int = 1


class StreamClock:
    """Judges stamps by their own time base: plausible within `max_jump_s` of the newest plausible stamp
    (`now`), which only plausible stamps move. The first stamp anchors it."""

    def __init__(
        self,
        *,
        max_jump_s: float = MAX_JUMP_S,
        confirm_samples: int = STEP_CONFIRM_SAMPLES,
        confirm_s: float = STEP_CONFIRM_S,
    ) -> None:
        self.max_jump_s = max_jump_s
        self.confirm_samples = confirm_samples
        self.confirm_s = confirm_s
        self.now = -math.inf
        self.steps = 0
        self._run: _Run | None = None

    def judge(self, ts: float) -> Judgement:
        if not math.isfinite(ts):
            return Judgement(ts, Reason.INVALID)
        if self.now == -math.inf:
            self.now = ts
            return Judgement(ts)
        off_s = ts - self.now
        if abs(off_s) <= self.max_jump_s:
            self._run = None
            if ts > self.now:
                self.now = ts
            return Judgement(ts)
        run = self._run
        if run is not None and abs(ts - run.key) <= self.max_jump_s:
            run.count += 1
            run.key = max(run.key, ts)
            run.first, run.last = min(run.first, ts), max(run.last, ts)
            if run.count >= self.confirm_samples and run.last - run.first >= self.confirm_s:
                stepped_s = run.first - self.now  # the new base began with the run's first stamp
                self.now, self._run = run.key, None
                self.steps += 1
                return Judgement(ts, stepped_s=stepped_s)
        else:
            self._run = _Run(key=ts, first=ts, last=ts)
        return Judgement(ts, Reason.AHEAD if off_s > 0 else Reason.BEHIND)


class LiveClock:
    """Judges stamps against the monotonic clock: expected = monotonic + `offset_s`, where the offset is
    the host's wall-minus-monotonic at start until a confirmed step re-anchors it."""

    def __init__(
        self,
        offset_s: float,
        *,
        max_skew_s: float = MAX_SKEW_S,
        confirm_samples: int = STEP_CONFIRM_SAMPLES,
        confirm_s: float = STEP_CONFIRM_S,
        earliest_ts: float = EARLIEST_PLAUSIBLE_TS,
    ) -> None:
        self.offset_s = offset_s
        self.max_skew_s = max_skew_s
        self.confirm_samples = confirm_samples
        self.confirm_s = confirm_s
        self.earliest_ts = earliest_ts
        self.steps = 0
        self.trusted = False  # a run of on-time stamps spanning `confirm_s` was seen (on this anchor)
        self._run: _Run | None = None  # off the anchor: a step in the making
        self._on_time: _Run | None = None  # on the anchor: trust in the making

    def expected(self, mono_s: float) -> float:
        return mono_s + self.offset_s

    def judge(self, ts: float, mono_s: float) -> Judgement:
        if not math.isfinite(ts):
            return Judgement(ts, Reason.INVALID)
        if ts < self.earliest_ts:
            return Judgement(ts, Reason.TOO_OLD)
        offset_s = ts - mono_s
        off_s = offset_s - self.offset_s
        if abs(off_s) <= self.max_skew_s:
            self._run = None
            self._count_on_time(mono_s)
            return Judgement(ts)
        self._on_time = None
        run = self._run
        if run is not None and abs(offset_s - run.key) <= self.max_skew_s:
            run.count += 1
            run.last = mono_s
            if run.count >= self.confirm_samples and run.last - run.first >= self.confirm_s:
                self.offset_s, self._run = offset_s, None
                self.steps += 1
                self.trusted = True  # the run that confirmed the new anchor is the trust run
                return Judgement(ts, stepped_s=off_s)
        else:
            self._run = _Run(key=offset_s, first=mono_s, last=mono_s)
        return Judgement(ts, Reason.AHEAD if off_s > 0 else Reason.BEHIND)

    def _count_on_time(self, mono_s: float) -> None:
        if self.trusted:
            return
        run = self._on_time
        if run is None:
            self._on_time = _Run(key=0.0, first=mono_s, last=mono_s)
            return
        run.count += 1
        run.last = mono_s
        if run.count >= self.confirm_samples and run.last - run.first >= self.confirm_s:
            self.trusted = True


def unroll_gps_week(ts: float, earliest_ts: float = EARLIEST_PLAUSIBLE_TS) -> tuple[float, int]:
    """A fix stamp before `earliest_ts` moved on by the fewest 1024-week rollovers (at most two) that bring
    it after; the stamp unchanged (and 0) when none does or it needs none."""
    if not math.isfinite(ts) or ts >= earliest_ts:
        return ts, 0
    for rollovers in (1, 2):
        moved = ts + rollovers * GPS_WEEK_ROLLOVER_S
        if moved >= earliest_ts:
            return moved, rollovers * 1024
    return ts, 0


class GpsClock(LiveClock):
    """A live clock on the GPS fix time that first undoes a week-number rollover."""

    def judge(self, ts: float, mono_s: float) -> Judgement:
        moved, weeks = unroll_gps_week(ts, self.earliest_ts)
        judged = super().judge(moved, mono_s)
        if weeks:
            return Judgement(judged.ts, judged.reason, judged.stepped_s, rollover_weeks=weeks)
        return judged


@dataclass
class GateStats:
    """Counters for the app to export: implausible stamps per (source, reason), corrections per (source,
    kind), re-anchorings per source."""

    implausible: dict[tuple[str, str], int] = field(default_factory=dict)
    corrected: dict[tuple[str, str], int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)


class TimestampGate:
    """Every source's clock, what they judged, and one log line per kind of problem."""

    def __init__(
        self,
        sources: Mapping[str, SourceKind],
        *,
        anchor_wall_s: float,
        anchor_mono_s: float,
        limits: ClockSettings = DEFAULT_LIMITS,
    ) -> None:
        self.limits = limits
        self.stats = GateStats()
        self.host_minus_gps_s: float | None = None
        self._clocks: dict[str, StreamClock | LiveClock] = {}
        self._kinds = dict(sources)
        self._logged: set[tuple[str, str]] = set()
        offset_s = anchor_wall_s - anchor_mono_s
        for name, kind in sources.items():
            if kind == "replay":
                self._clocks[name] = StreamClock(
                    max_jump_s=limits.max_jump_s,
                    confirm_samples=limits.step_confirm_samples,
                    confirm_s=limits.step_confirm_s,
                )
            else:
                cls = GpsClock if kind == "gps" else LiveClock
                self._clocks[name] = cls(
                    offset_s,
                    max_skew_s=limits.max_skew_s,
                    confirm_samples=limits.step_confirm_samples,
                    confirm_s=limits.step_confirm_s,
                )

    def judge(self, source: str, ts: float, *, mono_s: float, wall_s: float) -> Judgement:
        """One stamp of `source` at monotonic time `mono_s` (the host wall clock then: `wall_s`)."""
        clock = self._clocks[source]
        verdict = clock.judge(ts) if isinstance(clock, StreamClock) else clock.judge(ts, mono_s)
        if verdict.rollover_weeks:
            self._count(self.stats.corrected, (source, ROLLOVER_CORRECTION))
            self._once(
                source,
                ROLLOVER_CORRECTION,
                "clock: %s reports fix times %d weeks in the past (GPS week-number rollover); corrected by "
                "adding them (counted in voltgate_timestamps_corrected_total)",
                source,
                verdict.rollover_weeks,
            )
        if verdict.stepped_s is not None:
            self.stats.steps[source] = self.stats.steps.get(source, 0) + 1
            self._once(
                source,
                "step",
                "clock: %s's time base moved by %+.1f s and stayed there: re-anchored on it (a stepped "
                "clock, not an outlier); further steps are only counted (voltgate_clock_steps_total)",
                source,
                verdict.stepped_s,
            )
        if verdict.reason is not None:
            self._count(self.stats.implausible, (source, verdict.reason.value))
            expected = self._expected(source, mono_s)
            self._once(
                source,
                verdict.reason.value,
                "clock: %s stamp %.3f is implausible (%s; expected about %.3f): kept out of inference and "
                "alerts, buffered as stamped; further ones are only counted "
                "(voltgate_timestamps_implausible_total)",
                source,
                ts,
                verdict.reason.value,
                expected,
            )
        elif self._kinds[source] == "gps" and isinstance(clock, LiveClock) and clock.trusted:
            self._gps_trusted(wall_s - verdict.ts)
        return verdict

    def _expected(self, source: str, mono_s: float) -> float:
        clock = self._clocks[source]
        return clock.now if isinstance(clock, StreamClock) else clock.expected(mono_s)

    def _gps_trusted(self, host_minus_gps_s: float) -> None:
        first = self.host_minus_gps_s is None
        self.host_minus_gps_s = host_minus_gps_s
        if first:
            log.info("clock: GPS time trusted; the host clock is %+.3f s off it", host_minus_gps_s)
        if abs(host_minus_gps_s) > self.limits.max_skew_s:
            self._once(
                "host",
                "gps_offset",
                "clock: the host clock is %+.0f s off GPS time (no NTP? no RTC?); CAN stamps follow the host "
                "clock (voltgate_host_clock_offset_seconds)",
                host_minus_gps_s,
            )

    @staticmethod
    def _count(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
        counts[key] = counts.get(key, 0) + 1

    def _once(self, source: str, kind: str, message: str, *args: object) -> None:
        if (source, kind) not in self._logged:
            self._logged.add((source, kind))
            log.warning(message, *args)
