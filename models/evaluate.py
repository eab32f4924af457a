"""Metrics for the three models, always beside their baselines.

- SOC drop (regression): MAE in pp (and kWh) of the model, persistence (the last hour's drop) and physics (the
  last 15 minutes' mean pack power held for an hour), on in-scope windows (`Windows.regression_scope`).
- Large drop (classification): ROC-AUC and Brier score, a reliability table; the baselines' pp forecasts
  serve as scores for their AUC.
- Fault risk: per fault onset (a BMS fault or derate flag going from clear to set), whether an alarm
  (p ≥ threshold) was raised 10 to 30 minutes before it; false alarms per 100 bus-hours, where an alarm
  episode is a run of consecutive alarmed windows and is false when no onset follows within 30 minutes of
  its start. Windows where a BMS fault or derate is already active are left out: the BMS is alerting then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score

from models.dataset import Windows, persistence_pp, physics_pp
from models.features import FloatArray

FAULT_WINDOW_S = 1800.0
MIN_LEAD_S = 600.0


def mae(y: FloatArray, p: FloatArray) -> float:
    ok = ~(np.isnan(y) | np.isnan(p))
    return float(np.mean(np.abs(y[ok] - p[ok]))) if ok.any() else math.nan


def roc_auc(y: FloatArray, score: FloatArray) -> float:
    """ROC-AUC over the windows where both are known; NaN with one class only."""
    ok = ~(np.isnan(y) | np.isnan(score))
    if len(set(y[ok].tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y[ok], score[ok]))


def brier(y: FloatArray, p: FloatArray) -> float:
    ok = ~(np.isnan(y) | np.isnan(p))
    return float(np.mean((p[ok] - y[ok]) ** 2)) if ok.any() else math.nan


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    lo: float
    hi: float
    count: int
    mean_predicted: float
    observed_rate: float


def reliability(y: FloatArray, p: FloatArray, bins: int = 10) -> list[ReliabilityBin]:
    out = []
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k in range(bins):
        lo, hi = edges[k], edges[k + 1]
        m = (p >= lo) & ((p < hi) if k < bins - 1 else (p <= hi)) & ~np.isnan(y)
        if m.any():
            out.append(ReliabilityBin(lo, hi, int(m.sum()), float(p[m].mean()), float(y[m].mean())))
    return out


@dataclass(frozen=True, slots=True)
class RegressionReport:
    n: int
    groups: int
    mae_model_pp: float
    mae_persistence_pp: float
    mae_physics_pp: float
    mae_model_kwh: float
    mean_drop_pp: float

    @property
    def better_baseline_pp(self) -> float:
        vals = [v for v in (self.mae_persistence_pp, self.mae_physics_pp) if not math.isnan(v)]
        return min(vals) if vals else math.nan

    @property
    def improvement(self) -> float:
        """Fraction by which the model's MAE is below the better baseline's."""
        return 1.0 - self.mae_model_pp / self.better_baseline_pp

    def lines(self) -> list[str]:
        return [
            f"windows {self.n} in {self.groups} groups, mean drop {self.mean_drop_pp:.2f} pp",
            f"MAE model        {self.mae_model_pp:6.2f} pp ({self.mae_model_kwh:.1f} kWh)",
            f"MAE persistence  {self.mae_persistence_pp:6.2f} pp",
            f"MAE physics      {self.mae_physics_pp:6.2f} pp",
            f"model vs better baseline: {100 * self.improvement:+.1f} % lower MAE (target: >= 30 %)",
        ]


def regression_report(w: Windows, pred_pp: FloatArray) -> RegressionReport:
    y = w.drop_pp
    return RegressionReport(
        n=len(w),
        groups=len(set(w.group.tolist())),
        mae_model_pp=mae(y, pred_pp),
        mae_persistence_pp=mae(y, persistence_pp(w)),
        mae_physics_pp=mae(y, physics_pp(w)),
        mae_model_kwh=mae(w.drop_kwh, pred_pp * w.usable_kwh / 100.0),
        mean_drop_pp=float(np.nanmean(y)) if len(y) else math.nan,
    )


@dataclass(frozen=True, slots=True)
class ClassifierReport:
    n: int
    positive_rate: float
    auc_model: float
    auc_persistence: float
    auc_physics: float
    brier_model: float
    brier_climatology: float  # always predicting the base rate
    bins: list[ReliabilityBin]

    def lines(self) -> list[str]:
        out = [
            f"windows {self.n}, positive rate {self.positive_rate:.3f}",
            f"ROC-AUC model {self.auc_model:.3f} | persistence {self.auc_persistence:.3f} | "
            f"physics {self.auc_physics:.3f} (target: >= 0.9)",
            f"Brier model {self.brier_model:.4f} | base rate {self.brier_climatology:.4f}",
            "reliability: predicted bin -> count, mean predicted, observed",
        ]
        out += [
            f"  [{b.lo:.1f}, {b.hi:.1f}) {b.count:6d} {b.mean_predicted:.3f} {b.observed_rate:.3f}"
            for b in self.bins
        ]
        return out


def classifier_report(w: Windows, prob: FloatArray) -> ClassifierReport:
    y = w.large
    rate = float(np.nanmean(y)) if len(y) else math.nan
    return ClassifierReport(
        n=len(w),
        positive_rate=rate,
        auc_model=roc_auc(y, prob),
        auc_persistence=roc_auc(y, persistence_pp(w)),
        auc_physics=roc_auc(y, physics_pp(w)),
        brier_model=brier(y, prob),
        brier_climatology=brier(y, np.full(len(y), rate)),
        bins=reliability(y, prob),
    )


# -- fault risk --------------------------------------------------------------------------------------------
def fault_scope(w: Windows) -> npt.NDArray[np.bool_]:
    """Windows with a fault label and no BMS fault or derate active now."""
    active = (np.nan_to_num(w.feature("bms_fault_active")) > 0.5) | (
        np.nan_to_num(w.feature("derate_active")) > 0.5
    )
    return np.asarray(~np.isnan(w.fault) & ~active)


@dataclass(frozen=True, slots=True)
class FaultReport:
    threshold: float
    onsets: int  # onsets with at least one in-scope window 10-30 min before them
    flagged: int  # ...of which an alarm was raised in that span
    injected_onsets: int
    injected_flagged: int
    false_alarms: int
    bus_hours: float
    auc: float
    brier: float
    lead_times_s: tuple[float, ...]  # earliest alarm before each flagged onset

    @property
    def flagged_share(self) -> float:
        return self.flagged / self.onsets if self.onsets else math.nan

    @property
    def false_alarms_per_100h(self) -> float:
        return 100.0 * self.false_alarms / self.bus_hours if self.bus_hours else math.nan

    def lines(self) -> list[str]:
        inj = self.injected_flagged / self.injected_onsets if self.injected_onsets else math.nan
        med = float(np.median(self.lead_times_s)) / 60.0 if self.lead_times_s else math.nan
        return [
            f"threshold {self.threshold:.3f}; window ROC-AUC {self.auc:.3f}, Brier {self.brier:.4f}",
            f"onsets flagged >= 10 min before: {self.flagged}/{self.onsets} "
            f"({100 * self.flagged_share:.0f} %); "
            f"with an injected fault: {self.injected_flagged}/{self.injected_onsets} ({100 * inj:.0f} %)",
            f"median lead of the first alarm: {med:.1f} min",
            f"false alarms: {self.false_alarms} in {self.bus_hours:.0f} bus-hours = "
            f"{self.false_alarms_per_100h:.2f} per 100 bus-hours (target: <= 1)",
        ]


def fault_report(w: Windows, prob: FloatArray, threshold: float, stride_s: float = 60.0) -> FaultReport:
    scope = fault_scope(w)
    onsets = flagged = inj_onsets = inj_flagged = false_alarms = 0
    leads: list[float] = []
    hours = 0.0
    for g in sorted(set(w.group.tolist())):
        m = (w.group == g) & scope
        ts, p, ttf, inj, y = w.ts[m], prob[m], w.time_to_fault_s[m], w.injected[m], w.fault[m]
        hours += len(ts) * stride_s / 3600.0
        alarm = p >= threshold
        # onsets seen from this group's windows
        on_times = sorted({round(t + d) for t, d in zip(ts, ttf, strict=True) if not math.isnan(d)})
        for onset in on_times:
            span = (ts >= onset - FAULT_WINDOW_S) & (ts <= onset - MIN_LEAD_S)
            if not span.any():
                continue
            near = np.abs(ts + ttf - onset) < 1.0
            injected = (
                bool(np.nanmax(inj[near]) > 0.5) if near.any() and not np.isnan(inj[near]).all() else False
            )
            hit = bool(alarm[span].any())
            onsets += 1
            flagged += hit
            inj_onsets += injected
            inj_flagged += hit and injected
            if hit:
                leads.append(float(onset - ts[span][alarm[span]].min()))
        # alarm episodes: runs of consecutive alarmed windows
        start = np.flatnonzero(
            alarm & ~np.concatenate([[False], alarm[:-1]]) | alarm & _gap_before(ts, stride_s)
        )
        false_alarms += int(sum(1 for i in start if not (y[i] > 0.5)))
    return FaultReport(
        threshold=threshold,
        onsets=onsets,
        flagged=flagged,
        injected_onsets=inj_onsets,
        injected_flagged=inj_flagged,
        false_alarms=false_alarms,
        bus_hours=hours,
        auc=roc_auc(w.fault[scope], prob[scope]),
        brier=brier(w.fault[scope], prob[scope]),
        lead_times_s=tuple(leads),
    )


def _gap_before(ts: FloatArray, stride_s: float) -> npt.NDArray[np.bool_]:
    gap = np.ones(len(ts), dtype=bool)
    if len(ts) > 1:
        gap[1:] = np.diff(ts) > 1.5 * stride_s
    return gap


def choose_fault_threshold(
    w: Windows, prob: FloatArray, max_false_per_100h: float = 1.0, stride_s: float = 60.0
) -> float:
    """The lowest threshold whose false-alarm rate stays within the budget (on the data given: use
    out-of-fold predictions of the training groups, never the test split)."""
    grid = np.concatenate([np.arange(0.05, 0.95, 0.01), np.arange(0.95, 0.999, 0.005)])
    for thr in np.round(grid, 3):
        if fault_report(w, prob, float(thr), stride_s).false_alarms_per_100h <= max_false_per_100h:
            return float(thr)
    return float(grid[-1])
