"""Schema migrations and time-partition maintenance.

Migrations are the numbered files in `cloud/sql/`: `NNNN_name.sql` runs everywhere;
`NNNN_name.native.sql` / `NNNN_name.timescale.sql` are the two variants of one version, chosen by
whether the TimescaleDB extension is installed in the database (`pg_extension`). Each version runs
in its own transaction under an advisory lock and is recorded in `schema_migrations` with the
flavour it used, so `migrate` is idempotent and safe to run from several replicas at once. The
flavour recorded for version 2 is the flavour of the schema from then on.

Without TimescaleDB, `sample_blocks` and `ingest_ledger` are range-partitioned by day: the receiver
creates partitions ahead of time (and on demand for late data) and drops those past retention.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from importlib import resources
from typing import Final

import psycopg
from psycopg import sql

from cloud.errors import StoreError

log = logging.getLogger(__name__)

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(native|timescale))?\.sql$")
# Partitioned tables of the native flavour and their partition column.
PARTITIONED_TABLES: Final = {"sample_blocks": "minute", "ingest_ledger": "received_at"}
# Every sample block's arrays to TOAST, where pglz compresses them (cloud/sql/0008_signal_blocks.native.sql).
_PARTITION_OPTIONS: Final = {"sample_blocks": "WITH (toast_tuple_target = 128)"}
_PARTITION_NAME = re.compile(r"^(sample_blocks|ingest_ledger)_p(\d{8})$")


class Flavour(StrEnum):
    NATIVE = "native"
    TIMESCALE = "timescale"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql_text: str


def available_migrations(flavour: Flavour) -> list[Migration]:
    """The migrations shipped in `cloud/sql/` for one flavour, in version order."""
    by_version: dict[int, Migration] = {}
    for entry in resources.files("cloud").joinpath("sql").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            continue
        version, name, variant = int(match[1]), match[2], match[3]
        if variant is not None and variant != flavour.value:
            continue
        if version in by_version and variant is None:
            continue  # a flavour-specific file wins over a generic one of the same version
        by_version[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    return [by_version[v] for v in sorted(by_version)]


def shipped_versions(from_version: int = 1) -> list[int]:
    """The versions shipped in `cloud/sql/` from `from_version` on, ascending (numbers may skip)."""
    return [m.version for m in available_migrations(Flavour.NATIVE) if m.version >= from_version]


def latest_version() -> int:
    return max(m.version for m in available_migrations(Flavour.NATIVE))


def _lock_key(schema: str) -> sql.Composable:
    return sql.SQL("hashtextextended({}, 0)").format(sql.Literal(f"voltgate-cloud:{schema}"))


async def detect_flavour(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> Flavour:
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    return Flavour.TIMESCALE if await cur.fetchone() else Flavour.NATIVE


async def schema_state(conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str) -> tuple[int, Flavour]:
    """(highest applied version, flavour) of `schema`; version 0 when nothing is applied."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".schema_migrations',))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0, await detect_flavour(conn)
    cur = await conn.execute(
        sql.SQL("SELECT version, flavour FROM {}.schema_migrations ORDER BY version DESC LIMIT 1").format(
            sql.Identifier(schema)
        )
    )
    last = await cur.fetchone()
    if last is None:
        return 0, await detect_flavour(conn)
    flavour_cur = await conn.execute(
        sql.SQL("SELECT flavour FROM {}.schema_migrations WHERE flavour <> 'any' LIMIT 1").format(
            sql.Identifier(schema)
        )
    )
    flavour_row = await flavour_cur.fetchone()
    flavour = Flavour(str(flavour_row[0])) if flavour_row else await detect_flavour(conn)
    return int(str(last[0])), flavour


async def migrate(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, *, up_to: int | None = None
) -> list[int]:
    """Apply the pending migrations to `schema` (created if missing), those up to version `up_to`
    when given; return the versions applied.

    `conn` must be in autocommit mode with `search_path` starting at `schema`.
    """
    ident = sql.Identifier(schema)
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(_lock_key(schema)))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, flavour text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
    _, flavour = await schema_state(conn, schema)
    for migration in available_migrations(flavour):
        if up_to is not None and migration.version > up_to:
            break
        for attempt in range(1, _CATALOG_RACE_ATTEMPTS + 1):
            try:
                if await _apply(conn, schema, migration, flavour):
                    applied_now.append(migration.version)
                break
            except (psycopg.errors.InternalError_, psycopg.errors.DeadlockDetected) as err:
                catalog_race = isinstance(err, psycopg.errors.DeadlockDetected) or str(err).startswith(
                    "tuple concurrently"
                )
                if attempt == _CATALOG_RACE_ATTEMPTS or not catalog_race:
                    raise
                log.warning(
                    "migration %d met a concurrent catalog update (%s); retrying", migration.version, err
                )
                await asyncio.sleep(0.5 * attempt)
    return applied_now


