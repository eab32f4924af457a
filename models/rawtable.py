"""Raw telematics tables: read, clean, write.

The raw schema is what a fleet's telematics export usually holds, one row per vehicle per instant:

    timestamp (ISO 8601, naive = UTC, or Unix seconds), vehicle, latitude, longitude, speed_kmh, soc_pct
    optional: odometer_km, segment (a trip or day id; else split where the data stops for > 10 minutes),
              any canonical catalog name as a column (e.g. Vehicle.Powertrain.TractionBattery.CurrentCurrent),
              labels from a simulator: fault_within_30min, time_to_next_fault_s, injected_fault (0/1)

An empty cell is "no value in this row". `read_table` also reads an operator's telematics export
(`timestamp, telematics_id, latitude, longitude, speed_km_h, odometer_reading_kms, state_of_charge`, CSV or
xlsx; protocols/export_layout.py, with a column map for other header names): its bad rows are skipped and
counted, each vehicle's rows sorted by time and split where the data stops. It accepts a CSV (optionally
.gz), an xlsx, a directory of them, or a folder of the Renault Twizy dataset (NaitMalek et al.,
Sustainability 14(16) 9993, 2022, CC-BY-4.0; github.com/NaitMalekYoussef/RSK_Twizy_EV_Dataset), whose
`Date,Time,Soc,Speed,...,LAT,LON,...` columns map onto the same schema. Every trace is cleaned of real
glitches, counted in a `CleaningReport`.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import IO

import numpy as np
from haversine import haversine

from models.features import FloatArray
from protocols.errors import ProtocolError
from protocols.export_layout import XLSX_SUFFIXES, BadRow, is_export, read_export, read_header
from protocols.signals import AMBIENT, LATITUDE, LONGITUDE, ODOMETER, SOC, SPEED

RAW_COLUMNS = {  # raw schema column → canonical signal
    "latitude": LATITUDE,
    "longitude": LONGITUDE,
    "speed_kmh": SPEED,
    "soc_pct": SOC,
    "odometer_km": ODOMETER,
}
LABEL_COLUMNS = ("fault_within_30min", "time_to_next_fault_s", "injected_fault")
SEGMENT_GAP_S = 600.0
MAX_SPEED_KMH = 250.0
SOC_SPIKE_PP = 5.0  # a lone SOC value this far from both neighbours (which agree) is a glitch
TABLE_SUFFIXES = (".csv", ".csv.gz", *XLSX_SUFFIXES)


class TableError(Exception):
    """A table that cannot be read as the raw schema (one sentence, names the file)."""


@dataclass
class CleaningReport:
    rows: int = 0
    bad_timestamps: int = 0  # unparseable or impossible dates: dropped
    bad_vehicle_ids: int = 0  # an export's row whose telematics_id is no vehicle id: dropped
    not_a_number: int = 0  # an export's row with a value that is not a number: dropped
    dates_repaired: int = 0  # Twizy: a corrupt Date beside a good Time, put back on the trip's date
    not_increasing: int = 0  # duplicate or backwards timestamps: dropped
    no_fix: int = 0  # latitude or longitude exactly 0: position blanked
    position_jumps: int = 0  # a fix implying > MAX_SPEED_KMH from the last good one: blanked
    speed_out_of_range: int = 0
    soc_out_of_range: int = 0
    soc_spikes: int = 0
    odometer_jumps: int = 0

    def add(self, other: CleaningReport) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items())


@dataclass
class Trace:
    """One vehicle's continuous recording (a trip or a day): the unit of grouping for splits."""

    vehicle: str
    segment: str
    ts: FloatArray  # ascending Unix seconds
    columns: dict[str, FloatArray]  # canonical name → values per row (NaN: no value)
    labels: dict[str, FloatArray] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return f"{self.vehicle}/{self.segment}"

    @property
    def duration_s(self) -> float:
        return float(self.ts[-1] - self.ts[0]) if len(self.ts) else 0.0


