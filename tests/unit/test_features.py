"""models.features: values worked out by hand, the stream and batch paths agree, memory stays bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.dataset import apply_policy, catalog_policies
from models.features import (
    FEATURE_NAMES,
    HISTORY_S,
    HISTORY_SIGNALS,
    HISTORY_SPACING_S,
    INPUT_SIGNALS,
    KEEP_S,
    N_FEATURES,
    FeatureWindow,
    Series,
    feature_index,
    features_for_recording,
)
from models.simulate import TRUTH_COLUMNS
from protocols.signals import (
    AMBIENT,
    CELL_TEMP_MAX,
    CELL_V_MAX,
    CELL_V_MIN,
    INSULATION,
    LATITUDE,
    LONGITUDE,
    ODOMETER,
    PACK_CURRENT,
    PACK_VOLTAGE,
    SOC,
    SPEED,
)
from simulator.bus import BusConfig, BusSimulator
from simulator.faults import Fault, FaultKind, FaultSchedule
from simulator.truth import rows_at_1hz

T0 = 1_709_517_600.0  # 2024-03-04 02:00 UTC = 05:00 in Nairobi


def feat(x: np.ndarray, name: str) -> float:
    return float(x[feature_index(name)])


def window(samples: list[tuple[float, str, float]], utc_offset_h: float = 0.0) -> FeatureWindow:
    w = FeatureWindow(utc_offset_h)
    w.add_many(sorted(samples, key=lambda s: s[0]))
    return w


def test_one_minute_speed_aggregates_weight_held_values_by_time() -> None:
    # GIVEN speed 0 km/h until +20 s, 36 km/h until +50 s, 0 after; THEN over the minute to +60 s:
    w = window([(T0, SPEED, 0.0), (T0 + 20, SPEED, 36.0), (T0 + 50, SPEED, 0.0)])
    x = w.features_at(T0 + 60)
    assert feat(x, "speed_mean_1min_kmh") == pytest.approx((36.0 * 30) / 60)  # 18
    assert feat(x, "speed_max_1min_kmh") == 36.0
    assert feat(x, "moving_share_1min") == pytest.approx(0.5)


def test_value_held_from_before_the_window_counts_in_it() -> None:
    # 50 km/h set 10 minutes ago and never resent: the whole last minute is at 50
    x = window([(T0, SPEED, 50.0)]).features_at(T0 + 600)
    assert feat(x, "speed_mean_1min_kmh") == 50.0
    assert feat(x, "moving_share_15min") == pytest.approx(600 / 600)  # defined only since the first sample


def test_distance_power_and_energy_rate() -> None:
    s = [
        (T0, ODOMETER, 100.0),
        (T0 + 900, ODOMETER, 103.0),
        (T0 + 840, ODOMETER, 102.7),
        (T0, PACK_VOLTAGE, 600.0),
        (T0, PACK_CURRENT, 100.0),
        (T0 + 870, PACK_CURRENT, -50.0),
    ]
    x = window(s).features_at(T0 + 900)
    assert feat(x, "distance_1min_km") == pytest.approx(0.3)
    assert feat(x, "distance_15min_km") == pytest.approx(3.0)
    # last minute: 30 s at 60 kW, 30 s at -30 kW -> 15 kW
    assert feat(x, "pack_power_mean_1min_kw") == pytest.approx(15.0)
    # 15 min: 870 s at 60 kW + 30 s at -30 kW = 14.25 kWh over 3 km
    energy_kwh = (870 * 60.0 - 30 * 30.0) / 3600.0
    assert feat(x, "pack_power_mean_15min_kw") == pytest.approx(energy_kwh / 0.25)
    assert feat(x, "energy_rate_15min_kwh_per_km") == pytest.approx(energy_kwh / 3.0)
    assert feat(x, "pack_current_max_1min_a") == 100.0


def test_soc_drops_over_15_and_60_minutes() -> None:
    s = [(T0 + k * 60.0, SOC, 90.0 - 0.2 * k) for k in range(0, 61)]  # 0.2 pp per minute for an hour
    x = window(s).features_at(T0 + 3600)
    assert feat(x, "soc_pct") == pytest.approx(78.0)
    assert feat(x, "soc_drop_15min_pp") == pytest.approx(3.0)
    assert feat(x, "soc_drop_60min_pp") == pytest.approx(12.0)
    # before an hour of history there is no previous-hour drop
    assert math.isnan(feat(window(s[:30]).features_at(T0 + 29 * 60), "soc_drop_60min_pp"))


def test_slow_fault_trends_reach_back_an_hour() -> None:
    # GIVEN a pack heating 6 K an hour in 24 degC air (a cooling loss), insulation decaying from
    # 4000 kOhm with a 1 h time constant, and the cell spread swinging with load between 30 and 12 mV
    s = [(T0 + k * 60.0, CELL_TEMP_MAX, 30.0 + 0.1 * k) for k in range(0, 91)]
    s += [(T0 + k * 300.0, INSULATION, 4000.0 * math.exp(-k * 300.0 / 3600.0)) for k in range(0, 19)]
    s += [(T0, AMBIENT, 24.0), (T0, PACK_VOLTAGE, 600.0), (T0, CELL_V_MIN, 3.300), (T0, CELL_V_MAX, 3.310)]
    s += [(T0 + 5400 - 900 + k * 60.0, CELL_V_MAX, 3.330 if k % 2 else 3.312) for k in range(0, 16)]
    x = window(s).features_at(T0 + 5400)
    # THEN the hour-long references come from the thinned histories, the spread's floor from the 15 minutes
    assert feat(x, "cell_temp_rise_60min_c") == pytest.approx(6.0)
    assert feat(x, "cell_temp_rise_15min_c") == pytest.approx(1.5)
    assert feat(x, "cell_temp_above_ambient_c") == pytest.approx(39.0 - 24.0)
    assert feat(x, "insulation_ratio_60min") == pytest.approx(math.exp(-1.0))
    assert feat(x, "cell_voltage_spread_min_15min_mv") == pytest.approx(12.0)
    assert feat(x, "cell_voltage_spread_mv") == pytest.approx(30.0)
    assert feat(x, "cell_voltage_spread_min_change_60min_mv") == pytest.approx(12.0 - 10.0)
    # 892 kOhm decaying e-fold an hour reaches the 300 kOhm warning (500 Ohm/V at 600 V) in ln(892/300) h
    assert feat(x, "insulation_hours_to_warning") == pytest.approx(math.log(4000.0 * math.exp(-1.5) / 300.0))


def test_cell_spread_near_rest_and_its_growth() -> None:
    # GIVEN the lowest cell at 3.200 V throughout, and near rest (20 A) the highest 10 mV above it 75 to 60
    # minutes ago, 20 mV above it 45 to 30 minutes ago; in the last 15 minutes the current swings each minute
    # between 20 A (spread 30 mV) and 300 A (spread 60 mV: each cell's I*R, not its charge)
    t = T0 + 5400
    s = [(T0, CELL_V_MIN, 3.200), (T0, CELL_V_MAX, 3.210), (T0, PACK_CURRENT, 20.0)]
    s += [(T0 + 2700, CELL_V_MAX, 3.220), (T0 + 3600, CELL_V_MAX, 3.250), (T0 + 3600, PACK_CURRENT, 300.0)]
    for k in range(15):
        low = k % 2 == 0
        s += [(t - 900 + k * 60.0, PACK_CURRENT, 20.0 if low else 300.0)]
        s += [(t - 900 + k * 60.0, CELL_V_MAX, 3.230 if low else 3.260)]
    x = window(s).features_at(t)
    # THEN the spread near rest is the 30 mV, not the 45 mV average of all the quarter-hour
    assert feat(x, "cell_voltage_spread_low_current_15min_mv") == pytest.approx(30.0)
    assert feat(x, "cell_voltage_spread_low_current_max_15min_mv") == pytest.approx(30.0)
    assert feat(x, "cell_voltage_spread_min_15min_mv") == pytest.approx(30.0)
    # ...and it grew 10 mV in half an hour, 20 mV in the hour
    assert feat(x, "cell_voltage_spread_low_current_change_30min_mv") == pytest.approx(10.0)
    assert feat(x, "cell_voltage_spread_low_current_change_60min_mv") == pytest.approx(20.0)
    # never near rest in the quarter-hour: unknown
    busy = window([(T0, CELL_V_MIN, 3.200), (T0, CELL_V_MAX, 3.260), (T0, PACK_CURRENT, 300.0)])
    assert math.isnan(feat(busy.features_at(t), "cell_voltage_spread_low_current_15min_mv"))


def test_gps_distance_is_haversine_and_skips_jumps() -> None:
    one_km_lat = 1.0 / 111.195  # degrees of latitude per km on the 6371.0088 km sphere
    s = [
        (T0, LATITUDE, 0.5),
        (T0, LONGITUDE, 36.8),
        (T0 + 60, LATITUDE, 0.5 + one_km_lat),
        (T0 + 61, LATITUDE, 5.0),  # a 500 km jump in a second: not travel
        (T0 + 62, LATITUDE, 0.5 + one_km_lat),
    ]
    x = window(s).features_at(T0 + 62)
    assert feat(x, "gps_distance_15min_km") == pytest.approx(1.0, rel=1e-3)


def test_missing_signals_are_nan_and_time_of_day_is_local() -> None:
    x = window([(T0, SPEED, 10.0)], utc_offset_h=3.0).features_at(T0 + 1800)
    assert x.shape == (N_FEATURES,)
    assert feat(x, "local_hour") == pytest.approx(5.5)
    for name in ("soc_pct", "pack_power_mean_15min_kw", "cell_temp_max_c", "insulation_ratio_15min"):
        assert math.isnan(feat(x, name)), name


def test_feature_names_are_unique() -> None:
    assert len(set(FEATURE_NAMES)) == N_FEATURES


# -- both paths on one recording ---------------------------------------------------------------------------
def _recording(minutes: int) -> dict[str, Series]:
    """A simulated bus leaving at 35 % with a cell falling behind (a soft short from the start), through the
    catalog's sampling policy."""
    leak = Fault(FaultKind.CELL_IMBALANCE_GROWTH, onset_s=0.0, severity=4.0, target="17")
    config = BusConfig(seed=11, departure_local_h=5.0, initial_soc_pct=35.0, faults=FaultSchedule((leak,)))
    rows = list(rows_at_1hz(BusSimulator(config).run(minutes * 60.0, 1.0)))
    ts = np.array([float(r["ts"]) for r in rows])  # type: ignore[arg-type]
    policies = catalog_policies()
    out: dict[str, Series] = {}
    for name, col in TRUTH_COLUMNS:
        signal = {"latitude": LATITUDE, "longitude": LONGITUDE, "speed_kmh": SPEED, "soc_pct": SOC}.get(
            name, ODOMETER if name == "odometer_km" else name
        )
        if signal in INPUT_SIGNALS:
            values = np.array([float(r[col]) for r in rows])  # type: ignore[arg-type]
            out[signal] = apply_policy(ts, values, policies.get(signal))
    return out


