"""From raw traces to model windows: samples → features, targets, baselines, groups.

A trace (models.rawtable) is turned into the samples the agent would see — each signal passed through the
catalog's sampling policy (min interval / deadband / heartbeat, protocols/catalog.toml), empty cells skipped —
and `models.features.features_for_recording` computes the features every `stride_s` seconds on them. Targets
come from the trace's own full-rate rows, never from the sampled stream:

- `drop_pp`: reported SOC now minus reported SOC 60 minutes later (the trace must reach that far);
- `drop_kwh`: `drop_pp` × usable capacity / 100, usable = nominal × SOH (when reported) / 100;
- `large`: `drop_pp` ≥ the vehicle type's threshold (default 10 pp);
- `fault`: a BMS fault flag or the derate flag goes from clear to set within 30 minutes (simulator labels);
  unknown (NaN) in a trace's last 30 minutes when no onset comes before its end: the simulator's truth
  writes 0 there, but what the 30 minutes after the end would have held is not observed.

Windows are "in scope" when the vehicle moved in the 15 minutes before (an idle, parked bus is not what the
forecasts are for), the target is known, and the baselines can be computed. Groups are `vehicle/segment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.features import (
    FEATURE_NAMES,
    N_FEATURES,
    FloatArray,
    Series,
    feature_index,
    features_for_recording,
)
from models.rawtable import Trace
from protocols.catalog import SamplingPolicy, SignalSampler, load_catalog
from protocols.signals import SOC, SOH

HORIZON_S = 3600.0
FAULT_WINDOW_S = 1800.0  # the fault label's horizon (the truth's `fault_within_30min`)
LABELS_VERSION = 2  # 2: the fault label right-censored at the end of a trace; part of cached windows' names


@dataclass(frozen=True, slots=True)
class VehicleType:
    name: str
    nominal_kwh: float
    large_drop_pp: float = 10.0
    utc_offset_h: float = 0.0


EBUS_12M = VehicleType("ebus-12m", 300.0, 10.0, 3.0)  # the simulator's bus: 300 kWh LFP, Nairobi time
TWIZY = VehicleType("twizy", 6.1, 40.0, 0.0)  # Renault Twizy, 6.1 kWh: ~40 pp an hour of driving; local clock
VEHICLE_TYPES = {v.name: v for v in (EBUS_12M, TWIZY)}


@lru_cache(maxsize=1)
def catalog_policies() -> dict[str, SamplingPolicy]:
    return {spec.name: spec.policy for spec in load_catalog()}


def apply_policy(ts: FloatArray, values: FloatArray, policy: SamplingPolicy | None) -> Series:
    """The samples the agent keeps of a full-rate signal: the catalog's sampling policy, through the same
    `protocols.catalog.SignalSampler` the agent runs; NaN skipped."""
    ok = ~np.isnan(values)
    ts, values = ts[ok], values[ok]
    if policy is None or not len(ts):
        return Series(ts.astype(np.float64), values.astype(np.float64))
    offer = SignalSampler(policy).offer
    keep = [i for i, (t, v) in enumerate(zip(ts.tolist(), values.tolist(), strict=True)) if offer(t, v)]
    idx = np.array(keep, dtype=np.int64)
    return Series(ts[idx].astype(np.float64), values[idx].astype(np.float64))


def trace_samples(trace: Trace, policies: dict[str, SamplingPolicy] | None = None) -> dict[str, Series]:
    policies = catalog_policies() if policies is None else policies
    return {name: apply_policy(trace.ts, v, policies.get(name)) for name, v in trace.columns.items()}


def _held(ts: FloatArray, values: FloatArray, at: FloatArray, skip_missing: bool = True) -> FloatArray:
    """Values of the rows at or before `at`: the last known value, or (labels) the row's own, even empty."""
    if skip_missing:
        ok = ~np.isnan(values)
        ts, values = ts[ok], values[ok]
    idx = np.searchsorted(ts, at, side="right") - 1
    out = np.full(at.shape, math.nan)
    good = idx >= 0
    out[good] = values[idx[good]]
    return out


