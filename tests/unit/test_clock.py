"""agent.clock: a GPS week rollover is corrected, a year-ahead outlier refused without moving anything, a
host clock stepped ±1 h re-anchored once, a replayed log judged on its own time base; and a monotone stream
at a steady rate is never judged implausible (hypothesis)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.clock import (
    EARLIEST_PLAUSIBLE_TS,
    GPS_WEEK_ROLLOVER_S,
    MAX_JUMP_S,
    GpsClock,
    LiveClock,
    Reason,
    StreamClock,
    TimestampGate,
    unroll_gps_week,
)
from agent.settings import AgentSettings, ReplaySettings

WALL0 = 1_780_000_000.0  # 2026-05-28: the host clock when the agent starts
MONO0 = 5_000.0  # the monotonic clock then (seconds since boot)
YEAR_S = 365 * 86_400.0


def _gate() -> TimestampGate:
    return TimestampGate(
        {"traction": "live", "day": "replay", "gps": "gps"}, anchor_wall_s=WALL0, anchor_mono_s=MONO0
    )


def _judge(gate: TimestampGate, source: str, ts: float, elapsed_s: float) -> Reason | None:
    return gate.judge(source, ts, mono_s=MONO0 + elapsed_s, wall_s=WALL0 + elapsed_s).reason


# --- GPS week rollover -----------------------------------------------------------------------------------


def test_a_fix_1024_weeks_behind_is_corrected_and_counted() -> None:
    gate = _gate()
    # GIVEN a receiver past its week rollover: its fixes read 2006-10 for 2026-05
    rolled = WALL0 + 2.0 - GPS_WEEK_ROLLOVER_S
    verdict = gate.judge("gps", rolled, mono_s=MONO0 + 2.0, wall_s=WALL0 + 2.0)
    # THEN the stamp is moved on by exactly 1024 weeks, plausible, and the correction counted
    assert verdict.plausible and verdict.ts == WALL0 + 2.0 and verdict.rollover_weeks == 1024
    assert gate.stats.corrected == {("gps", "gps_week_rollover"): 1}
    assert gate.stats.implausible == {}


def test_unrolling_needs_a_stamp_before_2024_and_lands_after() -> None:
    assert unroll_gps_week(WALL0) == (WALL0, 0)  # a good fix is left alone
    assert unroll_gps_week(WALL0 - GPS_WEEK_ROLLOVER_S) == (WALL0, 1024)
    assert unroll_gps_week(WALL0 - 2 * GPS_WEEK_ROLLOVER_S) == (WALL0, 2048)
    assert unroll_gps_week(0.0) == (0.0, 0)  # 1970: no rollover count makes it plausible
    assert unroll_gps_week(math.nan)[1] == 0


def test_a_rolled_over_fix_that_lands_a_year_off_is_still_refused() -> None:
    clock = GpsClock(WALL0 - MONO0)
    verdict = clock.judge(WALL0 + YEAR_S - GPS_WEEK_ROLLOVER_S, MONO0)
    assert verdict.rollover_weeks == 1024 and verdict.reason is Reason.AHEAD


def test_gps_is_trusted_after_agreeing_for_a_while_and_the_host_offset_is_known() -> None:
    gate = _gate()
    # GIVEN a host clock 0.4 s ahead of GPS time, fixes at 1 Hz
    for i in range(5):
        assert _judge(gate, "gps", WALL0 + i - 0.4, float(i)) is None
    assert gate.host_minus_gps_s == pytest.approx(0.4)


# --- outliers --------------------------------------------------------------------------------------------


def test_a_year_ahead_frame_is_refused_and_moves_nothing() -> None:
    gate = _gate()
    for i in range(100):
        assert _judge(gate, "traction", WALL0 + i * 0.1, i * 0.1) is None
    # WHEN one frame (decoded into five samples) is stamped a year ahead
    for _ in range(5):
        assert _judge(gate, "traction", WALL0 + 10.0 + YEAR_S, 10.0) is Reason.AHEAD
    # THEN the stream goes on as before: the next stamps are plausible, nothing re-anchored
    for i in range(101, 200):
        assert _judge(gate, "traction", WALL0 + i * 0.1, i * 0.1) is None
    assert gate.stats.implausible == {("traction", "ahead"): 5}
    assert gate.stats.steps == {}


def test_a_1970_stamp_and_nan_are_implausible() -> None:
    clock = LiveClock(WALL0 - MONO0)
    assert clock.judge(12.5, MONO0).reason is Reason.TOO_OLD
    assert clock.judge(math.nan, MONO0).reason is Reason.INVALID
    assert clock.judge(EARLIEST_PLAUSIBLE_TS - 1, MONO0).reason is Reason.TOO_OLD


def test_each_kind_of_problem_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    gate = _gate()
    with caplog.at_level(logging.WARNING, logger="agent.clock"):
        for i in range(10):
            _judge(gate, "traction", WALL0 + YEAR_S, float(i))  # never persisting: 1 s apart, but...
            _judge(gate, "traction", WALL0 + i, float(i))  # ...broken by on-time stamps
    assert gate.stats.implausible == {("traction", "ahead"): 10}
    assert len([r for r in caplog.records if "implausible" in r.getMessage()]) == 1


# --- a host clock stepped by NTP -------------------------------------------------------------------------


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
def test_a_host_clock_stepped_by_an_hour_is_re_anchored_once(
    step_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    gate = _gate()
    for i in range(50):
        assert _judge(gate, "traction", WALL0 + i * 0.1, i * 0.1) is None
    # WHEN NTP steps the host clock (and with it every frame stamp) by an hour, for good
    verdicts = [_judge(gate, "traction", WALL0 + step_s + i * 0.1, i * 0.1) for i in range(50, 200)]
    # THEN the first stamps of the new base are held out until it has persisted for 3 s, then it is the base
    held = verdicts.index(None)
    assert held == 30  # 3 s at 10 Hz
    assert all(v is None for v in verdicts[held:])
    assert gate.stats.steps == {"traction": 1}
    assert sum(gate.stats.implausible.values()) == held
    assert len([r for r in caplog.records if "re-anchored" in r.getMessage()]) == 1


def test_a_burst_of_bad_stamps_shorter_than_the_confirmation_is_not_a_step() -> None:
    clock = LiveClock(WALL0 - MONO0)
    # 20 consecutive frames an hour ahead, but all within 1 s (a glitching adapter)
    assert all(clock.judge(WALL0 + 3600 + i * 0.05, MONO0 + i * 0.05).reason for i in range(20))
    assert clock.judge(WALL0 + 1.0, MONO0 + 1.0).plausible
    assert clock.steps == 0


def test_a_host_that_booted_in_1970_anchors_once_ntp_sets_the_clock() -> None:
    clock = LiveClock(0.0 - MONO0)  # the wall clock read 1970 when the agent started
    assert clock.judge(10.0, MONO0 + 10).reason is Reason.TOO_OLD
    verdicts = [clock.judge(WALL0 + i, MONO0 + 20 + i).reason for i in range(10)]
    assert verdicts[:4] == [Reason.AHEAD] * 4 and verdicts[4:] == [None] * 6
    assert clock.steps == 1


# --- a replayed log --------------------------------------------------------------------------------------


def test_a_replayed_log_is_judged_on_its_own_time_base() -> None:
    gate = _gate()
    log0 = 1_600_000_000.0  # recorded in 2020, played as fast as possible: the wall clock means nothing
    for i in range(1000):
        assert _judge(gate, "day", log0 + i * 0.01, 0.0) is None
    assert _judge(gate, "day", log0 + 10.0 + YEAR_S, 0.0) is Reason.AHEAD  # a jump in the log, alone
    assert _judge(gate, "day", log0 + 10.01, 0.0) is None
    assert _judge(gate, "day", log0 - 1000.0, 0.0) is Reason.BEHIND


def test_a_gap_in_a_replayed_log_is_a_step_once_it_persists() -> None:
    clock = StreamClock(max_jump_s=300.0, confirm_samples=5, confirm_s=3.0)
    clock.judge(1000.0)
    verdicts = [clock.judge(1000.0 + 8 * 3600 + i) for i in range(6)]
    assert [v.plausible for v in verdicts] == [False, False, False, False, True, True]
    assert verdicts[4].stepped_s == 8 * 3600
    assert clock.now == 1000.0 + 8 * 3600 + 5


def test_a_stream_clock_moves_now_only_with_plausible_stamps() -> None:
    clock = StreamClock()
    clock.judge(100.0)
    clock.judge(100.0 + YEAR_S)
    assert clock.now == 100.0
    clock.judge(150.0)
    clock.judge(120.0)  # a little behind: plausible, now stays
    assert clock.now == 150.0


# --- never a false alarm ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rate_hz=st.floats(min_value=0.2, max_value=2000.0),
    count=st.integers(min_value=1, max_value=400),
    start_offset_s=st.floats(min_value=-30.0, max_value=30.0),  # host clock vs anchor, within the skew
    lag_s=st.floats(min_value=0.0, max_value=20.0),  # queueing between the interface and the gate
    log_start=st.floats(min_value=0.0, max_value=2e9),
)
def test_a_monotone_stream_at_a_steady_rate_is_never_implausible(
    rate_hz: float, count: int, start_offset_s: float, lag_s: float, log_start: float
) -> None:
    gate = _gate()
    for i in range(count):
        t = i / rate_hz
        # live: stamped by the host at receipt, judged `lag_s` later on the monotonic clock
        lag = lag_s * abs(math.sin(i))  # queueing that varies from one sample to the next
        live = gate.judge("traction", WALL0 + start_offset_s + t, mono_s=MONO0 + t + lag, wall_s=0.0)
        assert live.plausible, (i, live)
        # a log with any past time base, played at any speed
        assert gate.judge("day", log_start + t, mono_s=MONO0, wall_s=0.0).plausible
        assert gate.judge("gps", WALL0 + t, mono_s=MONO0 + t + lag, wall_s=0.0).plausible
    assert gate.stats.implausible == {} and gate.stats.steps == {}


@settings(max_examples=200, deadline=None)
@given(
    rate_hz=st.floats(min_value=0.5, max_value=100.0),
    count=st.integers(min_value=2, max_value=300),
    at=st.floats(min_value=0.0, max_value=1.0),
    off_s=st.floats(min_value=MAX_JUMP_S + 1, max_value=1e9).flatmap(lambda x: st.sampled_from([x, -x])),
    copies=st.integers(min_value=1, max_value=8),  # one frame decodes into several samples
)
def test_one_outlier_anywhere_never_moves_a_streams_now(
    rate_hz: float, count: int, at: float, off_s: float, copies: int
) -> None:
    stream = [1_700_000_000.0 + i / rate_hz for i in range(count)]
    where = 1 + int(at * (count - 2))  # after the first stamp (which anchors), before the last
    clock = StreamClock()
    verdicts = [clock.judge(ts) for ts in stream[:where]]
    outliers = [clock.judge(stream[where - 1] + off_s) for _ in range(copies)]
    verdicts += [clock.judge(ts) for ts in stream[where:]]
    assert all(v.plausible for v in verdicts) and not any(v.plausible for v in outliers)
    assert clock.now == stream[-1] and clock.steps == 0


# --- settings --------------------------------------------------------------------------------------------


def test_gps_is_no_bus_name() -> None:
    # "gps" is the GPS receiver's source: its clock, its sample queue, its metrics labels
    with pytest.raises(ValidationError, match="GPS receiver"):
        AgentSettings(vehicle_id="bus-1", replay=[ReplaySettings(name="gps", path=Path("day.log"))])
