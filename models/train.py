"""Training: windows of many traces → three gradient-boosted tree models, split by vehicle.

Hyperparameters are fixed here (never tuned on the test split). The SOC models' split holds out whole vehicles
(a simulated bus's days all fall on one side), so no window of a held-out bus or day leaks into training.
The fault-risk model learns from every bus of the training fleet: its held-out evaluation is a fleet of its
own (models.simulate.HOLDOUT_FLEET: other buses, other days). Its alarm threshold is chosen on out-of-fold
predictions over the training buses (GroupKFold by bus), for the false-alarm budget, never on held-out data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold

from models.dataset import VehicleType, Windows, trace_windows
from models.fault_events import (
    FaultReport,
    choose_fault_threshold,
    developing_fault_target,
    fault_report,
    fault_scope,
)
from models.rawtable import CleaningReport, TableError, read_table

log = logging.getLogger("models.train")

TREE_PARAMS: dict[str, int | float] = {
    "max_iter": 200,
    "learning_rate": 0.05,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
}
TEST_SHARE = 0.2
FAULT_FOLDS = 10  # fold models that see 90 % of the buses score closer to the refit that ships


def regressor(seed: int) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(loss="absolute_error", random_state=seed, **TREE_PARAMS)


def classifier(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(random_state=seed, **TREE_PARAMS)


def trainable(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`x` with all-missing columns set to 0: scikit-learn's binning fails on a column without a value
    (a tree then never splits on it, so what the column holds at prediction time does not matter)."""
    empty = np.isnan(x).all(axis=0)
    if not empty.any():
        return x
    x = x.copy()
    x[:, empty] = 0.0
    return x


def _windows_of_file(
    path: Path, vehicle: VehicleType, stride_s: float, column_map: Mapping[str, str] | None = None
) -> tuple[Windows, CleaningReport]:
    report = CleaningReport()
    traces = read_table(path, report, column_map)
    return Windows.concat(
        [trace_windows(t, vehicle, stride_s) for t in traces], vehicle.large_drop_pp
    ), report


def build_windows(
    files: list[Path],
    vehicle: VehicleType,
    stride_s: float = 60.0,
    jobs: int = 2,
    progress: Callable[[str], None] | None = None,
    column_map: Mapping[str, str] | None = None,
) -> tuple[Windows, CleaningReport]:
    """Windows of every table file (in `jobs` processes)."""
    parts: list[Windows] = []
    total = CleaningReport()
    work = partial(_windows_of_file, vehicle=vehicle, stride_s=stride_s, column_map=column_map)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for k, (w, rep) in enumerate(pool.map(work, files), 1):
            parts.append(w)
            total.add(rep)
            if progress and (k % 5 == 0 or k == len(files)):
                progress(f"features: {k}/{len(files)} tables, {sum(len(p) for p in parts)} windows")
    return Windows.concat(parts, vehicle.large_drop_pp), total


def vehicle_of(groups: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.array([g.split("/")[0] for g in groups.tolist()])


@dataclass(frozen=True)
class HeldOut:
    """The held-out (test) windows and what was held out: whole vehicles, or with a single vehicle
    whole recordings (its trips or days)."""

    mask: npt.NDArray[np.bool_]
    unit: str  # "vehicle" | "recording"
    names: list[str]


def split_held_out(w: Windows, seed: int, test_share: float = TEST_SHARE) -> HeldOut:
    """Hold out `test_share` of the vehicles that have windows with a 60-minute target (seeded), or of
    the recordings when only one vehicle has any. `TableError` when fewer than two recordings have one:
    nothing could be trained and scored apart."""
    scope = w.regression_scope()
    vehicles = vehicle_of(w.group)
    for unit, keys in (("vehicle", vehicles), ("recording", w.group)):
        candidates = sorted(set(keys[scope].tolist()))
        if len(candidates) >= 2:
            rng = np.random.default_rng(seed)
            n_test = max(1, round(test_share * len(candidates)))
            test = sorted(rng.permutation(candidates)[:n_test].tolist())
            return HeldOut(np.isin(keys, test), unit, test)
    raise TableError(
        f"{len(set(w.group[scope].tolist()))} recording(s) with a window that has a 60-minute target (the "
        "vehicle moved in the 15 minutes before and its SOC is known an hour later); training and a held-out "
        f"score need two or more (the longest recording: {longest_minutes(w):.0f} minutes)"
    )


def longest_minutes(w: Windows) -> float:
    """The longest recording's span of windows, in minutes."""
    spans = [np.ptp(w.ts[w.group == g]) for g in set(w.group.tolist())]
    return float(max(spans, default=0.0)) / 60.0


@dataclass
class Trained:
    soc_drop: HistGradientBoostingRegressor
    large_drop: HistGradientBoostingClassifier
    fault_risk: HistGradientBoostingClassifier | None
    fault_threshold: float
    fault_oof: FaultReport | None  # out-of-fold, at the chosen threshold: what the choice rests on
    train_mask: npt.NDArray[np.bool_]
    test_mask: npt.NDArray[np.bool_]
    held_out: HeldOut


def fit_soc_models(
    w: Windows, seed: int
) -> tuple[HistGradientBoostingRegressor, HistGradientBoostingClassifier]:
    scope = w.regression_scope()
    reg = regressor(seed).fit(trainable(w.X[scope]), w.drop_pp[scope])
    clf = classifier(seed).fit(trainable(w.X[scope]), w.large[scope].astype(int))
    return reg, clf


def fit_fault_model(
    w: Windows, seed: int, folds: int = FAULT_FOLDS, stride_s: float = 60.0
) -> tuple[HistGradientBoostingClassifier | None, float, FaultReport | None]:
    """The fault-risk classifier, its alarm threshold and the out-of-fold report at that threshold.

    It learns the developing faults (models.fault_events.developing_fault_target); the threshold and the
    report count false alarms against every BMS onset, as the metrics do."""
    scope = fault_scope(w)
    target = developing_fault_target(w)
    if not scope.any() or np.nansum(target[scope]) < 5:
        return None, math.nan, None
    ws = w.select(scope)
    y = target[scope].astype(int)
    vehicles = vehicle_of(ws.group)
    oof = np.full(len(ws), math.nan)
    n_splits = min(folds, len(set(vehicles.tolist())))
    for tr, te in GroupKFold(n_splits=n_splits).split(ws.X, y, vehicles):
        if len(set(y[tr].tolist())) < 2:
            oof[te] = 0.0
            continue
        oof[te] = classifier(seed).fit(trainable(ws.X[tr]), y[tr]).predict_proba(ws.X[te])[:, 1]
    threshold = choose_fault_threshold(ws, oof, stride_s=stride_s)
    log.info("fault threshold %.3f from out-of-fold predictions in %d folds", threshold, n_splits)
    oof_report = fault_report(ws, oof, threshold, stride_s)
    return classifier(seed).fit(trainable(ws.X), y), threshold, oof_report


def fit_all(w: Windows, seed: int, fault_on_all: bool = True) -> Trained:
    """SOC models on the training split; the fault model on every bus when its evaluation is a fleet of its
    own (`fault_on_all`), else on the training split too."""
    held_out = split_held_out(w, seed)
    test = held_out.mask
    train = w.select(~test)
    reg, clf = fit_soc_models(train, seed)
    fault, thr, oof = fit_fault_model(w if fault_on_all else train, seed)
    return Trained(reg, clf, fault, thr, oof, ~test, test, held_out)
