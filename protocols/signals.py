"""Canonical names of the catalog signals that code reads by name (features, alert rules, KPIs).

Names, not data: `protocols/catalog.toml` maps them to DBC signals and GPS fields, and a test checks that
every name here is in the shipped catalog.
"""

from __future__ import annotations

from typing import Final

SPEED: Final = "Vehicle.Speed"  # km/h, wheel-based
ODOMETER: Final = "Vehicle.TraveledDistance"  # km
LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"  # deg
LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"  # deg
AMBIENT: Final = "Vehicle.Exterior.AirTemperature"  # degC
HVAC_POWER: Final = "Vehicle.Cabin.HVAC.Power"  # kW

_TB: Final = "Vehicle.Powertrain.TractionBattery."
SOC: Final = _TB + "StateOfCharge.Current"  # %
SOH: Final = _TB + "StateOfHealth"  # %
PACK_VOLTAGE: Final = _TB + "CurrentVoltage"  # V
PACK_CURRENT: Final = _TB + "CurrentCurrent"  # A, positive = discharge
CELL_TEMP_MAX: Final = _TB + "Temperature.Max"  # degC
CELL_TEMP_MIN: Final = _TB + "Temperature.Min"  # degC
CELL_V_MAX: Final = _TB + "CellVoltage.Max"  # V
CELL_V_MIN: Final = _TB + "CellVoltage.Min"  # V
INSULATION: Final = _TB + "InsulationResistance"  # kOhm
DERATED: Final = _TB + "IsPowerDerated"  # 0/1
DISCHARGE_LIMIT: Final = _TB + "DischargePowerLimit"  # kW
FAULT_FLAGS: Final = tuple(
    _TB + "Fault." + name
    for name in (
        "OverTemperature",
        "UnderVoltage",
        "OverVoltage",
        "CellImbalance",
        "InsulationLow",
        "OverCurrent",
    )
)
