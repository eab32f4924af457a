"""The hour and day rollup refresh (cloud/rollups.py) beside the statement it replaced, in the same run.

    python bench/rollup_refresh.py [--dsn postgresql://postgres@127.0.0.1:5432/test] [--runs 3]
                                   [--buses 240] [--minutes 4] [--seed 7]

Workload: bench/cloud_ingest.py's agent workload (`build_agent_workload`: what 240 buses in service
send in 4 minutes, 461,520 samples), written through the receiver's own `Store.write` (groups of 100
messages) into a fresh schema migrated by the project's migrations (`migrate` of cloud_ingest.py):
what one refresh takes in service, every database.rollup_refresh_s (300 s). The logged minute
aggregates (rollup_block_log, rollup_log) are then set aside and put back before every timed refresh.

Per run, the baseline and the current refresh one after the other (their order alternating from run
to run), each on emptied rollup tables:
  * empty:    the first refresh: every hour and day row is new (what bench/cloud_ingest.py times);
  * existing: the same logs again: every row exists (in service, every refresh of an hour but its
              first, and of a day all day long);
  * new hour: the same logs moved to the hours just before (or after) theirs, in the same UTC day:
              the hour rows are new, the day rows exist (in service, the first refresh of each hour).
Baseline: the single statement `cloud/store.py` ran before (commit b7a0899, `BASELINE_REFRESH` below:
unnest in FROM, join to names per minute, hour and day aggregates as CTEs, UPDATE + INSERT … WHERE
NOT EXISTS per table). Current: `Store.refresh_rollups`. A CHECKPOINT before each timed refresh
starts both from clean buffers.

Figures: wall ms of each refresh, the database backend's CPU ms (/proc, when the database runs on
this machine: the box is shared, CPU time is the steadier figure), µs per ingested sample, and the
baseline / current ratio of each run. Both refreshes must leave the same rows (n, min, max equal,
total to float rounding: the sums are added in another order); the bench stops otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from cloud.ingest import ingest_message
from cloud.settings import DatabaseSettings, IngestSettings
from cloud.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from cloud_ingest import build_agent_workload, migrate  # bench/cloud_ingest.py, beside this file

GROUP = 100  # messages per write group


def _bucketed(source: str, width: str) -> str:
    return (
        f"SELECT vehicle_id, signal, date_bin(interval '{width}', bucket, timestamptz 'epoch') AS bucket,"
        " sum(n)::bigint AS n, sum(total) AS total, min(min_value) AS min_value,"
        f" max(max_value) AS max_value FROM {source} GROUP BY 1, 2, 3"
    )


def _add_into(name: str, source: str) -> str:
    return (
        f"{name}_updated AS (UPDATE {name} AS r SET n = r.n + a.n, total = r.total + a.total,"
        " min_value = least(r.min_value, a.min_value), max_value = greatest(r.max_value, a.max_value)"
        f" FROM {source} AS a WHERE (r.vehicle_id, r.signal, r.bucket) = (a.vehicle_id, a.signal, a.bucket)),"
        f" {name}_inserted AS (INSERT INTO {name} (vehicle_id, signal, bucket, n, total, min_value,"
        f" max_value) SELECT * FROM {source} AS a WHERE NOT EXISTS (SELECT 1 FROM {name} AS r"
        " WHERE (r.vehicle_id, r.signal, r.bucket) = (a.vehicle_id, a.signal, a.bucket)))"
    )


# The baseline: cloud/store.py's _REFRESH_ROLLUPS before this change, verbatim.
BASELINE_REFRESH = (
    "WITH logged AS (DELETE FROM rollup_log RETURNING *),"
    " blocks AS (DELETE FROM rollup_block_log RETURNING *),"
    " m AS (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM logged UNION ALL"
    " SELECT b.vehicle_id, d.name, b.minute, u.n, u.total, u.min_value, u.max_value FROM blocks AS b,"
    " unnest(b.signals, b.n, b.total, b.min_value, b.max_value)"
    " AS u(signal_id, n, total, min_value, max_value) JOIN sample_signals AS d ON d.id = u.signal_id),"
    f" h AS ({_bucketed('m', '1 hour')}), d AS ({_bucketed('h', '1 day')}), "
    + _add_into("rollup_1h", "h")
    + ", "
    + _add_into("rollup_1d", "d")
    + " SELECT count(*) FROM m"
)
ROLLUP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('voltgate-cloud:rollups:' || %s, 0))"
ROLLUP_ROWS = "SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM {} ORDER BY 1, 2, 3"
CASES = ("empty", "existing", "new hour")

Connection = psycopg.AsyncConnection[tuple[object, ...]]
Rows = list[tuple[object, ...]]


@dataclass
class Timings:
    wall_ms: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CASES})
    cpu_ms: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CASES})


def backend_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a database backend on this machine (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scalar(conn: Connection, query: str) -> object:
    cur = await conn.execute(query.encode())
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def baseline_refresh(store: Store, schema: str) -> int:
    """What Store.refresh_rollups(keep_days=False) did before: the lock, then the one statement."""
    conn = store.connection
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(ROLLUP_LOCK.encode(), (schema,))
        await cur.execute(BASELINE_REFRESH.encode())
        row = await cur.fetchone()
        return int(str(row[0])) if row else 0


async def current_refresh(store: Store, schema: str) -> int:
    taken = await store.refresh_rollups(keep_days=False)
    assert taken is not None
    return taken


async def checkpoint(conn: Connection) -> bool:
    try:
        await conn.execute(b"CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


async def other_hours(conn: Connection) -> timedelta:
    """How far to move the logs so that they land in hours of the same UTC day that hold none of them
    (earlier ones unless too close to midnight)."""
    cur = await conn.execute(
        b"SELECT date_bin('1 hour', min(minute), 'epoch'), date_bin('1 hour', max(minute), 'epoch')"
        b" FROM bench_block_log"
    )
    row = await cur.fetchone()
    assert row is not None and isinstance(row[0], datetime) and isinstance(row[1], datetime)
    first, last = row[0], row[1]
    span = last - first + timedelta(hours=1)
    return -span if (first - span).date() == first.date() else span


def compare(baseline: Rows, current: Rows, table: str) -> float:
    """The largest relative difference of `total`; SystemExit when any row differs otherwise."""
    if [r[:4] + r[5:] for r in baseline] != [r[:4] + r[5:] for r in current]:
        raise SystemExit(
            f"{table}: the current refresh left other rows, counts or extremes than the baseline"
        )
    worst = 0.0
    for b, c in zip(baseline, current, strict=True):
        tb, tc = float(str(b[4])), float(str(c[4]))
        worst = max(worst, abs(tb - tc) / max(abs(tb), 1e-300))
    if worst > 1e-12:
        raise SystemExit(f"{table}: totals differ by {worst:.1e} (relative), beyond float rounding")
    return worst


def spread(values: list[float]) -> str:
    return f"{min(values):6.0f}-{max(values):<6.0f}"


def per_sample(ms: list[float], samples: int) -> str:
    return f"{min(ms) * 1000 / samples:.2f}-{max(ms) * 1000 / samples:.2f}"


async def run(args: argparse.Namespace) -> None:
    schema = f"bench_refresh_{uuid.uuid4().hex[:8]}"
    settings = DatabaseSettings.model_validate({"dsn": args.dsn, "schema": schema})
    admin = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    await migrate(args.dsn, schema)
    store = await Store.open(settings)
    try:
        conn = store.connection
        messages = build_agent_workload("bench", args.buses, args.minutes, args.seed)
        now, limits, samples = datetime.now(UTC), IngestSettings(), 0
        for start in range(0, len(messages), GROUP):
            items = [ingest_message(m.topic, m.payload, now, limits) for m in messages[start : start + GROUP]]
            samples += (await store.write(items)).samples_inserted
        await conn.execute(
            b"CREATE TABLE bench_block_log AS SELECT * FROM rollup_block_log;"
            b" CREATE TABLE bench_log AS SELECT * FROM rollup_log; TRUNCATE rollup_block_log, rollup_log"
        )
        minutes = await scalar(
            conn,
            "SELECT (SELECT coalesce(sum(cardinality(signals)), 0) FROM bench_block_log)"
            " + (SELECT count(*) FROM bench_log)",
        )
        print(f"{schema}: {len(messages)} messages, {samples:,} samples, {minutes:,} logged minute rows")
        shift = await other_hours(conn)
        variants: dict[str, Callable[[Store, str], Awaitable[int]]] = {
            "baseline": baseline_refresh,
            "current": current_refresh,
        }
        pid = int(str(await scalar(conn, "SELECT pg_backend_pid()")))
        timings = {name: Timings() for name in variants}
        worst, clean = 0.0, True
        for n in range(args.runs):
            tables: dict[str, list[Rows]] = {}
            for name in list(variants)[:: 1 if n % 2 == 0 else -1]:
                refresh = variants[name]
                await conn.execute(b"TRUNCATE rollup_1h, rollup_1d")
                for case in CASES:
                    moved = shift if case == "new hour" else timedelta(0)
                    await conn.execute(
                        b"INSERT INTO rollup_block_log (vehicle_id, minute, signals, n, total, min_value,"
                        b" max_value) SELECT vehicle_id, minute + %(moved)s, signals, n, total, min_value,"
                        b" max_value FROM bench_block_log",
                        {"moved": moved},
                    )
                    await conn.execute(
                        b"INSERT INTO rollup_log (vehicle_id, signal, bucket, n, total, min_value,"
                        b" max_value) SELECT vehicle_id, signal, bucket + %(moved)s, n, total, min_value,"
                        b" max_value FROM bench_log",
                        {"moved": moved},
                    )
                    clean = await checkpoint(conn) and clean
                    cpu_before, started = backend_cpu_s(pid), time.perf_counter()
                    taken = await refresh(store, schema)
                    wall, cpu_after = time.perf_counter() - started, backend_cpu_s(pid)
                    assert taken == minutes, (name, taken, minutes)
                    timings[name].wall_ms[case].append(wall * 1000)
                    if cpu_before is not None and cpu_after is not None:
                        timings[name].cpu_ms[case].append((cpu_after - cpu_before) * 1000)
                tables[name] = []
                for table in ("rollup_1h", "rollup_1d"):
                    cur = await conn.execute(ROLLUP_ROWS.format(table).encode())
                    tables[name].append(await cur.fetchall())
            for k, table in enumerate(("rollup_1h", "rollup_1d")):
                worst = max(worst, compare(tables["baseline"][k], tables["current"][k], table))
        hours, days = (len(t) for t in tables["current"])
        print(
            f"same rows after both: {hours:,} hours, {days:,} days (n, min, max equal; totals within"
            f" {worst:.1e} relative);"
            f" {'' if clean else 'no '}CHECKPOINT before each"
        )
        print(f"{args.runs} runs, ranges (min-max); ratio = baseline / current of the same run")
        base, now_ = timings["baseline"], timings["current"]
        for case in CASES:
            ratio = [b / c for b, c in zip(base.wall_ms[case], now_.wall_ms[case], strict=True)]
            print(
                f"  {case:8s} wall ms  baseline {spread(base.wall_ms[case])} current"
                f" {spread(now_.wall_ms[case])} ratio {min(ratio):.2f}-{max(ratio):.2f};"
                f" µs/sample baseline {per_sample(base.wall_ms[case], samples)}"
                f" current {per_sample(now_.wall_ms[case], samples)}"
            )
            if base.cpu_ms[case] and now_.cpu_ms[case]:
                ratio = [b / max(c, 1.0) for b, c in zip(base.cpu_ms[case], now_.cpu_ms[case], strict=True)]
                print(
                    f"  {case:8s} CPU ms   baseline {spread(base.cpu_ms[case])} current"
                    f" {spread(now_.cpu_ms[case])} ratio {min(ratio):.2f}-{max(ratio):.2f} (database backend)"
                )
    finally:
        await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--buses", type=int, default=240)
    parser.add_argument("--minutes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
