"""Fixtures for tests against real services: PostgreSQL and Mosquitto on loopback.

Addresses come from the environment, with loopback defaults:
  VOLTGATE_TEST_PG_DSN          (postgresql://postgres@127.0.0.1:5432/test)
  VOLTGATE_TEST_TIMESCALE_DSN   (none; e.g. postgresql://postgres@127.0.0.1:5433/test, a database
                                 with the TimescaleDB extension: CI sets it, see .ci/run)
  VOLTGATE_TEST_MQTT_HOST/PORT  (127.0.0.1 / 1883)
When a service is unreachable the test is skipped with the reason, or fails when CI=true (in CI a
missing service is a broken machine, not a reason to go green).

Every test that takes `pg_schema` (or `store`) runs once per database flavour, `native` (plain
PostgreSQL) and `timescale`: the receiver behaves the same on both. A test of one flavour's mechanics
(partition names, chunks, hypertables) says so with `@pytest.mark.flavour("native")` (or "timescale").
The timescale runs skip, with the reason, when VOLTGATE_TEST_TIMESCALE_DSN is not set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.buffer import BufferWorker

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from cloud.kept_kpis import KeptDays
    from cloud.store import Store

PG_DSN = os.environ.get("VOLTGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TIMESCALE_DSN = os.environ.get("VOLTGATE_TEST_TIMESCALE_DSN")
FLAVOURS = ("native", "timescale")
MQTT_HOST = os.environ.get("VOLTGATE_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("VOLTGATE_TEST_MQTT_PORT", "1883"))


def service_unavailable(reason: str) -> None:
    """Skip the test (or fail it under CI=true) because a service it needs is not there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: services must be running)", pytrace=False)
    pytest.skip(reason)


def unique_id(prefix: str) -> str:
    """A short id unique to this test run: for topics, fleets, client ids, schemas."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Broker:
    """A reachable MQTT broker, plus a per-test namespace to keep tests apart on a shared broker."""

    host: str
    port: int
    namespace: str  # unique per test: use it in fleet ids, topic prefixes, client ids, share groups

    def client_id(self, role: str) -> str:
        return f"{self.namespace}-{role}"


@pytest.fixture
def mqtt_broker() -> Broker:
    """The Mosquitto broker at VOLTGATE_TEST_MQTT_HOST:PORT, checked reachable."""
    try:
        with socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=2):
            pass
    except OSError as err:
        service_unavailable(f"MQTT broker not reachable at {MQTT_HOST}:{MQTT_PORT}: {err}")
    return Broker(MQTT_HOST, MQTT_PORT, unique_id("t"))


@dataclass(frozen=True)
class Database:
    """A reachable PostgreSQL database and a fresh schema in it, dropped after the test."""

    dsn: str
    schema: str
    flavour: str = "native"  # "timescale": the database has the TimescaleDB extension


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "flavour(name): the test is about one database flavour's mechanics (native or timescale)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`pg_schema` (and every fixture built on it) once per flavour, or only the marked one."""
    if "pg_schema" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("flavour")
    flavours = marker.args if marker else FLAVOURS
    unknown = set(flavours) - set(FLAVOURS)
    if unknown:
        raise pytest.UsageError(f"unknown database flavour {sorted(unknown)} on {metafunc.definition.nodeid}")
    metafunc.parametrize("pg_schema", flavours, indirect=True)


def flavour_dsn(flavour: str) -> str:
    """The test database of `flavour`; skips the test when the TimescaleDB one is not configured."""
    if flavour == "native":
        return PG_DSN
    if TIMESCALE_DSN is None:
        pytest.skip("VOLTGATE_TEST_TIMESCALE_DSN not set: no database with TimescaleDB to test against")
    return TIMESCALE_DSN


@contextlib.contextmanager
def fresh_schema(flavour: str) -> Iterator[Database]:
    """A fresh, empty schema in the test database of `flavour`, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    dsn = flavour_dsn(flavour)
    schema = unique_id("test_")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.Error as err:
        service_unavailable(f"PostgreSQL not reachable at {dsn}: {str(err).strip().splitlines()[0]}")
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
        try:
            yield Database(dsn, schema, flavour)
        finally:
            if flavour == "timescale":
                # The schema's background jobs (compression, retention) first: delete_job ends a
                # running one, so none holds a chunk that DROP SCHEMA must drop (or errors on it).
                conn.execute(
                    b"SELECT delete_job(job_id) FROM timescaledb_information.jobs"
                    b" WHERE hypertable_schema = %s",
                    (schema,),
                )
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())


@pytest.fixture
def pg_schema(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A fresh, empty schema in the test database of the flavour the test runs on (native unless
    parametrized: the fault suite registers this fixture and stays on plain PostgreSQL)."""
    with fresh_schema(getattr(request, "param", "native")) as db:
        yield db


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[BufferWorker]:
    """An agent buffer (a real SQLite file) in the test's directory, opened and closed around the test."""
    worker = BufferWorker(tmp_path / "buffer.sqlite3", 64 * 1024 * 1024)
    await worker.open()
    yield worker
    await worker.close()


async def migrated_store(db: Database, kept: KeptDays | None = None) -> Store:
    """A receiver store on `db`'s schema, migrated to the latest version (the caller closes it)."""
    from cloud.settings import DatabaseSettings  # cloud extras: imported only by the cloud tests
    from cloud.store import Store

    settings = DatabaseSettings.model_validate({"dsn": db.dsn, "schema": db.schema})
    migrator = await Store.open(settings, require_schema=False)
    try:
        await migrator.migrate()
        if db.flavour == "timescale":
            await pause_background_jobs(migrator.connection, db.schema)
    finally:
        await migrator.close()
    return await Store.open(settings, kept=kept)


async def pause_background_jobs(conn: AsyncConnection[tuple[object, ...]], schema: str) -> None:
    """Unschedule the TimescaleDB jobs of `schema` (compression: they start as soon as created) and wait
    for a run already started to end, so no job compresses the chunks a test is writing at some
    moment of its own: a test of compressed chunks compresses them itself (`compress_chunk`)."""
    await conn.execute(
        b"SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
        b" WHERE hypertable_schema = %s",
        (schema,),
    )
    for _ in range(600):  # a job's run over a fresh schema takes milliseconds
        cur = await conn.execute(
            b"SELECT count(*) FROM timescaledb_information.job_stats"
            b" WHERE hypertable_schema = %s AND job_status = 'Running'",
            (schema,),
        )
        if await cur.fetchone() == (0,):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"a TimescaleDB job of {schema} still runs after 30 s")


@pytest.fixture
async def store(pg_schema: Database) -> AsyncIterator[Store]:
    """A migrated receiver store on a fresh schema, closed after the test."""
    opened = await migrated_store(pg_schema)
    yield opened
    await opened.close()


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size_bytes: int) -> Iterator[Path]:
    """A real small file system at `directory` (a tmpfs of `size_bytes`), for full-disk tests; mounting
    needs root, so elsewhere the test is skipped with the reason."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; full-disk tests run where tests run as root")
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)
