"""`voltgate-train` on an operator's telematics export: the Renault Twizy trips in the export layout
(tests/operator_export.py), as CSV and xlsx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.__main__ import MODELS_DIR, main
from models.rawtable import CleaningReport, read_table
from protocols.signals import ODOMETER, SOC, SPEED
from tests.operator_export import LAYOUT, twizy_rows, write_csv, write_xlsx

REPO = Path(__file__).parents[2]


def test_an_export_reads_as_one_trace_per_trip_with_its_bad_rows_counted(tmp_path: Path) -> None:
    # GIVEN three trips of two vehicles in one file, 10 rows with a corrupt date
    rows = twizy_rows()
    report = CleaningReport()

    traces = read_table(write_csv(rows, tmp_path / "export.csv"), report)

    assert [(t.vehicle, len(t.ts)) for t in traces] == [
        ("twizy-T1", 6179),
        ("twizy-T1", 5903),
        ("twizy-T3", 2517),
    ]
    assert report.rows == len(rows) and report.bad_timestamps == 10
    assert {ODOMETER, SOC, SPEED} <= set(traces[0].columns)
    assert traces[0].columns[SOC][0] == pytest.approx(float(str(rows[0][6])))


def test_an_xlsx_with_its_own_names_reads_as_the_csv_does(tmp_path: Path) -> None:
    rows = twizy_rows(["T3_05_25_2021_04.csv"])
    header = ["Time", "Bus", *LAYOUT[2:]]
    sheet = write_xlsx(rows, tmp_path / "export.xlsx", header)

    (from_csv,) = read_table(write_csv(rows, tmp_path / "export.csv"))
    (from_xlsx,) = read_table(sheet, column_map={"Time": "timestamp", "Bus": "telematics_id"})

    np.testing.assert_array_equal(from_xlsx.ts, from_csv.ts)
    for name, values in from_csv.columns.items():
        np.testing.assert_array_equal(from_xlsx.columns[name], values)


def test_a_sheet_without_the_layouts_names_says_to_map_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = write_xlsx(
        twizy_rows(["T3_05_25_2021_04.csv"])[:5], tmp_path / "x.xlsx", ["Time", "Bus", *LAYOUT[2:]]
    )

    code = main(["evaluate", "--model", str(MODELS_DIR / "soc_drop.onnx"), "--data", str(sheet)])

    assert code == 2
    assert "--column-map" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_on_one_vehicle_holds_out_a_trip_and_leaves_the_shipped_models_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN one vehicle's two trips (T1: 103 and 98 minutes) as an export
    data = tmp_path / "data"
    data.mkdir()
    write_csv(twizy_rows(["T1_03_29_2021.csv", "T1_06_30_2021_2.csv"]), data / "export.csv")
    shipped = {p.name: p.stat().st_mtime_ns for p in MODELS_DIR.iterdir()}

    code = main(
        ["fit", "--data", str(data), "--out", str(tmp_path / "out"), "--vehicle", "twizy", "--jobs", "1"]
    )

    assert code == 0, capsys.readouterr().err
    # THEN the models and cards are in the directory asked for, trained on one trip and scored on the other
    assert (tmp_path / "out" / "soc_drop.onnx").is_file() and (tmp_path / "out" / "large_drop.onnx").is_file()
    card = (tmp_path / "out" / "MODEL_CARD_soc_drop.md").read_text()
    assert "1 vehicles; held out: twizy-T1/export#" in card and "(whole recordings)" in card
    assert "Scenarios per bus" not in card  # no simulator text on an operator's data
    assert {p.name: p.stat().st_mtime_ns for p in MODELS_DIR.iterdir()} == shipped


def test_fit_wants_an_output_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data", "anything"])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err


def test_fit_on_trips_too_short_for_an_hour_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN T3's only trip: 42 minutes, so no window has a SOC known 60 minutes later
    export = write_csv(twizy_rows(["T3_05_25_2021_04.csv"]), tmp_path / "export.csv")

    code = main(
        ["fit", "--data", str(export), "--out", str(tmp_path / "out"), "--vehicle", "twizy", "--jobs", "1"]
    )

    assert code == 2
    assert "0 recording(s) with a window that has a 60-minute target" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_on_a_trip_too_short_for_an_hour_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = write_csv(twizy_rows(["T3_05_25_2021_04.csv"]), tmp_path / "export.csv")

    code = main(
        [
            "evaluate",
            "--model",
            str(MODELS_DIR / "soc_drop.onnx"),
            "--data",
            str(export),
            "--vehicle",
            "twizy",
        ]
    )

    assert code == 2
    err = capsys.readouterr().err
    assert "no window to score: soc_drop forecasts the next 60 minutes" in err
    assert "the longest recording: 41 minutes" in err


# A fresh interpreter in which `import sklearn` fails as it does where the `train` extra is not installed:
# the venv has scikit-learn, and uninstalling it for a test would break the other tests, so a meta-path
# finder placed first refuses the module (and its submodules) by name.
_WITHOUT_SKLEARN = """
import sys
from importlib.abc import MetaPathFinder

class NoSklearn(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoSklearn())
from models.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def without_sklearn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_SKLEARN, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_help_works_without_scikit_learn_and_names_the_extra() -> None:
    shown = without_sklearn("--help")

    assert shown.returncode == 0, shown.stderr
    assert "pip install 'voltgate[train]'" in " ".join(shown.stdout.split())  # argparse wraps the epilog
    assert "Traceback" not in shown.stderr


def test_a_command_without_scikit_learn_names_the_extra(tmp_path: Path) -> None:
    ran = without_sklearn("fit", "--data", str(tmp_path), "--out", str(tmp_path / "out"))

    assert ran.returncode == 2
    assert (
        ran.stderr.strip()
        == "voltgate-train: fit needs sklearn, which is not installed: pip install 'voltgate[train]'"
    )
