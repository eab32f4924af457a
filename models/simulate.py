"""Simulated training data: many buses × days through the voltgate simulator, as raw tables.

`models` may not import `simulator` (the agent, which imports `models`, never ships the simulator), so each
bus-day runs in a child Python process that composes the simulator's public API (`BusConfig`,
`FaultSchedule.random`, `simulator.truth`) and writes the day in the raw-table schema (models.rawtable): the
raw columns, the bus's catalog signals as canonical-name columns, and the truth's fault labels. The process
boundary keeps the import contract; the simulator's ground-truth column names are the interface.

Scenarios vary per bus (pack SOH, driver aggressiveness, passenger load, layover charging, block length) and
per day (ambient preset and its jitter, start SOC, faults at Poisson times weighted to the physical kinds),
all drawn from one seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from models.features import (
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
FAULT_KINDS = (  # physical kinds twice: they are what the fault-risk model learns from
    "cooling_failure",
    "cell_imbalance_growth",
    "insulation_degradation",
    "cooling_failure",
    "cell_imbalance_growth",
    "insulation_degradation",
    "sensor_stuck",
    "sensor_dropout",
    "gps_loss",
)
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


def scenarios(n_buses: int, days: int, seed: int, faults_per_day: float = 4.0) -> list[BusDay]:
    rng = np.random.default_rng(seed)
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
                    vehicle=f"SIM-{b:03d}",
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
                    faults_per_day=faults_per_day,
                )
            )
    return out


# Runs in the child process (which may import the simulator); argv: scenario JSON, output path.
_WORKER = r"""
import csv, gzip, json, math, sys
from datetime import UTC, datetime
from simulator.bus import AmbientProfile, BusConfig, BusSimulator
from simulator.cycles import DriverStyle, PassengerProfile
from simulator.faults import FaultKind, FaultSchedule
from simulator.truth import add_future_columns, rows_at_1hz

s = json.loads(sys.argv[1]); out = sys.argv[2]; spec = json.loads(sys.argv[3])
kinds = tuple(FaultKind(k) for k in spec["fault_kinds"])
faults = FaultSchedule.random(s["seed"], s["duration_s"], s["faults_per_day"], kinds)
cfg = BusConfig(
    vehicle_id=s["vehicle"], seed=s["seed"], start_utc=datetime.fromtimestamp(s["start_ts"], UTC),
    ambient=AmbientProfile(s["ambient_mean_c"], s["ambient_amplitude_c"]),
    driver=DriverStyle(s["aggressiveness"]),
    passengers=PassengerProfile(peak_boardings_per_stop=s["peak_boardings"]),
    soh_pct=s["soh_pct"], initial_soc_pct=s["initial_soc_pct"], faults=faults, round_trips=s["round_trips"],
    layover_charging=s["layover_charging"],
)
rows = list(rows_at_1hz(BusSimulator(cfg).run(s["duration_s"], 1.0)))
add_future_columns(rows)
physical = {"cooling_failure", "cell_imbalance_growth", "insulation_degradation"}
def fmt(v):
    if v == "" or v is None: return ""
    v = float(v)
    return "" if math.isnan(v) else f"{v:.10g}"
with gzip.open(out, "wt", newline="", compresslevel=3) as f:
    w = csv.writer(f)
    w.writerow(["vehicle", "segment", *[c for c, _ in spec["columns"]], "injected_fault"])
    by_t = {r["t_s"]: r for r in rows}
    for r in rows:
        cells = []
        for c, src in spec["columns"]:
            if c in ("latitude", "longitude") and not r["gps_valid"]:
                cells.append("")
            else:
                cells.append(fmt(r[src]))
        onset = r["next_fault_onset_t_s"]
        inj = ""
        if onset != "":
            at = by_t.get(float(onset))
            kinds_at = {x.split(":")[0] for x in str(at["active_faults"]).split(";") if x} if at else set()
            inj = "1" if physical & kinds_at else "0"
        w.writerow([s["vehicle"], s["segment"], *cells, inj])
print(len(rows))
"""


def run_bus_day(day: BusDay, out: Path) -> float:
    """Simulate one bus-day into `out` (a .csv.gz raw table); return wall seconds."""
    spec = {"fault_kinds": FAULT_KINDS, "columns": TRUTH_COLUMNS}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(asdict(day)), str(out), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"simulating {day.vehicle}/{day.segment} failed: {proc.stderr.strip()[-500:]}")
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