# TimescaleDB's jobs (a continuous-aggregate refresh just launched) can update its catalog rows while a
# migration drops what they belong to, failing the migration's transaction with "tuple concurrently
# updated" (or deleted), or with a deadlock on its shared invalidation log (PostgreSQL aborts one side;
# seen in CI when 0007 dropped the continuous aggregates while another schema's refresh ran). Nothing of
# that version is applied then, and it is applied again.
_CATALOG_RACE_ATTEMPTS: Final = 5


async def _apply(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, migration: Migration, flavour: Flavour
) -> bool:
    """Apply one migration in its own transaction unless recorded already; True when applied."""
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(_lock_key(schema)))
        cur = await conn.execute(
            sql.SQL("SELECT 1 FROM {}.schema_migrations WHERE version = %s").format(ident),
            (migration.version,),
        )
        if await cur.fetchone():
            return False
        await conn.execute(migration.sql_text.encode())
        variant = flavour.value if _has_variants(migration.version) else "any"
        await conn.execute(
            sql.SQL("INSERT INTO {}.schema_migrations (version, name, flavour) VALUES (%s, %s, %s)").format(
                ident
            ),
            (migration.version, migration.name, variant),
        )
    return True


def _has_variants(version: int) -> bool:
    names = (entry.name for entry in resources.files("cloud").joinpath("sql").iterdir())
    return any((m := _MIGRATION_FILE.match(n)) and int(m[1]) == version and m[3] for n in names)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def utc_day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


async def existing_partitions(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str
) -> set[tuple[str, date]]:
    """(table, day) of every daily partition of the partitioned tables in `schema`."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE n.nspname = %s AND p.relname = ANY(%s)",
        (schema, list(PARTITIONED_TABLES)),
    )
    found: set[tuple[str, date]] = set()
    for (relname,) in await cur.fetchall():
        match = _PARTITION_NAME.match(str(relname))
        if match:
            found.add((match[1], datetime.strptime(match[2], "%Y%m%d").replace(tzinfo=UTC).date()))
    return found


async def create_partitions(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, wanted: set[tuple[str, date]]
) -> set[tuple[str, date]]:
    """Create the missing daily partitions among `wanted`; return all that exist afterwards.

    Runs in its own short transaction under the schema's advisory lock, so replicas creating the
    same partition at the same moment do not collide.
    """
    async with conn.transaction():
        await conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(_lock_key(schema)))
        present = await existing_partitions(conn, schema)
        for table, day in sorted(wanted - present):
            start, end = utc_day_bounds(day)
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.{} FOR VALUES FROM ({}) TO ({}) {}"
                ).format(
                    sql.Identifier(schema),
                    sql.Identifier(partition_name(table, day)),
                    sql.Identifier(schema),
                    sql.Identifier(table),
                    sql.Literal(start),
                    sql.Literal(end),
                    sql.SQL(_PARTITION_OPTIONS.get(table, "")),
                )
            )
            present.add((table, day))
    return present


async def drop_expired_partitions(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, keep_days: int, today: date
) -> list[str]:
    """Drop the daily partitions that end before `today - keep_days`; return their names."""
    oldest_kept = today - timedelta(days=keep_days)
    dropped: list[str] = []
    async with conn.transaction():
        await conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(_lock_key(schema)))
        for table, day in sorted(await existing_partitions(conn, schema)):
            if day < oldest_kept:
                name = partition_name(table, day)
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
                )
                dropped.append(name)
    return dropped


async def apply_timescale_retention(
    conn: psycopg.AsyncConnection[tuple[object, ...]], keep_days: int
) -> None:
    """Set the raw-data retention policies (TimescaleDB flavour) to `keep_days`. Receivers starting at once
    take turns (a transaction-scoped advisory lock per schema): two replicas removing and adding the same
    policy together failed one of them with "retention policy already exists" (CI, two replicas)."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('voltgate retention ' || current_schema()))"
        )
        for table in PARTITIONED_TABLES:
            await conn.execute("SELECT remove_retention_policy(%s::regclass, if_exists => true)", (table,))
            await conn.execute(
                "SELECT add_retention_policy(%s::regclass, drop_after => make_interval(days => %s))",
                (table, keep_days),
            )


def require_current(version: int) -> None:
    """Raise `StoreError` unless the schema is at the version this receiver was built for."""
    latest = latest_version()
    if version < latest:
        raise StoreError(
            f"the database schema is at version {version} but this receiver needs {latest}: "
            "run `voltgate-cloud migrate` first"
        )
    if version > latest:
        raise StoreError(f"the database schema is at version {version}, newer than this receiver ({latest})")
