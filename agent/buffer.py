"""The durable buffer: every accepted sample, prediction and alert gets a per-vehicle sequence number and
stays in one SQLite file until it is acknowledged.

Storage
-------
One table, `records`, one row per record, a WITHOUT ROWID table keyed by `(evict, seq)`: `seq` is the
per-vehicle sequence number, `evict` the eviction class. Keyed that way, the rows of one class sit together
in their own pages, oldest first, so evicting the oldest rows of a class frees whole pages (see
`agent.buffer_space`). Readers ask per class (`evict = ? AND seq >= ?`) and merge by `seq`.
`meta.next_seq` is a high-water mark written in the same transaction as the rows it numbers, so a
sequence number is never reused, even after its row was acknowledged and deleted, and a restart continues
exactly where the last committed transaction stopped. Staged (uncommitted) rows own no number that
anyone outside the process has seen: a crash before their commit loses them, and their numbers are
handed out again — nothing committed is ever renumbered. `mark(key, value)` stages other integers (a
source's resume position) into `meta` with the same transaction. A file of the old rowid layout is
converted on open.

Durability
----------
WAL mode with `synchronous=FULL`. WAL never corrupts the file on a crash or power cut, whatever the
synchronous level; the level decides *durability*. With `NORMAL` the WAL is only fsynced at checkpoints, so
a power cut can roll back transactions that already returned from `commit()` — including acknowledgement
deletes *and the `next_seq` high-water mark*. After such a rollback the buffer would hand out again
sequence numbers the cloud has already stored, and the receiver's `ON CONFLICT (vehicle, seq) DO NOTHING`
would silently drop the new samples. `FULL` fsyncs the WAL on every commit; the agent commits at most
about twice a second, so that costs a few fsyncs per second and buys "committed means durable".

Byte cap and eviction order
---------------------------
`max_bytes` covers the database file, its WAL and a small disk reserve (`ByteBudget` in `agent.buffer_space`),
or, on a disk smaller than that, 90 % of what the disk can give (checked at every commit, never below what the
files hold: `DiskSpace.fit_to_disk`; a WAL sized for a cap the disk cannot hold would fill the disk before its
first checkpoint and wedge it). The WAL is checkpointed at half its budget and every transaction is sized to a
quarter of it (a large commit is split; the marks go with its last part), the database file can never grow
past its share (`max_page_count`), and each commit first evicts, in its own transaction, what its staged rows
will need by a measured bytes-per-row estimate (+25 %; the page limit is the backstop). The rows a commit
writes are never evicted by that commit. Eviction frees what is needed and no more (measured: to free 19 % of
the bytes it deletes 19.5 % of the rows), in this order:

1. oldest ROUTINE samples, 2. oldest NORMAL samples, 3. oldest CRITICAL samples,
4. oldest predictions and alerts (together, oldest first).

Every evicted row is counted per class (`BufferStats.evicted`), and its bytes (`evicted_bytes`); eviction
is by design, counted and not logged.

Full disk
---------
`SQLITE_FULL` ("database or disk is full") rolls the transaction back and never raises. When the file
system is full (or a test's `set_max_page_count` limit is met) the buffer releases its reserve file,
checkpoints and truncates the WAL with the reserve's room (pages appended since the last checkpoint need
the database file to grow), stops the database file from growing (its size becomes the limit until the
file system has room for the reserve twice over) and retries with more eviction. From then on neither file
needs new blocks: commits evict the oldest rows inside the file, deletes write into the WAL's own blocks.
Only when nothing is left to evict are staged rows dropped (counted in `dropped`). Opening on a full disk
releases the reserve too (the WAL and its index need a little room). An acknowledgement whose delete fails
is never lost: its seqs are kept in memory, left out of `pending()` and `count_pending()` (never re-sent)
and deleted on a later call. Logged once per kind, counted always (`disk_full`, `page_limit_full`,
`reserve_releases`, `ack_deferred`, `ack_delete_failures`).

Threads
-------
`SampleBuffer` is synchronous and confined to the thread that created it (sqlite3 connections are
thread-bound; `check_same_thread` stays on to catch mistakes). `BufferWorker` owns one worker thread,
creates the `SampleBuffer` on it and runs every call there, so the event loop never blocks on SQLite.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

from agent.buffer_records import (
    INSERT_SQL,
    Kind,
    Row,
    WireRecord,
    count_rows,
    create_schema,
    delete_seqs,
    find_seqs,
    is_disk_full,
    oldest_rows,
    to_record,
)
from agent.buffer_space import (
    EVICTION_ORDER,
    ByteBudget,
    DiskSpace,
    Evicted,
    EvictionClass,
    Reserve,
    RowBytes,
    evict_bytes,
    file_bytes,
    used_bytes,
)
from agent.records import Alert, Prediction, Sample

__all__ = [
    "EVICTION_ORDER",
    "BufferStats",
    "BufferWorker",
    "EvictionClass",
    "Kind",
    "SampleBuffer",
    "WireRecord",
]

log = logging.getLogger(__name__)


MAX_STAGED: Final = 200_000
"""Staged rows kept across failed commits (disk trouble); beyond it the oldest staged rows are dropped."""
_FULL_RETRIES: Final = 6
_INSERT_SAFETY: Final = 1.25  # evict ahead for 25 % more than the estimate; the page limit is the backstop
_INITIAL_ROW_BYTES: Final = 80.0


@dataclass
class BufferStats:
    rows: int = 0  # rows not yet acknowledged
    used_bytes: int = 0  # the database's used pages
    next_seq: int = 0
    oldest_ts_ms: int | None = None  # source time of the oldest unsent row
    evicted: dict[EvictionClass, int] = field(default_factory=lambda: dict.fromkeys(EvictionClass, 0))
    evicted_bytes: int = 0  # bytes freed by eviction, as measured
    dropped: int = 0  # staged rows dropped because nothing more could be evicted (disk full)
    commit_failures: int = 0
    committed_rows: int = 0
    disk_full: int = 0  # transactions that met SQLITE_FULL with the file system full
    page_limit_full: int = 0  # ... with room on the file system: the database's page limit (the cap)
    db_file_bytes: int = 0
    wal_bytes: int = 0
    reserve_bytes: int = 0  # the reserve file as it is now (0 while released)
    reserve_releases: int = 0
    ack_deferred: int = 0  # acknowledged rows whose delete failed, waiting for a retry (never re-sent)
    ack_delete_failures: int = 0

    @property
    def disk_bytes(self) -> int:
        """What the buffer's database and WAL take on disk (the reserve not included)."""
        return self.db_file_bytes + self.wal_bytes