# -- parsing -----------------------------------------------------------------------------------------------
def _float(text: str) -> float:
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_timestamp(text: str) -> float:
    """Unix seconds from Unix seconds or ISO 8601 (naive = UTC); NaN when it is neither."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return math.nan
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="")
    return path.open(newline="")


def read_table(
    path: Path, report: CleaningReport | None = None, column_map: Mapping[str, str] | None = None
) -> list[Trace]:
    """Traces of a raw table file, an operator's export, a directory of them, or a Twizy folder; cleaned.
    `column_map` (FILE_COLUMN → export layout column) names an export's own columns."""
    report = report if report is not None else CleaningReport()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(TABLE_SUFFIXES))
        if not files:
            raise TableError(f"{path}: no {', '.join(TABLE_SUFFIXES)} files")
        return [t for f in files for t in read_table(f, report, column_map)]
    if not path.exists():
        raise TableError(f"{path}: no such file")
    try:
        header = read_header(path)
        if path.suffix.lower() in XLSX_SUFFIXES or is_export(header, column_map):
            return _read_export(path, report, column_map)
    except ProtocolError as err:
        raise TableError(str(err)) from err
    if header[:3] == ["Date", "Time", "Soc"]:
        return [load_twizy_trip(path, report)]
    return _read_raw(path, report)


def _read_export(path: Path, report: CleaningReport, column_map: Mapping[str, str] | None) -> list[Trace]:
    rows = read_export(path, column_map)
    r = CleaningReport(rows=len(rows) + sum(rows.bad.values()))
    r.bad_timestamps += rows.bad[BadRow.BAD_TIMESTAMP]
    r.bad_vehicle_ids += rows.bad[BadRow.BAD_VEHICLE_ID]
    r.not_a_number += rows.bad[BadRow.NOT_A_NUMBER]
    vehicles = np.array(rows.vehicle, dtype=object)
    traces: list[Trace] = []
    for vehicle in sorted(set(rows.vehicle)):
        idx = np.flatnonzero(vehicles == vehicle)
        idx = idx[np.argsort(rows.ts_ms[idx], kind="stable")]  # an export need not be in time order
        ts = rows.ts_ms[idx] / 1000.0
        # an export spans days and trips: split at the gaps first, so the cleaning's "impossible date"
        # (far from the trace's median) is judged within one recording
        cuts = [0, *(np.flatnonzero(np.diff(ts) > SEGMENT_GAP_S) + 1).tolist(), len(ts)]
        for k, (a, b) in enumerate(pairwise(cuts)):
            part = idx[a:b]
            cols = {name: values[part] for name, values in rows.values.items()}
            segment = f"{path.name.split('.')[0]}#{k}"
            traces.extend(clean_trace(vehicle, segment, ts[a:b], cols, {}, r))
    report.add(r)
    return traces


def _read_raw(path: Path, report: CleaningReport) -> list[Trace]:
    with _open(path) as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = {"timestamp", "vehicle", "soc_pct"} - set(fields)
        if missing:
            raise TableError(f"{path}: missing raw-schema columns {sorted(missing)}")
        signal_cols = {
            c: RAW_COLUMNS.get(c, c) for c in fields if c in RAW_COLUMNS or c.startswith("Vehicle.")
        }
        label_cols = [c for c in LABEL_COLUMNS if c in fields]
        rows: dict[tuple[str, str], list[dict[str, str]]] = {}
        for row in reader:
            rows.setdefault((row["vehicle"], row.get("segment") or ""), []).append(row)
    traces: list[Trace] = []
    for (vehicle, segment), rs in rows.items():
        r = CleaningReport(rows=len(rs))
        ts = np.array([parse_timestamp(x["timestamp"]) for x in rs])
        cols = {sig: np.array([_float(x[c]) for x in rs]) for c, sig in signal_cols.items()}
        labels = {c: np.array([_float(x[c]) for x in rs]) for c in label_cols}
        traces.extend(clean_trace(vehicle, segment, ts, cols, labels, r))
        report.add(r)
    return traces


