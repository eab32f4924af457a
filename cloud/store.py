"""The store: one transaction per group of ingested messages, exactly once per (vehicle, seq, ts).

Write path, per group: lock the group's vehicle rows (upserting them; every replica in the same
order), COPY the group's samples, predictions and alerts into temporary staging tables (binary COPY,
created once per connection, emptied at commit), then `INSERT … SELECT … ON CONFLICT DO NOTHING` into
the real tables. Samples are stored as blocks of one vehicle, UTC minute and message
(cloud/sample_store.py: the layout, its de-duplication and its rollup log). `seq` makes a record
unique per vehicle; `ts` is in the key because an agent that lost its buffer numbers again from 0,
and a record never changes its ts. The vehicle locks make the check and the insert one step for every
replica. Predictions and alerts are rows keyed on (vehicle_id, seq, ts). The ingest ledger, dead
letters (whole messages, and one row per message for its records refused one by one:
cloud/dead_letters.py), vehicles and status are written in the same transaction. Only after COMMIT
returns may the caller acknowledge the messages. The minute aggregates of the samples actually
inserted are logged in the same statement (both flavours; one rollup_block_log row per block inserted
whole, rollup_log rows for merged ones: cloud/sql/0014_block_rollup_log.sql), for `refresh_rollups` to
add into the hour and day tables (cloud/rollups.py); until then the views `samples_1h` and
`samples_1d` add the logs to them (cloud/sql/0007_current_rollups.native.sql). This module keeps the
connection, the transaction and the maintenance (partitions, retention, rollup refresh, kept KPIs,
dead-letter pruning).

Data of any age the receiver accepts lands (a bus back after weeks offline): on the native flavour
each write first creates the daily partitions its samples need (`_partitions_needed`), past days
included; `maintain` keeps those ahead of today and drops the expired ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final, Self

import numpy as np
import psycopg

from cloud import dead_letters, group_rows, kept_kpis, metrics, rollups, sample_store, schema
from cloud.errors import RejectedDataError, StoreError
from cloud.ingest import BatchMessage, DeadLetter, Ingested, StatusMessage
from cloud.schema import Flavour
from cloud.settings import DatabaseSettings

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[tuple[object, ...]]

_STAGING_DDL: Final = (*sample_store.STAGING_DDL, *group_rows.STAGING_DDL)


_ROLLUP_LOCK: Final = "SELECT pg_try_advisory_xact_lock(hashtextextended('voltgate-cloud:rollups:' || %s, 0))"

# Every write marks the bus-days (in the kept time zone) of its samples and alerts as pending; one for
# a day already ended bumps `marks`, so a recomputation running meanwhile leaves the day pending.
_MARK_KPI_DAYS: Final = (
    "INSERT INTO kpi_days_pending AS p (vehicle_id, day)"
    " SELECT vehicle_id, (minute AT TIME ZONE %(tz)s)::date FROM stage_blocks"
    " UNION SELECT vehicle_id, ((" + group_rows.TS + ") AT TIME ZONE %(tz)s)::date FROM stage_alerts"
    " ORDER BY 1, 2 ON CONFLICT (vehicle_id, day) DO UPDATE SET marks = p.marks + 1"
    " WHERE (p.day + 1)::timestamp AT TIME ZONE %(tz)s <= now()"
)
# Pending bus-days whose day ended at least KPI_GRACE ago (late data of the last minutes is in by then).
_ENDED_PENDING: Final = (
    "SELECT vehicle_id, day, marks FROM kpi_days_pending"
    " WHERE (day + 1)::timestamp AT TIME ZONE %(tz)s <= now() - %(grace)s ORDER BY day, vehicle_id LIMIT 1"
)
_DONE_PENDING: Final = "DELETE FROM kpi_days_pending WHERE vehicle_id = %s AND day = %s AND marks = %s"
KPI_GRACE: Final = timedelta(minutes=5)


@dataclass(slots=True)
class WriteStats:
    """What one committed group did."""

    messages: int = 0
    samples_staged: int = 0
    samples_inserted: int = 0
    predictions_staged: int = 0
    predictions_inserted: int = 0
    alerts_staged: int = 0
    alerts_inserted: int = 0
    dead_letters: list[str] = field(default_factory=list)  # their reasons
    dead_letter_bytes: int = 0  # of all dead-letter rows written (refused records' too), as pruning counts
    statuses: int = 0
    commit_seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return (
            self.samples_staged
            - self.samples_inserted
            + self.predictions_staged
            - self.predictions_inserted
            + self.alerts_staged
            - self.alerts_inserted
        )


class Store:
    """One database connection of the receiver. Not shared between tasks."""

    def __init__(
        self,
        conn: Connection,
        settings: DatabaseSettings,
        flavour: Flavour,
        kept: kept_kpis.KeptDays | None = None,
        quanta: Mapping[str, float] | None = None,
    ) -> None:
        self._conn = conn
        self._signals = sample_store.SignalDictionary(
            quanta if quanta is not None else sample_store.default_quanta()
        )
        self._settings = settings
        self.flavour = flavour
        self.kept = kept or kept_kpis.KeptDays()
        self._partitions: set[tuple[str, date]] = set()
        self._dead_letter_bytes_written = 0  # since the last prune this store triggered
        self._cap_reached_logged = False

    @classmethod
    async def open(
        cls,
        settings: DatabaseSettings,
        *,
        require_schema: bool = True,
        kept: kept_kpis.KeptDays | None = None,
    ) -> Self:
        """Connect; check the schema is migrated (unless `require_schema` is False). `kept`: the time
        zone and trip gap of the kept daily tables (`web.time_zone`, `web.trip_gap_s`)."""
        conn = await connect(settings)
        try:
            version, flavour = await schema.schema_state(conn, settings.schema_name)
            if require_schema:
                schema.require_current(version)
                for ddl in _STAGING_DDL:
                    await conn.execute(ddl.encode())
            store = cls(conn, settings, flavour, kept)
            if require_schema:
                await store._signals.load(conn)
            if flavour is Flavour.NATIVE and version > 0:
                store._partitions = await schema.existing_partitions(conn, settings.schema_name)
            return store
        except BaseException:
            await conn.close()
            raise

    @property
    def connection(self) -> Connection:
        return self._conn

    async def learn_catalog_signals(self) -> None:
        """Give every catalog signal its ids in `sample_signals` now (one short transaction), so the
        first groups' samples are laid out beside the write of another group like all later ones,
        not inside their own write."""
        try:
            await self._signals.learn(self._conn, self._signals.catalog_names())
        except psycopg.Error as err:
            raise StoreError(f"cannot register the catalog's signals: {_first_line(err)}") from err

    async def close(self) -> None:
        await self._conn.close()

    async def reconnect(self) -> None:
        """Replace a broken connection (after a database outage); `StoreError` while still down."""
        await self._conn.close()
        conn = await connect(self._settings)
        try:
            for ddl in _STAGING_DDL:
                await conn.execute(ddl.encode())
        except psycopg.Error as err:
            await conn.close()
            raise StoreError(f"database connection lost again: {_first_line(err)}") from err
        self._conn = conn

    async def migrate(self, up_to: int | None = None) -> list[int]:
        applied = await schema.migrate(self._conn, self._settings.schema_name, up_to=up_to)
        _, self.flavour = await schema.schema_state(self._conn, self._settings.schema_name)
        return applied

    async def maintain(self, today: date | None = None) -> None:
        """Partitions ahead and retention (native), or retention policies (TimescaleDB); then the dead
        letters pruned (`prune_dead_letters`)."""
        keep = self._settings.raw_retention_days
        if self.flavour is Flavour.TIMESCALE:
            await schema.apply_timescale_retention(self._conn, keep)
        else:
            today = today or datetime.now(UTC).date()
            days = [today + timedelta(days=n) for n in range(-1, self._settings.partitions_ahead_days + 1)]
            await self._ensure_partitions({(t, d) for t in schema.PARTITIONED_TABLES for d in days})
            dropped = await schema.drop_expired_partitions(
                self._conn, self._settings.schema_name, keep, today
            )
            if dropped:
                log.info("dropped %d partitions past the %d-day retention", len(dropped), keep)
                self._partitions = await schema.existing_partitions(self._conn, self._settings.schema_name)
        await self.prune_dead_letters()

    async def prune_dead_letters(self, now: datetime | None = None) -> dead_letters.Pruned:
        """Dead letters past their retention, and the oldest beyond the total size cap, deleted;
        payloads stored longer than the limit cut (`cloud.dead_letters.prune`). Counted, logged."""
        try:
            pruned = await dead_letters.prune(self._conn, self._settings, now)
        except psycopg.Error as err:
            raise StoreError(f"pruning dead letters failed: {_first_line(err)}") from err
        metrics.DEAD_LETTERS_PRUNED.labels("retention").inc(pruned.expired)
        metrics.DEAD_LETTERS_PRUNED.labels("size_cap").inc(pruned.over_cap)
        if pruned.over_cap and not self._cap_reached_logged:
            self._cap_reached_logged = True  # then only counted
            log.warning(
                "deleted the %d oldest dead letters beyond database.dead_letter_max_total_bytes (%d);"
                " from now on counted in voltgate_cloud_dead_letters_pruned_total",
                pruned.over_cap,
                self._settings.dead_letter_max_total_bytes,
            )
        if pruned.expired or pruned.truncated:
            log.info(
                "deleted %d dead letters past the %d-day retention; cut %d stored payloads",
                pruned.expired,
                self._settings.dead_letter_retention_days,
                pruned.truncated,
            )
        return pruned

    async def refresh_rollups(self, *, keep_days: bool = True) -> int | None:
        """Add the minute aggregates logged since the last refresh into the tables under `samples_1h`
        and `samples_1d` (`rollup_1h`, `rollup_1d`; both flavours), then keep the ended pending
        bus-days (`materialize_kpis`, both flavours; not with `keep_days` False: at shutdown). Returns
        the minute rows taken, or None when another replica is refreshing right now."""
        taken = await self._refresh_hours_and_days()
        if taken is not None and keep_days:
            await self.materialize_kpis()
        return taken

    async def materialize_kpis(self, budget_s: float | None = None) -> int | None:
        """Recompute pending bus-days whose day has ended into `daily_kpis`, `trips` and
        `charging_sessions`, one per transaction (under the rollup lock), oldest first, until none is
        left or `budget_s` (`database.kpi_keep_budget_s`) has passed. Returns how many, or None when
        another replica holds the lock."""
        done = 0
        deadline = time.monotonic() + (budget_s or self._settings.kpi_keep_budget_s)
        params = {"tz": self.kept.time_zone, "grace": KPI_GRACE}
        try:
            while time.monotonic() < deadline:
                async with self._conn.transaction(), self._conn.cursor() as cur:
                    await cur.execute(_ROLLUP_LOCK, (self._settings.schema_name,))
                    row = await cur.fetchone()
                    if not row or not row[0]:
                        return None if done == 0 else done
                    await cur.execute(_ENDED_PENDING, params)
                    row = await cur.fetchone()
                    if row is None:
                        break
                    vehicle_id, day, marks = row
                    assert isinstance(vehicle_id, str) and isinstance(day, date)
                    await kept_kpis.keep_day(self._conn, vehicle_id, day, self.kept)
                    await cur.execute(_DONE_PENDING, (vehicle_id, day, marks))
                    done += 1
        except psycopg.Error as err:
            raise StoreError(f"keeping daily KPIs failed: {_first_line(err)}") from err
        if done:
            log.debug("kept the daily KPIs of %d bus-days", done)
        return done

    async def _refresh_hours_and_days(self) -> int | None:
        try:
            async with self._conn.transaction(), self._conn.cursor() as cur:
                await cur.execute(_ROLLUP_LOCK, (self._settings.schema_name,))
                row = await cur.fetchone()
                if not row or not row[0]:
                    return None
                return await rollups.refresh(cur)
        except psycopg.Error as err:
            raise StoreError(f"rollup refresh failed: {_first_line(err)}") from err

    async def _ensure_partitions(self, wanted: set[tuple[str, date]]) -> None:
        if self.flavour is Flavour.NATIVE and not wanted <= self._partitions:
            self._partitions = await schema.create_partitions(self._conn, self._settings.schema_name, wanted)

    def lay_out(self, items: Sequence[Ingested]) -> sample_store.LaidOut | None:
        """The group's samples laid out for `write` (pure CPU, no database: callable from a worker
        thread while this store writes another group); None when a signal they use is new to this
        store (then `write` learns it and lays them out itself)."""
        return sample_store.lay_out([i for i in items if isinstance(i, BatchMessage)], self._signals)

    async def write(
        self, items: Sequence[Ingested], laid_out: sample_store.LaidOut | None = None
    ) -> WriteStats:
        """Write one group of ingested messages in one transaction; return once it is committed.
        `laid_out`: `lay_out(items)` when the caller made it beforehand.

        Raises `RejectedDataError` when the database refuses the data (write the messages one by one
        to find the poison), `StoreError` when it is unreachable; nothing is committed then.
        """
        try:
            stats = await self._write_retrying(items, laid_out)
        except (
            psycopg.errors.DataError,
            psycopg.errors.IntegrityError,
            psycopg.errors.ProgramLimitExceeded,
        ) as err:
            raise RejectedDataError(f"database rejected the group: {_first_line(err)}") from err
        except psycopg.Error as err:
            raise StoreError(f"database write failed: {err}") from err
        await self._prune_if_flooded(stats.dead_letter_bytes)
        return stats

    async def _prune_if_flooded(self, written: int) -> None:
        """Prune the dead letters after each tenth of their size cap this store wrote, so a flood of
        bad messages cannot outgrow the cap between two hourly maintenances. Never raises: the group
        is committed already (a failed prune waits for the next tenth or the maintenance)."""
        self._dead_letter_bytes_written += written
        if self._dead_letter_bytes_written <= self._settings.dead_letter_max_total_bytes // 10:
            return
        self._dead_letter_bytes_written = 0
        try:
            await self.prune_dead_letters()
        except StoreError as err:
            log.warning("pruning dead letters between maintenances failed: %s", err)

    async def _write_retrying(
        self, items: Sequence[Ingested], laid_out: sample_store.LaidOut | None
    ) -> WriteStats:
        for attempt in range(1, 6):
            try:
                await self._ensure_partitions(_partitions_needed(items))
                return await self._write_once(items, laid_out)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == 5:
                    raise
                log.warning("write group conflicted with another replica, retrying (attempt %d)", attempt)
            except psycopg.errors.CheckViolation:
                # "no partition of relation … found for row": another replica dropped a partition we
                # still believed in (retention) — reload and retry once.
                if attempt > 1 or self.flavour is not Flavour.NATIVE:
                    raise
                self._partitions = await schema.existing_partitions(self._conn, self._settings.schema_name)
        raise AssertionError("unreachable")

    async def _write_once(
        self, items: Sequence[Ingested], laid_out: sample_store.LaidOut | None
    ) -> WriteStats:
        batches = [i for i in items if isinstance(i, BatchMessage)]
        statuses = [i for i in items if isinstance(i, StatusMessage)]
        dead = [i for i in items if isinstance(i, DeadLetter)]
        stats = WriteStats(messages=len(items), statuses=len(statuses), dead_letters=[d.reason for d in dead])
        started = time.perf_counter()
        conn = self._conn
        if laid_out is None:
            await self._signals.learn(conn, sample_store.used_signals(batches))
            laid_out = sample_store.lay_out(batches, self._signals)
            assert laid_out is not None  # every signal learnt just now
        async with conn.transaction(), conn.cursor() as cur:
            # First: the vehicles' rows, locked until COMMIT, so no other replica stores samples of
            # these vehicles meanwhile and the de-duplication below sees everything committed.
            await group_rows.upsert_vehicles(cur, batches, statuses)
            stats.samples_staged = await sample_store.stage_samples(cur, laid_out)
            stats.predictions_staged = await group_rows.stage_predictions(cur, batches)
            stats.alerts_staged = await group_rows.stage_alerts(cur, batches)
            if stats.samples_staged:
                stats.samples_inserted = await sample_store.store_samples(cur)
            if stats.predictions_staged:
                await cur.execute(group_rows.INSERT_PREDICTIONS)
                stats.predictions_inserted = max(cur.rowcount, 0)
            if stats.alerts_staged:
                await cur.execute(group_rows.INSERT_ALERTS)
                stats.alerts_inserted = max(cur.rowcount, 0)
            if stats.samples_staged or stats.alerts_staged:
                await cur.execute(_MARK_KPI_DAYS.encode(), {"tz": self.kept.time_zone})
            await group_rows.write_ledger(cur, batches)
            dead_rows = dead_letters.dead_letter_rows(items, self._settings)
            await dead_letters.write(cur, dead_rows)
            stats.dead_letter_bytes = sum(map(dead_letters.row_bytes, dead_rows))
            await group_rows.upsert_statuses(cur, statuses)
        stats.commit_seconds = time.perf_counter() - started
        return stats


async def connect(settings: DatabaseSettings) -> Connection:
    """An autocommit connection whose search_path starts at the receiver's schema, in UTC."""
    try:
        return await psycopg.AsyncConnection.connect(
            settings.dsn.get_secret_value(),
            autocommit=True,
            connect_timeout=settings.connect_timeout_s,
            # jit off: the write statements are simple, and on large groups JIT compiling them cost
            # more than it saved (about 15 % of the INSERT's time in bench/cloud_ingest.py).
            options=f"-c search_path={settings.schema_name},public -c timezone=UTC -c jit=off",
            application_name="voltgate-cloud",
        )
    except psycopg.Error as err:
        raise StoreError(f"cannot connect to the database: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_UNIX_EPOCH_DAY: Final = date(1970, 1, 1)
_MS_PER_DAY: Final = 86_400_000


def _partitions_needed(items: Sequence[Ingested]) -> set[tuple[str, date]]:
    batches = [item for item in items if isinstance(item, BatchMessage)]
    wanted = {("ingest_ledger", b.received_at.astimezone(UTC).date()) for b in batches}
    stamps = [b.samples.ts_ms for b in batches if len(b.samples)]
    if stamps:  # one unique over the group's samples
        for day in np.unique(np.concatenate(stamps) // _MS_PER_DAY).tolist():
            wanted.add(("sample_blocks", _UNIX_EPOCH_DAY + timedelta(days=day)))
    return wanted
