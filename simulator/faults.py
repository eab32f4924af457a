"""Injected faults: what breaks, when, and what it does to the physics or the wires.

Physical faults change the physics only (`FaultEffects`); the BMS then reacts to what it measures:
- `cooling_failure`: the coolant pump/chiller loop stops (severity = fraction of heat transfer lost, 1 = all);
  the pack heats from its own I²R until the BMS derates and flags over-temperature.
- `cell_imbalance_growth`: a soft internal short in one cell (`target` = cell index 0..191, else chosen by
  seed); its self-discharge current grows by 10 A/h x severity, so that cell falls behind the others until
  the voltage spread trips the BMS's cell_imbalance (and, later, under_voltage).
- `insulation_degradation`: HV-to-chassis isolation resistance decays exponentially with a time constant of
  1 h / severity (water ingress, a chafed cable); the insulation monitor flags it (UN ECE R100 thresholds).
Sensor faults corrupt what the BMS reports, not the physics (`target` = a `BusState` field name, one of
`SENSOR_TARGETS`):
- `sensor_stuck`: the value freezes at its value at onset.
- `sensor_dropout`: the value is missing (NaN in `BusState`; an emitter sends its "not available" code).
Wire faults are for the emitters (`BusState.active_faults` names them; probabilities are in the state):
- `can_frame_loss` (severity = probability a frame is dropped), `can_frame_corruption` (probability a
  frame is corrupted), `gps_loss` (no fix: `gps_valid` False).

Names in `BusState.active_faults` are the kind, plus `:target` for sensor faults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from simulator.state import CELLS_PER_MODULE, N_MODULES


class FaultKind(StrEnum):
    COOLING_FAILURE = "cooling_failure"
    CELL_IMBALANCE_GROWTH = "cell_imbalance_growth"
    INSULATION_DEGRADATION = "insulation_degradation"
    SENSOR_STUCK = "sensor_stuck"
    SENSOR_DROPOUT = "sensor_dropout"
    CAN_FRAME_LOSS = "can_frame_loss"
    CAN_FRAME_CORRUPTION = "can_frame_corruption"
    GPS_LOSS = "gps_loss"


SENSOR_TARGETS = (
    "pack_current_a",
    "pack_voltage_v",
    "soc_pct",
    "cell_t_max_c",
    "cell_v_min",
    "cell_v_max",
    "coolant_in_c",
    "insulation_kohm",
    "module_temp_c",
)

LEAK_GROWTH_A_PER_H = 10.0
INSULATION_DECAY_TAU_S = 3600.0


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    onset_s: float  # simulation time (BusState.t_s) at which it starts
    duration_s: float = math.inf
    severity: float = 1.0
    target: str = ""

    def __post_init__(self) -> None:
        if (
            self.kind in (FaultKind.SENSOR_STUCK, FaultKind.SENSOR_DROPOUT)
            and self.target not in SENSOR_TARGETS
        ):
            raise ValueError(f"sensor fault target must be one of {SENSOR_TARGETS}, not {self.target!r}")

    def active(self, t_s: float) -> bool:
        return self.onset_s <= t_s < self.onset_s + self.duration_s

    @property
    def label(self) -> str:
        return (
            f"{self.kind.value}:{self.target}"
            if self.target and self.kind in _SENSOR_KINDS
            else self.kind.value
        )


_SENSOR_KINDS = (FaultKind.SENSOR_STUCK, FaultKind.SENSOR_DROPOUT)


@dataclass(frozen=True, slots=True)
class FaultEffects:
    labels: tuple[str, ...] = ()
    cooling_loss: float = 0.0  # 0..1
    leak_cell: int = -1
    leak_a: float = 0.0
    insulation_factor: float = 1.0
    gps_lost: bool = False
    can_drop_prob: float = 0.0
    can_corrupt_prob: float = 0.0
    stuck: tuple[str, ...] = ()
    dropout: tuple[str, ...] = ()


NO_EFFECTS = FaultEffects()


@dataclass(frozen=True, slots=True)
class FaultSchedule:
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    seed: int = 0  # picks the leaking cell when a cell_imbalance_growth fault has no target

    def effects(self, t_s: float) -> FaultEffects:
        if not self.faults:
            return NO_EFFECTS
        active = [f for f in self.faults if f.active(t_s)]
        if not active:
            return NO_EFFECTS
        cooling = 0.0
        leak_cell, leak_a = -1, 0.0
        insulation = 1.0
        gps_lost = False
        drop = corrupt = 0.0
        stuck: list[str] = []
        dropout: list[str] = []
        for f in active:
            since_h = (t_s - f.onset_s) / 3600.0
            if f.kind is FaultKind.COOLING_FAILURE:
                cooling = max(cooling, min(1.0, f.severity))
            elif f.kind is FaultKind.CELL_IMBALANCE_GROWTH:
                leak_cell = int(f.target) if f.target else self.leak_cell_default
                leak_a += LEAK_GROWTH_A_PER_H * f.severity * since_h
            elif f.kind is FaultKind.INSULATION_DEGRADATION:
                insulation *= math.exp(-since_h * 3600.0 * f.severity / INSULATION_DECAY_TAU_S)
            elif f.kind is FaultKind.GPS_LOSS:
                gps_lost = True
            elif f.kind is FaultKind.CAN_FRAME_LOSS:
                drop = max(drop, min(1.0, f.severity))
            elif f.kind is FaultKind.CAN_FRAME_CORRUPTION:
                corrupt = max(corrupt, min(1.0, f.severity))
            elif f.kind is FaultKind.SENSOR_STUCK:
                stuck.append(f.target)
            elif f.kind is FaultKind.SENSOR_DROPOUT:
                dropout.append(f.target)
        return FaultEffects(
            labels=tuple(f.label for f in active),
            cooling_loss=cooling,
            leak_cell=leak_cell,
            leak_a=leak_a,
            insulation_factor=insulation,
            gps_lost=gps_lost,
            can_drop_prob=drop,
            can_corrupt_prob=corrupt,
            stuck=tuple(stuck),
            dropout=tuple(dropout),
        )

    @property
    def leak_cell_default(self) -> int:
        return int(np.random.default_rng(self.seed).integers(0, N_MODULES * CELLS_PER_MODULE))

    @classmethod
    def random(
        cls,
        seed: int,
        horizon_s: float,
        faults_per_day: float = 1.0,
        kinds: tuple[FaultKind, ...] = tuple(FaultKind),
    ) -> FaultSchedule:
        """Faults at Poisson times over the horizon, kinds and severities drawn from `seed`."""
        rng = np.random.default_rng(seed)
        n = int(rng.poisson(faults_per_day * horizon_s / 86_400.0))
        faults: list[Fault] = []
        for _ in range(n):
            kind = kinds[int(rng.integers(0, len(kinds)))]
            onset = float(rng.uniform(0.0, horizon_s))
            target = ""
            duration = math.inf
            severity = 1.0
            if kind in _SENSOR_KINDS:
                target = SENSOR_TARGETS[int(rng.integers(0, len(SENSOR_TARGETS)))]
                duration = float(rng.uniform(60.0, 3600.0))
            elif kind in (FaultKind.CAN_FRAME_LOSS, FaultKind.CAN_FRAME_CORRUPTION):
                severity = float(rng.uniform(0.01, 0.3))
                duration = float(rng.uniform(30.0, 1800.0))
            elif kind is FaultKind.GPS_LOSS:
                duration = float(rng.uniform(10.0, 900.0))
            elif kind is FaultKind.CELL_IMBALANCE_GROWTH:
                severity = float(rng.uniform(0.5, 4.0))
                target = str(int(rng.integers(0, N_MODULES * CELLS_PER_MODULE)))
            elif kind is FaultKind.INSULATION_DEGRADATION:
                severity = float(rng.uniform(0.3, 3.0))
            faults.append(Fault(kind, onset, duration, severity, target))
        faults.sort(key=lambda f: f.onset_s)
        return cls(tuple(faults), seed)
