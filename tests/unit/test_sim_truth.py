"""Ground-truth CSV: 1 Hz rows of every physical state plus lookahead labels."""

from __future__ import annotations

import csv
import gzip
import itertools
from pathlib import Path

import pytest

from simulator.bus import BusConfig, BusSimulator
from simulator.faults import Fault, FaultKind, FaultSchedule
from simulator.truth import FUTURE_COLUMNS, Row, add_future_columns, simulate_truth, write_truth_csv

FLAGS = (
    "flag_over_temperature",
    "flag_under_voltage",
    "flag_over_voltage",
    "flag_cell_imbalance",
    "flag_insulation_low",
    "flag_over_current",
    "flag_derate",
)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_truth_is_1hz_with_future_soc(tmp_path: Path) -> None:
    cfg = BusConfig(start_utc=BusConfig().start_utc.replace(hour=2, minute=29))
    path = tmp_path / "truth.csv"
    # dt = 0.1 s in, 1 Hz out
    n = write_truth_csv(BusSimulator(cfg).run(2 * 3600.0, 0.1), path)
    rows = _read(path)
    assert n == len(rows) == pytest.approx(7200, abs=1)
    ts = [float(r["t_s"]) for r in rows]
    assert all(0.95 < b - a < 1.05 for a, b in itertools.pairwise(ts))
    for col in (
        *FUTURE_COLUMNS,
        "module_temp_c_11",
        "flag_derate",
        "soc_true_pct",
        "lat_deg",
        "active_faults",
    ):
        assert col in rows[0]
    i = 100
    j = next(k for k, t in enumerate(ts) if t >= ts[i] + 3600.0 - 1e-6)
    assert float(rows[i]["soc_true_in_60min_pct"]) == pytest.approx(float(rows[j]["soc_true_pct"]))
    assert float(rows[i]["soc_drop_next_60min_pct"]) == pytest.approx(
        float(rows[i]["soc_true_pct"]) - float(rows[j]["soc_true_pct"])
    )
    assert float(rows[i]["soc_drop_next_60min_pct"]) > 3.0  # an hour of driving
    assert rows[-1]["soc_true_in_60min_pct"] == ""  # beyond the run
    assert all(r["fault_within_30min"] == "0" for r in rows)


def test_fault_onset_labels(tmp_path: Path) -> None:
    cfg = BusConfig(faults=FaultSchedule((Fault(FaultKind.INSULATION_DEGRADATION, 600.0, severity=4.0),)))
    path = tmp_path / "truth.csv"
    simulate_truth(cfg, 2 * 3600.0, path)
    rows = _read(path)
    onset_rows = [r for r in rows if r["flag_insulation_low"] == "1"]
    assert onset_rows
    onset = float(onset_rows[0]["t_s"])
    assert float(rows[0]["next_fault_onset_t_s"]) == pytest.approx(onset)
    assert rows[0]["next_fault_onset_physical"] == "1", "insulation degradation is behind the onset"
    for r in rows:
        t = float(r["t_s"])
        if t <= onset:
            assert float(r["time_to_next_fault_s"]) == pytest.approx(onset - t)
            assert r["fault_within_30min"] == str(int(onset - t <= 1800.0))
    assert any(r["fault_within_30min"] == "1" for r in rows) and any(
        r["fault_within_30min"] == "0" for r in rows
    )


def _row(t_s: float, active_faults: str = "", **flags: int) -> Row:
    row: Row = {"t_s": t_s, "soc_true_pct": 80.0, "soc_pct": 80.0, "active_faults": active_faults}
    row.update({f: flags.get(f, 0) for f in FLAGS})
    return row


def test_next_onset_is_physical_only_when_a_physical_fault_is_active_at_it() -> None:
    # GIVEN an over-temperature onset at 2 s while only a stuck sensor and lost GPS are injected (the BMS
    # reacting to a reading: not physical), then an insulation-low onset at 5 s with insulation degradation
    # and a stuck sensor active, a cell-imbalance onset at 8 s with cooling failure already active
    # (physical, whichever flag), and no onset after 8 s
    rows = [
        _row(0),
        _row(1, "sensor_stuck:cell_t_max_c"),
        _row(2, "sensor_stuck:cell_t_max_c;gps_loss", flag_over_temperature=1),
        _row(3, "insulation_degradation"),
        _row(4, "insulation_degradation"),
        _row(5, "sensor_stuck:soc_pct;insulation_degradation", flag_insulation_low=1),
        _row(6, "cooling_failure"),
        _row(7, "cooling_failure"),
        _row(8, "cooling_failure", flag_cell_imbalance=1, flag_derate=1),
        _row(9, "cooling_failure", flag_cell_imbalance=1),
    ]
    add_future_columns(rows)
    # THEN each row carries whether the next onset (at or after it) had a physical fault behind it
    assert [r["next_fault_onset_t_s"] for r in rows] == [2, 2, 2, 5, 5, 5, 8, 8, 8, ""]
    assert [r["next_fault_onset_physical"] for r in rows] == [0, 0, 0, 1, 1, 1, 1, 1, 1, ""]
    assert all(list(r)[-len(FUTURE_COLUMNS) :] == list(FUTURE_COLUMNS) for r in rows), "same column order"


def test_no_onset_in_the_run_leaves_the_physical_label_empty(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    simulate_truth(BusConfig(), 120.0, path)
    rows = _read(path)
    assert len(rows) == 120
    assert all(r["next_fault_onset_physical"] == "" and r["next_fault_onset_t_s"] == "" for r in rows)


def test_truth_is_gzip_when_the_name_ends_in_gz(tmp_path: Path) -> None:
    plain, packed = tmp_path / "truth.csv", tmp_path / "truth.csv.gz"
    simulate_truth(BusConfig(seed=3), 60.0, plain)
    simulate_truth(BusConfig(seed=3), 60.0, packed)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()


def test_an_empty_run_writes_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv.gz"
    assert write_truth_csv(iter(()), path) == 0
    with gzip.open(path, "rt") as f:
        assert f.read() == ""
