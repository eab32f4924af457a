"""The TimescaleDB flavour: runs only against a database with the extension.

Set VOLTGATE_TEST_TIMESCALE_DSN (e.g. postgresql://postgres@127.0.0.1:5433/test, a database where
`CREATE EXTENSION timescaledb` has been run). Skipped otherwise: this machine's PostgreSQL has no
TimescaleDB (ENVIRONMENT.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud import kpis
from cloud.ingest import BatchMessage
from cloud.schema import Flavour, latest_version
from cloud.settings import DatabaseSettings
from cloud.store import Store
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, SampleRecord

TIMESCALE_DSN = os.environ.get("VOLTGATE_TEST_TIMESCALE_DSN")

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(
        not TIMESCALE_DSN,
        reason="VOLTGATE_TEST_TIMESCALE_DSN not set: no database with TimescaleDB to test against",
    ),
]


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    assert TIMESCALE_DSN is not None
    schema = f"test_{uuid.uuid4().hex[:12]}"
    settings = DatabaseSettings.model_validate({"dsn": TIMESCALE_DSN, "schema": schema})
    migrator = await Store.open(settings, require_schema=False)
    assert await migrator.migrate() == list(range(1, latest_version() + 1))
    assert await migrator.migrate() == []
    await migrator.close()
    opened = await Store.open(settings)
    try:
        yield opened
    finally:
        await opened.close()
        with psycopg.connect(TIMESCALE_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


async def test_hypertables_policies_and_aggregates_exist(store: Store) -> None:
    assert store.flavour is Flavour.TIMESCALE
    await store.maintain()  # sets the raw retention policies
    conn = store.connection
    cur = await conn.execute(
        b"SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
        b" WHERE hypertable_schema = current_schema() ORDER BY 1"
    )
    assert await cur.fetchall() == [
        ("ingest_ledger", False),
        ("predictions", True),
        ("sample_blocks", True),
    ]
    cur = await conn.execute(
        b"SELECT view_name FROM timescaledb_information.continuous_aggregates"
        b" WHERE view_schema = current_schema() ORDER BY 1"
    )
    assert [r[0] for r in await cur.fetchall()] == ["samples_1d", "samples_1h", "samples_1m"]
    cur = await conn.execute(
        b"SELECT proc_name, hypertable_name FROM timescaledb_information.jobs"
        b" WHERE hypertable_schema = current_schema() ORDER BY 1, 2"
    )
    jobs = {(str(p), str(h)) for p, h in await cur.fetchall()}
    assert ("policy_retention", "sample_blocks") in jobs
    assert ("policy_retention", "ingest_ledger") in jobs
    assert ("policy_compression", "sample_blocks") in jobs


async def test_writes_are_idempotent_and_aggregates_and_kpis_match(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    t0 = int(now.timestamp() * 1000)
    samples = tuple(SampleRecord(i, t0 + i * 1000, kpis.SOC, 80.0 - i / 100) for i in range(300))
    message = BatchMessage.of(
        telemetry_topic("f", "bus-t"), "f", TopicKind.TELEMETRY, Batch("bus-t", samples=samples), now, 1
    )
    first = await store.write([message])
    again = await store.write([message])
    assert (first.samples_inserted, again.samples_inserted, again.duplicates) == (300, 0, 300)

    conn = store.connection
    for view in ("samples_1m", "samples_1h", "samples_1d"):
        await conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)".encode())
        cur = await conn.execute(f"SELECT sum(n) FROM {view} WHERE vehicle_id = 'bus-t'".encode())
        assert await cur.fetchone() == (300,), view

    rows = await kpis.daily_kpis(conn, now.date(), (now + timedelta(minutes=10)).date())
    assert min(r.soc_min_pct or 100.0 for r in rows) == pytest.approx(80.0 - 299 / 100)
