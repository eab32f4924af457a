"""The operator's export layout (protocols/export_layout.py): column maps, timestamps, bad rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protocols.errors import ProtocolError
from protocols.export_layout import (
    BadRow,
    ExportError,
    parse_column_map,
    parse_timestamp_ms,
    read_export,
)
from protocols.signals import ODOMETER, SOC, SPEED

HEADER = "timestamp,telematics_id,latitude,longitude,speed_km_h,odometer_reading_kms,state_of_charge\n"


def test_a_column_map_names_layout_columns_only() -> None:
    assert parse_column_map("ts=timestamp, bus=telematics_id,") == {"ts": "timestamp", "bus": "telematics_id"}
    assert parse_column_map(None) == {}
    for bad in ("ts", "ts=time", "=timestamp"):
        with pytest.raises(ExportError, match="FILE_COLUMN=LAYOUT_COLUMN"):
            parse_column_map(bad)
    assert issubclass(ExportError, ProtocolError)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2021-03-29T11:13:45Z", 1617016425000),
        ("2021-03-29 11:13:45", 1617016425000),  # naive: UTC
        ("2021-03-29T13:13:45+02:00", 1617016425000),
        ("1617016425.5", 1617016425500),
        (1617016425, 1617016425000),
        (datetime(2021, 3, 29, 11, 13, 45), 1617016425000),  # an xlsx date cell
        (datetime(2021, 3, 29, 11, 13, 45, tzinfo=UTC), 1617016425000),
        ("90/02/2032 11:13:46", None),  # a real corrupt date of the Twizy logs
        ("nan", None),
        ("", None),
        (None, None),
        (True, None),
    ],
)
def test_timestamps(cell: object, expected: int | None) -> None:
    assert parse_timestamp_ms(cell) == expected


def test_bad_rows_are_counted_by_reason_and_the_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        HEADER
        + "2021-03-29T11:00:00Z,bus-1,33.9,-6.7,20.5,1000.0,80\n"
        + "2021-03-29T11:00:01Z,bus-1,,,21,,79.9\n"  # empty cells: no value, not bad
        + "yesterday,bus-1,33.9,-6.7,20,1000,80\n"
        + "2021-03-29T11:00:02Z,bus 1/x,33.9,-6.7,20,1000,80\n"
        + "2021-03-29T11:00:03Z,bus-1,33.9,-6.7,fast,1000,80\n"
        + "2021-03-29T11:00:04Z,bus-1,33.9,-6.7,20,1000,inf\n"
        + "\n"
        + "2021-03-29T11:00:05Z,bus-2,33.9,-6.7,0,2000,50\n"
    )

    rows = read_export(path)

    assert rows.vehicle == ["bus-1", "bus-1", "bus-2"]
    assert rows.bad == {BadRow.BAD_TIMESTAMP: 1, BadRow.BAD_VEHICLE_ID: 1, BadRow.NOT_A_NUMBER: 2}
    assert rows.bad_summary() == (
        "bad_timestamp 1 (first on row 4), bad_vehicle_id 1 (first on row 5), not_a_number 2 (first on row 6)"
    )
    assert rows.values[SPEED].tolist() == [20.5, 21.0, 0.0]
    assert math.isnan(rows.values[ODOMETER][1]) and rows.values[SOC][1] == 79.9


def test_a_file_without_the_layout_says_how_to_map_it(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("Time,Bus,SOC\n2021-03-29T11:00:00Z,bus-1,80\n")

    with pytest.raises(ExportError, match=r"no column timestamp or telematics_id.*--column-map"):
        read_export(path)
    with pytest.raises(ExportError, match="any of latitude"):
        read_export(path, {"Time": "timestamp", "Bus": "telematics_id"})
    rows = read_export(path, {"Time": "timestamp", "Bus": "telematics_id", "SOC": "state_of_charge"})
    assert rows.values[SOC].tolist() == [80.0]
    with pytest.raises(ExportError, match="no such file"):
        read_export(tmp_path / "missing.csv")
