"""The operator's telematics export: one row per vehicle per instant, a CSV (optionally .gz) or an xlsx.

    timestamp, telematics_id, latitude, longitude, speed_km_h, odometer_reading_kms, state_of_charge

- `timestamp`: ISO 8601 (a naive one is UTC), Unix seconds, or (xlsx) a date cell (naive: UTC).
- `telematics_id`: the vehicle id, as on the bus's topic (`protocols.topics.ID_PATTERN`).
- the others: numbers in the units their names say (degrees, km/h, km, %), mapped onto the catalog's
  canonical names in `EXPORT_SIGNALS`. An empty cell is "no value in this row".

A file whose header names other columns is read through a column map, FILE_COLUMN=LAYOUT_COLUMN
(`parse_column_map("ts=timestamp,bus=telematics_id")`). `read_export` parses row by row: a row with an
unparseable timestamp, a value that is not a finite number or a vehicle id that is not one is skipped and
counted by reason (`BadRow`); every good row is kept. Both `voltgate-cloud import` and `voltgate-train`
read the layout through here.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from protocols.errors import ProtocolError
from protocols.signals import LATITUDE, LONGITUDE, ODOMETER, SOC, SPEED
from protocols.topics import is_valid_id

TIMESTAMP: Final = "timestamp"
VEHICLE: Final = "telematics_id"
EXPORT_SIGNALS: Final[Mapping[str, str]] = {  # export column → canonical signal name (protocols.signals)
    "latitude": LATITUDE,
    "longitude": LONGITUDE,
    "speed_km_h": SPEED,
    "odometer_reading_kms": ODOMETER,
    "state_of_charge": SOC,
}
LAYOUT_COLUMNS: Final = (TIMESTAMP, VEHICLE, *EXPORT_SIGNALS)
XLSX_SUFFIXES: Final = (".xlsx", ".xlsm")
XLSX_EXTRA: Final = "cloud or train"  # the pyproject extras that install openpyxl


class ExportError(ProtocolError):
    """An export file that cannot be read as the layout (one sentence, names the file)."""


class BadRow(StrEnum):
    """Why one row of an export was skipped."""

    BAD_TIMESTAMP = "bad_timestamp"
    NOT_A_NUMBER = "not_a_number"  # a non-empty cell that is not a finite number
    BAD_VEHICLE_ID = "bad_vehicle_id"


@dataclass
class ExportRows:
    """The good rows of an export, in file order, as columns."""

    vehicle: list[str]
    ts_ms: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]  # canonical name → per row (NaN: empty cell)
    bad: Counter[BadRow] = field(default_factory=Counter)
    first_bad_row: dict[BadRow, int] = field(default_factory=dict)  # 1-based row of the file (header = 1)

    def __len__(self) -> int:
        return len(self.vehicle)

    def bad_summary(self) -> str:
        """E.g. "bad_timestamp 3 (first on row 17), not_a_number 1 (first on row 40)"; '' when none."""
        return ", ".join(
            f"{reason.value} {n} (first on row {self.first_bad_row[reason]})"
            for reason, n in sorted(self.bad.items())
        )


def parse_column_map(text: str | None) -> dict[str, str]:
    """`"ts=timestamp,bus=telematics_id"` → {"ts": "timestamp", "bus": "telematics_id"}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        source, sep, target = part.partition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or target not in LAYOUT_COLUMNS:
            raise ExportError(
                f"column map entry {part.strip()!r}: expected FILE_COLUMN=LAYOUT_COLUMN, LAYOUT_COLUMN one "
                f"of {', '.join(LAYOUT_COLUMNS)}"
            )
        mapping[source] = target
    return mapping


def is_export(header: list[str], column_map: Mapping[str, str] | None = None) -> bool:
    """Whether a header (after the column map) names the layout's timestamp and vehicle columns."""
    names = {(column_map or {}).get(h.strip(), h.strip()) for h in header}
    return {TIMESTAMP, VEHICLE} <= names


def read_header(path: Path) -> list[str]:
    """The first row of a CSV or xlsx, as text."""
    for row in _cells(path):
        return ["" if c is None else str(c) for c in row]
    return []


