"""Simulated training data: many buses × days through the voltgate simulator, as raw tables.

`models` may not import `simulator` (the agent, which imports `models`, never ships the simulator), so each
bus-day runs the simulator's command line, `python -m simulator truth` with the day's scenario as options,
which writes the simulator's own ground truth (simulator/truth.py). This module then maps that CSV onto the
raw-table schema (models.rawtable): the raw columns, the bus's catalog signals as canonical-name columns
(`TRUTH_COLUMNS`), positions blank without a GPS fix, and the truth's fault labels. The process boundary
keeps the import contract; the CLI's options and the truth's column names are the interface.

Scenarios vary per bus (pack SOH, driver aggressiveness, passenger load, layover charging, block length) and
per day (ambient preset and its jitter, start SOC, faults at Poisson times weighted to the physical kinds),
all drawn from one seed. Two fleets come from the same machinery (`Fleet`):

- the training fleet (`TRAINING_FLEET`, buses `SIM-nnn`);
- the fault hold-out fleet (`HOLDOUT_FLEET`, buses `HOLD-nnn`, its own seed stream): other buses on more days,
  so that the fault-risk evaluation sees enough fault onsets and enough fault-free bus-hours to put useful
  confidence intervals on its event rates.

Both draw 6 faults a day, physical kinds 3 in 4: the fault-risk model learns from as many injected faults as
the training fleet can show it (a slow cell-imbalance growth trips the BMS on only some of its days), and its
alarm threshold, chosen on the training fleet, is chosen on the fault mix it is judged on.
"""

from __future__ import annotations

import csv
import gzip
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from protocols.signals import (
    AMBIENT,
    CELL_TEMP_MAX,
    CELL_TEMP_MIN,
    CELL_V_MAX,
    CELL_V_MIN,
    DERATED,
    DISCHARGE_LIMIT,
    FAULT_FLAGS,
    HVAC_POWER,
    INSULATION,
    PACK_CURRENT,
    PACK_VOLTAGE,
    SOH,
)

DAY_S = 11.5 * 3600.0  # 05:00 to 16:30 Nairobi time: the day's block, its last hour's lookahead, recharge
PHYSICAL_FAULT_KINDS = ("cooling_failure", "cell_imbalance_growth", "insulation_degradation")
OTHER_FAULT_KINDS = ("sensor_stuck", "sensor_dropout", "gps_loss")
# a kind repeated is drawn that much more often (the simulator's --random-fault-kind)
FAULT_KINDS = (*PHYSICAL_FAULT_KINDS * 3, *OTHER_FAULT_KINDS)  # physical 3 in 4: what fault risk learns from
AMBIENTS = {"mild": (19.0, 6.0), "hot": (33.0, 5.0), "cold": (-3.0, 4.0)}  # simulator.bus presets

# raw-table column ← simulator truth column (simulator/truth.py documents its columns)
TRUTH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("timestamp", "ts"),
    ("latitude", "lat_deg"),
    ("longitude", "lon_deg"),
    ("speed_kmh", "speed_kmh"),
    ("soc_pct", "soc_pct"),
    ("odometer_km", "odometer_km"),
    (SOH, "soh_pct"),
    (PACK_VOLTAGE, "pack_voltage_v"),
    (PACK_CURRENT, "pack_current_a"),
    (CELL_TEMP_MAX, "cell_t_max_c"),
    (CELL_TEMP_MIN, "cell_t_min_c"),
    (CELL_V_MAX, "cell_v_max"),
    (CELL_V_MIN, "cell_v_min"),
    (INSULATION, "insulation_kohm"),
    (DERATED, "flag_derate"),
    (DISCHARGE_LIMIT, "discharge_power_limit_kw"),
    (AMBIENT, "ambient_c"),
    (HVAC_POWER, "hvac_power_kw"),
    *zip(
        FAULT_FLAGS,
        (
            "flag_over_temperature",
            "flag_under_voltage",
            "flag_over_voltage",
            "flag_cell_imbalance",
            "flag_insulation_low",
            "flag_over_current",
        ),
        strict=True,
    ),
    ("fault_within_30min", "fault_within_30min"),
    ("time_to_next_fault_s", "time_to_next_fault_s"),
)
POSITION_COLUMNS = ("latitude", "longitude")  # blank while the truth's gps_valid is 0, as a receiver reports
TRUTH_GPS_VALID = "gps_valid"
TRUTH_INJECTED_FAULT = "next_fault_onset_physical"  # → injected_fault: a physical fault behind the next onset
RAW_HEADER = ("vehicle", "segment", *(column for column, _ in TRUTH_COLUMNS), "injected_fault")