def _ms(ts: float) -> int:
    return round(ts * 1000)


def _sqlite_value(value: float) -> float | None:
    return None if math.isnan(value) else value


class SampleBuffer:
    """The SQLite buffer; see the module docstring. Use from one thread only."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        reserve = Reserve(path.with_name(path.name + ".reserve"), ByteBudget.for_cap(max_bytes).reserve_bytes)
        try:
            self._conn = _connect(path)
        except sqlite3.Error:
            # Opening needs a little disk (the WAL and its index): on a full disk, the reserve gives it.
            if not reserve.release():
                raise
            log.warning("buffer disk full at %s on open: reserve released", path)
            self._conn = _connect(path)
        self.space = DiskSpace(self._conn, path, max_bytes, reserve)
        row = self._conn.execute(
            "SELECT max((SELECT value FROM meta WHERE key = 'next_seq'), "
            "coalesce((SELECT max(seq) + 1 FROM records), 0)), (SELECT count(*) FROM records)"
        ).fetchone()
        self._next_seq: int = int(row[0] or 0)
        self._rows = int(row[1])
        self._committed_seq = self._next_seq
        self._staged: list[Row] = []
        self._staged_marks: dict[str, int] = {}
        self._deferred: dict[int, tuple[int, int]] = {}  # acknowledged, delete failed: seq -> (evict, kind)
        self._logged: set[str] = set()
        self._insert_bytes = RowBytes(_INITIAL_ROW_BYTES)
        self._evict_bytes = {cls: RowBytes(_INITIAL_ROW_BYTES) for cls in EvictionClass}
        self.stats = BufferStats(next_seq=self._next_seq)
        self.space.restore_reserve()
        self._refresh_stats()

    # --- the byte budget (see DiskSpace) -------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self.space.budget.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.space.set_cap(value)

    @property
    def budget(self) -> ByteBudget:
        return self.space.budget

    @property
    def reserve(self) -> Reserve:
        return self.space.reserve

    def pragmas(self) -> dict[str, int | str]:
        return self.space.pragmas()

    def set_max_page_count(self, pages: int) -> None:
        """Limit the file to `pages` pages behind the buffer's back: SQLite then reports SQLITE_FULL as on a
        full disk (tests)."""
        self.space.set_test_pages(pages)

    # --- staging and committing ----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next staged record gets."""
        return self._next_seq

    @property
    def committed_seq(self) -> int:
        """One past the highest committed sequence number (the durable high-water mark)."""
        return self._committed_seq

    def _stage(self, kind: Kind, ts_ms: int, name: str, value: float, evict: int, extra: str | None) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._staged.append((seq, int(kind), ts_ms, name, _sqlite_value(value), evict, extra))
        return seq

    def append(self, sample: Sample) -> int:
        """Stage one sample; returns its sequence number (durable only after `commit()`)."""
        return self._stage(
            Kind.SAMPLE, _ms(sample.ts), sample.signal, sample.value, int(sample.priority), None
        )

    def append_samples(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.append(sample)

    def append_prediction(self, prediction: Prediction) -> int:
        extra = json.dumps([prediction.model_version, prediction.output])
        return self._stage(
            Kind.PREDICTION,
            _ms(prediction.ts),
            prediction.model,
            prediction.value,
            EvictionClass.DERIVED,
            extra,
        )

    def append_alert(self, alert: Alert) -> int:
        extra = json.dumps([alert.severity, alert.active, alert.message])
        return self._stage(Kind.ALERT, _ms(alert.ts), alert.rule, alert.value, EvictionClass.DERIVED, extra)

    def mark(self, key: str, value: int) -> None:
        """Stage a named integer (e.g. a source's resume position); it is written with the next commit, in
        the same transaction as the rows staged with it, so a restart sees the mark exactly when it sees
        those rows. The last value staged for a key wins."""
        if key == "next_seq":
            raise ValueError("'next_seq' is the buffer's own mark")
        self._staged_marks[key] = int(value)

    def get_mark(self, key: str) -> int | None:
        """The last committed value of `mark(key, ...)`, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def commit(self) -> int:
        """Write the staged rows (and marks); returns how many rows became durable. Never raises for a full
        disk (see the module docstring); other SQLite errors keep the rows staged for the next try."""
        self._retry_deferred()
        self.space.restore_reserve()
        self.space.fit_to_disk()
        if not self._staged:
            if self._staged_marks:
                self._transaction(lambda: self._write_marks(), "marks")
            return 0
        written = dropped = 0
        while self._staged:
            rows = max(1, int(self.space.budget.txn_bytes / self._insert_bytes.per_row))
            chunk = self._staged[:rows]
            last = len(chunk) == len(self._staged)
            outcome = self._commit_chunk(chunk, last)
            if outcome == "error":
                self.stats.commit_failures += 1
                self._bound_staged()
                break
            del self._staged[: len(chunk)]
            if outcome == "full":  # nothing left to evict: drop this part, keep running
                self.stats.commit_failures += 1
                dropped += len(chunk)
                continue
            written += len(chunk)
            self._committed_seq = chunk[-1][0] + 1
            self._rows += len(chunk)
            if last:
                self._staged_marks.clear()
        self.stats.dropped += dropped
        self.stats.committed_rows += written
        self.stats.disk_full, self.stats.page_limit_full = self.space.disk_full, self.space.page_limit_full
        if dropped and not self._staged:
            self._next_seq = self._committed_seq  # the dropped numbers were never durable: reuse them
        return written

    def _commit_chunk(self, chunk: list[Row], last: bool) -> Literal["ok", "full", "error"]:
        margin = 0
        for _ in range(_FULL_RETRIES):
            freed, evicted = 0, list[Evicted]()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                estimate = int(len(chunk) * self._insert_bytes.per_row * _INSERT_SAFETY) + margin
                before = used_bytes(self._conn)
                need = before + estimate - self.space.limit_bytes()
                if need > 0:
                    freed, evicted = evict_bytes(self._conn, need, self._evict_bytes)
                self._conn.executemany(INSERT_SQL, chunk)
                grown = used_bytes(self._conn) - (before - freed)
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                    (chunk[-1][0] + 1,),
                )
                if last:
                    self._write_marks()
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                if not is_disk_full(err):
                    self._log_once("commit", "buffer commit failed, rows stay staged: %s", err)
                    return "error"
                self.space.on_full()
                if self._rows <= 0:
                    return "full"
                margin = 2 * max(margin, len(chunk) * int(self._insert_bytes.per_row), self.space.page_size)
                continue
            self._insert_bytes.observe(max(0, grown), len(chunk))
            self._count_evictions(evicted, freed)
            return "ok"
        return "full"

    def _write_marks(self) -> None:
        self._conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(self._staged_marks.items()),
        )

    def _transaction(self, work: Callable[[], object], what: str) -> bool:
        """Run `work` in one write transaction; a full disk releases the reserve and tries once more."""
        for _ in range(2):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                work()
                self._conn.execute("COMMIT")
                if what == "marks":
                    self._staged_marks.clear()
                return True
            except sqlite3.Error as err:
                self._rollback()
                if not is_disk_full(err):
                    self._log_once(what, "buffer %s not written: %s", what, err)
                    return False
                self.space.on_full()
        return False

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _bound_staged(self) -> None:
        excess = len(self._staged) - MAX_STAGED
        if excess > 0:
            # Dropping the oldest staged rows leaves a gap in their numbers; gaps are harmless, reuse is not.
            del self._staged[:excess]
            self.stats.dropped += excess

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(message, *args)

    # --- eviction ------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        return used_bytes(self._conn)

    def enforce_cap(self) -> int:
        """Evict until the used pages fit the database's share of the cap; returns the bytes freed."""
        evicted: list[Evicted] = []
        freed = 0

        def work() -> None:
            nonlocal freed, evicted
            need = used_bytes(self._conn) - self.space.limit_bytes()
            if need > 0:
                freed, evicted = evict_bytes(self._conn, need, self._evict_bytes)

        if self._transaction(work, "eviction"):
            self._count_evictions(evicted, freed)
            return freed
        return 0

    def _count_evictions(self, evicted: list[Evicted], freed: int) -> None:
        """Count committed evictions per class; acknowledged rows waiting for their delete are not evicted."""
        for cls, first, last, rows in evicted:
            gone = [s for s, (c, _) in self._deferred.items() if c == cls and first <= s <= last]
            for seq in gone:
                del self._deferred[seq]
            self.stats.evicted[cls] += rows - len(gone)
            self._rows -= rows
        self.stats.evicted_bytes += freed

    # --- reading and acknowledging -------------------------------------------------------------------

    def pending(
        self,
        limit: int,
        kinds: Collection[Kind] = tuple(Kind),
        *,
        from_seq: int = 0,
        before_seq: int | None = None,
    ) -> list[WireRecord]:
        """The oldest committed rows of `kinds` with `from_seq <= seq < before_seq`, as wire records
        (acknowledged rows still waiting for their delete left out)."""
        upper = self._committed_seq if before_seq is None else min(before_seq, self._committed_seq)
        rows = oldest_rows(self._conn, kinds, from_seq, upper, limit + len(self._deferred))
        kept = (row for row in rows if row[0] not in self._deferred)
        return [to_record(*row) for _, row in zip(range(limit), kept, strict=False)]

    def count_pending(self, kinds: Collection[Kind] = tuple(Kind), *, from_seq: int = 0) -> int:
        kind_list = {int(k) for k in kinds}
        total = count_rows(self._conn, kinds, from_seq)
        waiting = sum(1 for s, (_, k) in self._deferred.items() if s >= from_seq and k in kind_list)
        return total - waiting

    def acknowledge(self, seqs: Sequence[int]) -> int:
        """Delete acknowledged rows; returns how many were still there. An acknowledgement is never lost:
        if the delete fails, the rows are remembered, never returned by `pending()` again, and deleted by a
        later call."""
        self._retry_deferred()
        fresh = [s for s in seqs if s not in self._deferred]
        if not fresh:
            return 0
        deleted = 0

        def work() -> None:
            nonlocal deleted
            deleted = delete_seqs(self._conn, fresh)

        if self._transaction(work, "acknowledge"):
            self._rows -= deleted
            return deleted
        self.stats.ack_delete_failures += 1
        return self._defer(fresh)

    def discard(self, seqs: Sequence[int]) -> int:
        """Delete rows that can never be sent (refused by the wire encoder)."""
        return self.acknowledge(seqs)

    def _defer(self, seqs: Sequence[int]) -> int:
        """Remember acknowledged rows whose delete failed; returns how many of them are in the buffer."""
        found = 0
        for seq, evict, kind in find_seqs(self._conn, seqs):
            self._deferred[seq] = (evict, kind)
            found += 1
        self._log_once(
            "ack_deferred",
            "buffer could not delete acknowledged rows (disk full?); they are kept out of sending and "
            "deleted later (further times only counted)",
        )
        return found

    def _retry_deferred(self) -> None:
        if not self._deferred:
            return
        seqs = sorted(self._deferred)
        deleted = 0

        def work() -> None:
            nonlocal deleted
            deleted = delete_seqs(self._conn, seqs)

        if self._transaction(work, "acknowledge"):
            self._rows -= deleted
            self._deferred.clear()
        else:
            self.stats.ack_delete_failures += 1

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _refresh_stats(self) -> None:
        oldest = self.pending(1)
        self.stats.rows = self._rows - len(self._deferred)
        self.stats.oldest_ts_ms = oldest[0].ts_ms if oldest else None
        self.stats.used_bytes = self.used_bytes()
        self.stats.next_seq = self._next_seq
        self.stats.db_file_bytes = file_bytes(self.path)
        self.stats.wal_bytes = file_bytes(self.path.with_name(self.path.name + "-wal"))
        self.stats.reserve_bytes = file_bytes(self.reserve.path)
        self.stats.reserve_releases = self.reserve.releases
        self.stats.disk_full = self.space.disk_full
        self.stats.page_limit_full = self.space.page_limit_full
        self.stats.ack_deferred = len(self._deferred)

    def snapshot(self) -> BufferStats:
        """Fresh statistics (a copy)."""
        self._refresh_stats()
        return replace(self.stats, evicted=dict(self.stats.evicted))

    def integrity_ok(self) -> bool:
        return bool(self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        self._rollback()
        self._conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # why: see "Durability" above
        create_schema(conn)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


# The thread shell lives in its own module; it is part of this module's API.
from agent.buffer_worker import BufferWorker  # noqa: E402
