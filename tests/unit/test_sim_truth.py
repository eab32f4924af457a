"""Ground-truth CSV: 1 Hz rows of every physical state plus lookahead labels."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from simulator.bus import BusConfig, BusSimulator
from simulator.faults import Fault, FaultKind, FaultSchedule
from simulator.truth import FUTURE_COLUMNS, simulate_truth, write_truth_csv


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
    for r in rows:
        t = float(r["t_s"])
        if t <= onset:
            assert float(r["time_to_next_fault_s"]) == pytest.approx(onset - t)
            assert r["fault_within_30min"] == str(int(onset - t <= 1800.0))
    assert any(r["fault_within_30min"] == "1" for r in rows) and any(
        r["fault_within_30min"] == "0" for r in rows
    )
