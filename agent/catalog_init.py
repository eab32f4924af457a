"""`voltgate-agent catalog init`: a starter catalog for a DBC, so a new vehicle needs an edit, not code.

The starter maps every signal of the DBC, ordered by frame id, each under `Message.Signal` with its DBC
unit and a default sampling policy; a signal that looks like one of a few well-known quantities gets its
COVESA Vehicle Signal Specification path instead, marked as a guess for the engineer to check. It is
the catalog `voltgate-agent decode --dbc FILE LOG` uses when no `--catalog` is given.

Default sampling policy (the engineer tunes it per signal): a state signal (value table, or at most 2
bits) keeps every change (`min_interval_s = 0`); a measurement keeps at most one value a second that
moved at least half a DBC step (so any change of one step counts); both send a heartbeat every 60 s.

Well-known signals, matched by name and unit (VSS paths and units from COVESA Vehicle Signal
Specification 4.x, github.com/COVESA/vehicle_signal_specification, `spec/`: `Vehicle.Speed` km/h,
`Vehicle.TraveledDistance` km, `Vehicle.Exterior.AirTemperature` celsius, `Vehicle.LowVoltageBattery.
CurrentVoltage` V, and in `Powertrain/TractionBattery.vspec` `StateOfCharge.Current` / `.Displayed`
percent, `CurrentVoltage` V, `CurrentCurrent` A with positive = into the battery). Each VSS path goes to
the first matching signal by frame id; a match is a guess from names, so the file says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cantools.database.can import Database, Message, Signal

from protocols.catalog import Catalog, parse_catalog
from protocols.dbc import read_dbc

_HEARTBEAT_S = 60.0
_MEASUREMENT_MIN_INTERVAL_S = 1.0
_FLOAT_RESOLUTION = 0.001  # an IEEE float signal has no DBC step; this is its wire step in the starter

_UNITS = {  # a DBC's spelling → the VSS unit it is
    "km/h": "km/h",
    "kph": "km/h",
    "kmh": "km/h",
    "%": "percent",
    "percent": "percent",
    "pct": "percent",
    "v": "V",
    "volt": "V",
    "volts": "V",
    "a": "A",
    "amp": "A",
    "amps": "A",
    "ampere": "A",
    "km": "km",
    "degc": "celsius",
    "°c": "celsius",
    "c": "celsius",
    "deg c": "celsius",
    "degrees c": "celsius",
    "celsius": "celsius",
}

_NOT_TRACTION = r"12v|twelve|24v|ulo|lowvolt|aux|cell|module|modul"
_NOT_PRESENT_VALUE = r"lim|max|min|target|trgt|rq|req|set|thr|warn|protect|prtct"


@dataclass(frozen=True, slots=True)
class _WellKnown:
    path: str
    unit: str  # VSS unit the DBC's must convert to without scaling
    signal: str  # regex on the signal name, lower case without separators
    context: str = ""  # regex on "message signal" (lower case, no separators) that must also match
    exclude: str = ""  # regex on the same that rules a signal out

    def matches(self, message: Message, signal: Signal) -> bool:
        if _UNITS.get((signal.unit or "").strip().lower()) != self.unit:
            return False
        name = _squash(signal.name)
        both = _squash(message.name) + " " + name
        return (
            re.search(self.signal, name) is not None
            and (not self.context or re.search(self.context, both) is not None)
            and (not self.exclude or re.search(self.exclude, both) is None)
        )


_WELL_KNOWN = (
    _WellKnown("Vehicle.Speed", "km/h", r"(vehicle|veh)(speed|spd|vactl)", exclude=_NOT_PRESENT_VALUE),
    _WellKnown(
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
        "percent",
        r"(soc|stateofcharge).*(disp|dsply)|(disp|dsply).*(soc|stateofcharge)",
        exclude=f"{_NOT_TRACTION}|{_NOT_PRESENT_VALUE}",
    ),
    _WellKnown(
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "percent",
        r"soc|stateofcharge",
        exclude=f"{_NOT_TRACTION}|{_NOT_PRESENT_VALUE}|disp|dsply|fraction",
    ),
    _WellKnown(
        "Vehicle.Powertrain.TractionBattery.CurrentVoltage",
        "V",
        r"volt|^[uv]batt|^batt?[uv]|^pack[uv]|^hvbatt?[uv]",
        context=r"batt|bms|pack|hv",
        exclude=f"{_NOT_TRACTION}|{_NOT_PRESENT_VALUE}|charger|inv",
    ),
    _WellKnown(
        "Vehicle.Powertrain.TractionBattery.CurrentCurrent",
        "A",
        r"curr|^ibatt|^batt?i|^packi|^hvbatt?i",
        context=r"batt|bms|pack|hv",
        exclude=f"{_NOT_TRACTION}|{_NOT_PRESENT_VALUE}|charger|inv",
    ),
    _WellKnown("Vehicle.TraveledDistance", "km", r"odo|totalvehicledistance|totaldistance", exclude=r"trip"),
    _WellKnown(
        "Vehicle.Exterior.AirTemperature",
        "celsius",
        r"(ambient|airamb|amb|outside|outdoor|exterior)",
        exclude=f"tegra|cpu|board|pcb|ecu|internal|cabin|interior|inside|{_NOT_PRESENT_VALUE}",
    ),
    _WellKnown(
        "Vehicle.LowVoltageBattery.CurrentVoltage",
        "V",
        r"volt|^v|^u",
        context=r"12v|twelve|lowvolt|ulo|aux",
        exclude=f"cell|module|modul|{_NOT_PRESENT_VALUE}",
    ),
)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True, slots=True)
class StarterEntry:
    message: Message
    signal: Signal
    name: str
    vss: bool

    @property
    def is_state(self) -> bool:
        """A flag or an enumeration (a value table and no unit), not a measurement."""
        unit = (self.signal.unit or "").strip()
        return self.signal.length <= 2 or (bool(self.signal.choices) and not unit)


def _plain_name(message: str, signal: str) -> str:
    # A canonical name's first part starts with a letter (`protocols.catalog`); DBC names may not.
    head = message if message[:1].isascii() and message[:1].isalpha() else f"M{message}"
    return re.sub(r"[^A-Za-z0-9_]", "_", head) + "." + re.sub(r"[^A-Za-z0-9_]", "_", signal)


def starter_entries(database: Database) -> Iterator[StarterEntry]:
    """Every signal of `database`, by frame id then bit position, under its starter name."""
    taken: set[str] = set()
    for message in sorted(database.messages, key=lambda m: (m.frame_id, m.name)):
        for signal in message.signals:
            vss_path = next(
                (
                    known.path
                    for known in _WELL_KNOWN
                    if known.path not in taken and known.matches(message, signal)
                ),
                None,
            )
            name = vss_path or _plain_name(message.name, signal.name)
            suffix = 2
            while name in taken:  # names the DBC repeats, or that collide once cleaned
                name = f"{_plain_name(message.name, signal.name)}_{suffix}"
                suffix += 1
            taken.add(name)
            yield StarterEntry(message, signal, name, vss_path is not None)


def _toml_str(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _number(value: float) -> str:
    return repr(float(value))


def _entry_toml(entry: StarterEntry) -> list[str]:
    message, signal = entry.message, entry.signal
    kind = "ext" if message.is_extended_frame else "std"
    scale = abs(float(signal.scale)) if isinstance(signal.scale, int | float) else 1.0
    range_text = f"[{signal.minimum}|{signal.maximum}]" if signal.minimum is not None else "no range"
    described = (
        f"0x{message.frame_id:X} ({kind}) {message.name}.{signal.name}: {signal.length} bits, "
        f"scale {signal.scale}, offset {signal.offset}, {range_text} {signal.unit or ''}"
    )
    lines = ["", "# " + " ".join(described.split())]  # one comment line, whatever the DBC's unit holds
    if entry.vss:
        lines.append("# VSS path guessed from the DBC's name and unit: check the meaning (and sign) first")
    unit = signal.unit.strip() if signal.unit and signal.unit.strip() else ("enum" if signal.choices else "-")
    lines += [
        "[[can]]",
        f"message = {_toml_str(message.name)}",
        f"signal = {_toml_str(signal.name)}",
        f"name = {_toml_str(entry.name)}",
        f"vss = {'true' if entry.vss else 'false'}",
        f"unit = {_toml_str(unit)}",
        f"min_interval_s = {_number(0.0 if entry.is_state else _MEASUREMENT_MIN_INTERVAL_S)}",
        f"max_interval_s = {_number(_HEARTBEAT_S)}",
    ]
    if signal.is_float:
        lines += [
            f"deadband = {_number(_FLOAT_RESOLUTION / 2)}",
            f"resolution = {_number(_FLOAT_RESOLUTION)}",
        ]
    else:
        lines.append(f"deadband = {_number((scale or 1.0) / 2)}")
    lines.append(f'priority = "{"normal" if entry.vss else "routine"}"')
    return lines


def starter_catalog_toml(database: Database, dbc_path: Path, catalog_dir: Path) -> str:
    """The starter catalog of `database` as TOML; its `dbc` key is `dbc_path` relative to
    `catalog_dir` (where the file will live) when the DBC is under it, else absolute."""
    dbc_file = dbc_path.resolve()
    try:
        dbc_ref = dbc_file.relative_to(catalog_dir.resolve())
    except ValueError:
        dbc_ref = dbc_file
    entries = list(starter_entries(database))
    guessed = sum(entry.vss for entry in entries)
    lines = [
        f"# Starter signal catalog for {dbc_path.name}, written by `voltgate-agent catalog init`:",
        f"# {len(entries)} signals, {guessed} under a guessed COVESA VSS path, the others as Message.Signal.",
        "# Edit it: rename what you know (vss = true for a VSS path), delete what you do not need, tune",
        "# the sampling policy. A value is kept when `min_interval_s` has passed AND it moved at least",
        "# `deadband`, or when `max_interval_s` has passed (heartbeat); min_interval_s = 0 keeps every",
        "# change.",
        "# Priority decides eviction from a full buffer: routine first, critical last.",
        "",
        "[catalog]",
        f"name = {_toml_str(_squash(dbc_path.stem) or 'vehicle')}",
        'version = "1"',
        f"dbc = {_toml_str(dbc_ref.as_posix())}",
    ]
    for entry in entries:
        lines += _entry_toml(entry)
    return "\n".join(lines) + "\n"


def starter_catalog(dbc_path: Path) -> Catalog:
    """The catalog `catalog init` would write for `dbc_path`, loaded without writing it (what `decode`
    uses without `--catalog`); the DBC's defects are in its `dbc_warnings`."""
    loaded = read_dbc(dbc_path)
    text = starter_catalog_toml(loaded.database, dbc_path, dbc_path.parent)
    catalog = parse_catalog(text, dbc_path.with_suffix(".starter.toml"), dbc_path, database=loaded.database)
    return replace(catalog, dbc_warnings=loaded.warnings)