def load_twizy_trip(path: Path, report: CleaningReport | None = None) -> Trace:
    """One Twizy trip file → a cleaned trace (vehicle "twizy-<route>", segment = file name).

    Its clock is local time (Morocco); it is kept as if it were UTC, so use utc_offset_h = 0 with it.
    A row whose Date does not parse (e.g. `90/02/2032`, `03/00/2000`) keeps its Time on the trip's usual date.
    """
    report = report if report is not None else CleaningReport()
    with _open(path) as f:
        rows = list(csv.DictReader(f))
    r = CleaningReport(rows=len(rows))
    good_dates = Counter(x["Date"] for x in rows if _parse_date(x["Date"]) is not None)
    trip_date = good_dates.most_common(1)[0][0] if good_dates else ""
    ts_list: list[float] = []
    for x in rows:
        date = x["Date"]
        if _parse_date(date) is None:
            r.dates_repaired += 1
            date = trip_date
        try:
            dt = datetime.strptime(f"{date} {x['Time']}", "%m/%d/%Y %H:%M:%S").replace(tzinfo=UTC)
            ts_list.append(dt.timestamp())
        except ValueError:
            ts_list.append(math.nan)
    cols = {
        SOC: np.array([_float(x["Soc"]) for x in rows]),
        SPEED: np.array([_float(x["Speed"]) for x in rows]),
        LATITUDE: np.array([_float(x["LAT"]) for x in rows]),
        LONGITUDE: np.array([_float(x["LON"]) for x in rows]),
        AMBIENT: np.array([_float(x["Temperature"]) for x in rows]),
    }
    vehicle = "twizy-" + path.name.split("_")[0]
    traces = clean_trace(vehicle, path.name.split(".")[0], np.array(ts_list), cols, {}, r, split_gaps=False)
    report.add(r)
    return traces[0]


def _parse_date(text: str) -> datetime | None:
    try:
        d = datetime.strptime(text, "%m/%d/%Y")
    except ValueError:
        return None
    return d if 2000 < d.year < 2100 else None


# -- cleaning ----------------------------------------------------------------------------------------------
def clean_trace(
    vehicle: str,
    segment: str,
    ts: FloatArray,
    cols: dict[str, FloatArray],
    labels: dict[str, FloatArray],
    report: CleaningReport,
    split_gaps: bool = True,
) -> list[Trace]:
    """Drop rows with bad or non-increasing timestamps, blank impossible values, split at long gaps."""
    ok = np.isfinite(ts)
    if ok.any():  # impossible dates: more than two days from the trace's median
        med = float(np.median(ts[ok]))
        ok &= np.abs(ts - med) < 2 * 86_400.0
    report.bad_timestamps += int((~ok).sum())
    keep = np.flatnonzero(ok)
    mono: list[int] = []
    last = -math.inf
    for i in keep:
        if ts[i] > last:
            mono.append(int(i))
            last = float(ts[i])
    report.not_increasing += len(keep) - len(mono)
    idx = np.array(mono, dtype=np.int64)
    ts = ts[idx]
    cols = {k: v[idx].astype(np.float64) for k, v in cols.items()}
    labels = {k: v[idx] for k, v in labels.items()}
    _clean_position(ts, cols, report)
    if SPEED in cols:
        bad = (cols[SPEED] < 0) | (cols[SPEED] > MAX_SPEED_KMH)
        report.speed_out_of_range += int(bad.sum())
        cols[SPEED][bad] = math.nan
    if SOC in cols:
        _clean_soc(cols[SOC], report)
    if ODOMETER in cols:
        _clean_odometer(ts, cols[ODOMETER], report)
    if not len(ts):
        return []
    cuts = (
        [0, *(np.flatnonzero(np.diff(ts) > SEGMENT_GAP_S) + 1).tolist(), len(ts)]
        if split_gaps
        else [0, len(ts)]
    )
    out = []
    for k, (a, b) in enumerate(pairwise(cuts)):
        seg = segment if len(cuts) == 2 else f"{segment}#{k}"
        out.append(
            Trace(
                vehicle,
                seg,
                ts[a:b],
                {c: v[a:b] for c, v in cols.items()},
                {c: v[a:b] for c, v in labels.items()},
            )
        )
    return out