@dataclass
class Windows:
    """Model rows: features and targets at instants of many traces."""

    X: FloatArray  # (n, N_FEATURES)
    drop_pp: FloatArray
    drop_kwh: FloatArray
    large: FloatArray  # 0/1, NaN unknown
    fault: FloatArray  # 0/1, NaN unknown
    time_to_fault_s: FloatArray
    injected: FloatArray  # 1 when an injected (simulated) fault is active at the next onset
    ts: FloatArray
    group: npt.NDArray[np.str_]
    usable_kwh: FloatArray
    threshold_pp: float

    def __len__(self) -> int:
        return len(self.ts)

    def select(self, mask: npt.NDArray[np.bool_]) -> Windows:
        return Windows(
            self.X[mask],
            self.drop_pp[mask],
            self.drop_kwh[mask],
            self.large[mask],
            self.fault[mask],
            self.time_to_fault_s[mask],
            self.injected[mask],
            self.ts[mask],
            self.group[mask],
            self.usable_kwh[mask],
            self.threshold_pp,
        )

    def feature(self, name: str) -> FloatArray:
        return self.X[:, feature_index(name)]

    @property
    def moving(self) -> npt.NDArray[np.bool_]:
        return np.asarray(np.nan_to_num(self.feature("moving_share_15min")) > 0.0)

    def regression_scope(self) -> npt.NDArray[np.bool_]:
        return self.moving & ~np.isnan(self.drop_pp) & ~np.isnan(persistence_pp(self))

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            X=self.X,
            drop_pp=self.drop_pp,
            drop_kwh=self.drop_kwh,
            large=self.large,
            fault=self.fault,
            time_to_fault_s=self.time_to_fault_s,
            injected=self.injected,
            ts=self.ts,
            group=self.group,
            usable_kwh=self.usable_kwh,
            threshold_pp=np.array(self.threshold_pp),
            feature_names=np.array(FEATURE_NAMES),
        )

    @classmethod
    def load(cls, path: Path) -> Windows:
        z = np.load(path, allow_pickle=False)
        if tuple(z["feature_names"].tolist()) != FEATURE_NAMES:
            raise ValueError(f"{path}: computed with other features; recompute it")
        return cls(
            z["X"],
            z["drop_pp"],
            z["drop_kwh"],
            z["large"],
            z["fault"],
            z["time_to_fault_s"],
            z["injected"],
            z["ts"],
            z["group"],
            z["usable_kwh"],
            float(z["threshold_pp"]),
        )

    @classmethod
    def concat(cls, parts: list[Windows], threshold_pp: float) -> Windows:
        if not parts:
            e = np.empty(0)
            return cls(
                np.empty((0, N_FEATURES)), e, e, e, e, e, e, e, np.empty(0, dtype=str), e, threshold_pp
            )

        def cat(name: str) -> FloatArray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            np.vstack([p.X for p in parts]),
            cat("drop_pp"),
            cat("drop_kwh"),
            cat("large"),
            cat("fault"),
            cat("time_to_fault_s"),
            cat("injected"),
            cat("ts"),
            np.concatenate([p.group for p in parts]),
            cat("usable_kwh"),
            threshold_pp,
        )


def trace_windows(
    trace: Trace,
    vehicle: VehicleType,
    stride_s: float = 60.0,
    policies: dict[str, SamplingPolicy] | None = None,
) -> Windows:
    """Windows every `stride_s` seconds (on whole multiples of it) over a trace."""
    if not len(trace.ts):
        return Windows.concat([], vehicle.large_drop_pp)
    first = math.ceil(trace.ts[0] / stride_s) * stride_s
    times = np.arange(first, trace.ts[-1] + 1e-6, stride_s)
    x = features_for_recording(trace_samples(trace, policies), times.tolist(), vehicle.utc_offset_h)
    soc = trace.columns.get(SOC, np.full(len(trace.ts), math.nan))
    now = _held(trace.ts, soc, times)
    later = _held(trace.ts, soc, times + HORIZON_S)
    later[times + HORIZON_S > trace.ts[-1]] = math.nan
    drop = now - later
    soh = trace.columns.get(SOH)
    soh_now = _held(trace.ts, soh, times) if soh is not None else np.full(len(times), math.nan)
    usable = vehicle.nominal_kwh * np.where(np.isnan(soh_now), 100.0, soh_now) / 100.0
    large = np.where(np.isnan(drop), math.nan, (drop >= vehicle.large_drop_pp).astype(float))
    n = len(times)

    def label(name: str) -> FloatArray:
        v = trace.labels.get(name)
        return _held(trace.ts, v, times, skip_missing=False) if v is not None else np.full(n, math.nan)

    return Windows(
        x,
        drop,
        drop * usable / 100.0,
        large,
        censored_fault_label(label("fault_within_30min"), times, float(trace.ts[-1])),
        label("time_to_next_fault_s"),
        label("injected_fault"),
        times,
        np.full(n, trace.group),
        usable,
        vehicle.large_drop_pp,
    )


def censored_fault_label(fault: FloatArray, times: FloatArray, end_s: float) -> FloatArray:
    """`fault` with "no onset within 30 minutes" made unknown where those 30 minutes run past the trace."""
    return np.where((times + FAULT_WINDOW_S > end_s) & (fault == 0.0), math.nan, fault)


# -- baselines ---------------------------------------------------------------------------------------------
def persistence_pp(w: Windows) -> FloatArray:
    """The next hour drops as much as the last one did (the 15-minute drop × 4 before an hour of history)."""
    last_hour = w.feature("soc_drop_60min_pp")
    quarter = w.feature("soc_drop_15min_pp") * 4.0
    return np.where(np.isnan(last_hour), quarter, last_hour)


def physics_pp(w: Windows) -> FloatArray:
    """Mean pack power of the last 15 minutes held for an hour: kWh / usable kWh, in pp."""
    return w.feature("pack_power_mean_15min_kw") * 1.0 / w.usable_kwh * 100.0
