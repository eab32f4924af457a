"""CAN frames from the bus state: what each ECU would put on the wire at this instant.

`CanEmitter.frames(state)` returns the frames due at `state.t_s`, each message of the DBC at its own
cycle time (`GenMsgCycleTime`), scheduled on simulation time, as `can.Message`s stamped `state.ts`.
`encode_signals(...)` is the pure core: a physical value per DBC signal in, the payload bytes out.

Decisions:

* Schedule. Every message keeps a grid of due times in integer milliseconds from the first state it
  sees; a message is sent at most once per state, when the state's time has reached its due time.
  With a physics step no longer than the shortest cycle time (100 ms) the rates are exact; with a
  coarser step a fast message is sent once per step (never a burst of stale copies).
* Range. A value outside the signal's DBC range is clamped into it, and the raw value is kept inside
  the range after rounding, so a decoded value never leaves [minimum, maximum].
* Missing values. A sensor dropout shows as NaN in `BusState`; it is sent as the signal's
  "not available" code: all ones for an unsigned signal (J1939's convention), the most negative raw
  value for a signed one. Most of these decode outside the DBC range, so a reader can tell.
  (The 8-bit temperatures with offset -40 are the exception: 0xFF decodes to 87.5 degC, which the DBC
  range includes.)
* Padding. J1939 parameter groups (`VFrameFormat` J1939PG) fill unused bits with ones, as J1939
  requires; the proprietary 11-bit messages leave them zero.
* Wire faults. `state.can_frame_drop_prob` drops a frame (the PackStatusCounter still advances, so
  the gap shows, as on a real bus). `state.can_frame_corrupt_prob` cuts a frame short: its DLC is
  between 1 and the DBC length - 1. A CAN controller discards a frame whose CRC fails, so bit errors
  on the wire never reach software; what does reach a gateway is a frame of the wrong length (a
  mis-configured ECU, a gateway re-packing frames), and a decoder must reject it rather than read
  garbage. The draws come from the emitter's own seeded generator and only while a probability is
  above zero, so a run without wire faults is the same whatever the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import can
import cantools
from cantools.database.can import Database, Message, Signal

from protocols.catalog import DEFAULT_DBC
from simulator.state import N_MODULES, BusState, ChargingState, DriveState

SignalValues = dict[str, float]
Encoder = Callable[[BusState, int], SignalValues]

SEA_LEVEL_PRESSURE_KPA = 101.325
STANDSTILL_KMH = 0.1


def load_bus_dbc(path: Path = DEFAULT_DBC) -> Database:
    db = cantools.database.load_file(str(path))
    if not isinstance(db, Database):
        raise TypeError(f"{path} is not a CAN database")
    return db


def barometric_pressure_kpa(alt_m: float) -> float:
    """International standard atmosphere, troposphere."""
    return float(SEA_LEVEL_PRESSURE_KPA * (1.0 - 2.25577e-5 * alt_m) ** 5.25588)


def _current_limit_a(power_kw: float, pack_v: float) -> float:
    return power_kw * 1000.0 / pack_v if pack_v > 1.0 else math.nan


# -- what each message says, from the state ----------------------------------------------------------


def _pack_status(s: BusState, counter: int) -> SignalValues:
    return {
        "PackVoltage": s.pack_voltage_v,
        "PackCurrent": s.pack_current_a,
        "SOC": s.soc_pct,
        "ContactorState": int(s.contactor),
        "ChargingState": int(s.charging),
        "PackStatusCounter": counter % 16,
    }


def _limits(s: BusState, _: int) -> SignalValues:
    return {
        "DischargePowerLimit": s.discharge_power_limit_kw,
        "ChargePowerLimit": s.charge_power_limit_kw,
        "DischargeCurrentLimit": _current_limit_a(s.discharge_power_limit_kw, s.pack_voltage_v),
        "ChargeCurrentLimit": _current_limit_a(s.charge_power_limit_kw, s.pack_voltage_v),
    }


def _cell_voltage(s: BusState, _: int) -> SignalValues:
    return {
        "CellVoltageMax": s.cell_v_max,
        "CellVoltageMin": s.cell_v_min,
        "CellVoltageMaxId": s.cell_v_max_id,
        "CellVoltageMinId": s.cell_v_min_id,
    }


def _temperature(s: BusState, _: int) -> SignalValues:
    return {
        "CellTemperatureMax": s.cell_t_max_c,
        "CellTemperatureMin": s.cell_t_min_c,
        "CellTemperatureMaxModule": s.cell_t_max_module,
        "CellTemperatureMinModule": s.cell_t_min_module,
        "CoolantInletTemperature": s.coolant_in_c,
        "CoolantOutletTemperature": s.coolant_out_c,
    }


def _health(s: BusState, _: int) -> SignalValues:
    f = s.flags
    return {
        "SOH": s.soh_pct,
        "InsulationResistance": s.insulation_kohm,
        "FaultOverTemperature": int(f.over_temperature),
        "FaultUnderVoltage": int(f.under_voltage),
        "FaultOverVoltage": int(f.over_voltage),
        "FaultCellImbalance": int(f.cell_imbalance),
        "FaultInsulationLow": int(f.insulation_low),
        "FaultOverCurrent": int(f.over_current),
        "Derate": int(f.derate),
    }


def _module_data(s: BusState, count: int) -> SignalValues:
    i = count % N_MODULES
    prefix = f"Module{i + 1:02d}"
    return {
        "ModuleIndex": i,
        f"{prefix}Voltage": s.module_voltage_v[i],
        f"{prefix}CellVoltageMax": s.module_cell_v_max[i],
        f"{prefix}CellVoltageMin": s.module_cell_v_min[i],
        f"{prefix}Temperature": s.module_temp_c[i],
    }


def _mcu_status(s: BusState, _: int) -> SignalValues:
    return {
        "MotorSpeed": s.motor_speed_rpm,
        "MotorTorque": s.motor_torque_nm,
        "MotorPower": s.motor_power_kw,
        "DriveState": int(s.drive_state),
    }


def _mcu_temperature(s: BusState, _: int) -> SignalValues:
    return {"MotorTemperature": s.motor_temp_c, "InverterTemperature": s.inverter_temp_c}


def _aux_power(s: BusState, _: int) -> SignalValues:
    return {
        "HvacPower": s.hvac_power_kw,
        "DcDcPower": s.dcdc_power_kw,
        "AirCompressorPower": s.air_compressor_power_kw,
    }


def _charger_status(s: BusState, _: int) -> SignalValues:
    return {
        "ChargerPower": s.charger_power_kw,
        "ChargerConnected": int(s.charging != ChargingState.NOT_CONNECTED),
    }


def parking_brake_set(s: BusState) -> bool:
    """Set while the bus is parked: in the depot, or switched off at standstill."""
    return s.speed_kmh < STANDSTILL_KMH and (s.in_depot or s.drive_state == DriveState.OFF)


def brake_pressed(s: BusState) -> bool:
    """Pressed while decelerating, or holding the bus at a standstill with the drive ready."""
    return s.accel_mps2 < -0.1 or (s.speed_kmh < STANDSTILL_KMH and s.drive_state != DriveState.OFF)


def _ccvs1(s: BusState, _: int) -> SignalValues:
    return {
        "ParkingBrakeSwitch": int(parking_brake_set(s)),
        "WheelBasedVehicleSpeed": s.speed_kmh,
        "BrakeSwitch": int(brake_pressed(s)),
    }


def _vdhr(s: BusState, _: int) -> SignalValues:
    return {"HighResolutionTotalVehicleDistance": s.odometer_km, "HighResolutionTripDistance": s.trip_km}


def _amb(s: BusState, _: int) -> SignalValues:
    return {
        "BarometricPressure": barometric_pressure_kpa(s.alt_m),
        "CabInteriorTemperature": s.cabin_c,
        "AmbientAirTemperature": s.ambient_c,
    }


ENCODERS: Mapping[str, Encoder] = {
    "BMS_PackStatus": _pack_status,
    "BMS_Limits": _limits,
    "BMS_CellVoltage": _cell_voltage,
    "BMS_Temperature": _temperature,
    "BMS_Health": _health,
    "BMS_ModuleData": _module_data,
    "MCU_Status": _mcu_status,
    "MCU_Temperature": _mcu_temperature,
    "AUX_Power": _aux_power,
    "CHG_Status": _charger_status,
    "CCVS1": _ccvs1,
    "VDHR": _vdhr,
    "AMB": _amb,
}


# -- physical values -> raw -> bytes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RawCodec:
    """Physical value -> raw integer for one signal: clamped, rounded, kept in range."""

    scale: float
    offset: float
    minimum: float
    maximum: float
    raw_lo: int
    raw_hi: int
    not_available: int

    @classmethod
    def of(cls, sig: Signal) -> _RawCodec:
        scale, offset = float(sig.scale), float(sig.offset)
        bits_lo = -(1 << (sig.length - 1)) if sig.is_signed else 0
        bits_hi = (1 << (sig.length - 1)) - 1 if sig.is_signed else (1 << sig.length) - 1
        lo = float(sig.minimum) if sig.minimum is not None else bits_lo * scale + offset
        hi = float(sig.maximum) if sig.maximum is not None else bits_hi * scale + offset
        raw_lo = max(bits_lo, math.ceil((lo - offset) / scale - 1e-9))
        raw_hi = min(bits_hi, math.floor((hi - offset) / scale + 1e-9))
        return cls(scale, offset, lo, hi, raw_lo, raw_hi, bits_lo if sig.is_signed else bits_hi)

    def raw(self, value: float) -> int:
        if math.isnan(value):
            return self.not_available
        raw = round((value - self.offset) / self.scale) if math.isfinite(value) else 0
        if math.isinf(value):
            raw = self.raw_hi if value > 0 else self.raw_lo
        return min(max(raw, self.raw_lo), self.raw_hi)


@dataclass(frozen=True, slots=True)
class _MessagePlan:
    message: Message
    encoder: Encoder
    period_ms: int
    codecs: Mapping[str, _RawCodec]
    padding: bool

    def payload(self, values: SignalValues) -> bytes:
        raw = {name: self.codecs[name].raw(float(v)) for name, v in values.items()}
        return bytes(self.message.encode(raw, scaling=False, padding=self.padding, strict=False))


def _is_j1939(message: Message) -> bool:
    return message.protocol == "j1939"  # cantools: VFrameFormat J1939PG


def build_plans(db: Database) -> list[_MessagePlan]:
    """One plan per cyclic message of the DBC; a message without an encoder is a programming error."""
    plans: list[_MessagePlan] = []
    for message in db.messages:
        if not message.cycle_time:
            continue
        encoder = ENCODERS.get(message.name)
        if encoder is None:
            raise ValueError(f"DBC message {message.name} has no encoder in simulator/emit_can.py")
        plans.append(_plan(message, encoder))
    return plans


def _plan(message: Message, encoder: Encoder) -> _MessagePlan:
    codecs = {sig.name: _RawCodec.of(sig) for sig in message.signals}
    return _MessagePlan(message, encoder, int(message.cycle_time or 0), codecs, _is_j1939(message))


def encode_signals(db: Database, message_name: str, values: SignalValues) -> bytes:
    """Payload of one message from physical values (clamped into range; NaN -> not available)."""
    message = db.get_message_by_name(message_name)
    return _plan(message, ENCODERS[message_name]).payload(values)


# -- the scheduler -----------------------------------------------------------------------------------


@dataclass(slots=True)
class CanStats:
    sent: int = 0
    dropped: int = 0  # lost on the wire (can_frame_loss)
    corrupted: int = 0  # cut short (can_frame_corruption)


class CanEmitter:
    """The frames due at each state, each message at its own cycle time on simulation time."""

    def __init__(self, db: Database | None = None, seed: int = 0) -> None:
        self.db = db if db is not None else load_bus_dbc()
        self._plans = build_plans(self.db)
        self._next_due_ms: list[int] | None = None
        self._counts = [0] * len(self._plans)  # frames produced per message (before faults)
        self._rng = random.Random(seed)
        self.stats = CanStats()

    @property
    def min_cycle_s(self) -> float:
        return min(p.period_ms for p in self._plans) / 1000.0

    def frames(self, state: BusState) -> list[can.Message]:
        t_ms = round(state.t_s * 1000.0)
        if self._next_due_ms is None:
            self._next_due_ms = [t_ms] * len(self._plans)
        due = self._next_due_ms
        out: list[can.Message] = []
        for k, plan in enumerate(self._plans):
            if t_ms < due[k]:
                continue
            while due[k] <= t_ms:
                due[k] += plan.period_ms
            count = self._counts[k]
            self._counts[k] = count + 1
            frame = self._wire(plan, plan.payload(plan.encoder(state, count)), state)
            if frame is not None:
                out.append(frame)
        self.stats.sent += len(out)
        return out

    def _wire(self, plan: _MessagePlan, data: bytes, state: BusState) -> can.Message | None:
        if state.can_frame_drop_prob > 0.0 and self._rng.random() < state.can_frame_drop_prob:
            self.stats.dropped += 1
            return None
        if state.can_frame_corrupt_prob > 0.0 and self._rng.random() < state.can_frame_corrupt_prob:
            self.stats.corrupted += 1
            data = data[: self._rng.randrange(1, len(data))] if len(data) > 1 else b""
        return can.Message(
            timestamp=state.ts,
            arbitration_id=plan.message.frame_id,
            is_extended_id=plan.message.is_extended_frame,
            data=data,
            check=False,
        )