@pytest.fixture(scope="module")
def recording() -> dict[str, Series]:
    return _recording(80)


def test_stream_path_equals_batch_path(recording: dict[str, Series]) -> None:
    # GIVEN the samples of 80 minutes of a bus, merged in arrival order across signals
    merged = sorted(
        (
            (float(t), name, float(v))
            for name, s in recording.items()
            for t, v in zip(s.ts, s.values, strict=True)
        ),
        key=lambda x: x[0],
    )
    start = merged[0][0]
    ticks = [start + k * 60.0 for k in range(1, 80)]
    # WHEN the agent's window takes them one by one and is asked every minute
    stream = FeatureWindow(utc_offset_h=3.0)
    rows = []
    i = 0
    for tick in ticks:
        while i < len(merged) and merged[i][0] <= tick:
            stream.add(*merged[i])
            i += 1
        rows.append(stream.features_at(tick))
    # THEN it gives exactly what the training path computes from the whole recording
    batch = features_for_recording(recording, ticks, utc_offset_h=3.0)
    np.testing.assert_array_equal(np.vstack(rows), batch)
    for name in (
        "soc_drop_60min_pp",
        "cell_temp_rise_60min_c",
        "insulation_ratio_60min",
        "cell_voltage_spread_low_current_change_30min_mv",
        "cell_voltage_spread_low_current_change_60min_mv",
    ):
        assert not np.isnan(batch[-1, feature_index(name)])  # the hour-long references were used
    # the leaking cell shows: the spread near rest grew over the hour
    assert batch[-1, feature_index("cell_voltage_spread_low_current_change_60min_mv")] > 5.0
    assert np.isfinite(batch[-1]).sum() >= N_FEATURES - 4


