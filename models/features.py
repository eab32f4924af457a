"""Model features: every feature defined once, over irregular sample series with the last value held.

The agent sees samples `(ts, canonical name, value)` after the catalog's sampling policy (minimum interval,
deadband, heartbeat), so a signal is a step function: its value is the last sample at or before a time.
Every feature is a pure function of those step functions at one instant `t` (`compute_features`), and two
callers feed it the same series:

- the agent: `FeatureWindow` takes samples as they arrive, keeps ~20 minutes per signal and an hour of a few
  signals thinned to one sample per 10 s (bounded memory), and answers `features_at(t)`;
- training and evaluation: `features_for_recording` computes the features of a whole recording at many
  instants from the full (unpruned) series.

Both paths agree exactly (tests/unit/test_features.py). A model carries `FEATURE_NAMES` and `FEATURE_VERSION`
in its metadata; change either whenever a definition changes.

Conventions: `*_drop_*` is positive when SOC falls; windows end at `t` (now) and reach back 1, 15 or (from the
thinned histories of `HISTORY_SIGNALS`) 60 minutes; a feature whose inputs are missing is NaN
(HistGradientBoosting and its ONNX export route NaN explicitly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from haversine import Unit, haversine_vector

from protocols.signals import (
    AMBIENT,
    CELL_TEMP_MAX,
    CELL_TEMP_MIN,
    CELL_V_MAX,
    CELL_V_MIN,
    DERATED,
    DISCHARGE_LIMIT,
    FAULT_FLAGS,
    HVAC_POWER,
    INSULATION,
    LATITUDE,
    LONGITUDE,
    ODOMETER,
    PACK_CURRENT,
    PACK_VOLTAGE,
    SOC,
    SOH,
    SPEED,
)

FloatArray = npt.NDArray[np.float64]

FEATURE_VERSION = "3"

# -- input signals: canonical catalog names from protocols.signals ---------------------------------------

INPUT_SIGNALS: tuple[str, ...] = (
    SPEED,
    ODOMETER,
    LATITUDE,
    LONGITUDE,
    AMBIENT,
    HVAC_POWER,
    SOC,
    SOH,
    PACK_VOLTAGE,
    PACK_CURRENT,
    CELL_TEMP_MAX,
    CELL_TEMP_MIN,
    CELL_V_MAX,
    CELL_V_MIN,
    INSULATION,
    DERATED,
    DISCHARGE_LIMIT,
    *FAULT_FLAGS,
)
HISTORY_SIGNALS: tuple[str, ...] = (
    SOC,
    CELL_TEMP_MAX,
    INSULATION,
    CELL_V_MAX,
    CELL_V_MIN,
    PACK_CURRENT,
)  # an hour, thinned

# -- windows -----------------------------------------------------------------------------------------------
SHORT_S = 60.0
LONG_S = 900.0
KEEP_S = 1200.0  # FeatureWindow keeps this much history per signal (plus the sample holding at its start)
HISTORY_S = 3600.0  # hour-long references: the previous hour's SOC drop (the persistence baseline), and the
# slow faults' trends (a cooling loss heats the pack for an hour; insulation decays with a time constant of
# 20 minutes to hours; a leaking cell falls behind the others for hours), which a 15-minute window barely
# sees
HISTORY_SPACING_S = 10.0  # ...kept thinned: one sample per 10 s at most (≤ 362 values a signal)
MOVING_KMH = 2.0  # moving vs idle, as fleet analysts split it
MAX_PLAUSIBLE_KMH = 250.0  # a GPS leg implying more than this is a jump, not travel
MIN_RATE_DISTANCE_KM = 0.5  # kWh/km only over at least this distance
INSULATION_WARNING_KOHM_PER_V = 0.5  # insulation monitors warn below 500 Ohm/V (UN ECE R100, ISO 6469-1)
INSULATION_HORIZON_H = 24.0  # hours-to-warning when insulation is not decaying: "not today"
# Cell balance is judged near rest, where a cell's voltage is its open-circuit voltage and so its state of
# charge: under load the spread also holds each cell's I·R, which says nothing of balance. Below ~C/5 (about
# 100 A for a 300 kWh, 600 V bus pack), as BMSs judge it.
LOW_CURRENT_A = 100.0

# name → unit; the order is the model input order
FEATURES: tuple[tuple[str, str], ...] = (
    ("local_hour", "h"),
    ("speed_mean_1min_kmh", "km/h"),
    ("speed_max_1min_kmh", "km/h"),
    ("moving_share_1min", "1"),
    ("distance_1min_km", "km"),
    ("gps_distance_1min_km", "km"),
    ("speed_mean_15min_kmh", "km/h"),
    ("moving_share_15min", "1"),
    ("distance_15min_km", "km"),
    ("gps_distance_15min_km", "km"),
    ("soc_pct", "%"),
    ("soc_mean_1min_pct", "%"),
    ("soc_drop_15min_pp", "pp"),
    ("soc_drop_60min_pp", "pp"),
    ("soh_pct", "%"),
    ("pack_voltage_v", "V"),
    ("pack_current_mean_1min_a", "A"),
    ("pack_current_max_1min_a", "A"),
    ("pack_power_mean_1min_kw", "kW"),
    ("pack_power_mean_15min_kw", "kW"),
    ("energy_rate_15min_kwh_per_km", "kWh/km"),
    ("cell_temp_max_c", "degC"),
    ("cell_temp_spread_c", "K"),
    ("cell_temp_rise_15min_c", "K"),
    ("cell_voltage_min_v", "V"),
    ("cell_voltage_spread_mv", "mV"),
    ("cell_voltage_spread_change_15min_mv", "mV"),
    ("ambient_c", "degC"),
    ("hvac_power_mean_15min_kw", "kW"),
    ("insulation_kohm", "kOhm"),
    ("insulation_ratio_15min", "1"),
    ("discharge_limit_kw", "kW"),
    ("derate_active", "bool"),
    ("bms_fault_active", "bool"),
    ("cell_temp_rise_60min_c", "K"),
    ("cell_temp_above_ambient_c", "K"),
    ("cell_voltage_spread_min_15min_mv", "mV"),
    ("insulation_ratio_60min", "1"),
    ("insulation_hours_to_warning", "h"),
    ("cell_voltage_spread_min_change_60min_mv", "mV"),
    ("cell_voltage_spread_low_current_15min_mv", "mV"),
    ("cell_voltage_spread_low_current_max_15min_mv", "mV"),
    ("cell_voltage_spread_low_current_change_30min_mv", "mV"),
    ("cell_voltage_spread_low_current_change_60min_mv", "mV"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(n for n, _ in FEATURES)
FEATURE_UNITS: dict[str, str] = dict(FEATURES)
N_FEATURES = len(FEATURES)
_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}
NAN = math.nan


def feature_index(name: str) -> int:
    return _INDEX[name]


@dataclass(frozen=True, slots=True)
class Series:
    """One signal as a step function: sample times (ascending, seconds) and values."""

    ts: FloatArray
    values: FloatArray

    @classmethod
    def empty(cls) -> Series:
        return cls(np.empty(0), np.empty(0))


_EMPTY = Series.empty()


# -- step-function primitives ------------------------------------------------------------------------------
# Arrays here are short (a window of one signal), so the cost is numpy's per-call overhead: the primitives use
# array methods (not the `np.` wrappers) and skip work whose result is known (a sorted grid needs no sort, a
# grid past a series' first sample needs no NaN fill). The numbers are those of the plain formulation.
def held_at(s: Series, t: float) -> float:
    """The value holding at `t`: the last sample at or before it (NaN before the first)."""
    i = int(s.ts.searchsorted(t, side="right")) - 1
    return float(s.values[i]) if i >= 0 else NAN


def _held_many(s: Series, taus: FloatArray) -> FloatArray:
    """The values holding at ascending times `taus`."""
    idx = s.ts.searchsorted(taus, side="right") - 1
    if len(idx) and idx[0] >= 0:  # ascending: every tau is at or after the first sample
        return s.values[idx]
    out = np.full(taus.shape, NAN)
    ok = idx >= 0
    out[ok] = s.values[idx[ok]]
    return out


def _grid(t0: float, t1: float, *series: Series) -> FloatArray:
    """`t0` and every sample time in (t0, t1] of the given series, ascending and unique."""
    if len(series) == 1:  # one series: its times after t0 are ascending already
        ts = series[0].ts
        lo, hi = ts.searchsorted((t0, t1), side="right")
        grid = np.empty(hi - lo + 1)
        grid[0] = t0
        grid[1:] = ts[lo:hi]
    else:
        parts = [np.array([t0])]
        for s in series:
            lo, hi = s.ts.searchsorted((t0, t1), side="right")
            parts.append(s.ts[lo:hi])
        grid = np.concatenate(parts)
        grid.sort()
    if len(grid) < 2:
        return grid
    new = grid[1:] != grid[:-1]
    return grid if new.all() else grid[np.concatenate(([True], new))]


def _durations(grid: FloatArray, t1: float) -> FloatArray:
    d = np.empty(len(grid))
    d[:-1] = grid[1:] - grid[:-1]
    d[-1] = t1 - grid[-1]
    return d


def _time_mean(grid: FloatArray, values: FloatArray, t1: float) -> float:
    """Time-weighted mean of a step function on [grid[0], t1], over the part where it is defined."""
    d = _durations(grid, t1)
    ok = ~np.isnan(values)
    total = float(d[ok].sum())
    if total <= 0.0:
        return float(values[ok][-1]) if ok.any() else NAN
    return float((d[ok] * values[ok]).sum() / total)


def mean_over(s: Series, t0: float, t1: float) -> float:
    grid = _grid(t0, t1, s)
    return _time_mean(grid, _held_many(s, grid), t1)


def max_over(s: Series, t0: float, t1: float) -> float:
    grid = _grid(t0, t1, s)
    v = _held_many(s, grid)
    return float(np.nanmax(v)) if (~np.isnan(v)).any() else NAN


def share_above(s: Series, t0: float, t1: float, threshold: float) -> float:
    grid = _grid(t0, t1, s)
    v = _held_many(s, grid)
    ok = ~np.isnan(v)
    d = _durations(grid, t1)[ok]
    total = float(d.sum())
    if total <= 0.0:
        return float(v[ok][-1] > threshold) if ok.any() else NAN
    return float(d[v[ok] > threshold].sum() / total)


def product_mean_over(a: Series, b: Series, t0: float, t1: float, scale: float = 1.0) -> tuple[float, float]:
    """Mean of a(t)·b(t)·scale over [t0, t1] and its integral in unit·hours."""
    grid = _grid(t0, t1, a, b)
    p = _held_many(a, grid) * _held_many(b, grid) * scale
    d = _durations(grid, t1)
    ok = ~np.isnan(p)
    integral_h = float((d[ok] * p[ok]).sum()) / 3600.0
    return _time_mean(grid, p, t1), integral_h


def min_difference_over(a: Series, b: Series, t0: float, t1: float) -> float:
    """Smallest a(t) - b(t) over [t0, t1] (NaN where either is unknown)."""
    grid = _grid(t0, t1, a, b)
    d = _held_many(a, grid) - _held_many(b, grid)
    return float(np.nanmin(d)) if (~np.isnan(d)).any() else NAN


def low_current_spread_mv(
    vmax: Series, vmin: Series, amps: Series, t0: float, t1: float
) -> tuple[float, float]:
    """Time-weighted mean and largest cell-voltage spread (mV) over [t0, t1] while |current| is below
    LOW_CURRENT_A (NaN, NaN when it never was)."""
    grid = _grid(t0, t1, vmax, vmin, amps)
    spread = (_held_many(vmax, grid) - _held_many(vmin, grid)) * 1000.0
    near_rest = ~np.isnan(spread) & (np.abs(_held_many(amps, grid)) < LOW_CURRENT_A)
    if not near_rest.any():
        return NAN, NAN
    d = _durations(grid, t1)[near_rest]
    v = spread[near_rest]
    total = float(d.sum())
    mean = float((d * v).sum() / total) if total > 0.0 else float(v[-1])
    return mean, float(v.max())


def change_over(s: Series, t0: float, t1: float) -> float:
    """Value at t1 minus value at t0 (NaN unless both are held)."""
    return held_at(s, t1) - held_at(s, t0)


def gps_distance_km(lat: Series, lon: Series, t0: float, t1: float) -> float:
    """Path length through the held positions in [t0, t1], legs implying > MAX_PLAUSIBLE_KMH left out."""
    grid = _grid(t0, t1, lat, lon)
    la, lo = _held_many(lat, grid), _held_many(lon, grid)
    ok = ~(np.isnan(la) | np.isnan(lo))
    if ok.sum() < 1:
        return NAN
    g, la, lo = grid[ok], la[ok], lo[ok]
    if len(g) < 2:
        return 0.0
    fixes = np.column_stack((la, lo))
    legs = haversine_vector(fixes[:-1], fixes[1:], Unit.KILOMETERS, check=False)
    hours = np.diff(g) / 3600.0
    plausible = legs <= MAX_PLAUSIBLE_KMH * hours
    return float(legs[plausible].sum())


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0.0 and not math.isnan(a) else NAN


def _distance(odo: Series, t0: float, t1: float) -> float:
    d = change_over(odo, t0, t1)
    return d if d >= 0.0 else NAN  # an odometer that went back (reset, swap) says nothing


# -- the features ------------------------------------------------------------------------------------------
def compute_features(
    series: Mapping[str, Series], histories: Mapping[str, Series], t: float, utc_offset_h: float = 0.0
) -> FloatArray:
    """All features at instant `t` (Unix seconds), in `FEATURE_NAMES` order.

    `series` maps canonical names to step functions holding at least the last KEEP_S seconds before `t`
    (and the sample holding at their start); `histories` maps each of `HISTORY_SIGNALS` to `thin_history`
    of its samples, reaching HISTORY_S back.
    """

    def hist(name: str) -> Series:
        return histories.get(name, _EMPTY)

    def s(name: str) -> Series:
        return series.get(name, _EMPTY)

    t1m, t15 = t - SHORT_S, t - LONG_S
    out = np.full(N_FEATURES, NAN)
    speed, odo, soc = s(SPEED), s(ODOMETER), s(SOC)
    out[0] = ((t / 3600.0) + utc_offset_h) % 24.0
    out[1] = mean_over(speed, t1m, t)
    out[2] = max_over(speed, t1m, t)
    out[3] = share_above(speed, t1m, t, MOVING_KMH)
    out[4] = _distance(odo, t1m, t)
    out[5] = gps_distance_km(s(LATITUDE), s(LONGITUDE), t1m, t)
    out[6] = mean_over(speed, t15, t)
    out[7] = share_above(speed, t15, t, MOVING_KMH)
    dist15 = _distance(odo, t15, t)
    out[8] = dist15
    out[9] = gps_distance_km(s(LATITUDE), s(LONGITUDE), t15, t)
    soc_now = held_at(soc, t)
    out[10] = soc_now
    out[11] = mean_over(soc, t1m, t)
    out[12] = held_at(soc, t15) - soc_now
    t60 = t - HISTORY_S
    out[13] = held_at(hist(SOC), t60) - soc_now
    out[14] = held_at(s(SOH), t)
    volt, amps = s(PACK_VOLTAGE), s(PACK_CURRENT)
    out[15] = held_at(volt, t)
    out[16] = mean_over(amps, t1m, t)
    out[17] = max_over(amps, t1m, t)
    out[18] = product_mean_over(volt, amps, t1m, t, 1e-3)[0]
    p15, e15_kwh = product_mean_over(volt, amps, t15, t, 1e-3)
    out[19] = p15
    out[20] = e15_kwh / dist15 if dist15 >= MIN_RATE_DISTANCE_KM else NAN
    tmax, tmin = s(CELL_TEMP_MAX), s(CELL_TEMP_MIN)
    out[21] = held_at(tmax, t)
    out[22] = out[21] - held_at(tmin, t)
    out[23] = change_over(tmax, t15, t)
    vmax, vmin = s(CELL_V_MAX), s(CELL_V_MIN)
    out[24] = held_at(vmin, t)
    spread_now = (held_at(vmax, t) - held_at(vmin, t)) * 1000.0
    out[25] = spread_now
    out[26] = spread_now - (held_at(vmax, t15) - held_at(vmin, t15)) * 1000.0
    out[27] = held_at(s(AMBIENT), t)
    out[28] = mean_over(s(HVAC_POWER), t15, t)
    iso = s(INSULATION)
    out[29] = held_at(iso, t)
    out[30] = _ratio(out[29], held_at(iso, t15))
    out[31] = held_at(s(DISCHARGE_LIMIT), t)
    out[32] = held_at(s(DERATED), t)
    flags = [held_at(s(f), t) for f in FAULT_FLAGS]
    known = [f for f in flags if not math.isnan(f)]
    out[33] = float(max(known) > 0.5) if known else NAN
    # slow faults: their trends over the hour (cooling loss, insulation decay) and imbalance without load
    out[34] = out[21] - held_at(hist(CELL_TEMP_MAX), t60)
    out[35] = out[21] - out[27]
    out[36] = min_difference_over(vmax, vmin, t15, t) * 1000.0
    out[37] = _ratio(out[29], held_at(hist(INSULATION), t60))
    out[38] = _hours_to_warning(out[29], out[37], out[15])
    spread_floor_60 = min_difference_over(hist(CELL_V_MAX), hist(CELL_V_MIN), t60 - LONG_S, t60) * 1000.0
    out[39] = out[36] - spread_floor_60
    # cell imbalance: the spread near rest (the cells' open-circuit voltages, so their charge) and its growth
    # over half an hour and an hour (a leaking cell falls behind ever faster, and faster still in the knee of
    # its voltage curve), the older windows and now both from the thinned histories
    out[40], out[41] = low_current_spread_mv(vmax, vmin, amps, t15, t)
    hv = (hist(CELL_V_MAX), hist(CELL_V_MIN), hist(PACK_CURRENT))
    rest_now = low_current_spread_mv(*hv, t15, t)[0]
    t30 = t - 2.0 * LONG_S
    out[42] = rest_now - low_current_spread_mv(*hv, t30 - LONG_S, t30)[0]
    out[43] = rest_now - low_current_spread_mv(*hv, t60 - LONG_S, t60)[0]
    return out


def _hours_to_warning(insulation_kohm: float, ratio_60min: float, pack_v: float) -> float:
    """Hours until insulation falls below the monitor's warning level, extrapolating the last hour's
    exponential decay (water ingress, a chafed cable); 0 below it, INSULATION_HORIZON_H when not decaying."""
    limit_kohm = INSULATION_WARNING_KOHM_PER_V * pack_v
    if math.isnan(insulation_kohm) or math.isnan(limit_kohm) or limit_kohm <= 0.0:
        return NAN
    if insulation_kohm <= limit_kohm:
        return 0.0
    if math.isnan(ratio_60min) or ratio_60min <= 0.0 or ratio_60min >= 1.0:
        return INSULATION_HORIZON_H
    return min(INSULATION_HORIZON_H, math.log(insulation_kohm / limit_kohm) / -math.log(ratio_60min))


def thin_history(ts: Iterable[float], values: Iterable[float]) -> Series:
    """The samples kept for an hour-long reference: the first, then each one at least HISTORY_SPACING_S
    after the last kept (the same rule `FeatureWindow` applies as samples arrive)."""
    kt: list[float] = []
    kv: list[float] = []
    for t, v in zip(ts, values, strict=True):
        if not kt or t >= kt[-1] + HISTORY_SPACING_S:
            kt.append(t)
            kv.append(v)
    return Series(np.array(kt, dtype=np.float64), np.array(kv, dtype=np.float64))


def features_for_recording(
    samples: Mapping[str, Series], times: Iterable[float], utc_offset_h: float = 0.0
) -> FloatArray:
    """Features at each of `times` from whole recorded series (the training and evaluation path)."""
    histories = {}
    for name in HISTORY_SIGNALS:
        s = samples.get(name, _EMPTY)
        histories[name] = thin_history(s.ts.tolist(), s.values.tolist())
    rows = [compute_features(samples, histories, t, utc_offset_h) for t in times]
    return np.vstack(rows) if rows else np.empty((0, N_FEATURES))


# -- the stream path ---------------------------------------------------------------------------------------
class _Buffer:
    """Samples of one signal, oldest first, pruned to a horizon; arrays built lazily for the features."""

    __slots__ = ("_cache", "ts", "values")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.values: list[float] = []
        self._cache: Series | None = None

    def append(self, ts: float, value: float) -> None:
        self.ts.append(ts)
        self.values.append(value)
        self._cache = None

    def shift(self, by_s: float) -> None:
        self.ts = [t + by_s for t in self.ts]
        self._cache = None

    def prune_before(self, horizon: float) -> None:
        """Drop samples older than `horizon`, keeping the one that holds at it."""
        i = 0
        n = len(self.ts)
        while i + 1 < n and self.ts[i + 1] <= horizon:
            i += 1
        if i:
            del self.ts[:i]
            del self.values[:i]
            self._cache = None

    def series(self) -> Series:
        if self._cache is None:
            self._cache = Series(np.array(self.ts, dtype=np.float64), np.array(self.values, dtype=np.float64))
        return self._cache

    def __len__(self) -> int:
        return len(self.ts)


class FeatureWindow:
    """The live feature state of one vehicle: feed samples with `add`, ask `features_at(t)`.

    Memory is bounded: per signal, the samples of the last KEEP_S seconds (plus the one holding at the start),
    and for each of HISTORY_SIGNALS a history thinned to one value per HISTORY_SPACING_S over HISTORY_S. A
    sample older than the latest of its signal (a source clock stepping back) is dropped and counted in
    `out_of_order`. Results are exact for `t` no earlier than the newest sample minus (KEEP_S - LONG_S).
    """

    def __init__(self, utc_offset_h: float = 0.0, signals: Iterable[str] = INPUT_SIGNALS) -> None:
        self.utc_offset_h = utc_offset_h
        self._buffers: dict[str, _Buffer] = {name: _Buffer() for name in signals}
        self._histories: dict[str, _Buffer] = {name: _Buffer() for name in HISTORY_SIGNALS if name in signals}
        self._newest = -math.inf
        self._since_prune = 0
        self.out_of_order = 0

    def add(self, ts: float, signal: str, value: float) -> None:
        buf = self._buffers.get(signal)
        if buf is None or math.isnan(value):
            return
        if buf.ts and ts < buf.ts[-1]:
            self.out_of_order += 1
            return
        buf.append(ts, value)
        hist = self._histories.get(signal)
        if hist is not None and (not hist.ts or ts >= hist.ts[-1] + HISTORY_SPACING_S):
            hist.append(ts, value)
        if ts > self._newest:
            self._newest = ts
        self._since_prune += 1
        if self._since_prune >= 256:
            self.prune()

    def shift(self, by_s: float) -> None:
        """Move everything held by `by_s` seconds: the stream's clock was stepped (back) and stayed there,
        and what was seen before it belongs to the minutes just before the new stamps."""
        for buf in (*self._buffers.values(), *self._histories.values()):
            buf.shift(by_s)
        self._newest += by_s

    def add_many(self, samples: Iterable[tuple[float, str, float]]) -> None:
        for ts, signal, value in samples:
            self.add(ts, signal, value)

    def prune(self) -> None:
        self._since_prune = 0
        horizon = self._newest - KEEP_S
        for buf in self._buffers.values():
            buf.prune_before(horizon)
        for hist in self._histories.values():
            hist.prune_before(self._newest - HISTORY_S - KEEP_S)

    def features_at(self, t: float) -> FloatArray:
        self.prune()
        series = {name: buf.series() for name, buf in self._buffers.items() if len(buf)}
        histories = {name: buf.series() for name, buf in self._histories.items()}
        return compute_features(series, histories, t, self.utc_offset_h)

    def sample_count(self) -> int:
        """Samples held now (for the memory bound)."""
        return sum(len(b) for b in self._buffers.values()) + sum(len(b) for b in self._histories.values())
