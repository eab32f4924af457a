"""The read side prunes: the fleet views and KPIs read only the sample blocks of the time they ask for.

Samples live in `sample_blocks`, range-partitioned by day (plain PostgreSQL) or a hypertable of
six-hour chunks (TimescaleDB); the `samples` view decodes every block of every day. The queries read
through `samples_between()` / `latest_sample()` instead, whose time bounds reach the partition key
and whose bus reaches the primary key. These tests run the public read functions on a schema
holding four days and look at the plans of what they executed (EXPLAIN ANALYZE of each statement, run
just before it on the same connection): a query that falls back to the view, or hides its range from
the planner, reads every day's partitions (chunks) and fails here. On both flavours: a query reads
exactly the partitions (chunks) whose bounds meet the range it asks for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, LiteralString, Self
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from psycopg.abc import Params, Query

from cloud import charging, daily_kpis, trips
from cloud.web import queries
from protocols import signals

from .conftest import Database, migrated_store
from .test_cloud_api import PLANS, fleet_messages, write_all

pytestmark = pytest.mark.asyncio

DAYS = [date(2024, 5, 11) + timedelta(days=k) for k in range(4)]
BUS = PLANS[0].vehicle_id
EXPLAIN: LiteralString = "EXPLAIN (ANALYZE, FORMAT JSON) "


def utc_day(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def local_day(day: date, tz: str) -> tuple[datetime, datetime]:
    end = day + timedelta(days=1)
    zone = ZoneInfo(tz)
    return datetime(day.year, day.month, day.day, tzinfo=zone), datetime(
        end.year, end.month, end.day, tzinfo=zone
    )


@dataclass
class Plans:
    """The plans of the statements run on one connection, as EXPLAIN (FORMAT JSON) gives them."""

    roots: list[dict[str, Any]] = field(default_factory=list)
    # sample_blocks' partitions (native) or chunks (TimescaleDB), with their bounds [start, end)
    bounds: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)

    def clear(self) -> None:
        self.roots.clear()

    def nodes(self) -> Iterator[dict[str, Any]]:
        def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
            yield node
            for child in node.get("Plans", []):
                yield from walk(child)

        for root in self.roots:
            yield from walk(root)

    def block_scans(self) -> list[dict[str, Any]]:
        """Scans of sample_blocks partitions (chunks) that ran (pruned ones never run, or are not planned)."""
        return [
            n for n in self.nodes() if n.get("Relation Name", "") in self.bounds and n["Actual Loops"] > 0
        ]

    def partitions_read(self) -> set[str]:
        return {n["Relation Name"] for n in self.block_scans()}

    def meeting(self, *ranges: tuple[datetime, datetime]) -> set[str]:
        """The partitions (chunks) whose bounds meet one of `ranges`: all a query of them may read."""
        return {
            name
            for name, (start, end) in self.bounds.items()
            if any(start < t_to and end > t_from for t_from, t_to in ranges)
        }


def recording_cursor(plans: Plans) -> type[psycopg.AsyncCursor[Any]]:
    """A cursor class that EXPLAIN ANALYZEs each statement (same parameters) before running it."""

    class Recording(psycopg.AsyncCursor[Any]):
        async def execute(
            self,
            query: Query,
            params: Params | None = None,
            *,
            prepare: bool | None = None,
            binary: bool | None = None,
        ) -> Self:
            assert isinstance(query, bytes | sql.Composable), "the read queries are bytes or composed SQL"
            explained = EXPLAIN.encode() + query if isinstance(query, bytes) else sql.SQL(EXPLAIN) + query
            async with psycopg.AsyncCursor(self.connection) as plain:  # not a Recording: no recursion
                await plain.execute(explained, params)
                row = await plain.fetchone()
                assert row is not None
                plans.roots.append(row[0][0]["Plan"])
            return await super().execute(query, params, prepare=prepare, binary=binary)

    return Recording


@pytest.fixture
async def four_days(pg_schema: Database) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], Plans]]:
    # GIVEN three buses driving half an hour each morning for four days: a partition (chunk) each
    store = await migrated_store(pg_schema)
    try:
        for day in DAYS:
            start = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)
            _, messages = fleet_messages(PLANS, start, hours=0.5, step_s=30)
            await write_all(store, messages)
    finally:
        await store.close()
    plans = Plans()
    async with await psycopg.AsyncConnection.connect(
        pg_schema.dsn,
        autocommit=True,
        # as the API connects (cloud/api.py): without jit=off, JIT compiling the bus list's query on these
        # never-analyzed tables took 30-50 s of this module's 90
        options=f"-c search_path={pg_schema.schema},public -c jit=off",
        cursor_factory=recording_cursor(plans),
    ) as conn:
        if pg_schema.flavour == "native":
            cur = await conn.execute(
                b"SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                b" WHERE i.inhparent = 'sample_blocks'::regclass"
            )
            names = {str(name) for (name,) in await cur.fetchall()}
            assert names == {f"sample_blocks_p{d:%Y%m%d}" for d in DAYS}
            plans.bounds = {f"sample_blocks_p{d:%Y%m%d}": utc_day(d) for d in DAYS}
        else:
            cur = await conn.execute(
                b"SELECT chunk_name, range_start, range_end FROM timescaledb_information.chunks"
                b" WHERE hypertable_schema = current_schema() AND hypertable_name = 'sample_blocks'"
            )
            plans.bounds = {str(name): (start, end) for name, start, end in await cur.fetchall()}
            assert sorted(start for start, _ in plans.bounds.values()) == [  # six-hour chunks
                datetime(d.year, d.month, d.day, 0, tzinfo=UTC) for d in DAYS
            ]
        plans.clear()
        yield conn, plans


async def test_daily_kpis_read_only_the_days_asked_for(
    four_days: tuple[psycopg.AsyncConnection[Any], Plans],
) -> None:
    conn, plans = four_days
    day = DAYS[1]

    rows = await daily_kpis.daily_kpis(conn, day, day)

    assert {(r.vehicle_id, r.day) for r in rows} == {(p.vehicle_id, day) for p in PLANS}
    assert plans.partitions_read() == plans.meeting(utc_day(day))

    # a local day in New York (UTC−4) spans two UTC days: the partitions (chunks) of both that it meets
    plans.clear()
    await charging.charging_sessions(conn, day, day, tz="America/New_York")
    assert plans.partitions_read() == plans.meeting(local_day(day, "America/New_York"))


async def test_trips_read_only_the_days_asked_for(
    four_days: tuple[psycopg.AsyncConnection[Any], Plans],
) -> None:
    conn, plans = four_days
    day = DAYS[2]

    found = await trips.trips(conn, day, day)

    assert {t.vehicle_id for t in found} == {p.vehicle_id for p in PLANS}
    assert all(t.started_at.astimezone(UTC).date() == day for t in found)
    assert plans.partitions_read() == plans.meeting(utc_day(day))

    plans.clear()
    await trips.trips(conn, day, day, tz="America/New_York", vehicle_id=BUS)
    assert plans.partitions_read() == plans.meeting(local_day(day, "America/New_York"))


async def test_bus_list_reads_no_sample_block(
    four_days: tuple[psycopg.AsyncConnection[Any], Plans],
) -> None:
    conn, plans = four_days

    states = await queries.bus_states(conn)

    # the latest samples are kept as the receiver writes (cloud/sql/0016_latest_values.sql)
    assert [s.vehicle_id for s in states] == sorted(p.vehicle_id for p in PLANS)
    assert all(s.soc_pct and s.soc_pct.ts.astimezone(UTC).date() == DAYS[-1] for s in states)
    assert all(s.latitude is not None and s.longitude is not None for s in states)
    assert plans.partitions_read() == set()


async def test_series_and_outcomes_read_only_their_range(
    four_days: tuple[psycopg.AsyncConnection[Any], Plans],
) -> None:
    conn, plans = four_days
    day = DAYS[1]
    t_from = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)
    t_to = t_from + timedelta(hours=1)

    raw = await queries.series(conn, BUS, signals.SOC, t_from, t_to, queries.Resolution.RAW, 10_000)
    power = await queries.series(conn, BUS, queries.PACK_POWER, t_from, t_to, queries.Resolution.RAW, 10_000)
    outcomes = await queries.prediction_outcomes(conn, BUS, t_from, t_to, 1_000)

    assert len(raw) == 61 and power and outcomes
    assert all(o.soc_at_prediction_pct is not None for o in outcomes)
    assert plans.partitions_read() == plans.meeting(utc_day(day))


async def test_one_bus_reads_go_through_the_block_key(
    four_days: tuple[psycopg.AsyncConnection[Any], Plans],
) -> None:
    # A few kB per partition make a sequential scan the cheapest plan here; with it priced out (for
    # this session) the plan shows whether the bus reaches the blocks' primary key (vehicle_id,
    # minute, …) at all, as it does on a real fleet's partitions. A block holds all of a bus's
    # signals of a minute: the signal is picked out of the decoded samples.
    conn, plans = four_days
    async with psycopg.AsyncCursor(conn) as plain:  # a SET has no plan to record
        await plain.execute(b"SET enable_seqscan = off")
    day = DAYS[1]
    t_from = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)
    plans.clear()

    await daily_kpis.daily_kpis(conn, day, day, vehicle_id=BUS)
    await trips.trips(conn, day, day, vehicle_id=BUS)
    await queries.bus_states(conn, BUS)
    await queries.series(
        conn, BUS, signals.SOC, t_from, t_from + timedelta(hours=1), queries.Resolution.RAW, 100
    )
    await queries.prediction_outcomes(conn, BUS, t_from, t_from + timedelta(hours=1), 100)

    # THEN every block scan finds the bus through the index
    scans = plans.block_scans()
    assert scans
    for scan in scans:
        index_cond = " ".join(n.get("Index Cond", "") for n in Plans([scan]).nodes())
        assert "vehicle_id = " in index_cond, scan