def test_memory_is_bounded() -> None:
    # GIVEN three hours of every input signal at 1 Hz, each value moving (no sampling policy to thin it)
    w = FeatureWindow()
    for k in range(3 * 3600):
        for j, name in enumerate(INPUT_SIGNALS):
            w.add(T0 + k, name, float(k + j))
    w.features_at(T0 + 3 * 3600 - 1)
    # THEN each signal holds at most KEEP_S seconds (+ the sample holding at the start, + a pruning batch)
    per_signal_bound = KEEP_S + 1 + 256
    # ...and each hour-long history one value per HISTORY_SPACING_S
    history_bound = (HISTORY_S + KEEP_S) / HISTORY_SPACING_S + 2
    assert w.sample_count() <= len(INPUT_SIGNALS) * per_signal_bound + len(HISTORY_SIGNALS) * history_bound


def test_out_of_order_samples_are_dropped_and_counted() -> None:
    w = window([(T0, SPEED, 10.0), (T0 + 10, SPEED, 20.0)])
    w.add(T0 + 5, SPEED, 99.0)
    assert w.out_of_order == 1
    assert feat(w.features_at(T0 + 10), "speed_max_1min_kmh") == 20.0


def _reference_grid(t0: float, t1: float, *series: Series) -> np.ndarray:
    """The plain definition of a window's grid: t0 and the sample times in (t0, t1], sorted and unique."""
    parts = [np.array([t0])] + [s.ts[(s.ts > t0) & (s.ts <= t1)] for s in series]
    return np.unique(np.concatenate(parts))


