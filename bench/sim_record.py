"""How fast `voltgate-sim record` writes a simulated bus: simulated seconds per wall second, frames/s.

Run: python bench/sim_record.py [simulated_hours] [.log|.asc|.blf ...]. Prints; asserts nothing.
An hour at the CAN rate (physics step = the shortest cycle time, 100 ms), from the default start
(05:00 Nairobi: half an hour parked, then driving), with NMEA at 1 Hz to a file as `record --nmea` does.
Also prints the physics alone, so the cost of the emitters and writers is the difference.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from simulator.bus import BusConfig, BusSimulator
from simulator.emit_can import CanEmitter
from simulator.emit_nmea import NmeaEmitter
from simulator.emit_sinks import LogSink, NmeaFileSink, Outputs, Pacer, RunStats, stream


def physics_only(hours: float, dt_s: float) -> float:
    sim = BusSimulator(BusConfig())
    start = time.perf_counter()
    for _ in sim.run(hours * 3600.0, dt_s):
        pass
    return time.perf_counter() - start


def record(hours: float, dt_s: float, out: Path) -> tuple[RunStats, float]:
    emitter = CanEmitter()
    outputs = Outputs(emitter, [LogSink(out)], NmeaEmitter(), [NmeaFileSink(out.with_suffix(".nmea"))])
    sim = BusSimulator(BusConfig())
    stats = RunStats()
    start = time.perf_counter()
    try:
        for _ in stream(sim.run(hours * 3600.0, dt_s), outputs, Pacer(None), stats, sim.t_s):
            pass
    finally:
        outputs.close()
    return stats, time.perf_counter() - start


def main() -> None:
    hours = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    suffixes = sys.argv[2:] or [".log", ".asc", ".blf"]
    dt_s = CanEmitter().min_cycle_s
    sim_s = hours * 3600.0
    wall = physics_only(hours, dt_s)
    print(f"physics alone, dt={dt_s:g} s: {sim_s:,.0f} s simulated in {wall:.2f} s -> x{sim_s / wall:,.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in suffixes:
            out = Path(tmp) / f"bus{suffix}"
            stats, wall = record(hours, dt_s, out)
            size_mb = out.stat().st_size / 1e6
            print(
                f"record {suffix:4s}: {stats.sim_s:,.0f} s simulated in {wall:.2f} s"
                f" -> x{stats.sim_s / wall:,.0f}"
                f" real time; {stats.frames:,} frames, {stats.frames / wall:,.0f} frames/s written;"
                f" {size_mb:.1f} MB"
            )


if __name__ == "__main__":
    main()
