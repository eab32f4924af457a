"""The state of the simulated bus at one instant: what the physics produces and the emitters encode.

CONTRACT between the physics (route, cycles, vehicle, battery, faults) and the emitters (CAN, NMEA,
ground truth). Units are in the names. Current is positive when the pack discharges.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

N_MODULES = 12  # battery modules, each 16 cells in series -> 192 S
CELLS_PER_MODULE = 16


class DriveState(IntEnum):
    OFF = 0
    READY = 1
    DRIVE = 2
    NEUTRAL = 3
    REVERSE = 4


class ContactorState(IntEnum):
    OPEN = 0
    PRECHARGE = 1
    CLOSED = 2
    WELDED = 3


class ChargingState(IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CONSTANT_CURRENT = 2
    CONSTANT_VOLTAGE = 3
    COMPLETE = 4
    FAULT = 5


@dataclass(frozen=True, slots=True)
class BmsFlags:
    over_temperature: bool = False
    under_voltage: bool = False
    over_voltage: bool = False
    cell_imbalance: bool = False
    insulation_low: bool = False
    over_current: bool = False
    derate: bool = False  # power limits reduced below nominal

    @property
    def any_fault(self) -> bool:
        return (
            self.over_temperature
            or self.under_voltage
            or self.over_voltage
            or self.cell_imbalance
            or self.insulation_low
            or self.over_current
        )


@dataclass(frozen=True, slots=True)
class BusState:
    # time and place
    t_s: float  # seconds since the start of the simulation (monotonic)
    ts: float  # Unix epoch seconds, UTC (what a GPS / bus clock would say)
    lat_deg: float
    lon_deg: float
    alt_m: float
    heading_deg: float
    gps_valid: bool
    gps_satellites: int
    gps_hdop: float
    # motion
    speed_kmh: float  # wheel-based
    accel_mps2: float
    odometer_km: float  # total vehicle distance
    trip_km: float
    grade_pct: float
    passengers: int
    mass_kg: float
    ambient_c: float
    cabin_c: float
    at_stop: bool
    in_depot: bool
    # traction
    motor_speed_rpm: float
    motor_torque_nm: float
    motor_power_kw: float  # electrical, at the inverter DC side; negative when regenerating
    motor_temp_c: float
    inverter_temp_c: float
    drive_state: DriveState
    # auxiliaries
    hvac_power_kw: float
    dcdc_power_kw: float
    air_compressor_power_kw: float
    # pack (as the BMS reports it; sensors may be faulty)
    pack_voltage_v: float
    pack_current_a: float
    pack_power_kw: float
    soc_pct: float  # BMS-reported
    soh_pct: float
    cell_v_max: float
    cell_v_min: float
    cell_v_max_id: int  # 0..191
    cell_v_min_id: int
    cell_t_max_c: float
    cell_t_min_c: float
    cell_t_max_module: int  # 0..N_MODULES-1
    cell_t_min_module: int
    coolant_in_c: float
    coolant_out_c: float
    module_voltage_v: tuple[float, ...]  # N_MODULES entries
    module_cell_v_max: tuple[float, ...]
    module_cell_v_min: tuple[float, ...]
    module_temp_c: tuple[float, ...]
    insulation_kohm: float
    contactor: ContactorState
    charging: ChargingState
    charger_power_kw: float  # power delivered by the depot charger (0 when not charging)
    discharge_power_limit_kw: float
    charge_power_limit_kw: float
    flags: BmsFlags
    # ground truth only (never on the bus's wires)
    soc_true_pct: float
    energy_out_kwh: float  # cumulative energy drawn from the pack (discharge), for plausibility
    energy_in_kwh: float  # cumulative energy returned to the pack (regen + charging)
    active_faults: tuple[str, ...]  # names of injected faults active now
    # --- additions by the physics (defaults keep older constructors working) ---
    route_distance_m: float = 0.0  # along the route from the depot end
    next_stop_id: str = ""
    traction_energy_kwh: float = 0.0  # cumulative DC energy into the inverter for traction
    regen_energy_kwh: float = 0.0  # cumulative DC energy recovered by regenerative braking
    brake_energy_kwh: float = 0.0  # cumulative braking energy at the wheels (regen + friction)
    battery_thermal_power_kw: float = 0.0  # chiller / coolant heater electrical draw
    can_frame_drop_prob: float = 0.0  # for the CAN emitter while a can_frame_loss fault is active
    can_frame_corrupt_prob: float = 0.0  # while a can_frame_corruption fault is active
