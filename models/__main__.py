"""voltgate-train: simulate training data, fit and export the models, evaluate any model on any table.

    voltgate-train simulate --out DIR [--buses 30 --days 2 --holdout-buses 20 --holdout-days 3]
                                      [--seed 4 --jobs 2]
    voltgate-train fit --data DIR|FILE --out DIR [--vehicle ebus-12m|twizy] [--column-map a=b,...]
                       [--seed 4] [--twizy PATH]
    voltgate-train evaluate --model FILE --data TABLE [--vehicle ebus-12m|twizy] [--column-map a=b,...]
    voltgate-train all --work DIR [--out models/] [--twizy PATH]      simulate + fit, as shipped

TABLE is a raw-schema CSV (or .csv.gz), an operator's telematics export (CSV or xlsx:
timestamp, telematics_id, latitude, longitude, speed_km_h, odometer_reading_kms, state_of_charge;
--column-map FILE_COLUMN=LAYOUT_COLUMN for other names), a directory of them, or a Twizy dataset folder.
`fit` writes where --out says; only `all` writes into the shipped models/ unless told otherwise.

This module only parses the command line (it needs no more than the base install, so `--help` always
works); the commands (models/commands.py) need the `train` extra and are imported when one runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from models.dataset import VEHICLE_TYPES

MODELS_DIR = Path(__file__).parent
DEFAULT_SEED = 4
DEFAULT_TWIZY = Path(__file__).resolve().parents[2] / "shared" / "data" / "twizy"
TRAIN_EXTRA = "pip install 'voltgate[train]'"
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voltgate-train",
        description=__doc__.split("\n")[0],
        epilog=f"The commands need the `train` extra (scikit-learn, skl2onnx, matplotlib): {TRAIN_EXTRA}",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulate bus-days into raw tables")
    s.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fit", help="fit, export and document the models")
    f.add_argument(
        "--data", type=Path, required=True, help="tables: a directory written by `simulate`, exports, a file"
    )
    f.add_argument("--out", type=Path, required=True, help="where the .onnx files and cards go")
    a = sub.add_parser("all", help="simulate then fit, as shipped")
    a.add_argument("--work", type=Path, required=True, help="directory for the simulated tables")
    a.add_argument("--out", type=Path, default=MODELS_DIR, help="where the .onnx files and cards go")
    for q in (s, a):
        q.add_argument("--buses", type=int, default=30)
        q.add_argument("--days", type=int, default=2)
        q.add_argument("--holdout-buses", type=int, default=20, help="fault hold-out fleet (0: none)")
        q.add_argument("--holdout-days", type=int, default=3)
    for q in (f, a):
        q.add_argument(
            "--twizy", type=Path, default=DEFAULT_TWIZY, help="Twizy folder for the real-data section"
        )
    for q in (s, f, a):
        q.add_argument("--seed", type=int, default=DEFAULT_SEED)
        q.add_argument("--jobs", type=int, default=2)
    e = sub.add_parser("evaluate", help="score a model on a raw table, beside the baselines")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--stride", type=float, default=60.0)
    e.add_argument("--threshold", type=float, help="alarm threshold for fault_risk (default: the model's)")
    for q in (f, e):
        q.add_argument("--vehicle", choices=sorted(VEHICLE_TYPES), default="ebus-12m")
        q.add_argument(
            "--column-map", help="an export's own column names: FILE_COLUMN=LAYOUT_COLUMN,... (ts=timestamp)"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        from models import commands
    except ModuleNotFoundError as err:
        print(
            f"voltgate-train: {args.command} needs {err.name}, which is not installed: {TRAIN_EXTRA}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from models.rawtable import TableError
    from models.runtime import ModelError
    from protocols.errors import ProtocolError

    run = {
        "simulate": commands.cmd_simulate,
        "fit": commands.cmd_fit,
        "evaluate": commands.cmd_evaluate,
        "all": commands.cmd_all,
    }
    try:
        return run[args.command](args)
    except (TableError, ModelError, ProtocolError) as err:
        print(f"voltgate-train: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
