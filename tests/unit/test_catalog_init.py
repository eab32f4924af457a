"""The starter catalog `catalog init` writes: every signal once, its DBC unit, a default policy by kind,
and COVESA VSS paths for the well-known signals it recognises.

Data: real DBCs in tests/data/ (opendbc @ 7343a66 MIT; kona-ev-dbc @ 0b569b9 MIT) and the shipped
`protocols/bus.dbc`, whose hand-written catalog is the reference for the VSS guesses.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.catalog_init import starter_catalog, starter_catalog_toml
from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC, load_catalog, parse_catalog
from protocols.dbc import load_dbc

DATA = Path(__file__).parents[1] / "data"
GM = DATA / "opendbc" / "gm_global_a_high_voltage_management.dbc"
KONA = DATA / "kona-ev" / "dbc" / "pcan.dbc"

TRACTION = "Vehicle.Powertrain.TractionBattery"


def _vss(dbc: Path) -> dict[tuple[str, str], str]:
    return {(s.message, s.dbc_signal): s.name for s in starter_catalog(dbc) if s.vss}


def test_guesses_agree_with_the_shipped_catalog() -> None:
    # GIVEN the project's own DBC, mapped by hand in protocols/catalog.toml
    shipped = {(s.message, s.dbc_signal): s.name for s in load_catalog(DEFAULT_CATALOG) if s.source == "can"}
    guessed = _vss(DEFAULT_DBC)
    # THEN every guess names the signal the engineer mapped to that path, and none is missed among
    # the well-known ones the shipped catalog maps
    assert guessed, "bus.dbc has pack voltage, current, SOC, speed, odometer, ambient temperature"
    for key, name in guessed.items():
        assert shipped.get(key) == name, (key, name, shipped.get(key))
    well_known = {
        "Vehicle.Speed",
        "Vehicle.TraveledDistance",
        "Vehicle.Exterior.AirTemperature",
        f"{TRACTION}.CurrentVoltage",
        f"{TRACTION}.CurrentCurrent",
        f"{TRACTION}.StateOfCharge.Current",
    }
    assert well_known <= set(guessed.values())


@pytest.mark.parametrize(
    ("dbc", "expected"),
    [
        (
            GM,
            {
                ("Pack_Stats", "Pack_Voltage"): f"{TRACTION}.CurrentVoltage",
                ("Pack_Stats", "Pack_Current"): f"{TRACTION}.CurrentCurrent",
            },
        ),
        (
            KONA,
            {
                ("Batt_HV_Status", "VBatt"): f"{TRACTION}.CurrentVoltage",
                ("Batt_HV_Status", "IBatt"): f"{TRACTION}.CurrentCurrent",
                ("BMS_542", "SocDisp"): f"{TRACTION}.StateOfCharge.Displayed",
                ("Odometer", "Odometer"): "Vehicle.TraveledDistance",
                ("TwelveVolt_Battery_INCORRECT", "V_BAT_SNSR"): "Vehicle.LowVoltageBattery.CurrentVoltage",
            },
        ),
    ],
    ids=["gm-bolt-hv", "kona-pcan"],
)
def test_guesses_on_real_dbcs(dbc: Path, expected: dict[tuple[str, str], str]) -> None:
    assert _vss(dbc) == expected


def test_every_signal_once_with_its_unit_and_policy_by_kind(tmp_path: Path) -> None:
    database = load_dbc(KONA)
    text = starter_catalog_toml(database, KONA, tmp_path)
    doc = tomllib.loads(text)
    assert doc["catalog"]["dbc"] == str(KONA.resolve())  # not under the catalog's folder: absolute
    entries = {(e["message"], e["signal"]): e for e in doc["can"]}
    signals = [(m, s) for m in database.messages for s in m.signals]
    assert len(entries) == len(doc["can"]) == len(signals)
    for message, signal in signals:
        entry = entries[(message.name, signal.name)]
        assert entry["unit"] == (signal.unit.strip() if signal.unit else ("enum" if signal.choices else "-"))
        if signal.length <= 2:  # a flag: every change
            assert entry["min_interval_s"] == 0.0
        elif not signal.choices:  # a measurement: at most 1/s, any one-step change
            assert entry["min_interval_s"] == 1.0
            assert entry["deadband"] == pytest.approx(abs(float(signal.scale)) / 2)
        assert entry["max_interval_s"] == 60.0
        if not entry["vss"]:
            assert entry["name"] == f"{message.name}.{signal.name}"
    # the text is what the in-memory starter loads
    catalog = parse_catalog(text, tmp_path / "c.toml", KONA, database=database)
    assert [s.name for s in catalog] == [s.name for s in starter_catalog(KONA)]


def test_dbc_next_to_the_catalog_is_named_relatively(tmp_path: Path) -> None:
    dbc = tmp_path / "vehicle" / "pcan.dbc"
    dbc.parent.mkdir()
    dbc.write_bytes(KONA.read_bytes())
    text = starter_catalog_toml(load_dbc(dbc), dbc, tmp_path)
    assert tomllib.loads(text)["catalog"]["dbc"] == "vehicle/pcan.dbc"
    (tmp_path / "catalog.toml").write_text(text, encoding="utf-8")
    assert len(load_catalog(tmp_path / "catalog.toml")) == len(starter_catalog(KONA))


def test_decode_without_catalog_keeps_the_shipped_catalog_for_the_shipped_dbc() -> None:
    from agent.__main__ import _decode_catalog, build_parser

    shipped = _decode_catalog(build_parser().parse_args(["decode", "--dbc", str(DEFAULT_DBC), "bus.log"]))
    assert shipped.path == DEFAULT_CATALOG
    other = _decode_catalog(build_parser().parse_args(["decode", "--dbc", str(GM), "bus.log"]))
    assert [s.name for s in other] == [s.name for s in starter_catalog(GM)]
