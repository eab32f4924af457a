"""The signal catalog: the shipped catalog resolves completely; every broken catalog gives one error
naming the file and the line. (Broken DBCs: tests/unit/test_dbc.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC, GPS_FIELDS, load_catalog, load_dbc
from protocols.errors import CatalogError, DbcError
from protocols.j1939 import DM1_FIELDS

OPENDBC = Path(__file__).parents[1] / "data" / "opendbc"

HEADER = f'[catalog]\nname = "test"\nversion = "1"\ndbc = "{DEFAULT_DBC}"\n'
GOOD_ENTRY = """
[[can]]
message = "CCVS1"
signal = "WheelBasedVehicleSpeed"
name = "Vehicle.Speed"
unit = "km/h"
min_interval_s = 1.0
max_interval_s = 30.0
deadband = 0.5
"""


def test_shipped_catalog_loads_and_every_entry_resolves() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    db = catalog.database
    assert len(catalog) > 0
    names = [spec.name for spec in catalog]
    assert len(names) == len(set(names))
    frames = catalog.frames()
    for spec in catalog:
        assert spec.resolution > 0, spec.name
        assert spec.policy.max_interval_s >= spec.policy.min_interval_s, spec.name
        assert catalog.by_name(spec.name) is spec
        if spec.source == "can":
            message = db.get_message_by_name(spec.message)
            signal = message.get_signal_by_name(spec.dbc_signal)
            assert (spec.dbc_signal, spec) in frames[message.frame_id].signals
            if signal.unit:
                assert spec.unit in (signal.unit, "enum", "bool", "-"), (spec.name, signal.unit)
        elif spec.source == "dm1":
            assert spec.dm1_field in DM1_FIELDS
        else:
            assert spec.gps_field in GPS_FIELDS
    mapped = sum(len(f.signals) for f in frames.values()) + len(catalog.gps_signals())
    mapped += len(catalog.dm1_signals())
    assert mapped == len(catalog)
    # ids are python-can's: without the extended flag, J1939 PGNs as 29-bit ids
    assert 0x18FEF100 in frames and all(fid <= 0x1FFFFFFF for fid in frames)


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    load_catalog(path)


def _line_of(text: str, needle: str) -> int:
    lines = text.splitlines()
    return next(number for number, line in enumerate(lines, start=1) if needle in line)


@pytest.mark.parametrize(
    ("case", "entry", "reason"),
    [
        (
            "unknown message",
            GOOD_ENTRY.replace('"CCVS1"', '"NoSuchMessage"'),
            r"message 'NoSuchMessage' is not in",
        ),
        (
            "unknown signal",
            GOOD_ENTRY.replace('"WheelBasedVehicleSpeed"', '"Nope"'),
            r"signal 'Nope' is not in",
        ),
        ("bad priority", GOOD_ENTRY + 'priority = "urgent"\n', r"priority 'urgent' is not one of"),
        ("bad name", GOOD_ENTRY.replace('"Vehicle.Speed"', '"has space"'), r"not a dotted canonical name"),
        ("negative interval", GOOD_ENTRY.replace("deadband = 0.5", "deadband = -1"), r"`deadband` must be"),
    ],
)
def test_broken_entry_names_file_and_line(tmp_path: Path, case: str, entry: str, reason: str) -> None:
    # GIVEN a good entry, then the broken one: the error must point at the second [[can]]
    text = HEADER + GOOD_ENTRY.replace("Vehicle.Speed", "Vehicle.First") + entry
    with pytest.raises(CatalogError) as caught:
        _load(tmp_path, text)
    second_entry = [n for n, line in enumerate(text.splitlines(), start=1) if line == "[[can]]"][1]
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'catalog.toml'}:{second_entry}: "), (case, message)
    assert re.search(reason, message), (case, message)
    assert "\n" not in message


def test_duplicate_name_points_at_both(tmp_path: Path) -> None:
    text = HEADER + GOOD_ENTRY + GOOD_ENTRY.replace("WheelBasedVehicleSpeed", "ParkingBrakeSwitch")
    with pytest.raises(CatalogError) as caught:
        _load(tmp_path, text)
    path = tmp_path / "catalog.toml"
    first, second = [n for n, line in enumerate(text.splitlines(), start=1) if line == "[[can]]"]
    assert str(caught.value).startswith(f"{path}:{second}: canonical name 'Vehicle.Speed' is already used")
    assert str(caught.value).endswith(f"{path}:{first}")


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    text = HEADER + GOOD_ENTRY + "\n[[can]]\nmessage = CCVS1\n"  # unquoted string
    with pytest.raises(CatalogError) as caught:
        _load(tmp_path, text)
    assert str(caught.value).startswith(f"{tmp_path / 'catalog.toml'}:{_line_of(text, 'message = CCVS1')}: ")
    assert "not valid TOML" in str(caught.value)


def test_unknown_gps_field_and_missing_dbc(tmp_path: Path) -> None:
    text = HEADER + '\n[[gps]]\nfield = "altitude"\nname = "Vehicle.Alt"\nresolution = 0.1\n'
    with pytest.raises(CatalogError, match=r"catalog.toml:\d+: unknown GPS field 'altitude'"):
        _load(tmp_path, text)
    missing = tmp_path / "nowhere.dbc"
    with pytest.raises(DbcError, match=re.escape(f"{missing}: cannot read the CAN database")):
        _load(tmp_path, HEADER.replace(str(DEFAULT_DBC), str(missing)) + GOOD_ENTRY)


def test_real_dbc_that_loads() -> None:
    db = load_dbc(OPENDBC / "gm_global_a_high_voltage_management.dbc")
    assert len(db.messages) > 0