def read_export(path: Path, column_map: Mapping[str, str] | None = None) -> ExportRows:
    """The good rows of an export file; the bad ones counted by reason."""
    rows = _cells(path)
    header = next(rows, None)
    if header is None:
        raise ExportError(f"{path}: empty file")
    where = _positions([("" if c is None else str(c)).strip() for c in header], column_map or {}, path)
    signals = [(EXPORT_SIGNALS[name], where[name]) for name in EXPORT_SIGNALS if name in where]
    vehicles: list[str] = []
    stamps: list[int] = []
    values: list[list[float]] = [[] for _ in signals]
    bad: Counter[BadRow] = Counter()
    first_bad: dict[BadRow, int] = {}
    for number, row in enumerate(rows, start=2):
        if not any(c not in (None, "") for c in row):
            continue  # a blank line (CSV) or an empty row (xlsx) holds nothing
        parsed = _parse_row(row, where, signals)
        if isinstance(parsed, BadRow):
            bad[parsed] += 1
            first_bad.setdefault(parsed, number)
            continue
        vehicle, ts_ms, row_values = parsed
        vehicles.append(vehicle)
        stamps.append(ts_ms)
        for column, v in zip(values, row_values, strict=True):
            column.append(v)
    return ExportRows(
        vehicles,
        np.array(stamps, dtype=np.int64),
        {name: np.array(column, dtype=np.float64) for (name, _), column in zip(signals, values, strict=True)},
        bad,
        first_bad,
    )


def parse_timestamp_ms(cell: object) -> int | None:
    """Epoch milliseconds from a datetime (naive = UTC), Unix seconds or ISO 8601 text; None otherwise."""
    if isinstance(cell, datetime):
        moment = cell
    elif isinstance(cell, int | float) and not isinstance(cell, bool):
        return round(cell * 1000) if math.isfinite(cell) else None
    elif isinstance(cell, str):
        text = cell.strip()
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            return round(seconds * 1000) if math.isfinite(seconds) else None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _number(cell: object) -> float | None:
    """A cell's value: NaN when empty, None when not a finite number."""
    if cell is None:
        return math.nan
    if isinstance(cell, bool):
        return None
    if isinstance(cell, int | float):
        value = float(cell)
    else:
        text = str(cell).strip()
        if not text:
            return math.nan
        try:
            value = float(text)
        except ValueError:
            return None
    return value if math.isfinite(value) else None


def _parse_row(
    row: tuple[object, ...], where: dict[str, int], signals: list[tuple[str, int]]
) -> tuple[str, int, list[float]] | BadRow:
    def cell(i: int) -> object:
        return row[i] if i < len(row) else None

    ts_ms = parse_timestamp_ms(cell(where[TIMESTAMP]))
    if ts_ms is None:
        return BadRow.BAD_TIMESTAMP
    vehicle = cell(where[VEHICLE])
    vehicle = str(vehicle).strip() if vehicle is not None else ""
    if not is_valid_id(vehicle):
        return BadRow.BAD_VEHICLE_ID
    row_values: list[float] = []
    for _, i in signals:
        value = _number(cell(i))
        if value is None:
            return BadRow.NOT_A_NUMBER
        row_values.append(value)
    return vehicle, ts_ms, row_values


def _positions(header: list[str], column_map: Mapping[str, str], path: Path) -> dict[str, int]:
    where: dict[str, int] = {}
    for i, name in enumerate(header):
        target = column_map.get(name, name)
        if target in LAYOUT_COLUMNS and target not in where:
            where[target] = i
    missing = [c for c in (TIMESTAMP, VEHICLE) if c not in where]
    if missing or not set(EXPORT_SIGNALS) & set(where):
        wanted = missing or ["any of " + ", ".join(EXPORT_SIGNALS)]
        raise ExportError(
            f"{path}: no column {' or '.join(wanted)} in the header ({', '.join(header)}); "
            "map the file's names with --column-map FILE_COLUMN=LAYOUT_COLUMN,..."
        )
    return where


def _cells(path: Path) -> Iterator[tuple[object, ...]]:
    """Rows of cells: str from a CSV; str, numbers, datetimes or None from an xlsx's first sheet."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix.lower() in XLSX_SUFFIXES:
        return _xlsx_cells(path)
    return _csv_cells(path)


def _csv_cells(path: Path) -> Iterator[tuple[object, ...]]:
    try:
        with (
            gzip.open(path, "rt", newline="", encoding="utf-8-sig")
            if path.suffix == ".gz"
            else path.open(newline="", encoding="utf-8-sig") as f
        ):
            for row in csv.reader(f):
                yield tuple(row)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ExportError(f"{path}: cannot read as CSV: {err}") from err


def _xlsx_cells(path: Path) -> Iterator[tuple[object, ...]]:
    try:
        import openpyxl  # an optional dependency: only xlsx needs it
    except ModuleNotFoundError as err:
        raise ExportError(
            f"{path}: reading xlsx needs openpyxl: install the {XLSX_EXTRA} extra "
            "(pip install 'voltgate[cloud]' or 'voltgate[train]')"
        ) from err
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile, KeyError and its own errors for a bad file
        raise ExportError(f"{path}: cannot read as xlsx: {type(err).__name__}: {err}") from err
    try:
        sheet = book.worksheets[0]
        yield from sheet.iter_rows(values_only=True)
    finally:
        book.close()
