"""Bus-like speed profiles, generated online: stop-to-stop driving, traffic, dwell and passenger load.

A `Driver` turns (speed, distance to the next stopping point, target speed) into an acceleration command:
accelerate at ~1.0-1.5 m/s² (harder when aggressive), cruise a little under the limit with slow random
fluctuation, and brake at ~1.0-1.8 m/s² to stop at the point. `Traffic` plans each stop-to-stop segment:
queueing/signal stops and slow zones, more of them at the morning and evening peaks. `Passengers` decides
boarding and alighting at a stop, hence the load and the dwell time.

Calibration targets (published summary statistics, not point data): the Braunschweig city bus cycle has
1,740 s, ~11 km, 22.9 km/h mean, 58.2 km/h max speed and ~22 % idle time (DieselNet, "Braunschweig City
Driving Cycle", dieselnet.com/standards/cycles/braunschweig.php); its stop density (~2.5 stops/km) is close
to route 102's 2.4 bus stops/km. A simulated day's block averages ~17 km/h including stops and signals
(slower than Braunschweig, as congested Nairobi peaks should be) with a top speed of ~57 km/h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DriverStyle:
    """0 = calm, 1 = aggressive."""

    aggressiveness: float = 0.5

    @property
    def accel_mps2(self) -> float:
        return 1.0 + 0.5 * self.aggressiveness

    @property
    def brake_mps2(self) -> float:
        return 1.0 + 0.8 * self.aggressiveness

    @property
    def speed_factor(self) -> float:
        return 0.90 + 0.12 * self.aggressiveness  # fraction of the speed limit cruised

    @property
    def jerk_mps3(self) -> float:
        return 1.2 + 1.8 * self.aggressiveness


class Driver:
    """Acceleration command from speed, distance to the next stopping point and target speed."""

    def __init__(self, style: DriverStyle, rng: np.random.Generator) -> None:
        self.style = style
        self.rng = rng
        self.accel_cmd = 0.0
        self._fluct = 0.0  # slow cruise-speed fluctuation (Ornstein-Uhlenbeck, ~±4 %)

    def command(self, speed_mps: float, dist_to_stop_m: float, target_mps: float, dt_s: float) -> float:
        s = self.style
        # OU process: mean-reverting in ~20 s; noise drawn once per call
        self._fluct += -self._fluct * dt_s / 20.0 + 0.04 * math.sqrt(2.0 * dt_s / 20.0) * float(
            self.rng.standard_normal()
        )
        v_cruise = max(0.0, target_mps * (1.0 + self._fluct))
        d = max(dist_to_stop_m - 0.5, 0.0)
        needed_brake = speed_mps * speed_mps / (2.0 * d) if d > 0.01 else 9.0
        if needed_brake >= 0.9 * s.brake_mps2 or d < 0.5:
            want = -min(needed_brake, 3.5)  # hard cap: emergency-ish braking if a stop appears late
        else:
            want = max(-s.brake_mps2, min(s.accel_mps2, 0.6 * (v_cruise - speed_mps)))
            # don't accelerate into a stop we would then overshoot at comfortable braking
            v_allow = math.sqrt(2.0 * 0.9 * s.brake_mps2 * d)
            if speed_mps > 0.95 * v_allow:
                want = min(want, 0.0)
        # jerk limit (passengers standing); braking to a stop may exceed it
        max_step = s.jerk_mps3 * dt_s
        if want > self.accel_cmd + max_step:
            want = self.accel_cmd + max_step
        elif want < self.accel_cmd - max_step and want > -0.9 * s.brake_mps2:
            want = self.accel_cmd - max_step
        self.accel_cmd = want
        return want

    def reset(self) -> None:
        self.accel_cmd = 0.0


def congestion_level(local_hour: float) -> float:
    """0 (free flow) .. 1 (peak). Nairobi-like morning (06:30-09:30) and evening (16:30-19:30) peaks."""

    def bump(center: float, width: float) -> float:
        return math.exp(-0.5 * ((local_hour - center) / width) ** 2)

    return min(1.0, 0.15 + 0.85 * max(bump(7.8, 1.0), bump(18.0, 1.1)) + 0.2 * bump(13.0, 1.5))


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """Where the bus must stop (and for how long) and where it must slow, between two bus stops."""

    stop_points_m: tuple[float, ...]  # progress along the segment of traffic stops, ascending
    stop_waits_s: tuple[float, ...]
    slow_zone_m: tuple[float, float]  # (start, end) of a slow zone; (0, 0) when none
    slow_factor: float


class Traffic:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def plan_segment(self, length_m: float, local_hour: float) -> SegmentPlan:
        c = congestion_level(local_hour)
        rng = self.rng
        # signals and queues: ~0.5 per km off-peak, ~2 per km at peak
        n = int(rng.poisson(length_m / 1000.0 * (0.4 + 1.6 * c)))
        points: list[float] = []
        if n and length_m > 80.0:
            points = sorted(float(x) for x in rng.uniform(20.0, length_m - 40.0, size=n))
        waits = tuple(float(5.0 + rng.exponential(12.0 + 30.0 * c)) for _ in points)
        slow = (0.0, 0.0)
        factor = 1.0
        if rng.random() < 0.15 + 0.5 * c and length_m > 150.0:
            a = float(rng.uniform(0.0, length_m * 0.6))
            slow = (a, a + float(rng.uniform(80.0, 0.4 * length_m + 80.0)))
            factor = float(rng.uniform(0.25, 0.7))
        return SegmentPlan(tuple(points), waits, slow, factor)


@dataclass(frozen=True, slots=True)
class PassengerProfile:
    """Boardings per served stop at peak; off-peak is `offpeak_fraction` of it. Capacity from the vehicle."""

    peak_boardings_per_stop: float = 2.2
    offpeak_fraction: float = 0.45
    door_time_s: float = 4.0  # open + close
    seconds_per_passenger: float = 1.8  # two doors: boarding and alighting overlap


class Passengers:
    def __init__(self, profile: PassengerProfile, capacity: int, rng: np.random.Generator) -> None:
        self.profile = profile
        self.capacity = capacity
        self.rng = rng
        self.onboard = 0

    def serve_stop(self, stops_remaining: int, local_hour: float, terminus: bool) -> tuple[int, int, float]:
        """(alighting, boarding, dwell_s) at a stop; dwell 0 when nobody gets on or off (stop skipped)."""
        p = self.profile
        if terminus:
            alight, board = self.onboard, 0
        else:
            p_alight = min(1.0, 1.6 / max(1, stops_remaining))
            alight = int(self.rng.binomial(self.onboard, p_alight)) if self.onboard else 0
            c = congestion_level(local_hour)
            mean = p.peak_boardings_per_stop * (p.offpeak_fraction + (1.0 - p.offpeak_fraction) * c)
            mean *= min(1.0, stops_remaining / 8.0)  # few board near the end of the line
            board = int(self.rng.poisson(mean))
        self.onboard -= alight
        board = min(board, self.capacity - self.onboard)
        self.onboard += board
        if alight == 0 and board == 0:
            return 0, 0, 0.0
        return alight, board, p.door_time_s + p.seconds_per_passenger * max(alight, board)

    def board_at_origin(self, local_hour: float) -> int:
        c = congestion_level(local_hour)
        n = int(self.rng.poisson(6.0 + 20.0 * c))
        n = min(n, self.capacity - self.onboard)
        self.onboard += n
        return n
