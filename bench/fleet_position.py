"""The fleet's last positions: paired latitude/longitude (the fleet views' query) against a baseline.

    PYTHONPATH=. python bench/fleet_position.py [--buses 1000] [--repeat 7]

Workload: `--buses` buses' last twelve minutes as their agents send them (tests/integration/
large_fleet.py: a reading a minute of SOC, speed, pack voltage and current; latitude and longitude
read two seconds apart, as two signals), written through the receiver's store into a fresh schema
of the local PostgreSQL (127.0.0.1:5432, database `test`), dropped at the end.

Timed, best of `--repeat`, the fleet-wide position lookup alone (one statement, every bus):
  baseline  each coordinate's latest reading, unpaired (two `latest_sample` per bus): what one writes
            without special effort; it may join a latitude and a longitude minutes apart;
  paired    `queries.LOCATION_JOINS` (four `latest_sample` per bus) and `paired_position`: the newest
            position whose two coordinates were read within `queries.LOCATION_PAIRING`;
and, for scale, the whole last-state read behind GET /api/buses (`queries.bus_states`). Also counts
the buses with a position each way, and those the baseline would join from readings too far apart.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from cloud.settings import DatabaseSettings
from cloud.store import Store
from cloud.web import queries
from protocols import signals

# `python bench/fleet_position.py` puts bench/ first on sys.path; the fleet builder is the tests' own
sys.path.append(str(Path(__file__).resolve().parents[1]))
from tests.integration.large_fleet import plan_fleet, write_fleet

DSN = "postgresql://postgres@127.0.0.1:5432/test"
BASELINE_SQL = b"""
SELECT v.vehicle_id, lat.ts, lat.value, lon.ts, lon.value FROM vehicles v
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(lat)s) lat ON true
LEFT JOIN LATERAL latest_sample(v.vehicle_id, %(lon)s) lon ON true
"""
PAIRED_SQL = b"SELECT v.vehicle_id," + queries.LOCATION_COLUMNS + b"FROM vehicles v" + queries.LOCATION_JOINS
PARAMS = {"lat": signals.LATITUDE, "lon": signals.LONGITUDE, "pairing": queries.LOCATION_PAIRING}
Connection = psycopg.AsyncConnection[tuple[object, ...]]


async def best_of(repeat: int, run: object) -> tuple[float, object]:
    assert callable(run)
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run()
        best = min(best, time.perf_counter() - started)
    return best, result


async def main(args: argparse.Namespace) -> None:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        settings = DatabaseSettings.model_validate({"dsn": DSN, "schema": schema})
        migrator = await Store.open(settings, require_schema=False)
        await migrator.migrate()
        await migrator.close()
        store = await Store.open(settings)
        try:
            await write_fleet(store, plan_fleet(args.buses), datetime.now(UTC).replace(microsecond=0))
        finally:
            await store.close()
        # as the API connects (cloud/api.py): with JIT on, compiling the bus list's plan alone takes seconds
        options = f"-c search_path={schema},public -c timezone=UTC -c jit=off"
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True, options=options) as conn:
            await report(conn, args)
    finally:
        with psycopg.connect(DSN, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def position_of(row: tuple[object, ...]) -> queries.Position | None:
    """`paired_position` of one row of PAIRED_SQL: (vehicle, then four (ts, value) readings)."""
    readings = []
    for ts, value in zip(row[1::2], row[2::2], strict=True):
        ok = isinstance(ts, datetime) and isinstance(value, float)
        readings.append(queries.Reading(ts, value) if ok else None)  # type: ignore[arg-type]
    return queries.paired_position(*readings)


async def report(conn: Connection, args: argparse.Namespace) -> None:
    async def baseline() -> list[tuple[object, ...]]:
        return await (await conn.execute(BASELINE_SQL, PARAMS)).fetchall()

    async def paired() -> list[tuple[object, ...]]:
        return await (await conn.execute(PAIRED_SQL, PARAMS)).fetchall()

    async def states() -> list[queries.BusState]:
        return await queries.bus_states(conn)

    base_s, base_rows = await best_of(args.repeat, baseline)
    paired_s, paired_rows = await best_of(args.repeat, paired)
    states_s, _ = await best_of(args.repeat, states)
    assert isinstance(base_rows, list) and isinstance(paired_rows, list)
    apart = sum(
        1
        for _, lat_ts, _, lon_ts, _ in base_rows
        if isinstance(lat_ts, datetime)
        and isinstance(lon_ts, datetime)
        and abs(lat_ts - lon_ts) > queries.LOCATION_PAIRING
    )
    with_position = sum(1 for row in paired_rows if position_of(row) is not None)
    base_positions = sum(1 for row in base_rows if row[2] is not None and row[4] is not None)
    print(f"last positions of {args.buses} buses (best of {args.repeat}; lat/lon read 2 s apart)")
    print(
        f"  baseline, latest of each (unpaired): {base_s * 1e3:7.1f} ms, {base_positions} positions,"
        f" {apart} from readings > {queries.LOCATION_PAIRING.total_seconds():.0f} s apart"
    )
    print(
        f"  paired (the fleet views' query):     {paired_s * 1e3:7.1f} ms, {with_position} positions"
        f"  = {paired_s / base_s:.2f} x baseline"
    )
    print(f"  whole last state (GET /api/buses):   {states_s * 1e3:7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--buses", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