@dataclass(frozen=True)
class BusDay:
    vehicle: str
    segment: str
    seed: int
    start_ts: float
    duration_s: float
    ambient: str
    ambient_mean_c: float
    ambient_amplitude_c: float
    aggressiveness: float
    peak_boardings: float
    soh_pct: float
    initial_soc_pct: float
    round_trips: int
    layover_charging: bool
    faults_per_day: float
    fault_kinds: tuple[str, ...] = FAULT_KINDS


@dataclass(frozen=True, slots=True)
class Fleet:
    """How a fleet's bus-days are drawn: vehicle names, fault rate and kinds, and its own seed stream."""

    prefix: str
    faults_per_day: float
    fault_kinds: tuple[str, ...]
    seed_offset: int  # the fleet's scenarios come from `seed + seed_offset`


TRAINING_FLEET = Fleet("SIM", 6.0, FAULT_KINDS, 0)
HOLDOUT_FLEET = Fleet("HOLD", 6.0, FAULT_KINDS, 4000)
# a hold-out fleet looked at while developing a model is retired; the next one draws a fresh seed stream
# models v2's and v3's hold-outs, the validation fleets while developing v3 and v4; v4's first hold-out
RETIRED_HOLDOUT_SEED_OFFSETS = (1000, 2000, 3000)


def scenarios(n_buses: int, days: int, seed: int, fleet: Fleet = TRAINING_FLEET) -> list[BusDay]:
    rng = np.random.default_rng(seed + fleet.seed_offset)
    out: list[BusDay] = []
    start = datetime(2024, 3, 4, 2, 0, tzinfo=UTC)
    for b in range(n_buses):
        soh = float(rng.uniform(78.0, 100.0))
        aggr = float(rng.uniform(0.0, 1.0))
        pax = float(rng.uniform(1.0, 3.5))
        layover = bool(rng.random() < 0.3)
        trips = int(rng.choice([3, 4, 4]))
        for d in range(days):
            name = str(rng.choice(list(AMBIENTS), p=[0.5, 0.25, 0.25]))
            mean, amp = AMBIENTS[name]
            out.append(
                BusDay(
                    vehicle=f"{fleet.prefix}-{b:03d}",
                    segment=f"d{d:02d}",
                    seed=int(rng.integers(0, 2**31)),
                    start_ts=(start + timedelta(days=7 * b + d)).timestamp(),
                    duration_s=DAY_S,
                    ambient=name,
                    ambient_mean_c=mean + float(rng.normal(0.0, 3.0)),
                    ambient_amplitude_c=amp,
                    aggressiveness=aggr,
                    peak_boardings=pax,
                    soh_pct=soh,
                    initial_soc_pct=float(rng.uniform(70.0, 100.0)),
                    round_trips=trips,
                    layover_charging=layover,
                    faults_per_day=fleet.faults_per_day,
                    fault_kinds=fleet.fault_kinds,
                )
            )
    return out


