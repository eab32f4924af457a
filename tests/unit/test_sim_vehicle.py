"""Road load, motor limits, regeneration bounds and auxiliary loads of the 12 m bus."""

from __future__ import annotations

import pytest

from simulator.vehicle import (
    Auxiliaries,
    AuxParams,
    Drivetrain,
    Hvac,
    HvacParams,
    VehicleParams,
    air_density_kg_m3,
)

P = VehicleParams()
RHO = air_density_kg_m3(1700.0, 20.0)
MASS = P.mass_kg(40)


def test_air_density_in_nairobi_is_thin() -> None:
    assert 0.95 < RHO < 1.05
    assert pytest.approx(13_000 + 40 * 68) == MASS


def test_cruise_power_matches_road_load() -> None:
    dt = Drivetrain(P, 25.0)
    v = 50 / 3.6
    res = dt.solve(v, 0.0, 1.0, 0.0, MASS, RHO, 350.0, 200.0)
    road_kw = (MASS * 9.81 * P.rolling_resistance + 0.5 * RHO * P.drag_area_m2 * v * v) * v / 1000
    assert res.motor_power_kw == pytest.approx(road_kw / P.drive_efficiency, rel=0.1)
    assert 10.0 < res.motor_power_kw < 30.0
    assert res.motor_speed_rpm == pytest.approx(v / P.wheel_radius_m * P.gear_ratio * 60 / 6.2832, rel=0.01)


def test_power_limit_reduces_acceleration() -> None:
    dt = Drivetrain(P, 25.0)
    free = dt.solve(10.0, 1.5, 1.0, 0.0, MASS, RHO, 350.0, 200.0)
    limited = dt.solve(10.0, 1.5, 1.0, 0.0, MASS, RHO, 80.0, 200.0)
    assert limited.motor_power_kw <= 80.0 + 1e-6
    assert limited.accel_mps2 < free.accel_mps2


@pytest.mark.parametrize("speed_kmh", [6.0, 20.0, 40.0, 60.0])
@pytest.mark.parametrize("decel", [-0.5, -1.2, -2.5])
def test_regeneration_never_exceeds_braking_energy(speed_kmh: float, decel: float) -> None:
    dt = Drivetrain(P, 25.0)
    res = dt.solve(speed_kmh / 3.6, decel, 1.0, -0.02, MASS, RHO, 350.0, 200.0)
    assert res.regen_kw <= res.brake_wheel_kw * P.regen_efficiency + 1e-9
    assert res.friction_brake_kw >= -1e-9
    assert res.regen_kw <= 200.0 + 1e-9


def test_regen_is_limited_by_the_bms_charge_limit() -> None:
    dt = Drivetrain(P, 25.0)
    res = dt.solve(50 / 3.6, -1.0, 1.0, 0.0, MASS, RHO, 350.0, 20.0)
    assert res.regen_kw <= 20.0 + 1e-9
    assert res.friction_brake_kw > 0.0


def test_hvac_draws_more_on_hot_and_cold_days_than_mild() -> None:
    def mean_kw(ambient: float) -> float:
        hvac = Hvac(HvacParams(), ambient)
        total = 0.0
        for i in range(3600):
            total += hvac.step(ambient, 40, i % 120 < 20, 0.5, True, 1.0)
        return total / 3600

    mild, hot, cold = mean_kw(20.0), mean_kw(35.0), mean_kw(-5.0)
    assert mild < 2.5
    assert hot > mild + 3.0
    assert cold > mild + 5.0


def test_air_compressor_cycles_between_cut_in_and_cut_out() -> None:
    aux = Auxiliaries(AuxParams())
    on = 0
    for i in range(3600):
        if i % 90 == 0:
            aux.on_stop_served()
        dcdc, comp = aux.step(False, 20.0 if i % 90 < 10 else 0.0, 1.0)
        on += comp > 0
        assert 1.5 < dcdc < 3.0
        assert 7.5 < aux.air_bar <= 10.1
    assert 0.05 < on / 3600 < 0.6
