"""`voltgate-sim truth` as a subprocess: one bus-day's ground truth from options or a scenario file.

Short runs (minutes of simulated bus); what is checked is the command's contract: the scenario reaches the
simulation, options and --scenario describe the same day, gzip by name, one-sentence errors with exit 2.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
from pathlib import Path

import pytest

from simulator.truth import FUTURE_COLUMNS
from tests.integration.test_sim_record import sim_command

WAIT_S = 120.0


def truth(tmp_path: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*sim_command(), "truth", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert proc.returncode == expect, f"voltgate-sim truth exited {proc.returncode}:\n{proc.stderr}"
    return proc


def read_rows(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return list(csv.DictReader(io.StringIO(data.decode(), newline="")))


SCENARIO = {
    "seed": 11,
    "start": "2024-03-05T02:20:00Z",
    "duration": "3m",
    "ambient_mean_c": 31.5,
    "ambient_amplitude_c": 2.0,
    "aggressiveness": 0.9,
    "peak_boardings": 3.0,
    "soh_pct": 85.5,
    "initial_soc_pct": 72.25,
    "round_trips": 3,
    "layover_charging": True,
    "random_faults": 10000.0,
    "random_fault_kinds": ["gps_loss", "gps_loss", "insulation_degradation"],
    "faults": ["sensor_dropout:soc_pct@60s/30s"],
}
AS_OPTIONS = [
    "--seed=11",
    "--start=2024-03-05T02:20:00Z",
    "--duration=3m",
    "--ambient-mean-c=31.5",
    "--ambient-amplitude-c=2",
    "--aggressiveness=0.9",
    "--peak-boardings=3",
    "--soh-pct=85.5",
    "--initial-soc-pct=72.25",
    "--round-trips=3",
    "--layover-charging",
    "--random-faults=10000",
    "--random-fault-kind=gps_loss",
    "--random-fault-kind=gps_loss",
    "--random-fault-kind=insulation_degradation",
    "--fault=sensor_dropout:soc_pct@60s/30s",
]


def test_truth_from_options_is_the_simulators_schema_gzipped_by_name(tmp_path: Path) -> None:
    proc = truth(tmp_path, "--out", "day.csv.gz", "--duration", "2m", "--fault", "gps_loss@30s/20s")
    assert "120 truth rows" in proc.stdout, proc.stdout
    out = tmp_path / "day.csv.gz"
    assert out.read_bytes()[:2] == b"\x1f\x8b", "gzip by the name"
    rows = read_rows(out)
    assert len(rows) == 120
    header = list(rows[0])
    assert header[:2] == ["t_s", "ts"] and header[-len(FUTURE_COLUMNS) :] == list(FUTURE_COLUMNS)
    assert not any(c in header for c in ("vehicle", "segment", "injected_fault")), "nothing of models'"
    assert float(rows[0]["ts"]) == pytest.approx(1709517601.0), "default start: 05:00 Nairobi time"
    lost = [float(r["t_s"]) for r in rows if r["gps_valid"] == "0"]
    assert len(lost) == pytest.approx(20, abs=1) and min(lost) == pytest.approx(30.0, abs=1.0)


def test_a_scenario_file_and_the_same_options_give_the_same_truth(tmp_path: Path) -> None:
    (tmp_path / "day.json").write_text(json.dumps(SCENARIO))
    truth(tmp_path, "--scenario", "day.json", "--out", "from_file.csv")
    truth(tmp_path, *AS_OPTIONS, "--out", "from_options.csv")
    assert (tmp_path / "from_file.csv").read_bytes() == (tmp_path / "from_options.csv").read_bytes()

    rows = read_rows(tmp_path / "from_file.csv")
    assert len(rows) == 180
    assert float(rows[0]["ts"]) == pytest.approx(1709605201.0)
    assert {r["soh_pct"] for r in rows} == {"85.5"}
    assert float(rows[0]["soc_pct"]) == pytest.approx(72.25, abs=0.01), "the BMS starts at the initial SOC"
    kinds = {label.split(":")[0] for r in rows for label in r["active_faults"].split(";") if label}
    assert kinds == {"gps_loss", "insulation_degradation", "sensor_dropout"}, "only the kinds drawn from"


def test_an_option_beside_the_scenario_file_wins(tmp_path: Path) -> None:
    (tmp_path / "day.json").write_text(json.dumps({**SCENARIO, "duration": 60}))
    truth(tmp_path, "--scenario", "day.json", "--soh-pct", "90", "--out", "day.csv")
    rows = read_rows(tmp_path / "day.csv")
    assert len(rows) == 60, "duration as seconds from the file"
    assert {r["soh_pct"] for r in rows} == {"90.0"}


@pytest.mark.parametrize(
    ("scenario", "args", "message"),
    [
        ({"soh": 90}, [], "unknown key(s) soh"),
        ({"soh_pct": "high"}, [], "soh_pct: must be a number"),
        ({"round_trips": 2.5}, [], "round_trips: must be a whole number"),
        ({"random_fault_kinds": ["meltdown"]}, [], "'meltdown' is not a fault kind"),
        (None, ["--soh-pct", "120"], "--soh-pct 120 must be above 0 and at most 100"),
        (None, ["--duration", "soon"], "'soon' is not a duration"),
        (None, ["--dt", "2"], "--dt 2 must be above 0 and at most 1 second"),
        (None, ["--scenario", "missing.json"], "--scenario missing.json: No such file or directory"),
    ],
)
def test_a_bad_scenario_is_one_sentence_and_exit_2(
    tmp_path: Path, scenario: dict[str, object] | None, args: list[str], message: str
) -> None:
    if scenario is not None:
        (tmp_path / "bad.json").write_text(json.dumps(scenario))
        args = ["--scenario", "bad.json", *args]
    proc = truth(tmp_path, *args, "--out", "day.csv", expect=2)
    assert proc.stderr.startswith("voltgate-sim truth: error: "), proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "day.csv").exists()
