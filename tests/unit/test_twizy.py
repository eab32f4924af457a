"""The raw-table loader on real telematics: three Renault Twizy trips with their real glitches.

Data: RSK Twizy EV dataset, NaitMalek et al., Sustainability 14(16) 9993 (2022), CC-BY-4.0,
github.com/NaitMalekYoussef/RSK_Twizy_EV_Dataset @ 4f37a71 (tests/data/twizy/, with its LICENSE.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.dataset import TWIZY, persistence_pp, trace_windows
from models.features import feature_index
from models.rawtable import CleaningReport, load_twizy_trip, read_table, write_table
from protocols.signals import AMBIENT, LATITUDE, SOC

DATA = Path(__file__).parents[1] / "data" / "twizy"


def test_corrupt_dates_are_put_back_on_the_trip_date() -> None:
    # GIVEN T1_03_29_2021.csv, where 10 rows carry the date 90/02/2032 beside a plausible time
    report = CleaningReport()
    trace = load_twizy_trip(DATA / "T1_03_29_2021.csv", report)
    assert report.dates_repaired == 10
    assert report.bad_timestamps == 0 and report.not_increasing == 0
    # THEN every row is kept, in order, within the trip's day
    assert len(trace.ts) == report.rows == 6189
    assert np.all(np.diff(trace.ts) > 0)
    assert trace.duration_s < 2 * 3600


def test_no_fix_zeros_and_the_position_leap_are_blanked() -> None:
    report = CleaningReport()
    trace = load_twizy_trip(DATA / "T1_06_30_2021_2.csv", report)
    assert report.no_fix == 4  # LAT = 0 with a stale LON
    # a 1.9 km leap of a frozen GPS catching up: fixes are blanked until the leap is plausible again
    assert report.position_jumps == 30
    lat = trace.columns[LATITUDE]
    assert np.isnan(lat).sum() == 34
    assert np.nanmin(lat) > 33.0


def test_a_lone_soc_glitch_is_removed() -> None:
    report = CleaningReport()
    trace = load_twizy_trip(DATA / "T3_05_25_2021_04.csv", report)
    assert report.soc_spikes == 1  # 14.72 -> 0.02 -> 13.32
    assert np.nanmin(trace.columns[SOC]) > 10.0


def test_pipeline_gives_features_targets_and_baselines_on_a_real_trip() -> None:
    trace = load_twizy_trip(DATA / "T1_03_29_2021.csv")
    w = trace_windows(trace, TWIZY)
    scope = w.regression_scope()
    assert scope.sum() >= 20
    s = w.select(scope)
    assert np.all(s.drop_pp > 10.0)  # a small car: every hour of driving costs it more than 10 pp
    assert np.allclose(s.drop_kwh, s.drop_pp * 6.1 / 100.0)
    for name in (
        "speed_mean_15min_kmh",
        "gps_distance_15min_km",
        "soc_pct",
        "soc_drop_15min_pp",
        "ambient_c",
    ):
        assert np.isfinite(s.feature(name)).all(), name
    for name in ("pack_power_mean_15min_kw", "cell_temp_max_c", "distance_15min_km"):  # no such signals
        assert np.isnan(s.feature(name)).all(), name
    assert np.isfinite(persistence_pp(s)).all()
    assert np.isnan(s.fault).all()  # no BMS flags in this table: no fault labels
    # a 15-minute GPS distance consistent with the CAN speed (within 15 %)
    gps = s.feature("gps_distance_15min_km")
    by_speed = s.feature("speed_mean_15min_kmh") * 0.25
    assert np.median(gps / by_speed) == pytest.approx(1.0, abs=0.15)
    assert not math.isnan(float(s.X[0, feature_index("local_hour")]))
    assert AMBIENT in trace.columns


def test_raw_schema_round_trip(tmp_path: Path) -> None:
    # GIVEN a Twizy trip written in the raw schema; WHEN read back THEN the same trace, same cleaning
    trace = load_twizy_trip(DATA / "T3_05_25_2021_04.csv")
    path = tmp_path / "twizy.csv.gz"
    write_table([trace], path)
    report = CleaningReport()
    (back,) = read_table(path, report)
    assert back.vehicle == trace.vehicle
    np.testing.assert_array_equal(back.ts, trace.ts)
    np.testing.assert_allclose(back.columns[SOC], trace.columns[SOC], equal_nan=True)
    assert report.soc_spikes == 0 and report.bad_timestamps == 0


def test_a_folder_of_trips_reads_as_one_table() -> None:
    report = CleaningReport()
    traces = read_table(DATA, report)
    assert len(traces) == 3
    assert (report.dates_repaired, report.no_fix, report.soc_spikes) == (10, 4, 1)
