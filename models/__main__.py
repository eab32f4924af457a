"""voltgate-train: simulate training data, fit and export the models, evaluate any model on any table.

    voltgate-train simulate --out DIR [--buses 30 --days 2 --holdout-buses 20 --holdout-days 3]
                                      [--seed 4 --jobs 2]
    voltgate-train fit --data DIR [--out models/] [--seed 4] [--twizy PATH]
    voltgate-train evaluate --model FILE --data TABLE [--vehicle ebus-12m|twizy]
    voltgate-train all --work DIR [--twizy PATH]          simulate + fit, as shipped

TABLE is a raw-schema CSV (or .csv.gz), a directory of them, or a Twizy dataset folder (models.rawtable).
`simulate` writes the training fleet into DIR and the fault hold-out fleet into DIR/holdout.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from models.card import (
    code_block,
    features_section,
    plot_predicted_vs_actual,
    plot_reliability,
    write_card,
)
from models.dataset import LABELS_VERSION, VEHICLE_TYPES, Windows, persistence_pp, physics_pp
from models.evaluate import classifier_report, regression_report, reliability
from models.export import export_model, golden_rows
from models.fault_events import FaultReport, developing_fault_target, fault_report, fault_scope
from models.features import FEATURE_VERSION
from models.rawtable import CleaningReport, TableError
from models.runtime import ModelError, load_model
from models.simulate import (
    HOLDOUT_FLEET,
    PHYSICAL_FAULT_KINDS,
    TRAINING_FLEET,
    Fleet,
    scenarios,
    simulate_fleet,
)
from models.train import FAULT_FOLDS, TREE_PARAMS, build_windows, fit_all, vehicle_of

log = logging.getLogger("models")
MODELS_DIR = Path(__file__).parent
MODEL_VERSION = "4"
DEFAULT_SEED = 4
DEFAULT_TWIZY = Path(__file__).resolve().parents[2] / "shared" / "data" / "twizy"
PREVIOUS_FAULT_RESULTS = [  # earlier models, and how this one was chosen (models.fault_events; by hand)
    "Version 1 (feature version 1: no hour-long trends; threshold 0.97 from 4-fold out-of-fold predictions "
    "of 16 buses) was evaluated on 8 held-out bus-days of the training fleet (71 bus-hours): 7/10 onsets "
    "flagged [95 % CI 40-89 %], 1/3 injected; 1 false alarm = 1.41 per 100 bus-hours [0.04-7.87]: too few "
    "events to tell whether the target was met.",
    "The same version 1 model on version 2's hold-out fleet (same definitions, its own threshold 0.97): "
    "injected physical faults flagged 17/72 = 24 % [15-35 %], all onsets 33/107 = 31 % [23-40 %]; 7 false "
    "alarms in 446 bus-hours = 1.57 per 100 bus-hours [0.63-3.24]; 2.3 % of the time under alarm.",
    "Version 2 (feature version 2: 40 features, no cell spread near rest; trained on 40 bus-days with 4 "
    "faults a day, physical kinds 2 in 3; threshold 0.95 from 5-fold out-of-fold predictions) on its "
    "hold-out fleet (60 bus-days of `HOLD-nnn`, scenario seed 4 + 1000, 446 bus-hours): injected physical "
    "faults flagged 29/72 = 40 % [30-52 %] (cell imbalance growth 12/44, insulation degradation 12/14), all "
    "onsets 45/107 = 42 % [33-52 %]; 8 false alarms = 1.79 per 100 bus-hours [0.77-3.54]; 3.8 % of the time "
    "under alarm.",
    "That hold-out fleet was then examined to find why imbalance faults were missed, and served as the "
    "validation fleet while version 3 was developed: the near-rest spread features and the training fleet's "
    "size and fault rate were chosen on it and on out-of-fold predictions of the training fleet "
    "(hours-to-limit extrapolations of the spread, the temperature and the SOC were tried too and dropped: "
    "no gain). On it, at version 2's false-alarm count (8), version 3 flags 53/72 injected faults (version "
    "2: 29/72); at its own threshold, 63/72 with 12 false alarms, 9 of them at the top of a charge, where on "
    "about half the days of the training and validation fleets the BMS raises a cell-imbalance flag with no "
    "injected fault behind it (small differences in the cells' charge show large on the steep top of the LFP "
    "voltage curve) and the features do not tell which days. That fleet was retired; version 3's card "
    "used a fresh draw (scenario seed 4 + 2000).",
    "Version 3 (feature version 3, as now; target: any BMS fault onset within 30 minutes; threshold 0.85 "
    "from 5-fold out-of-fold predictions, where it gave 0.90 false alarms per 100 bus-hours) on its hold-out "
    "fleet (60 bus-days, scenario seed 4 + 2000, 437 bus-hours): injected physical faults flagged 46/55 = "
    "84 % [72-91 %], all onsets 81/96 = 84 % [76-90 %]; 10 false alarms = 2.29 per 100 bus-hours "
    "[1.10-4.20]: not met; 6.2 % of the time under alarm.",
    "Version 4 (this card) was developed on out-of-fold predictions of the training fleet and on both "
    "retired hold-out fleets, seed 4 + 1000 and seed 4 + 2000 (version 3's hold-out, retired once "
    "scored). Shipping the mean of the five fold models (the model that was thresholded) instead "
    "of the refit cut false alarms only as much as a higher threshold does (at 0.85: seed + 1000 54/72 "
    "injected flagged, 12 false alarms; seed + 2000 45/55, 9) and was dropped. Learning only the onsets "
    "with a developing (injected physical) fault behind them, not the routine flags, removed most false "
    "alarms at the top of a charge (version 3: 63/72 injected flagged with 12 false alarms; 46/55 with "
    "10): with the 5-fold threshold 0.83, seed + 1000 55/72 injected flagged, 5 false alarms; seed + 2000 "
    "41/55, 3. Down-weighting those onsets (weight 0.3) instead of dropping them kept 11-14 false alarms "
    "per fleet. With this target the out-of-fold false alarms ran above the refit's on both fleets (at "
    "0.5: 7-9 against 4 and 4), so the threshold now comes from 10 folds, whose models see 90 % of the "
    "buses: 0.74, where seed + 1000 gives 60/72 with 4 false alarms and seed + 2000 41/55 with 4 "
    "(together 0.91 per 100 bus-hours in 883). All onsets flagged fall (seed + 2000: 41/96), as the model "
    "no longer predicts the routine flags. Scored once on a fresh fleet (scenario seed 4 + 3000, 405 "
    "bus-hours), that model flagged 52/67 = 78 % [66-86 %] of the injected faults with 5 false alarms = "
    "1.24 per 100 bus-hours [0.40-2.88]; that fleet is retired too. Of its 8 false alarms on the two older "
    "fleets, 4 came in the last half hour of a bus-day on a bus with a developing insulation fault whose "
    "BMS onset fell after the recording ended: the truth labels such windows 'no fault within 30 minutes', "
    "though those minutes were never observed. The label is now unknown there (`models/dataset.py`), in "
    "training and in the counts; so counted, version 3 keeps its 10 false alarms on each older fleet (2.28 "
    "and 2.33 per 100 bus-hours) and the model before this change has 2 and 2 (60/72 and 41/55 flagged): "
    "the change is mostly in the counting. Trained on those labels (10-fold threshold 0.80): seed + 1000 "
    "56/72 injected flagged with 1 false alarm, seed + 2000 42/55 with 2. This card's hold-out fleet is a "
    "fresh draw (scenario seed 4 + 4000), simulated and scored once.",
]
HOLDOUT_DIR = "holdout"  # the fault hold-out fleet's tables, under the training fleet's directory
TARGETS = {
    "soc_drop": "reported SOC now minus reported SOC 60 minutes later, in percentage points "
    "(x usable kWh / 100 for kWh); for windows where the bus moved in the last 15 minutes",
    "large_drop": "probability that the reported SOC drops by at least {thr:g} pp in the next 60 minutes",
    "fault_risk": "probability that a BMS fault flag or the derate flag goes from clear to set "
    "within the next 30 minutes because of a developing fault (cooling failure, cell imbalance growth, "
    "insulation degradation), not from plain physics such as a full or cold pack; for windows with no BMS "
    "fault or derate active",
}


def fault_mix(fleet: Fleet) -> str:
    """How a fleet draws its faults, for the cards: "6 Poisson faults a day, physical kinds drawn 3 in 4"."""
    share = Fraction(sum(k in PHYSICAL_FAULT_KINDS for k in fleet.fault_kinds), len(fleet.fault_kinds))
    return (
        f"{fleet.faults_per_day:g} Poisson faults a day, physical kinds drawn "
        f"{share.numerator} in {share.denominator}"
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- simulate ----------------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    fleets: list[tuple[Fleet, int, int, Path]] = [(TRAINING_FLEET, args.buses, args.days, args.out)]
    if args.holdout_buses and args.holdout_days:
        fleets.append((HOLDOUT_FLEET, args.holdout_buses, args.holdout_days, args.out / HOLDOUT_DIR))
    t0 = time.monotonic()
    for fleet, buses, n_days, out in fleets:
        days = scenarios(buses, n_days, args.seed, fleet)
        say(
            f"simulating {len(days)} bus-days of the {fleet.prefix} fleet ({buses} buses x {n_days} days, "
            f"{fleet.faults_per_day:g} faults a day, seed {args.seed} + {fleet.seed_offset}) into {out}"
        )
        simulate_fleet(days, out, jobs=args.jobs, progress=say)
    say(f"simulated in {time.monotonic() - t0:.0f} s")
    return 0


# -- fit ---------------------------------------------------------------------------------------------------
def _sim_windows(data: Path, jobs: int) -> tuple[Windows, CleaningReport]:
    files = sorted(p for p in data.iterdir() if p.name.endswith(".csv.gz"))
    if not files:
        raise TableError(f"{data}: no simulated tables (.csv.gz); run `voltgate-train simulate --out {data}`")
    cache = data / f"windows_v{FEATURE_VERSION}.{LABELS_VERSION}.npz"
    if cache.exists() and cache.stat().st_mtime > max(f.stat().st_mtime for f in files):
        say(f"features: reusing {cache}")
        return Windows.load(cache), CleaningReport()
    w, rep = build_windows(files, VEHICLE_TYPES["ebus-12m"], jobs=jobs, progress=say)
    w.save(cache)
    return w, rep


def cmd_fit(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    w, cleaning = _sim_windows(args.data, args.jobs)
    say(f"{len(w)} windows from {len(set(w.group.tolist()))} bus-days in {time.monotonic() - t0:.0f} s")
    holdout_dir: Path = args.data / HOLDOUT_DIR
    holdout = _sim_windows(holdout_dir, args.jobs)[0] if holdout_dir.is_dir() else None
    if holdout is None:
        say(f"no {holdout_dir}: the fault model is evaluated on the held-out buses of the training fleet")
    t1 = time.monotonic()
    trained = fit_all(w, args.seed, fault_on_all=holdout is not None)
    say(f"fitted in {time.monotonic() - t1:.0f} s; fault threshold {trained.fault_threshold:.3f}")
    train, test = w.select(trained.train_mask), w.select(trained.test_mask)
    fault_eval = holdout if holdout is not None else test
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    test_vehicles = sorted(set(vehicle_of(test.group).tolist()))
    trained_on = (
        f"voltgate simulator, {len(set(w.group.tolist()))} bus-days "
        f"({len(set(vehicle_of(w.group).tolist()))} "
        f"buses), dt 1 s, scenario seed {args.seed}; held out: {', '.join(test_vehicles)}"
    )
    thr_pp = w.threshold_pp
    rng_rows = test.X[test.regression_scope()]
    common = {"version": MODEL_VERSION, "trained_on": trained_on}
    fault_trained_on = (
        f"voltgate simulator, every bus of the training fleet ({len(set(w.group.tolist()))} bus-days), "
        f"scenario seed {args.seed}; held out: the {HOLDOUT_FLEET.prefix} fleet "
        f"({len(set(fault_eval.group.tolist()))} bus-days)"
        if holdout is not None
        else trained_on
    )
    diffs = {
        "soc_drop": export_model(
            trained.soc_drop, out / "soc_drop.onnx", name="soc_drop", kind="regression",
            target=TARGETS["soc_drop"], thresholds={"horizon_s": 3600.0},
            golden_rows=golden_rows(rng_rows, 8, args.seed), **common,
        ),
        "large_drop": export_model(
            trained.large_drop, out / "large_drop.onnx", name="large_drop", kind="probability",
            target=TARGETS["large_drop"].format(thr=thr_pp),
            thresholds={"large_drop_pp": thr_pp, "horizon_s": 3600.0},
            golden_rows=golden_rows(rng_rows, 8, args.seed), **common,
        ),
    }  # fmt: skip
    if trained.fault_risk is not None:
        diffs["fault_risk"] = export_model(
            trained.fault_risk, out / "fault_risk.onnx", name="fault_risk", kind="probability",
            target=TARGETS["fault_risk"],
            thresholds={"alarm_probability": trained.fault_threshold, "window_s": 1800.0},
            golden_rows=golden_rows(fault_eval.X[fault_scope(fault_eval)], 8, args.seed),
            version=MODEL_VERSION, trained_on=fault_trained_on,
        )  # fmt: skip
    for name, d in diffs.items():
        say(
            f"exported {name}.onnx ({(out / f'{name}.onnx').stat().st_size / 1024:.0f} KiB), "
            f"max |onnx - sklearn| {d:.2e}"
        )
    # metrics on the held-out buses, from the exported models (what ships)
    reports, fault_held_out = _evaluate_sim(out, test, fault_eval, trained.fault_threshold)
    twizy = _twizy_lines(args.twizy, args.seed, out) if args.twizy and args.twizy.exists() else []
    _write_cards(out, w, train, test, reports, diffs, trained_on, cleaning, twizy, args.seed)
    if fault_held_out is not None:
        _write_fault_card(
            out, w, fault_eval, holdout is not None, fault_held_out, trained.fault_oof, diffs, args.seed
        )
    for lines in reports.values():
        for line in lines:
            say(line)
    for line in twizy:
        say(line)
    say(f"fit done in {time.monotonic() - t0:.0f} s")
    return 0


def _evaluate_sim(
    models: Path, test: Windows, fault_eval: Windows, fault_threshold: float
) -> tuple[dict[str, list[str]], FaultReport | None]:
    out: dict[str, list[str]] = {}
    scope = test.select(test.regression_scope())
    reg = regression_report(scope, load_model(models / "soc_drop.onnx").predict_batch(scope.X))
    out["soc_drop"] = reg.lines()
    clf = classifier_report(scope, load_model(models / "large_drop.onnx").predict_batch(scope.X))
    out["large_drop"] = clf.lines()
    plot_reliability(models / "MODEL_CARD_large_drop_reliability.png", clf.bins, "large drop: held-out buses")
    pred = load_model(models / "soc_drop.onnx").predict_batch(scope.X)
    plot_predicted_vs_actual(
        models / "MODEL_CARD_soc_drop_scatter.png",
        scope.drop_pp,
        {"model": pred, "persistence": persistence_pp(scope), "physics": physics_pp(scope)},
        "SOC drop, held-out buses",
    )
    rep = None
    if (models / "fault_risk.onnx").exists():
        fm = load_model(models / "fault_risk.onnx")
        prob = fm.predict_batch(fault_eval.X)
        rep = fault_report(fault_eval, prob, fault_threshold)
        out["fault_risk"] = rep.lines()
        fs = fault_scope(fault_eval)
        plot_reliability(
            models / "MODEL_CARD_fault_risk_reliability.png",
            reliability(developing_fault_target(fault_eval)[fs], prob[fs]),
            "developing fault within 30 min: held-out buses",
        )
    return out, rep


def _twizy_lines(path: Path, seed: int, models: Path) -> list[str]:
    """Leave-one-trip-out on the real Twizy trips, beside persistence; and the bus model carried over."""
    from models.dataset import trace_windows
    from models.rawtable import read_table
    from models.train import regressor, trainable

    vt = VEHICLE_TYPES["twizy"]
    rep = CleaningReport()
    traces = read_table(path, rep)
    w = Windows.concat([trace_windows(t, vt) for t in traces], vt.large_drop_pp)
    scope = w.select(w.regression_scope())
    trips = sorted(set(scope.group.tolist()))
    pred = np.full(len(scope), math.nan)
    for g in trips:
        te = scope.group == g
        pred[te] = regressor(seed).fit(trainable(scope.X[~te]), scope.drop_pp[~te]).predict(scope.X[te])
    r = regression_report(scope, pred)
    transfer = regression_report(scope, load_model(models / "soc_drop.onnx").predict_batch(scope.X))
    return [
        f"Renault Twizy trips ({len(traces)} files, {rep.rows} rows): cleaned {rep.summary()}",
        f"in-scope windows with a 60-minute target: {len(scope)} from {len(trips)} trips",
        "leave-one-trip-out (a model fitted on the other trips, same features and hyperparameters):",
        *["  " + x for x in r.lines()],
        "the bus model (soc_drop.onnx) applied to the Twizy as is (a 6.1 kWh car: pp do not transfer):",
        f"  MAE {transfer.mae_model_pp:.2f} pp vs persistence {transfer.mae_persistence_pp:.2f} pp",
    ]


def _write_cards(
    out: Path,
    w: Windows,
    train: Windows,
    test: Windows,
    reports: dict[str, list[str]],
    diffs: dict[str, float],
    trained_on: str,
    cleaning: CleaningReport,
    twizy: list[str],
    seed: int,
) -> None:
    data = [
        f"- {trained_on}.",
        f"- Windows every 60 s: {len(w)} in all, {len(train)} from training buses, "
        f"{len(test)} from held-out buses "
        "(split by bus: every day of a held-out bus is held out).",
        "- Scenarios per bus: SOH 78-100 %, driver aggressiveness 0-1, 1-3.5 peak boardings per stop, "
        "layover charging for 30 % of buses, 3-4 round trips of route 102; per day: mild / hot / cold "
        f"ambient (+/- 3 °C), start SOC 70-100 %, {fault_mix(TRAINING_FLEET)} (cooling failure, cell "
        "imbalance growth, insulation degradation; also stuck / dropped sensors, GPS loss).",
        "- Samples reach the features through the catalog's sampling policy (protocols/catalog.toml: "
        "min interval, "
        "deadband, heartbeat), as on the bus; targets come from the full 1 Hz reported SOC.",
        f"- Hyperparameters fixed, not tuned: HistGradientBoosting {TREE_PARAMS}, seed {seed}.",
        f"- Reproduce: `voltgate-train all --work DIR` (simulate --seed {seed}, then fit --seed {seed}).",
    ]
    if cleaning.rows:
        data.append(f"- Cleaning of the simulated tables: {cleaning.summary()}.")
    for name in ("soc_drop", "large_drop"):
        if name not in reports:
            continue
        size = (out / f"{name}.onnx").stat().st_size
        sections = [
            ("Model", [
                f"`models/{name}.onnx`, version {MODEL_VERSION}, feature version {FEATURE_VERSION}, "
                f"{size / 1024:.0f} KiB; ONNX metadata carries feature names and units, thresholds "
                "and the target.",
                f"- Target: {TARGETS[name].format(thr=w.threshold_pp)}.",
                f"- Export check: largest |ONNX - scikit-learn| on the golden rows {diffs[name]:.1e} "
                f"(`models/{name}.golden.json`).",
            ]),
            ("Data", data),
            ("Metrics on held-out buses (with baselines)", code_block(reports[name])),
        ]  # fmt: skip
        if name == "soc_drop":
            sections.append(("Plot", ["![predicted vs actual](MODEL_CARD_soc_drop_scatter.png)"]))
            if twizy:
                sections.append(
                    ("Real data: Renault Twizy (NaitMalek et al. 2022, CC-BY-4.0)", code_block(twizy))
                )
        else:
            sections.append(("Calibration", [f"![reliability](MODEL_CARD_{name}_reliability.png)"]))
        sections.append(("Features", features_section()))
        write_card(out / f"MODEL_CARD_{name}.md", f"Model card: {name}", sections)


def _write_fault_card(
    out: Path,
    w: Windows,
    held_out: Windows,
    own_fleet: bool,
    report: FaultReport,
    oof: FaultReport | None,
    diffs: dict[str, float],
    seed: int,
) -> None:
    size = (out / "fault_risk.onnx").stat().st_size
    hold_days = sorted(set(held_out.group.tolist()))
    hold_buses = sorted(set(vehicle_of(held_out.group).tolist()))
    fleet, train_fleet = HOLDOUT_FLEET, TRAINING_FLEET
    n_days, n_buses = len(set(w.group.tolist())), len(set(vehicle_of(w.group).tolist()))
    data = [
        f"- Training: every bus of the training fleet, {n_days} bus-days ({n_buses} buses, "
        f"`{train_fleet.prefix}-nnn`), {fault_mix(train_fleet)}; scenarios as in the SOC models' cards; "
        "windows every 60 s.",
        (
            f"- Held out: the fault hold-out fleet, {len(hold_days)} bus-days of {len(hold_buses)} other "
            f"buses (`{fleet.prefix}-nnn`, scenario seed {seed} + {fleet.seed_offset}), from the same "
            "scenario machinery (`models/simulate.py`, `python -m simulator truth` per bus-day): "
            f"{fault_mix(fleet)} (cooling failure, cell imbalance growth, insulation degradation), sensor "
            "faults and GPS loss the rest. No window of a held-out bus reaches training or the threshold "
            "choice."
            if own_fleet
            else "- Held out: the training fleet's held-out buses (no hold-out fleet was simulated)."
        ),
        f"- Hyperparameters fixed, not tuned: HistGradientBoosting {TREE_PARAMS}, seed {seed}.",
        f"- Reproduce: `voltgate-train all --work DIR` (simulate --seed {seed}, then fit --seed {seed}).",
    ]
    definitions = [
        "Computed by `models/fault_events.py`; windows every 60 s.",
        "- **Scope**: windows with a fault label and no BMS fault flag or derate active (the BMS is alerting "
        "then). Bus-hours = in-scope windows x 60 s. A window in the last 30 minutes of a bus-day's "
        "recording with no onset before its end has no label: whether a fault came in its 30 minutes is not "
        "observed (the simulator's truth says no).",
        "- **Onset**: a BMS fault flag or the derate flag going from clear to set. It is *eligible* when at "
        "least one in-scope window of its bus-day lies 30 to 10 minutes before it (the bus was on with no "
        "fault active, so a warning >= 10 minutes ahead was possible), and *injected* when an injected "
        "physical fault is active at it; the others are plain physics (a cold or hot pack, a full or low "
        "pack) or the BMS reacting to a stuck or missing reading.",
        "- **Alarm**: an in-scope window with p >= the threshold. Window ROC-AUC and Brier score are against "
        "the model's target (an onset with a developing fault behind it within 30 minutes); the event rates "
        "count every onset.",
        "- **Flagged >= 10 min before the BMS fault**: an eligible onset with an alarm in at least one "
        "in-scope window from 30 to 10 minutes before it. Lead time: from the start of the alarm episode "
        "holding that first alarm to the onset.",
        "- **Alarm episode**: a bus-day's alarms in time order, merged while the next alarm follows within "
        "10 minutes of the previous one with no onset between them; an alarm that raises and stays up (or "
        "flickers for under 10 minutes) is one episode.",
        "- **False alarm**: an episode with no onset within 30 minutes after any of its windows. An alarm "
        "that rises long before a slow fault and stays up until it is therefore not false; the share of "
        "in-scope time under alarm is reported beside the rates, where a permanent alarm would show.",
        "- **Intervals** (95 %): Wilson score for the flagged shares, exact Poisson (Garwood) for false "
        "alarms per 100 bus-hours. The target counts as met with confidence only when the interval's upper "
        "end is within it.",
    ]
    threshold = [
        f"The alarm threshold (`alarm_probability` in the ONNX metadata) is the lowest on a fixed grid whose "
        f"false alarms stay within 1 per 100 bus-hours on out-of-fold predictions of the training fleet "
        f"({FAULT_FOLDS}-fold GroupKFold by bus: each bus scored by a model that never saw it). The hold-out "
        "fleet plays no part in it. Out of fold, at that threshold:",
        *code_block(oof.lines() if oof is not None else ["(no out-of-fold report)"]),
    ]
    sections = [
        ("Model", [
            f"`models/fault_risk.onnx`, version {MODEL_VERSION}, feature version {FEATURE_VERSION}, "
            f"{size / 1024:.0f} KiB; ONNX metadata carries feature names and units, thresholds and the "
            "target.",
            f"- Target: {TARGETS['fault_risk']}.",
            f"- Export check: largest |ONNX - scikit-learn| on the golden rows {diffs['fault_risk']:.1e} "
            "(`models/fault_risk.golden.json`).",
        ]),
        ("Data", data),
        ("Event-level metrics: definitions", definitions),
        ("Alarm threshold", threshold),
        ("Metrics on the held-out fleet", [*code_block(report.lines()), *report.verdict()]),
        ("History", PREVIOUS_FAULT_RESULTS),
        ("Calibration", ["![reliability](MODEL_CARD_fault_risk_reliability.png)"]),
        ("Features", features_section()),
    ]  # fmt: skip
    write_card(out / "MODEL_CARD_fault_risk.md", "Model card: fault_risk", sections)


# -- evaluate ----------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.dataset import trace_windows
    from models.rawtable import read_table

    model = load_model(args.model)
    vt = VEHICLE_TYPES[args.vehicle]
    rep = CleaningReport()
    traces = read_table(args.data, rep)
    w = Windows.concat([trace_windows(t, vt, args.stride) for t in traces], vt.large_drop_pp)
    print(f"{args.data}: {len(traces)} traces, {rep.rows} rows; cleaned: {rep.summary()}")
    print(f"model {model.name} v{model.version} ({model.kind}); {len(w)} windows")
    if model.name == "fault_risk":
        if np.isnan(w.fault).all():
            print("no fault labels in this table: nothing to score")
            return 0
        thr = args.threshold if args.threshold is not None else model.thresholds.get("alarm_probability", 0.5)
        lines = fault_report(w, model.predict_batch(w.X), thr, args.stride).lines()
    else:
        scope = w.select(w.regression_scope())
        pred = model.predict_batch(scope.X)
        lines = (
            regression_report(scope, pred) if model.kind == "regression" else classifier_report(scope, pred)
        ).lines()
    for line in lines:
        print(line)
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    args.out_sim = args.work
    sim = argparse.Namespace(
        out=args.work,
        buses=args.buses,
        days=args.days,
        holdout_buses=args.holdout_buses,
        holdout_days=args.holdout_days,
        seed=args.seed,
        jobs=args.jobs,
    )
    cmd_simulate(sim)
    fit = argparse.Namespace(data=args.work, out=args.out, seed=args.seed, twizy=args.twizy, jobs=args.jobs)
    return cmd_fit(fit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voltgate-train", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulate bus-days into raw tables")
    s.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fit", help="fit, export and document the models")
    f.add_argument("--data", type=Path, required=True, help="directory written by `simulate`")
    a = sub.add_parser("all", help="simulate then fit")
    a.add_argument("--work", type=Path, required=True, help="directory for the simulated tables")
    for q in (s, a):
        q.add_argument("--buses", type=int, default=30)
        q.add_argument("--days", type=int, default=2)
        q.add_argument("--holdout-buses", type=int, default=20, help="fault hold-out fleet (0: none)")
        q.add_argument("--holdout-days", type=int, default=3)
    for q in (f, a):
        q.add_argument("--out", type=Path, default=MODELS_DIR, help="where the .onnx files and cards go")
        q.add_argument(
            "--twizy", type=Path, default=DEFAULT_TWIZY, help="Twizy folder for the real-data section"
        )
    for q in (s, f, a):
        q.add_argument("--seed", type=int, default=DEFAULT_SEED)
        q.add_argument("--jobs", type=int, default=2)
    e = sub.add_parser("evaluate", help="score a model on a raw table, beside the baselines")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--vehicle", choices=sorted(VEHICLE_TYPES), default="ebus-12m")
    e.add_argument("--stride", type=float, default=60.0)
    e.add_argument("--threshold", type=float, help="alarm threshold for fault_risk (default: the model's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    commands = {"simulate": cmd_simulate, "fit": cmd_fit, "evaluate": cmd_evaluate, "all": cmd_all}
    try:
        return commands[args.command](args)
    except (TableError, ModelError) as err:
        print(f"voltgate-train: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
