"""The commands of `voltgate-train` (models/__main__.py parses the command line): simulate, fit,
evaluate, all. They need the `train` extra (scikit-learn, skl2onnx, matplotlib); the parser does not.

TABLE is a raw-schema CSV (or .csv.gz), an operator's export (CSV or xlsx, protocols/export_layout.py), a
directory of them, or a Twizy dataset folder (models.rawtable). `simulate` writes the training fleet into
DIR and the fault hold-out fleet into DIR/holdout.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from models.card import (
    MODEL_VERSION,
    TARGETS,
    code_block,
    fault_mix,
    features_section,
    plot_predicted_vs_actual,
    plot_reliability,
    write_card,
)
from models.dataset import (
    EBUS_12M,
    LABELS_VERSION,
    VEHICLE_TYPES,
    VehicleType,
    Windows,
    persistence_pp,
    physics_pp,
)
from models.evaluate import classifier_report, regression_report, reliability
from models.export import export_model, golden_rows
from models.fault_card import write_fault_card
from models.fault_events import FaultReport, developing_fault_target, fault_report, fault_scope
from models.features import FEATURE_VERSION
from models.rawtable import TABLE_SUFFIXES, CleaningReport, TableError
from models.runtime import load_model
from models.simulate import (
    HOLDOUT_FLEET,
    TRAINING_FLEET,
    Fleet,
    scenarios,
    simulate_fleet,
)
from models.train import TREE_PARAMS, build_windows, fit_all, longest_minutes, vehicle_of
from protocols.export_layout import parse_column_map

log = logging.getLogger("models")
HOLDOUT_DIR = "holdout"  # the fault hold-out fleet's tables, under the training fleet's directory


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
def table_files(data: Path) -> list[Path]:
    """The tables of a directory (or the one file given)."""
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise TableError(f"{data}: no such file or directory")
    files = sorted(p for p in data.iterdir() if p.name.lower().endswith(TABLE_SUFFIXES))
    if not files:
        raise TableError(
            f"{data}: no tables ({', '.join(TABLE_SUFFIXES)}); for simulated ones run "
            f"`voltgate-train simulate --out {data}`"
        )
    return files


def _windows(
    data: Path, vehicle: VehicleType, jobs: int, column_map: dict[str, str]
) -> tuple[Windows, CleaningReport]:
    files = table_files(data)
    # the simulator's tables are many and slow to featurize: their windows are cached beside them
    simulated = data.is_dir() and vehicle is EBUS_12M and all(f.name.endswith(".csv.gz") for f in files)
    cache = data / f"windows_v{FEATURE_VERSION}.{LABELS_VERSION}.npz"
    if simulated and cache.exists() and cache.stat().st_mtime > max(f.stat().st_mtime for f in files):
        say(f"features: reusing {cache}")
        return Windows.load(cache), CleaningReport()
    w, rep = build_windows(files, vehicle, jobs=jobs, progress=say, column_map=column_map)
    if simulated:
        w.save(cache)
    return w, rep


def cmd_fit(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    vehicle = VEHICLE_TYPES[args.vehicle]
    column_map = parse_column_map(args.column_map)
    w, cleaning = _windows(args.data, vehicle, args.jobs, column_map)
    if not len(w):
        raise TableError(f"{args.data}: no windows: every row was dropped ({cleaning.summary()})")
    simulated = not np.isnan(w.fault).all()  # the simulator's tables carry fault labels; an export does not
    n_groups, n_vehicles = len(set(w.group.tolist())), len(set(vehicle_of(w.group).tolist()))
    took = time.monotonic() - t0
    say(f"{len(w)} windows from {n_groups} recordings of {n_vehicles} vehicles in {took:.0f} s")
    holdout_dir: Path = args.data / HOLDOUT_DIR
    holdout = _windows(holdout_dir, vehicle, args.jobs, column_map)[0] if holdout_dir.is_dir() else None
    if holdout is None and simulated:
        say(f"no {holdout_dir}: the fault model is evaluated on the held-out buses of the training fleet")
    t1 = time.monotonic()
    trained = fit_all(w, args.seed, fault_on_all=holdout is not None)
    fault = (
        f"fault threshold {trained.fault_threshold:.3f}"
        if trained.fault_risk is not None
        else "no fault model (no fault labels)"
    )
    say(f"fitted in {time.monotonic() - t1:.0f} s; {fault}")
    train, test = w.select(trained.train_mask), w.select(trained.test_mask)
    fault_eval = holdout if holdout is not None else test
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    held = f"held out: {', '.join(trained.held_out.names)}"
    trained_on = (
        f"voltgate simulator, {n_groups} bus-days ({n_vehicles} buses), dt 1 s, scenario seed {args.seed}; "
        + held
        if simulated
        else f"{args.data.name} ({vehicle.name}): {n_groups} recordings of {n_vehicles} vehicles; {held} "
        f"(whole {trained.held_out.unit}s)"
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
    reports, fault_held_out = _evaluate_sim(
        out, test, fault_eval, trained.fault_threshold if trained.fault_risk is not None else None
    )
    with_twizy = simulated and args.twizy and args.twizy.exists()
    twizy = _twizy_lines(args.twizy, args.seed, out) if with_twizy else []
    reproduce = (
        f"`voltgate-train all --work DIR` (simulate --seed {args.seed}, then fit --seed {args.seed})"
        if simulated
        else f"`voltgate-train fit --data DATA --vehicle {vehicle.name} --seed {args.seed} --out DIR`"
    )
    _write_cards(
        out, w, train, test, reports, diffs, trained_on, cleaning, twizy, args.seed, simulated, reproduce
    )
    if fault_held_out is not None:
        write_fault_card(
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
    models: Path, test: Windows, fault_eval: Windows, fault_threshold: float | None
) -> tuple[dict[str, list[str]], FaultReport | None]:
    """Reports of the exported models on the held-out windows; the fault model's when one was trained."""
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
    if fault_threshold is not None:
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
    simulated: bool = True,
    reproduce: str = "",
) -> None:
    windows = (
        f"- Windows every 60 s: {len(w)} in all, {len(train)} from training buses, {len(test)} from held-out "
        "buses (split by bus: every day of a held-out bus is held out)."
        if simulated
        else f"- Windows every 60 s: {len(w)} in all, {len(train)} for training, {len(test)} held out."
    )
    scenarios = [
        "- Scenarios per bus: SOH 78-100 %, driver aggressiveness 0-1, 1-3.5 peak boardings per stop, "
        "layover charging for 30 % of buses, 3-4 round trips of route 102; per day: mild / hot / cold "
        f"ambient (+/- 3 °C), start SOC 70-100 %, {fault_mix(TRAINING_FLEET)} (cooling failure, cell "
        "imbalance growth, insulation degradation; also stuck / dropped sensors, GPS loss).",
    ]
    data = [
        f"- {trained_on}.",
        windows,
        *(scenarios if simulated else []),
        "- Samples reach the features through the catalog's sampling policy (protocols/catalog.toml: "
        "min interval, "
        "deadband, heartbeat), as on the bus; targets come from the full 1 Hz reported SOC.",
        f"- Hyperparameters fixed, not tuned: HistGradientBoosting {TREE_PARAMS}, seed {seed}.",
        f"- Reproduce: {reproduce}.",
    ]
    if cleaning.rows:
        data.append(f"- Cleaning of the {'simulated ' if simulated else ''}tables: {cleaning.summary()}.")
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


# -- evaluate ----------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.dataset import trace_windows
    from models.rawtable import read_table

    model = load_model(args.model)
    vt = VEHICLE_TYPES[args.vehicle]
    rep = CleaningReport()
    traces = read_table(args.data, rep, parse_column_map(args.column_map))
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
        if not len(scope):
            raise TableError(
                f"{args.data}: no window to score: {model.name} forecasts the next 60 minutes, and no "
                "recording here has a window with the vehicle moving in the 15 minutes before and its SOC "
                f"known an hour later (the longest recording: {longest_minutes(w):.0f} minutes)"
            )
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
    fit = argparse.Namespace(
        data=args.work,
        out=args.out,
        seed=args.seed,
        twizy=args.twizy,
        jobs=args.jobs,
        vehicle=EBUS_12M.name,
        column_map=None,
    )
    return cmd_fit(fit)
