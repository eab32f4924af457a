"""models.fault_events: onsets flagged ahead, alarm episodes, false alarms and their intervals, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.dataset import Windows, censored_fault_label
from models.fault_events import (
    choose_fault_threshold,
    developing_fault_target,
    fault_report,
    garwood,
    wilson,
)
from models.features import N_FEATURES, feature_index

ONSET_S = 3600.0


def bus_day(group: str = "SIM-000/d00") -> Windows:
    """Two hours every minute; a BMS fault sets at 60 min (an injected one) and stays: out of scope after."""
    ts = np.arange(0.0, 7200.0, 60.0)
    before = ts < ONSET_S
    x = np.full((len(ts), N_FEATURES), math.nan)
    x[:, feature_index("bms_fault_active")] = (~before).astype(float)
    x[:, feature_index("derate_active")] = 0.0
    ttf = np.where(before, ONSET_S - ts, math.nan)
    fault = (before & (ONSET_S - ts <= 1800.0)).astype(float)
    nan = np.full(len(ts), math.nan)
    return Windows(
        X=x,
        drop_pp=nan,
        drop_kwh=nan,
        large=nan,
        fault=fault,
        time_to_fault_s=ttf,
        injected=np.where(before, 1.0, math.nan),
        ts=ts,
        group=np.full(len(ts), group),
        usable_kwh=nan,
        threshold_pp=10.0,
    )


def alarms(w: Windows, *spans: tuple[float, float]) -> np.ndarray:
    p = np.zeros(len(w))
    for lo, hi in spans:
        p[(w.ts >= lo) & (w.ts <= hi)] = 0.9
    return p


def test_an_alarm_20_minutes_ahead_flags_the_onset_and_is_no_false_alarm() -> None:
    w = bus_day()
    r = fault_report(w, alarms(w, (2400.0, 2700.0)), 0.5)
    assert (r.onsets, r.flagged, r.injected_onsets, r.injected_flagged) == (1, 1, 1, 1)
    assert r.lead_times_s == (1200.0,)
    assert (r.episodes, r.false_alarms) == (1, 0)
    assert r.bus_hours == pytest.approx(1.0)  # the hour before the onset; the fault's hour is out of scope


def test_an_alarm_only_in_the_last_10_minutes_does_not_flag() -> None:
    w = bus_day()
    r = fault_report(w, alarms(w, (3060.0, 3540.0)), 0.5)
    assert (r.flagged, r.episodes, r.false_alarms) == (0, 1, 0)


def test_flickering_alarms_merge_into_one_episode_and_a_lone_one_is_false() -> None:
    # GIVEN alarms at 10-11 min and again at 16 min (5 minutes apart), none of them followed by the onset
    # within 30 minutes; THEN one false alarm, not three
    w = bus_day()
    r = fault_report(w, alarms(w, (600.0, 660.0), (960.0, 960.0)), 0.5)
    assert (r.episodes, r.false_alarms, r.flagged) == (1, 1, 0)
    # alarms 11 minutes apart are two episodes
    r = fault_report(w, alarms(w, (600.0, 600.0), (1260.0, 1260.0)), 0.5)
    assert (r.episodes, r.false_alarms) == (2, 2)


def test_an_alarm_that_rises_early_and_stays_up_is_one_true_episode() -> None:
    w = bus_day()
    r = fault_report(w, alarms(w, (600.0, 3540.0)), 0.5)
    assert (r.episodes, r.false_alarms, r.flagged) == (1, 0, 1)
    assert r.lead_times_s == (3000.0,)  # from the episode's start
    assert r.alarm_share == pytest.approx(50 / 60)


def test_false_alarms_per_100_bus_hours_with_their_poisson_interval() -> None:
    w = Windows.concat([bus_day(f"SIM-{k:03d}/d00") for k in range(4)], 10.0)
    r = fault_report(w, alarms(w, (600.0, 600.0)), 0.5)
    assert (r.bus_days, r.onsets, r.false_alarms) == (4, 4, 4)
    assert r.false_alarms_per_100h == pytest.approx(100.0)
    lo, hi = r.false_alarm_interval_per_100h()
    assert (lo, hi) == pytest.approx((100.0 * 1.0899 / 4, 100.0 * 10.242 / 4), rel=1e-3)


def test_intervals_match_published_values() -> None:
    assert garwood(0) == pytest.approx((0.0, 3.6889), abs=1e-4)
    assert garwood(1) == pytest.approx((0.0253, 5.5716), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)


def test_the_threshold_is_the_lowest_within_the_false_alarm_budget() -> None:
    # GIVEN 4 bus-hours where a score of 0.6 raises one false alarm per bus-day and 0.95 only true ones
    w = Windows.concat([bus_day(f"SIM-{k:03d}/d00") for k in range(4)], 10.0)
    p = alarms(w, (600.0, 600.0)) * (0.6 / 0.9) + alarms(w, (2400.0, 2700.0)) * (0.95 / 0.9)
    # THEN with a budget of 30 per 100 bus-hours (one in 4 bus-hours is 25) the threshold clears the 0.6s
    assert choose_fault_threshold(w, p, max_false_per_100h=30.0) == pytest.approx(0.61)


def test_the_target_is_an_onset_with_a_developing_fault_behind_it() -> None:
    # GIVEN the same bus-day with its onset from a developing (injected) fault, and again from plain physics
    developing = bus_day()
    physics = bus_day()
    physics.injected[:] = 0.0
    physics.fault[:3] = math.nan  # unlabelled windows stay unlabelled
    # THEN the model learns the first onset's last 30 minutes and none of the second's
    assert np.array_equal(developing_fault_target(developing), developing.fault)
    target = developing_fault_target(physics)
    assert np.isnan(target[:3]).all() and (target[3:] == 0.0).all()
    # ...while the events count both onsets alike: an alarm before either is no false alarm
    for w in (developing, physics):
        r = fault_report(w, alarms(w, (2400.0, 2700.0)), 0.5)
        assert (r.flagged, r.false_alarms) == (1, 0)


def test_no_onset_in_a_recordings_last_30_minutes_is_unknown_not_no_fault() -> None:
    # GIVEN a recording ending at 7200 s, one onset at 600 s and one at 7100 s: the truth says 0 wherever
    # no onset comes within 30 minutes, up to the end of the recording
    ts = np.arange(0.0, 7200.0, 60.0)
    truth = ((ts < 600.0) | ((ts >= 5300.0) & (ts < 7100.0))).astype(float)
    # WHEN censored
    label = censored_fault_label(truth, ts, 7200.0)
    # THEN a 0 whose 30 minutes run past the end is unknown; the other 0s and every 1 stay
    late = ts > 7200.0 - 1800.0
    assert np.array_equal(label[~late], truth[~late])
    assert (label[late & (truth == 1.0)] == 1.0).all() and (late & (truth == 1.0)).any()
    assert np.isnan(label[late & (truth == 0.0)]).all() and (late & (truth == 0.0)).any()
