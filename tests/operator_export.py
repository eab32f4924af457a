"""The Renault Twizy trips of tests/data/twizy in an operator's export layout (protocols/export_layout.py).

Data: RSK Twizy EV dataset, NaitMalek et al., Sustainability 14(16) 9993 (2022), CC-BY-4.0,
github.com/NaitMalekYoussef/RSK_Twizy_EV_Dataset @ 4f37a71. Per row: the trip file's prefix as the
vehicle (`twizy-T1`), its Date and Time as a UTC timestamp, LAT, LON, Speed and Soc as they are. A row
whose Date is corrupt (T1_03_29_2021.csv has `90/02/2032`) keeps that text as its timestamp: a real bad
row. The logs have no odometer, so `odometer_reading_kms` is the speed integrated over time (trapezoids
between rows with a timestamp), continued across a vehicle's trips from 12 000 km.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

TWIZY = Path(__file__).parent / "data" / "twizy"
TRIPS = ("T1_03_29_2021.csv", "T1_06_30_2021_2.csv", "T3_05_25_2021_04.csv")
LAYOUT = (
    "timestamp",
    "telematics_id",
    "latitude",
    "longitude",
    "speed_km_h",
    "odometer_reading_kms",
    "state_of_charge",
)
START_ODOMETER_KM = 12_000.0

Row = list[object]  # [timestamp (datetime, or the corrupt text), vehicle, lat, lon, speed, odometer, soc]


def twizy_rows(trips: Sequence[str] = TRIPS) -> list[Row]:
    rows: list[Row] = []
    odometer: dict[str, float] = {}
    for name in trips:
        vehicle = "twizy-" + name.split("_")[0]
        km = odometer.get(vehicle, START_ODOMETER_KM)
        last: tuple[datetime, float] | None = None
        with (TWIZY / name).open(newline="") as f:
            for x in csv.DictReader(f):
                speed = float(x["Speed"])
                try:
                    ts: object = datetime.strptime(f"{x['Date']} {x['Time']}", "%m/%d/%Y %H:%M:%S").replace(
                        tzinfo=UTC
                    )
                except ValueError:
                    ts = f"{x['Date']} {x['Time']}"
                if isinstance(ts, datetime):
                    if last is not None and ts > last[0]:
                        km += (speed + last[1]) / 2 * (ts - last[0]).total_seconds() / 3600
                    last = (ts, speed)
                rows.append(
                    [ts, vehicle, float(x["LAT"]), float(x["LON"]), speed, round(km, 4), float(x["Soc"])]
                )
        odometer[vehicle] = km
    return rows


def iso(ts: object) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(ts, datetime) else str(ts)


def write_csv(rows: Sequence[Row], path: Path, header: Sequence[str] = LAYOUT) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([iso(r[0]), *r[1:]] for r in rows)
    return path


def write_xlsx(rows: Sequence[Row], path: Path, header: Sequence[str] = LAYOUT) -> Path:
    """An xlsx as a spreadsheet holds it: timestamps as date cells (naive, in UTC), numbers as numbers."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(header))
    for r in rows:
        ts = r[0].replace(tzinfo=None) if isinstance(r[0], datetime) else r[0]
        sheet.append([ts, *r[1:]])
    book.save(path)
    return path


def odometer_span_km(rows: Sequence[Row]) -> dict[tuple[str, str], float]:
    """Last minus first odometer reading per (vehicle, UTC day) over the rows with a timestamp."""
    first: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    for r in rows:
        if isinstance(r[0], datetime):
            key = (str(r[1]), r[0].date().isoformat())
            first.setdefault(key, float(str(r[5])))
            last[key] = float(str(r[5]))
    return {k: last[k] - first[k] for k in first}