def _reference_held(s: Series, taus: np.ndarray) -> np.ndarray:
    """The plain definition of held values: the last sample at or before each time, NaN before the first."""
    out = np.full(taus.shape, math.nan)
    for k, tau in enumerate(taus):
        at_or_before = np.nonzero(s.ts <= tau)[0]
        if len(at_or_before):
            out[k] = s.values[at_or_before[-1]]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_window_primitives_equal_their_plain_definitions(seed: int) -> None:
    """The fast paths of `_grid` and `_held_many` (a sorted single series, no NaN fill past a series' first
    sample) give the plain definitions' arrays, with repeated timestamps, windows that start before a series'
    first sample, and empty windows."""
    from models.features import _grid, _held_many

    rng = np.random.default_rng(seed)
    series = []
    for _ in range(3):
        ts = np.sort(np.round(rng.uniform(100.0, 200.0, rng.integers(0, 40)), 0))  # rounding repeats times
        series.append(Series(ts, rng.normal(size=len(ts))))
    for _ in range(20):
        t0 = float(rng.uniform(50.0, 210.0))
        t1 = t0 + float(rng.choice([0.0, 1.0, 30.0, 200.0]))
        for chosen in ([series[0]], [series[1]], series[:2], series):
            grid = _grid(t0, t1, *chosen)
            np.testing.assert_array_equal(grid, _reference_grid(t0, t1, *chosen))
            for s in chosen:
                np.testing.assert_array_equal(_held_many(s, grid), _reference_held(s, grid))
