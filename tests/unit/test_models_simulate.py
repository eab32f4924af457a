"""models.simulate: truth CSV rows become raw-table rows; a bus-day becomes `voltgate-sim truth` options."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.rawtable import read_table
from models.simulate import (
    FAULT_KINDS,
    HOLDOUT_FLEET,
    PHYSICAL_FAULT_KINDS,
    RAW_HEADER,
    RETIRED_HOLDOUT_SEED_OFFSETS,
    TRAINING_FLEET,
    TRUTH_COLUMNS,
    TRUTH_GPS_VALID,
    TRUTH_INJECTED_FAULT,
    BusDay,
    scenarios,
    truth_command,
    write_raw_table,
)
from protocols.signals import DERATED, FAULT_FLAGS, INSULATION, PACK_CURRENT, SOH
from simulator.__main__ import build_parser, parse_scenario
from simulator.faults import FaultKind

SOURCES = [source for _, source in TRUTH_COLUMNS]


def truth_row(t_s: float, **values: str) -> dict[str, str]:
    """A truth row with every column the mapping reads (plus two it ignores); zeros unless given."""
    row = dict.fromkeys([*SOURCES, TRUTH_GPS_VALID, TRUTH_INJECTED_FAULT, "active_faults", "cabin_c"], "0")
    row.update(ts=repr(1709517600.0 + t_s), lat_deg="-1.290884", lon_deg="36.828242", gps_valid="1")
    row.update(time_to_next_fault_s="", next_fault_onset_physical="")
    row.update(values)
    return row


def write_truth(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_raw(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode(), newline="")))


def test_truth_rows_map_to_raw_rows(tmp_path: Path) -> None:
    # GIVEN three seconds of truth: a fix; no fix, a NaN reading (sensor dropout), a fault 1 s ahead behind
    # which a physical fault is active; the fault itself, none after it
    truth = write_truth(
        tmp_path / "truth.csv",
        [
            truth_row(1, soc_pct="80.12345678901234", pack_current_a="-12.5", soh_pct="97.5"),
            truth_row(
                2,
                gps_valid="0",
                insulation_kohm="nan",
                fault_within_30min="1",
                time_to_next_fault_s="1.0",
                next_fault_onset_physical="1",
            ),
            truth_row(3, flag_insulation_low="1", flag_derate="1", active_faults="insulation_degradation"),
        ],
    )
    out = tmp_path / "SIM-007_d01.csv.gz"
    assert write_raw_table(truth, "SIM-007", "d01", out) == 3

    rows = read_raw(out)
    assert list(rows[0]) == list(RAW_HEADER)
    assert [(r["vehicle"], r["segment"], r["timestamp"]) for r in rows] == [
        ("SIM-007", "d01", "1709517601"),
        ("SIM-007", "d01", "1709517602"),
        ("SIM-007", "d01", "1709517603"),
    ]
    # 10 significant digits; integers without a decimal point
    assert rows[0]["soc_pct"] == "80.12345679"
    assert rows[0][PACK_CURRENT] == "-12.5" and rows[0][SOH] == "97.5"
    assert rows[0]["latitude"] == "-1.290884" and rows[0]["longitude"] == "36.828242"
    # no fix: blank position; NaN: blank; the label of the next onset
    assert rows[1]["latitude"] == rows[1]["longitude"] == ""
    assert rows[1]["speed_kmh"] == "0"
    assert rows[1][INSULATION] == ""
    assert rows[1]["fault_within_30min"] == rows[1]["time_to_next_fault_s"] == "1"
    assert rows[1]["injected_fault"] == "1"
    # the BMS flags under their catalog names; no onset ahead: empty labels
    assert [rows[2][flag] for flag in FAULT_FLAGS] == ["0", "0", "0", "0", "1", "0"]
    assert rows[2][DERATED] == "1"
    assert (rows[2]["time_to_next_fault_s"], rows[2]["injected_fault"]) == ("", "")


def test_the_raw_table_reads_back_as_one_trace(tmp_path: Path) -> None:
    rows = [truth_row(t, speed_kmh="20", odometer_km=repr(84000.0 + t * 0.0055)) for t in range(1, 121)]
    out = tmp_path / "SIM-001_d00.csv.gz"
    write_raw_table(write_truth(tmp_path / "truth.csv", rows), "SIM-001", "d00", out)
    (trace,) = read_table(out)
    assert trace.vehicle == "SIM-001" and trace.segment == "d00"
    assert len(trace.ts) == 120
    assert trace.labels["injected_fault"].shape == (120,)


def test_a_truth_without_a_needed_column_names_it(tmp_path: Path) -> None:
    row = truth_row(1)
    del row["next_fault_onset_physical"], row["cell_v_min"]
    truth = write_truth(tmp_path / "truth.csv", [row])
    with pytest.raises(RuntimeError, match="lacks cell_v_min, next_fault_onset_physical"):
        write_raw_table(truth, "SIM-001", "d00", tmp_path / "out.csv.gz")


def test_a_bus_day_becomes_the_same_scenario_in_the_simulators_cli(tmp_path: Path) -> None:
    # the options are the process boundary: every value must reach the simulator exactly
    day: BusDay = next(d for d in scenarios(4, 2, seed=4) if d.ambient_mean_c < 0)
    command = truth_command(day, tmp_path / "truth.csv")
    assert command[1:4] == ["-m", "simulator", "truth"]
    args = build_parser().parse_args(command[3:])
    assert args.out == tmp_path / "truth.csv"
    s = parse_scenario(args)
    assert s.seed == day.seed
    assert s.start_utc == datetime.fromtimestamp(day.start_ts, UTC)
    for field in (
        "duration_s",
        "ambient_mean_c",
        "ambient_amplitude_c",
        "aggressiveness",
        "peak_boardings",
        "soh_pct",
        "initial_soc_pct",
        "round_trips",
        "layover_charging",
    ):
        assert getattr(s, field) == getattr(day, field), field  # exactly: floats go as repr
    assert s.faults_per_day == day.faults_per_day
    assert s.fault_kinds == tuple(FaultKind(k) for k in FAULT_KINDS), "repeats kept: they weight the draw"
    assert s.faults == ()


def test_the_hold_out_fleet_is_other_buses_with_the_training_fault_mix(tmp_path: Path) -> None:
    training = scenarios(4, 2, seed=4)
    held_out = scenarios(4, 3, seed=4, fleet=HOLDOUT_FLEET)
    # other buses, other draws: no vehicle name and no simulator seed in common
    assert not {d.vehicle for d in training} & {d.vehicle for d in held_out}
    assert not {d.seed for d in training} & {d.seed for d in held_out}
    assert {d.vehicle for d in held_out} == {f"HOLD-{b:03d}" for b in range(4)}
    assert scenarios(4, 3, seed=4, fleet=HOLDOUT_FLEET) == held_out  # reproducible from the seed
    # ...a fresh draw: no hold-out fleet looked at while developing a model comes back
    assert HOLDOUT_FLEET.seed_offset not in RETIRED_HOLDOUT_SEED_OFFSETS
    # the threshold is chosen on the training fleet for the fault mix it is judged on: physical kinds 3 in 4
    assert HOLDOUT_FLEET.fault_kinds == TRAINING_FLEET.fault_kinds == FAULT_KINDS
    assert HOLDOUT_FLEET.faults_per_day == TRAINING_FLEET.faults_per_day
    assert sum(k in PHYSICAL_FAULT_KINDS for k in FAULT_KINDS) / len(FAULT_KINDS) == 0.75
    # ...and the simulator gets the fleet's rate and kinds
    args = build_parser().parse_args(truth_command(held_out[0], tmp_path / "truth.csv")[3:])
    s = parse_scenario(args)
    assert s.faults_per_day == HOLDOUT_FLEET.faults_per_day
    assert s.fault_kinds == tuple(FaultKind(k) for k in FAULT_KINDS)
