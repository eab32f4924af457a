"""How fast the bus simulates: simulated seconds per wall-clock second at dt = 0.1 s and 1.0 s.

Run: python bench/sim_speed.py [simulated_hours]. Prints; asserts nothing.
The run starts at 05:25 Nairobi time so the hour is mostly driving (the expensive part), not parked.
"""

from __future__ import annotations

import sys
import time

from simulator.bus import BusConfig, BusSimulator


def measure(dt_s: float, hours: float) -> float:
    config = BusConfig(start_utc=BusConfig().start_utc.replace(hour=2, minute=25))
    sim = BusSimulator(config)
    start = time.perf_counter()
    n = 0
    for _ in sim.run(hours * 3600.0, dt_s):
        n += 1
    wall = time.perf_counter() - start
    speedup = hours * 3600.0 / wall
    print(
        f"dt={dt_s:4.1f} s: {n:7d} steps, {hours:.1f} h simulated in {wall:6.2f} s wall"
        f" -> x{speedup:,.0f} real time"
    )
    return speedup


def main() -> None:
    hours = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    measure(0.1, hours)
    measure(1.0, hours)


if __name__ == "__main__":
    main()
