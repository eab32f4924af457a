"""How well the battery-health view recovers a pack's capacity from a depot charge, against the obvious
estimate, on simulated packs of known state of health.

    python bench/battery_capacity.py [--soh 100,90,80] [--seed 5] [--soc 55]

For each SOH the simulator charges the 12 m bus at the depot in the two hours before its
departure, from `--soc` %, and records its CAN frames; the agent's decoder (sampling policy on, as a gateway
buffers) turns them into the pack current and SOC readings the cloud would store. Two estimates of
the capacity in Ah from those readings:

- window (`cloud.battery_health.estimate_capacity`): Ah in between the first and the last SOC
  reading while the charge current flows, over the SOC risen between those two readings;
- obvious: Ah in over the whole charge, over the last SOC reading of the session minus the first
  (the session as the daily KPIs cut it: up to the first reading after the current stops).

Truth is the simulator's: its cells' nominal Ah × SOH (the BMS counts coulombs against it; the
cells' own capacities are spread ±1 % around it, their mean printed too). Prints figures, asserts
nothing; wall time is not measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.decode import decode_log_to_csv
from cloud.battery_health import MIN_CHARGE_CURRENT_A, Reading, estimate_capacity
from protocols.catalog import load_catalog
from protocols.signals import PACK_CURRENT, SOC
from simulator.battery import CELL_CAPACITY_AH
from simulator.bus import BusConfig, BusSimulator
from simulator.emit_can import CanEmitter
from simulator.emit_sinks import LogSink, Outputs, Pacer, RunStats, stream

DEPARTURE = datetime(2024, 3, 4, 2, 30, tzinfo=UTC)  # 05:30 in Nairobi, the simulator's departure


def charge_readings(soh_pct: float, soc_pct: float, seed: int, work: Path) -> tuple[list[Reading], float]:
    """The current and SOC readings of the two hours before departure, and the cells' mean capacity (Ah)."""
    config = BusConfig(
        seed=seed, soh_pct=soh_pct, initial_soc_pct=soc_pct, start_utc=DEPARTURE - timedelta(hours=2)
    )
    log = work / f"soh{soh_pct:g}.log"
    outputs = Outputs(can_emitter=CanEmitter(seed=seed))
    outputs.can_sinks.append(LogSink(log))
    sim = BusSimulator(config)
    try:
        for _ in stream(sim.run(7200.0, 1.0), outputs, Pacer(None), RunStats(), start_t_s=sim.t_s):
            pass
    finally:
        outputs.close()
    text = io.StringIO()
    decode_log_to_csv(log, load_catalog(), text, apply_policy=True)
    text.seek(0)
    readings = [
        (datetime.fromtimestamp(float(r["ts"]), UTC), r["signal"], float(r["value"]))
        for r in csv.DictReader(text)
        if r["signal"] in (PACK_CURRENT, SOC)
    ]
    return sorted(readings, key=lambda r: r[0]), float(sim.pack.capacity_ah.mean())


def obvious_estimate(readings: list[Reading]) -> float:
    """Ah over the whole charge session / the SOC from its first reading to its last."""
    currents = [(ts, v) for ts, s, v in readings if s == PACK_CURRENT]
    charging = [ts for ts, v in currents if -v >= MIN_CHARGE_CURRENT_A]
    start = charging[0]
    end = next((ts for ts, _ in currents if ts > charging[-1]), charging[-1])
    ah = sum(
        -v * (t_next - ts).total_seconds() / 3600.0
        for (ts, v), (t_next, _) in itertools.pairwise(currents)
        if start <= ts < end
    )
    socs = [v for ts, s, v in readings if s == SOC and start <= ts <= end]
    return ah / ((socs[-1] - socs[0]) / 100.0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soh", default="100,90,80", help="comma-separated SOH %% of the simulated packs")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--soc", type=float, default=55.0, help="SOC %% the charge starts from")
    args = parser.parse_args()
    heads = ("SOH %", "truth Ah", "cells Ah", "window Ah", "err %", "obvious Ah", "err %")
    print(" ".join(f"{h:>10}" for h in heads))
    with tempfile.TemporaryDirectory() as tmp:
        for soh in (float(s) for s in args.soh.split(",")):
            readings, cells_ah = charge_readings(soh, args.soc, args.seed, Path(tmp))
            truth = CELL_CAPACITY_AH * soh / 100.0
            window = estimate_capacity(readings)
            obvious = obvious_estimate(readings)
            window_ah = window.capacity_ah if window else float("nan")
            errors = (100 * (window_ah / truth - 1), 100 * (obvious / truth - 1))
            row = (f"{soh:g}", f"{truth:.1f}", f"{cells_ah:.1f}", f"{window_ah:.1f}", f"{errors[0]:+.2f}")
            print(" ".join(f"{c:>10}" for c in (*row, f"{obvious:.1f}", f"{errors[1]:+.2f}")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