def truth_command(day: BusDay, out: Path) -> list[str]:
    """`voltgate-sim truth` for one bus-day: its scenario as the simulator's options, the truth to `out`."""
    start = datetime.fromtimestamp(day.start_ts, UTC).isoformat()
    return [
        sys.executable,
        "-m",
        "simulator",
        "truth",
        f"--out={out}",
        f"--seed={day.seed}",
        f"--start={start}",
        f"--duration={day.duration_s!r}s",
        f"--ambient-mean-c={day.ambient_mean_c!r}",  # repr: the exact float, read back as such
        f"--ambient-amplitude-c={day.ambient_amplitude_c!r}",
        f"--aggressiveness={day.aggressiveness!r}",
        f"--peak-boardings={day.peak_boardings!r}",
        f"--soh-pct={day.soh_pct!r}",
        f"--initial-soc-pct={day.initial_soc_pct!r}",
        f"--round-trips={day.round_trips}",
        "--layover-charging" if day.layover_charging else "--no-layover-charging",
        f"--random-faults={day.faults_per_day!r}",
        *(f"--random-fault-kind={kind}" for kind in day.fault_kinds),
    ]


def _number_cell(text: str) -> str:
    """A truth value as a raw-table cell: 10 significant digits; empty for no value (empty or NaN)."""
    if not text:
        return ""
    value = float(text)
    return "" if math.isnan(value) else f"{value:.10g}"


def raw_row(truth: Mapping[str, str], vehicle: str, segment: str) -> list[str]:
    """One truth row (simulator.truth columns) as a raw-table row in `RAW_HEADER` order."""
    no_fix = not int(truth[TRUTH_GPS_VALID])
    cells = [
        "" if no_fix and column in POSITION_COLUMNS else _number_cell(truth[source])
        for column, source in TRUTH_COLUMNS
    ]
    return [vehicle, segment, *cells, _number_cell(truth[TRUTH_INJECTED_FAULT])]


def write_raw_table(truth_csv: Path, vehicle: str, segment: str, out: Path) -> int:
    """Map a simulator truth CSV onto the raw-table schema into `out` (gzip); return the row count."""
    needed = {source for _, source in TRUTH_COLUMNS} | {TRUTH_GPS_VALID, TRUTH_INJECTED_FAULT}
    n = 0
    with truth_csv.open(newline="") as src, gzip.open(out, "wt", newline="", compresslevel=3) as dst:
        reader = csv.DictReader(src)
        missing = needed - set(reader.fieldnames or needed)
        if missing:
            raise RuntimeError(f"{truth_csv}: the simulator's truth lacks {', '.join(sorted(missing))}")
        writer = csv.writer(dst)
        writer.writerow(RAW_HEADER)
        for truth in reader:
            writer.writerow(raw_row(truth, vehicle, segment))
            n += 1
    return n


def run_bus_day(day: BusDay, out: Path) -> float:
    """Simulate one bus-day into `out` (a .csv.gz raw table); return wall seconds."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voltgate-truth-") as tmp:
        truth_csv = Path(tmp) / "truth.csv"
        proc = subprocess.run(truth_command(day, truth_csv), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"simulating {day.vehicle}/{day.segment} failed: {proc.stderr.strip()[-500:]}")
        write_raw_table(truth_csv, day.vehicle, day.segment, out)
    return time.monotonic() - t0


def simulate_fleet(
    days: list[BusDay], out_dir: Path, jobs: int = 2, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Run every bus-day (`jobs` at a time) into `out_dir`; reuse files already there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{d.vehicle}_{d.segment}.csv.gz" for d in days]
    todo = [(d, p) for d, p in zip(days, paths, strict=True) if not p.exists()]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_bus_day, d, p.with_suffix(".tmp")): (d, p) for d, p in todo}
        for k, fut in enumerate(as_completed(futures), 1):
            d, p = futures[fut]
            secs = fut.result()
            p.with_suffix(".tmp").rename(p)
            if progress:
                progress(
                    f"[{k}/{len(todo)}] {d.vehicle}/{d.segment} {d.ambient} soh={d.soh_pct:.0f}% "
                    f"in {secs:.1f} s (elapsed {time.monotonic() - t0:.0f} s)"
                )
    return paths
