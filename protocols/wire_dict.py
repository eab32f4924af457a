"""Codebooks of the uplink payload: what the agent and the receiver both ship, so a payload need not carry it.

A codebook has an id (the last header byte of a payload) and holds

- `names`: canonical signal names. A signal listed here travels as its position in the list (about one
  byte per batch) instead of its name (up to 70 bytes per batch); any other name still travels spelled out.
- `quanta`: the wire resolutions the catalog uses.
- `zstd_dict`: a zstd raw-content dictionary built from both, spelled the way a body spells them (msgpack
  strings, and the msgpack array of sorted distinct quanta that every batch's signal table carries), so
  zstd can refer to them from the first byte of every batch: names outside the codebook share its
  prefixes, and the quanta array repeats in every batch.

Codebooks are append-only. A shipped codebook never changes (a receiver must decode whatever an agent
sent with it, and both build the dictionary bytes from this file; `tests/unit/test_wire.py` pins each
one's SHA-256). A catalog that gains signals gets a new codebook with the next id; `CURRENT` moves to it
once every receiver ships it (receivers first, then agents). Id 0 is the empty codebook: every name
spelled out, no dictionary.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import zstandard


@dataclass(frozen=True)
class Codebook:
    id: int
    names: tuple[str, ...]
    quanta: tuple[float, ...]
    index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    dictionary_bytes: bytes = field(init=False, repr=False, compare=False)
    zstd_dict: zstandard.ZstdCompressionDict | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = _dictionary_bytes(self.names, self.quanta)
        object.__setattr__(self, "index", MappingProxyType({name: i for i, name in enumerate(self.names)}))
        object.__setattr__(self, "dictionary_bytes", raw)
        zstd_dict = (
            zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if raw else None
        )
        object.__setattr__(self, "zstd_dict", zstd_dict)

    @property
    def sha256(self) -> str:
        """Digest of everything a payload may depend on: the names, the quanta and the dictionary."""
        return hashlib.sha256(
            repr((self.id, self.names, self.quanta)).encode() + self.dictionary_bytes
        ).hexdigest()


def _msgpack_str(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) < 32:
        return bytes([0xA0 | len(data)]) + data
    if len(data) < 256:
        return bytes([0xD9, len(data)]) + data
    raise ValueError("codebook names are at most 255 UTF-8 bytes")


def _msgpack_float_array(values: Sequence[float]) -> bytes:
    if len(values) >= 16:
        raise ValueError("at most 15 codebook quanta")
    return bytes([0x90 | len(values)]) + b"".join(b"\xcb" + struct.pack(">d", v) for v in values)


def _dictionary_bytes(names: Sequence[str], quanta: Sequence[float]) -> bytes:
    """Written by hand, not by msgpack: the bytes must never depend on a library version."""
    if not names and not quanta:
        return b""
    return b"".join(_msgpack_str(name) for name in names) + _msgpack_float_array(sorted(quanta))


CATALOG_1: Final = Codebook(
    id=1,
    names=(
        "Vehicle.Speed",
        "Vehicle.Chassis.ParkingBrake.IsEngaged",
        "Vehicle.TraveledDistance",
        "Vehicle.TripMeterReading",
        "Vehicle.Exterior.AirTemperature",
        "Vehicle.Cabin.HVAC.AmbientAirTemperature",
        "Vehicle.Powertrain.TractionBattery.CurrentVoltage",
        "Vehicle.Powertrain.TractionBattery.CurrentCurrent",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "Vehicle.Powertrain.TractionBattery.ContactorState",
        "Vehicle.Powertrain.TractionBattery.Charging.State",
        "Vehicle.Powertrain.TractionBattery.DischargePowerLimit",
        "Vehicle.Powertrain.TractionBattery.ChargePowerLimit",
        "Vehicle.Powertrain.TractionBattery.DischargeCurrentLimit",
        "Vehicle.Powertrain.TractionBattery.ChargeCurrentLimit",
        "Vehicle.Powertrain.TractionBattery.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.CellVoltage.MaxCellId",
        "Vehicle.Powertrain.TractionBattery.CellVoltage.MinCellId",
        "Vehicle.Powertrain.TractionBattery.Temperature.Max",
        "Vehicle.Powertrain.TractionBattery.Temperature.Min",
        "Vehicle.Powertrain.TractionBattery.Temperature.MaxModuleId",
        "Vehicle.Powertrain.TractionBattery.Temperature.MinModuleId",
        "Vehicle.Powertrain.TractionBattery.Coolant.InletTemperature",
        "Vehicle.Powertrain.TractionBattery.Coolant.OutletTemperature",
        "Vehicle.Powertrain.TractionBattery.StateOfHealth",
        "Vehicle.Powertrain.TractionBattery.InsulationResistance",
        "Vehicle.Powertrain.TractionBattery.Fault.OverTemperature",
        "Vehicle.Powertrain.TractionBattery.Fault.UnderVoltage",
        "Vehicle.Powertrain.TractionBattery.Fault.OverVoltage",
        "Vehicle.Powertrain.TractionBattery.Fault.CellImbalance",
        "Vehicle.Powertrain.TractionBattery.Fault.InsulationLow",
        "Vehicle.Powertrain.TractionBattery.Fault.OverCurrent",
        "Vehicle.Powertrain.TractionBattery.IsPowerDerated",
        "Vehicle.Powertrain.ElectricMotor.Speed",
        "Vehicle.Powertrain.ElectricMotor.Torque",
        "Vehicle.Powertrain.ElectricMotor.Power",
        "Vehicle.Powertrain.ElectricMotor.DriveState",
        "Vehicle.Powertrain.ElectricMotor.MotorTemperature",
        "Vehicle.Powertrain.ElectricMotor.InverterTemperature",
        "Vehicle.Cabin.HVAC.Power",
        "Vehicle.LowVoltageSystem.DcDcPower",
        "Vehicle.Chassis.AirCompressor.Power",
        "Vehicle.Powertrain.TractionBattery.Charging.ChargePower",
        "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected",
        "Vehicle.Powertrain.TractionBattery.Module.M01.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M01.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M01.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M01.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M02.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M02.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M02.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M02.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M03.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M03.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M03.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M03.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M04.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M04.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M04.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M04.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M05.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M05.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M05.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M05.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M06.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M06.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M06.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M06.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M07.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M07.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M07.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M07.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M08.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M08.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M08.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M08.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M09.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M09.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M09.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M09.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M10.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M10.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M10.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M10.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M11.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M11.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M11.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M11.Temperature",
        "Vehicle.Powertrain.TractionBattery.Module.M12.Voltage",
        "Vehicle.Powertrain.TractionBattery.Module.M12.CellVoltage.Max",
        "Vehicle.Powertrain.TractionBattery.Module.M12.CellVoltage.Min",
        "Vehicle.Powertrain.TractionBattery.Module.M12.Temperature",
        "Vehicle.CurrentLocation.Latitude",
        "Vehicle.CurrentLocation.Longitude",
        "Vehicle.CurrentLocation.Altitude",
        "Vehicle.CurrentLocation.Heading",
        "Vehicle.CurrentLocation.Speed",
        "Vehicle.CurrentLocation.HDOP",
    ),
    quanta=(1e-07, 0.001, 0.00390625, 0.005, 0.01, 0.03125, 0.1, 0.5, 1.0),
)
"""`protocols/catalog.toml` version 1, in catalog order."""

CATALOG_2: Final = Codebook(
    id=2,
    names=(
        *CATALOG_1.names,
        "Vehicle.Diagnostics.DM1.ActiveDtcCount",
        "Vehicle.Diagnostics.DM1.RedStopLamp",
        "Vehicle.Diagnostics.DM1.AmberWarningLamp",
        "Vehicle.Diagnostics.DM1.MalfunctionIndicatorLamp",
        "Vehicle.Diagnostics.DM1.ProtectLamp",
    ),
    quanta=CATALOG_1.quanta,
)
"""Codebook 1 and the J1939 DM1 entries of `protocols/catalog.toml`, in catalog order."""

CODEBOOKS: Final[Mapping[int, Codebook]] = MappingProxyType(
    {0: Codebook(id=0, names=(), quanta=()), 1: CATALOG_1, 2: CATALOG_2}
)
CURRENT: Final = 2
"""The codebook the encoder uses."""
