"""Metrics for the three models, always beside their baselines.

- SOC drop (regression): MAE in pp (and kWh) of the model, persistence (the last hour's drop) and physics (the
  last 15 minutes' mean pack power held for an hour), on in-scope windows (`Windows.regression_scope`).
- Large drop (classification): ROC-AUC and Brier score, a reliability table; the baselines' pp forecasts
  serve as scores for their AUC.
- Fault risk: event-level, in models.fault_events (onsets flagged ahead, false alarm episodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from models.dataset import Windows, persistence_pp, physics_pp
from models.features import FloatArray


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
