"""voltgate-train: simulate training data, fit and export the models, evaluate any model on any table.

    voltgate-train simulate --out DIR [--buses 20 --days 2 --seed 4 --jobs 2]
    voltgate-train fit --data DIR [--out models/] [--seed 4] [--twizy PATH]
    voltgate-train evaluate --model FILE --data TABLE [--vehicle ebus-12m|twizy]
    voltgate-train all --work DIR [--twizy PATH]          simulate + fit, as shipped

TABLE is a raw-schema CSV (or .csv.gz), a directory of them, or a Twizy dataset folder (models.rawtable).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.card import (
    code_block,
    features_section,
    plot_predicted_vs_actual,
    plot_reliability,
    write_card,
)
from models.dataset import VEHICLE_TYPES, Windows, persistence_pp, physics_pp
from models.evaluate import (
    classifier_report,
    fault_report,
    fault_scope,
    regression_report,
)
from models.export import export_model, golden_rows
from models.features import FEATURE_VERSION
from models.rawtable import CleaningReport, TableError
from models.runtime import ModelError, load_model
from models.simulate import scenarios, simulate_fleet
from models.train import TREE_PARAMS, build_windows, fit_all, vehicle_of

log = logging.getLogger("models")
MODELS_DIR = Path(__file__).parent
MODEL_VERSION = "1"
DEFAULT_SEED = 4
DEFAULT_TWIZY = Path(__file__).resolve().parents[2] / "shared" / "data" / "twizy"
TARGETS = {
    "soc_drop": "reported SOC now minus reported SOC 60 minutes later, in percentage points "
    "(x usable kWh / 100 for kWh); for windows where the bus moved in the last 15 minutes",
    "large_drop": "probability that the reported SOC drops by at least {thr:g} pp in the next 60 minutes",
    "fault_risk": "probability that a BMS fault flag or the derate flag goes from clear to set "
    "within the next 30 minutes; for windows with no BMS fault or derate active",
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- simulate ----------------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    days = scenarios(args.buses, args.days, args.seed)
    t0 = time.monotonic()
    say(
        f"simulating {len(days)} bus-days ({args.buses} buses x {args.days} days, "
        f"seed {args.seed}) into {args.out}"
    )
    simulate_fleet(days, args.out, jobs=args.jobs, progress=say)
    say(f"simulated in {time.monotonic() - t0:.0f} s")
    return 0


# -- fit ---------------------------------------------------------------------------------------------------
def _sim_windows(data: Path, jobs: int) -> tuple[Windows, CleaningReport]:
    files = sorted(p for p in data.iterdir() if p.name.endswith(".csv.gz"))
    if not files:
        raise TableError(f"{data}: no simulated tables (.csv.gz); run `voltgate-train simulate --out {data}`")
    cache = data / f"windows_v{FEATURE_VERSION}.npz"
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
    t1 = time.monotonic()
    trained = fit_all(w, args.seed)
    say(f"fitted in {time.monotonic() - t1:.0f} s; fault threshold {trained.fault_threshold:.2f}")
    train, test = w.select(trained.train_mask), w.select(trained.test_mask)
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
            golden_rows=golden_rows(test.X[fault_scope(test)], 8, args.seed), **common,
        )  # fmt: skip
    for name, d in diffs.items():
        say(
            f"exported {name}.onnx ({(out / f'{name}.onnx').stat().st_size / 1024:.0f} KiB), "
            f"max |onnx - sklearn| {d:.2e}"
        )
    # metrics on the held-out buses, from the exported models (what ships)
    reports = _evaluate_sim(out, test, trained.fault_threshold)
    twizy = _twizy_lines(args.twizy, args.seed, out) if args.twizy and args.twizy.exists() else []
    _write_cards(out, w, train, test, reports, diffs, trained_on, cleaning, twizy, args.seed)
    for lines in reports.values():
        for line in lines:
            say(line)
    for line in twizy:
        say(line)
    say(f"fit done in {time.monotonic() - t0:.0f} s")
    return 0


def _evaluate_sim(models: Path, test: Windows, fault_threshold: float) -> dict[str, list[str]]:
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
    if (models / "fault_risk.onnx").exists():
        fm = load_model(models / "fault_risk.onnx")
        prob = fm.predict_batch(test.X)
        rep = fault_report(test, prob, fault_threshold)
        out["fault_risk"] = rep.lines()
        fs = fault_scope(test)
        from models.evaluate import reliability

        plot_reliability(
            models / "MODEL_CARD_fault_risk_reliability.png",
            reliability(test.fault[fs], prob[fs]),
            "fault within 30 min: held-out buses",
        )
    return out


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
        "ambient (+/- 3 °C), start SOC 70-100 %, Poisson faults (4 per day, physical kinds weighted x2: "
        "cooling failure, cell imbalance "
        "growth, insulation degradation; also stuck / dropped sensors, GPS loss).",
        "- Samples reach the features through the catalog's sampling policy (protocols/catalog.toml: "
        "min interval, "
        "deadband, heartbeat), as on the bus; targets come from the full 1 Hz reported SOC.",
        f"- Hyperparameters fixed, not tuned: HistGradientBoosting {TREE_PARAMS}, seed {seed}.",
        f"- Reproduce: `voltgate-train all --work DIR` (simulate --seed {seed}, then fit --seed {seed}).",
    ]
    if cleaning.rows:
        data.append(f"- Cleaning of the simulated tables: {cleaning.summary()}.")
    for name in ("soc_drop", "large_drop", "fault_risk"):
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
    sim = argparse.Namespace(out=args.work, buses=args.buses, days=args.days, seed=args.seed, jobs=args.jobs)
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
        q.add_argument("--buses", type=int, default=20)
        q.add_argument("--days", type=int, default=2)
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
