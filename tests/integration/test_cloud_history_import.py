"""`voltgate-cloud import` on real telematics: the Renault Twizy trips in an operator's export layout
(tests/operator_export.py), imported by the real command into a fresh PostgreSQL schema."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest

from cloud import billing, kpis
from cloud.settings import DatabaseSettings
from cloud.store import Store
from tests.integration.conftest import Database
from tests.operator_export import LAYOUT, odometer_span_km, twizy_rows, write_csv, write_xlsx

REPO = Path(__file__).parents[2]
HISTORY = "--max-age-days=3650"  # the trips are from 2021: past the live window (400 days)


def cli(db: Database, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTGATE_CLOUD_")}
    env |= {"VOLTGATE_CLOUD_DATABASE__DSN": db.dsn, "VOLTGATE_CLOUD_DATABASE__SCHEMA": db.schema}
    return subprocess.run(
        [sys.executable, "-m", "cloud", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def migrated(db: Database) -> Database:
    assert cli(db, "migrate").returncode == 0
    return db


def scalar(db: Database, query: str) -> int:
    with psycopg.connect(db.dsn, options=f"-c search_path={db.schema}") as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return int(row[0] or 0)


def kept_and_computed(db: Database, day_from: date, day_to: date) -> tuple[list[kpis.DailyKpi], ...]:
    async def read() -> tuple[list[kpis.DailyKpi], ...]:
        store = await Store.open(DatabaseSettings.model_validate({"dsn": db.dsn, "schema": db.schema}))
        try:
            conn = store.connection
            kept = await kpis.kept_daily_kpis(conn, day_from, day_to, store.kept)
            return kept, await kpis.daily_kpis(conn, day_from, day_to)
        finally:
            await store.close()

    return asyncio.run(read())


def distances(rows: list[kpis.DailyKpi]) -> dict[tuple[str, str], float]:
    return {(k.vehicle_id, k.day.isoformat()): k.distance_km or 0.0 for k in rows}


def test_an_export_gives_the_days_kilometres_once(pg_schema: Database, tmp_path: Path) -> None:
    # GIVEN the three trips of two vehicles as one CSV, 10 rows of it with a corrupt date
    rows = twizy_rows()
    export = write_csv(rows, tmp_path / "export.csv")
    db = migrated(pg_schema)

    first = cli(db, "import", str(export), "--fleet", "depot-rabat", HISTORY)

    assert first.returncode == 0, first.stderr
    assert "bad rows skipped: 10: bad_timestamp 10" in first.stdout
    cells = sum(1 for r in rows if not isinstance(r[0], str)) * 5  # every good row has all five values
    assert f"{cells} stored, 0 already stored" in first.stdout
    assert scalar(db, "SELECT sum(n) FROM sample_blocks") == cells
    # THEN the kept daily KPIs (what the fleet page reads) and the ones computed from the samples both
    # carry each day's kilometres: the export's odometer, last reading minus first
    kept, computed = kept_and_computed(db, date(2021, 3, 1), date(2021, 7, 1))
    expected = odometer_span_km(rows)
    assert set(expected) == {
        ("twizy-T1", "2021-03-29"),
        ("twizy-T1", "2021-06-30"),
        ("twizy-T3", "2021-05-25"),
    }
    assert distances(kept) == pytest.approx(expected)
    assert distances(computed) == pytest.approx(expected)
    # AND GPS agrees with the odometer as a bill needs, though the logger repeats each fix at 1 Hz
    # for ~10 s until its receiver has the next one (every real leg once looked like a 1 s jump)
    for row in kept:
        assert row.gps_distance_km is not None and row.distance_km is not None
        gap_pct = abs(row.gps_distance_km - row.distance_km) / row.distance_km * 100
        assert gap_pct <= billing.GPS_DISAGREEMENT_PCT, (row.vehicle_id, row.day, row.gps_distance_km)
    assert scalar(db, "SELECT count(*) FROM trips") >= 3
    assert scalar(db, "SELECT count(*) FROM kpi_days_pending") == 0

    # WHEN the same file is imported again
    again = cli(db, "import", str(export), HISTORY)  # the vehicles' fleet now comes from the database
    assert again.returncode == 0, again.stderr
    assert f"0 stored, {cells} already stored" in again.stdout
    assert scalar(db, "SELECT sum(n) FROM sample_blocks") == cells
    assert distances(kept_and_computed(db, date(2021, 3, 1), date(2021, 7, 1))[0]) == pytest.approx(expected)


def test_an_xlsx_with_its_own_column_names_reads_through_a_map(pg_schema: Database, tmp_path: Path) -> None:
    # GIVEN one trip as a spreadsheet whose header says "Time" and "Bus" (date cells, number cells)
    rows = twizy_rows(["T3_05_25_2021_04.csv"])
    header = ["Time", "Bus", *LAYOUT[2:]]
    sheet = write_xlsx(rows, tmp_path / "export.xlsx", header)
    db = migrated(pg_schema)

    unmapped = cli(db, "import", str(sheet), "--fleet", "depot", HISTORY)
    done = cli(
        db,
        "import",
        str(sheet),
        "--fleet",
        "depot",
        "--column-map",
        "Time=timestamp,Bus=telematics_id",
        HISTORY,
    )

    assert unmapped.returncode == 2 and "--column-map" in unmapped.stderr
    assert done.returncode == 0, done.stderr
    assert scalar(db, "SELECT sum(n) FROM sample_blocks") == len(rows) * 5
    [kpi] = kept_and_computed(db, date(2021, 5, 25), date(2021, 5, 25))[0]
    assert kpi.distance_km == pytest.approx(odometer_span_km(rows)[("twizy-T3", "2021-05-25")])
    assert kpi.soc_start_pct == pytest.approx(float(str(rows[0][6])))


def test_bad_rows_are_counted_and_the_rest_is_stored(pg_schema: Database, tmp_path: Path) -> None:
    # GIVEN one trip with three bad rows put in: a SOC that is text, a vehicle id with a space and a slash,
    # and a timestamp that is no date
    rows = twizy_rows(["T3_05_25_2021_04.csv"])
    good = len(rows)
    rows.insert(100, [rows[100][0], "twizy-T3", 34.0, -6.8, 20.0, 12_001.0, "n/a"])
    rows.insert(200, [rows[200][0], "bus 7/x", 34.0, -6.8, 20.0, 12_001.0, 50.0])
    rows.insert(300, ["yesterday", "twizy-T3", 34.0, -6.8, 20.0, 12_001.0, 50.0])
    export = write_csv(rows, tmp_path / "export.csv")
    db = migrated(pg_schema)

    done = cli(db, "import", str(export), "--fleet", "depot", HISTORY)

    assert done.returncode == 0, done.stderr
    assert (
        "bad rows skipped: 3: bad_timestamp 1 (first on row 302), bad_vehicle_id 1 (first on row 202), "
        "not_a_number 1 (first on row 102)" in done.stdout
    )
    assert scalar(db, "SELECT sum(n) FROM sample_blocks") == good * 5
    assert scalar(db, "SELECT count(*) FROM vehicles") == 1


def test_history_past_the_live_window_is_refused_as_live_data_is(pg_schema: Database, tmp_path: Path) -> None:
    rows = twizy_rows(["T3_05_25_2021_04.csv"])
    export = write_csv(rows, tmp_path / "export.csv")
    db = migrated(pg_schema)

    done = cli(db, "import", str(export), "--fleet", "depot")  # no --max-age-days: the live 400 days

    assert done.returncode == 0, done.stderr
    assert f"ts_too_old {len(rows) * 5}" in done.stdout and "--max-age-days" in done.stdout
    assert scalar(db, "SELECT count(*) FROM sample_blocks") == 0
    # each refused message is kept as a dead letter with its records, as the receiver keeps them
    assert scalar(db, "SELECT sum(refused_records) FROM dead_letters") == len(rows) * 5


def test_new_vehicles_need_a_fleet(pg_schema: Database, tmp_path: Path) -> None:
    export = write_csv(twizy_rows(["T3_05_25_2021_04.csv"]), tmp_path / "export.csv")
    db = migrated(pg_schema)

    done = cli(db, "import", str(export), HISTORY)

    assert done.returncode == 2
    assert "vehicles not in the database yet: twizy-T3; say their fleet with --fleet" in done.stderr
    assert scalar(db, "SELECT count(*) FROM vehicles") == 0