def _clean_position(ts: FloatArray, cols: dict[str, FloatArray], report: CleaningReport) -> None:
    if LATITUDE not in cols or LONGITUDE not in cols:
        return
    lat, lon = cols[LATITUDE], cols[LONGITUDE]
    zero = (lat == 0.0) | (lon == 0.0) | (np.abs(lat) > 90) | (np.abs(lon) > 180)
    report.no_fix += int(zero.sum())
    lat[zero] = lon[zero] = math.nan
    # a fix is judged against the last good *distinct* fix, from the time that position first appeared
    last: tuple[float, float, float] | None = None  # (lat, lon, first seen)
    for i in range(len(ts)):
        if math.isnan(lat[i]) or math.isnan(lon[i]):
            continue
        if last is not None and (lat[i], lon[i]) != last[:2]:
            d = haversine(last[:2], (lat[i], lon[i]), check=False)
            if d > MAX_SPEED_KMH * max(ts[i] - last[2], 1.0) / 3600.0:
                report.position_jumps += 1
                lat[i] = lon[i] = math.nan
                continue
        if last is None or (lat[i], lon[i]) != last[:2]:
            last = (float(lat[i]), float(lon[i]), float(ts[i]))


def _clean_soc(soc: FloatArray, report: CleaningReport) -> None:
    bad = (soc < 0) | (soc > 100)
    report.soc_out_of_range += int(bad.sum())
    soc[bad] = math.nan
    for i in range(1, len(soc) - 1):
        a, x, b = soc[i - 1], soc[i], soc[i + 1]
        if abs(x - a) > SOC_SPIKE_PP and abs(x - b) > SOC_SPIKE_PP and abs(a - b) < SOC_SPIKE_PP / 2:
            report.soc_spikes += 1
            soc[i] = math.nan


def _clean_odometer(ts: FloatArray, odo: FloatArray, report: CleaningReport) -> None:
    last_t, last_v = math.nan, math.nan
    for i in range(len(odo)):
        v = odo[i]
        if math.isnan(v):
            continue
        if not math.isnan(last_v):
            dv = v - last_v
            if dv < 0 or dv > MAX_SPEED_KMH * max(ts[i] - last_t, 1.0) / 3600.0:
                report.odometer_jumps += 1
                odo[i] = math.nan
                continue
        last_t, last_v = float(ts[i]), float(v)


# -- writing -----------------------------------------------------------------------------------------------
def write_table(traces: Iterable[Trace], path: Path) -> int:
    """Write traces in the raw schema (canonical extras and labels as extra columns); return rows written."""
    traces = list(traces)
    extra = sorted({c for t in traces for c in t.columns} - set(RAW_COLUMNS.values()))
    labels = [c for c in LABEL_COLUMNS if any(c in t.labels for t in traces)]
    raw = list(RAW_COLUMNS)
    n = 0
    with gzip.open(path, "wt", newline="") if path.suffix == ".gz" else path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "vehicle", "segment", *raw, *extra, *labels])
        for t in traces:
            series = [t.columns.get(RAW_COLUMNS[c]) for c in raw] + [t.columns.get(c) for c in extra]
            series += [t.labels.get(c) for c in labels]
            for i in range(len(t.ts)):
                w.writerow([_fmt(t.ts[i]), t.vehicle, t.segment, *(_cell(s, i) for s in series)])
                n += 1
    return n


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.10g}"


def _cell(s: FloatArray | None, i: int) -> str:
    return "" if s is None else _fmt(float(s[i]))
