"""Injected faults change the physics (or the wires); the BMS reacts to what it measures.

Each scenario compares a faulty run with the same day without the fault.
"""

from __future__ import annotations

import math

import pytest

from simulator.bus import HOT_DAY, NAIROBI_MILD, AmbientProfile, BusConfig, BusSimulator
from simulator.faults import SENSOR_TARGETS, Fault, FaultKind, FaultSchedule
from simulator.state import BusState, ContactorState

FLAGS = (
    "over_temperature",
    "under_voltage",
    "over_voltage",
    "cell_imbalance",
    "insulation_low",
    "over_current",
    "derate",
)


def first_onsets(config: BusConfig, seconds: float) -> dict[str, float]:
    onsets: dict[str, float] = {}
    for s in BusSimulator(config).run(seconds, 1.0):
        for name in FLAGS:
            if name not in onsets and getattr(s.flags, name):
                onsets[name] = s.t_s
    return onsets


@pytest.mark.slow
def test_cooling_failure_leads_to_derate_then_over_temperature() -> None:
    # GIVEN a hot day and the coolant loop dead from 30 min after start (05:30 local)
    cfg = BusConfig(ambient=HOT_DAY, faults=FaultSchedule((Fault(FaultKind.COOLING_FAILURE, 1800.0),)))
    onsets = first_onsets(cfg, 14 * 3600.0)
    # THEN the pack heats from its own losses and the sun on its roof enclosure: derate, then the flag
    assert "derate" in onsets and "over_temperature" in onsets
    assert 1800.0 < onsets["derate"] < onsets["over_temperature"] < 14 * 3600.0
    assert onsets["derate"] < 11 * 3600.0


@pytest.mark.slow
def test_cell_imbalance_growth_trips_cell_imbalance() -> None:
    cfg = BusConfig(
        faults=FaultSchedule((Fault(FaultKind.CELL_IMBALANCE_GROWTH, 0.0, severity=4.0, target="37"),))
    )
    onsets = first_onsets(cfg, 6 * 3600.0)
    assert "cell_imbalance" in onsets
    assert onsets["cell_imbalance"] < onsets.get("under_voltage", math.inf)


def test_weakest_cell_is_the_leaking_one() -> None:
    cfg = BusConfig(
        faults=FaultSchedule((Fault(FaultKind.CELL_IMBALANCE_GROWTH, 0.0, severity=4.0, target="37"),))
    )
    *_, last = BusSimulator(cfg).run(3.5 * 3600.0, 1.0)
    assert last.cell_v_min_id == 37
    assert last.active_faults == ("cell_imbalance_growth",)


def test_insulation_degradation_trips_insulation_low() -> None:
    cfg = BusConfig(faults=FaultSchedule((Fault(FaultKind.INSULATION_DEGRADATION, 3600.0, severity=2.0),)))
    onsets = first_onsets(cfg, 4 * 3600.0)
    assert set(onsets) >= {"insulation_low"}
    # 5 MΩ decaying with τ = 30 min reaches 500 Ω/V x 614 V ≈ 307 kΩ after ~80 min
    assert 3600.0 + 40 * 60 < onsets["insulation_low"] < 3600.0 + 120 * 60


@pytest.mark.slow
def test_healthy_day_has_no_flags_even_when_hot() -> None:
    assert first_onsets(BusConfig(ambient=HOT_DAY), 14 * 3600.0) == {}


def _run(faults: tuple[Fault, ...], seconds: float = 1200.0) -> list[BusState]:
    cfg = BusConfig(
        ambient=NAIROBI_MILD,
        start_utc=BusConfig().start_utc.replace(hour=2, minute=29),
        faults=FaultSchedule(faults),
    )
    return list(BusSimulator(cfg).run(seconds, 1.0))


def test_stuck_sensor_freezes_and_dropout_is_missing() -> None:
    states = _run(
        (
            Fault(FaultKind.SENSOR_STUCK, 300.0, 600.0, target="pack_current_a"),
            Fault(FaultKind.SENSOR_DROPOUT, 400.0, 100.0, target="module_temp_c"),
        )
    )
    stuck = [s.pack_current_a for s in states if 300.0 < s.t_s < 900.0]
    assert len(set(stuck)) == 1
    after = [s.pack_current_a for s in states if s.t_s > 901.0]
    assert len(set(after)) > 10  # it reads again after the fault
    dropped = [s for s in states if 400.0 < s.t_s < 500.0]
    assert all(all(math.isnan(t) for t in s.module_temp_c) for s in dropped)
    assert "sensor_stuck:pack_current_a" in dropped[0].active_faults
    assert "sensor_dropout:module_temp_c" in dropped[0].active_faults
    # the BMS itself keeps working on the real physics
    assert all(s.contactor == ContactorState.CLOSED for s in dropped)


def test_wire_faults_are_exposed_to_the_emitters() -> None:
    states = _run(
        (
            Fault(FaultKind.GPS_LOSS, 100.0, 60.0),
            Fault(FaultKind.CAN_FRAME_LOSS, 200.0, 60.0, severity=0.2),
            Fault(FaultKind.CAN_FRAME_CORRUPTION, 300.0, 60.0, severity=0.05),
        ),
        400.0,
    )
    by_t = {round(s.t_s): s for s in states}
    assert (
        not by_t[130].gps_valid and by_t[130].gps_satellites == 0 and by_t[130].active_faults == ("gps_loss",)
    )
    assert by_t[170].gps_valid
    assert by_t[230].can_frame_drop_prob == pytest.approx(0.2) and by_t[230].active_faults == (
        "can_frame_loss",
    )
    assert by_t[330].can_frame_corrupt_prob == pytest.approx(0.05)
    assert by_t[390].active_faults == () and by_t[390].can_frame_drop_prob == 0.0


def test_random_schedule_is_seeded() -> None:
    a = FaultSchedule.random(seed=5, horizon_s=10 * 86_400.0, faults_per_day=2.0)
    b = FaultSchedule.random(seed=5, horizon_s=10 * 86_400.0, faults_per_day=2.0)
    c = FaultSchedule.random(seed=6, horizon_s=10 * 86_400.0, faults_per_day=2.0)
    assert a == b and a != c
    assert len(a.faults) > 5
    assert all(
        f.target in SENSOR_TARGETS
        for f in a.faults
        if f.kind in (FaultKind.SENSOR_STUCK, FaultKind.SENSOR_DROPOUT)
    )
    assert [f.onset_s for f in a.faults] == sorted(f.onset_s for f in a.faults)


def test_sensor_fault_needs_a_known_target() -> None:
    with pytest.raises(ValueError):
        Fault(FaultKind.SENSOR_STUCK, 0.0, target="not_a_field")


def test_cold_soaked_pack_derates_without_any_fault() -> None:
    # physics, not labels: a pack at -20 °C has reduced power limits (flagged as derate)
    cfg = BusConfig(
        ambient=AmbientProfile(-20.0, 0.0), start_utc=BusConfig().start_utc.replace(hour=2, minute=29)
    )
    states = list(BusSimulator(cfg).run(120.0, 1.0))
    assert any(s.flags.derate for s in states)
    assert all(s.active_faults == () for s in states)
