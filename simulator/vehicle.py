"""Longitudinal dynamics, traction motor and auxiliaries of a 12 m battery-electric city bus.

Road load: F = m*k_rot*a + m*g*C_rr + ½*ρ*C_d*A*v² + m*g*grade. The motor drives the rear axle through a
fixed ratio; electrical power at the inverter DC side is the wheel power over the drivetrain efficiency
(plus a speed-dependent no-load loss). When braking, the motor recovers wheel power x regen efficiency,
limited by the motor's power and torque, by what the pack may take (BMS charge limit + auxiliary draw),
and fading out at walking speed; friction brakes take the rest. So regeneration can never return more
than the braking energy times an efficiency below one.

Auxiliaries: HVAC with a lumped cabin (heat through the body, through open doors, from passengers and the
sun; cooling/heating to a setpoint band with a COP), the DC/DC converter feeding the 24 V loads, and an
electric air compressor keeping the brake/suspension/door reservoir between its cut-in and cut-out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

G_MPS2 = 9.81


@dataclass(frozen=True, slots=True)
class VehicleParams:
    curb_mass_kg: float = 13_000.0
    passenger_mass_kg: float = 68.0
    max_passengers: int = 80
    rotating_mass_factor: float = 1.06  # wheels, axle, motor rotor
    rolling_resistance: float = 0.008  # city-bus tyres on asphalt
    drag_area_m2: float = 0.65 * 8.0  # C_d * A
    wheel_radius_m: float = 0.48  # 275/70 R22.5
    gear_ratio: float = 6.2  # motor revolutions per wheel revolution
    motor_max_power_kw: float = 250.0
    motor_max_torque_nm: float = 2_800.0
    motor_max_speed_rpm: float = 3_300.0
    drive_efficiency: float = 0.90  # DC bus -> wheel (inverter x motor x gear)
    regen_efficiency: float = 0.85  # wheel -> DC bus
    no_load_loss_kw_at_max_rpm: float = 1.2  # iron and friction loss while spinning
    regen_fade_kmh: tuple[float, float] = (4.0, 12.0)  # no regen below the first, full above the second
    regen_max_decel_mps2: float = 1.1  # brake blending: electric braking up to this, friction beyond
    motor_heat_capacity_j_per_k: float = 120_000.0
    motor_to_coolant_w_per_k: float = 160.0
    inverter_heat_capacity_j_per_k: float = 12_000.0
    inverter_to_coolant_w_per_k: float = 90.0
    inverter_loss_fraction: float = 0.03  # of |DC power|; the rest of the drivetrain loss heats the motor

    def mass_kg(self, passengers: int) -> float:
        return self.curb_mass_kg + self.passenger_mass_kg * passengers


def air_density_kg_m3(altitude_m: float, temp_c: float) -> float:
    """Barometric formula (isothermal, scale height 8.4 km) and ideal gas: ~1.0 kg/m³ in Nairobi."""
    pressure_pa = 101_325.0 * math.exp(-altitude_m / 8_400.0)
    return pressure_pa / (287.05 * (temp_c + 273.15))


@dataclass(frozen=True, slots=True)
class TractionResult:
    accel_mps2: float  # achieved (may be less than asked when power-limited)
    motor_speed_rpm: float
    motor_torque_nm: float
    motor_power_kw: float  # DC side; negative when regenerating
    traction_kw: float  # DC power drawn for traction (>= 0)
    regen_kw: float  # DC power recovered (>= 0)
    brake_wheel_kw: float  # total braking power at the wheels (regen + friction, >= 0)
    friction_brake_kw: float


class Drivetrain:
    """Road load -> motor torque/speed/power, with power, torque and regen limits, and motor/inverter heat."""

    def __init__(self, params: VehicleParams, coolant_c: float) -> None:
        self.p = params
        self.motor_temp_c = coolant_c
        self.inverter_temp_c = coolant_c
        self._rpm_per_mps = 60.0 * params.gear_ratio / (2.0 * math.pi * params.wheel_radius_m)

    def solve(
        self,
        speed_mps: float,
        accel_demand_mps2: float,
        dt_s: float,
        grade: float,
        mass_kg: float,
        air_density: float,
        max_drive_kw: float,
        max_regen_kw: float,
    ) -> TractionResult:
        p = self.p
        if speed_mps <= 0.0 and accel_demand_mps2 <= 0.0:
            return TractionResult(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        m_eff = mass_kg * p.rotating_mass_factor
        # evaluate at mid-step speed so power x time matches the kinetic energy change over the step
        speed_mps = max(0.0, speed_mps + 0.5 * accel_demand_mps2 * dt_s)
        resist_n = mass_kg * G_MPS2 * (p.rolling_resistance + grade) + 0.5 * air_density * p.drag_area_m2 * (
            speed_mps * speed_mps
        )
        force_n = m_eff * accel_demand_mps2 + resist_n
        rpm = speed_mps * self._rpm_per_mps
        omega = max(rpm, 1.0) * math.pi / 30.0
        no_load_kw = p.no_load_loss_kw_at_max_rpm * rpm / p.motor_max_speed_rpm
        torque_per_n = p.wheel_radius_m / p.gear_ratio
        v_eff = max(speed_mps, 0.5)  # power limits bite through force at (almost) standstill too
        if force_n >= 0.0:
            torque_cap = min(p.motor_max_torque_nm, p.motor_max_power_kw * 1000.0 / omega)
            wheel_cap_kw = max(0.0, (max_drive_kw - no_load_kw) * p.drive_efficiency)
            force_cap = min(torque_cap / torque_per_n, wheel_cap_kw * 1000.0 / v_eff)
            if rpm >= p.motor_max_speed_rpm:
                force_cap = min(force_cap, resist_n)
            force_n = min(force_n, force_cap)
            wheel_kw = force_n * speed_mps / 1000.0
            dc_kw = wheel_kw / p.drive_efficiency + no_load_kw
            accel = (force_n - resist_n) / m_eff
            return TractionResult(accel, rpm, force_n * torque_per_n, dc_kw, dc_kw, 0.0, 0.0, 0.0)
        brake_kw = -force_n * speed_mps / 1000.0
        lo, hi = p.regen_fade_kmh
        fade = min(1.0, max(0.0, (speed_mps * 3.6 - lo) / (hi - lo)))
        torque_cap_kw = min(p.motor_max_torque_nm, p.motor_max_power_kw * 1000.0 / omega) * omega / 1000.0
        blend_cap_kw = p.regen_max_decel_mps2 * m_eff * speed_mps / 1000.0
        regen_wheel_kw = fade * min(
            brake_kw,
            blend_cap_kw,
            p.motor_max_power_kw,
            torque_cap_kw,
            max(0.0, max_regen_kw) / p.regen_efficiency,
        )
        regen_dc_kw = regen_wheel_kw * p.regen_efficiency
        dc_kw = no_load_kw - regen_dc_kw
        torque = -regen_wheel_kw * 1000.0 / omega if rpm > 1.0 else 0.0
        return TractionResult(
            accel_demand_mps2,
            rpm,
            torque,
            dc_kw,
            max(0.0, dc_kw),
            regen_dc_kw,
            brake_kw,
            brake_kw - regen_wheel_kw,
        )

    def step_thermal(self, result: TractionResult, coolant_c: float, dt_s: float) -> None:
        p = self.p
        dc_kw = abs(result.motor_power_kw)
        wheel_kw = (
            result.traction_kw * p.drive_efficiency
            if result.traction_kw > 0
            else result.regen_kw / (p.regen_efficiency)
        )
        loss_w = abs(dc_kw - wheel_kw) * 1000.0 if result.motor_speed_rpm > 0 else 0.0
        inverter_w = p.inverter_loss_fraction * dc_kw * 1000.0
        motor_w = max(0.0, loss_w - inverter_w)
        self.motor_temp_c += (
            dt_s
            * (motor_w - p.motor_to_coolant_w_per_k * (self.motor_temp_c - coolant_c))
            / p.motor_heat_capacity_j_per_k
        )
        self.inverter_temp_c += (
            dt_s
            * (inverter_w - p.inverter_to_coolant_w_per_k * (self.inverter_temp_c - coolant_c))
            / p.inverter_heat_capacity_j_per_k
        )


@dataclass(frozen=True, slots=True)
class HvacParams:
    cabin_heat_capacity_j_per_k: float = 1_200_000.0  # air, seats, panels
    body_ua_w_per_k: float = 450.0
    open_door_ua_w_per_k: float = 1_500.0  # air exchange while doors are open
    passenger_sensible_w: float = 90.0
    passenger_latent_w: float = 40.0  # moisture the AC must condense
    solar_gain_max_w: float = 3_000.0
    heating_setpoint_c: float = 18.0
    cooling_setpoint_c: float = 24.0
    cooling_max_w: float = 28_000.0
    heating_max_w: float = 24_000.0
    gain_w_per_k: float = 5_000.0
    fan_kw_active: float = 0.8
    fan_kw_idle: float = 0.3


def cooling_cop(ambient_c: float) -> float:
    return min(3.5, max(1.6, 3.2 - 0.04 * (ambient_c - 25.0)))


def heating_cop(ambient_c: float) -> float:
    # CO2/R-134a heat pump above -5 °C; PTC resistance heating (COP 1) below
    return 1.0 if ambient_c < -5.0 else min(3.0, 2.0 + 0.05 * ambient_c)


class Hvac:
    """Cabin temperature and the HVAC's electrical draw."""

    def __init__(self, params: HvacParams, cabin_c: float) -> None:
        self.p = params
        self.cabin_c = cabin_c

    def step(
        self,
        ambient_c: float,
        passengers: int,
        doors_open: bool,
        solar_fraction: float,
        active: bool,
        dt_s: float,
    ) -> float:
        """Advance the cabin by dt_s; return HVAC electrical power in kW."""
        p = self.p
        ua = p.body_ua_w_per_k + (p.open_door_ua_w_per_k if doors_open else 0.0)
        gains_w = (
            ua * (ambient_c - self.cabin_c)
            + passengers * p.passenger_sensible_w
            + solar_fraction * p.solar_gain_max_w
        )
        hvac_thermal_w = 0.0
        electric_kw = 0.0
        if active:
            if self.cabin_c > p.cooling_setpoint_c - 0.5:
                hvac_thermal_w = -min(
                    p.cooling_max_w, p.gain_w_per_k * (self.cabin_c - p.cooling_setpoint_c + 0.5)
                )
                latent_w = passengers * p.passenger_latent_w
                electric_kw = (-hvac_thermal_w + latent_w) / cooling_cop(ambient_c) / 1000.0 + p.fan_kw_active
            elif self.cabin_c < p.heating_setpoint_c + 0.5:
                hvac_thermal_w = min(
                    p.heating_max_w, p.gain_w_per_k * (p.heating_setpoint_c + 0.5 - self.cabin_c)
                )
                electric_kw = hvac_thermal_w / heating_cop(ambient_c) / 1000.0 + p.fan_kw_active
            else:
                electric_kw = p.fan_kw_idle
        self.cabin_c += dt_s * (gains_w + hvac_thermal_w) / p.cabin_heat_capacity_j_per_k
        return electric_kw


@dataclass(frozen=True, slots=True)
class AuxParams:
    low_voltage_base_kw: float = 1.6  # ECUs, displays, ticketing, ventilation, 24 V battery upkeep
    lights_kw: float = 0.5  # at night
    dcdc_efficiency: float = 0.92
    compressor_kw: float = 4.5
    compressor_fill_bar_per_s: float = 0.025
    compressor_cut_in_bar: float = 8.0
    compressor_cut_out_bar: float = 10.0
    air_leak_bar_per_s: float = 0.0004
    air_per_door_cycle_bar: float = 0.06
    air_per_kneel_bar: float = 0.20
    air_per_friction_brake_kj_bar: float = 0.00008  # EBS air used per kJ of friction braking


class Auxiliaries:
    """DC/DC (24 V loads) and the air compressor; returns their HV-side powers."""

    def __init__(self, params: AuxParams) -> None:
        self.p = params
        self.air_bar = params.compressor_cut_out_bar
        self.compressor_on = False

    def on_stop_served(self) -> None:
        """A stop with doors opened and the bus knelt."""
        self.air_bar -= 2 * self.p.air_per_door_cycle_bar + self.p.air_per_kneel_bar

    def step(self, night: bool, friction_brake_kw: float, dt_s: float) -> tuple[float, float]:
        p = self.p
        self.air_bar -= dt_s * (p.air_leak_bar_per_s + p.air_per_friction_brake_kj_bar * friction_brake_kw)
        if self.air_bar < p.compressor_cut_in_bar:
            self.compressor_on = True
        elif self.air_bar >= p.compressor_cut_out_bar:
            self.compressor_on = False
        compressor_kw = 0.0
        if self.compressor_on:
            self.air_bar += dt_s * p.compressor_fill_bar_per_s
            compressor_kw = p.compressor_kw
        low_v_kw = p.low_voltage_base_kw + (p.lights_kw if night else 0.0)
        return low_v_kw / p.dcdc_efficiency, compressor_kw
