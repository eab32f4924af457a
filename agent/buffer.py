"""The durable buffer: every accepted sample, prediction and alert gets a per-vehicle sequence number and
stays in one SQLite file until the broker has acknowledged it.

Storage
-------
One table, `records`, one row per record; `seq INTEGER PRIMARY KEY` is the per-vehicle sequence number.
`meta.next_seq` is a high-water mark written in the same transaction as the rows it numbers, so a
sequence number is never reused, even after its row was acknowledged and deleted, and a restart continues
exactly where the last committed transaction stopped. Staged (uncommitted) rows own no number that
anyone outside the process has seen: a crash before their commit loses them, and their numbers are
handed out again — nothing committed is ever renumbered.

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
`max_bytes` caps the database's used pages (`(page_count - freelist_count) * page_size`; freed pages are
reused, so the file plateaus near the cap; the WAL adds at most `journal_size_limit` on top). Above the cap,
rows are deleted in this order until the database is back under 90 % of the cap:

1. oldest ROUTINE samples, 2. oldest NORMAL samples, 3. oldest CRITICAL samples,
4. oldest predictions and alerts (together, oldest first).

Every evicted row is counted per class (`BufferStats.evicted`). A full disk (`SQLITE_FULL`: "database or
disk is full") is handled the same way: roll back, evict a slice in the order above, retry; when nothing is
left to evict the staged rows are dropped and counted. It is logged the first time and counted every time
(`BufferStats.disk_full`); it never raises.

Threads
-------
`SampleBuffer` is synchronous and confined to the thread that created it (sqlite3 connections are
thread-bound; `check_same_thread` stays on to catch mistakes). `BufferWorker` owns one worker thread,
creates the `SampleBuffer` on it and runs every call there, so the event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Final, TypeVar

import sqlite_utils

from agent.records import Alert, Prediction, Sample
from protocols.wire import AlertRecord, PredictionRecord, SampleRecord

log = logging.getLogger(__name__)

WireRecord = SampleRecord | PredictionRecord | AlertRecord
_T = TypeVar("_T")


class Kind(IntEnum):
    """What a row holds (stored as a small integer)."""

    SAMPLE = 0
    PREDICTION = 1
    ALERT = 2


class EvictionClass(IntEnum):
    """The `evict` column: lowest goes first. Samples use their catalog `Priority` (0..2)."""

    ROUTINE = 0
    NORMAL = 1
    CRITICAL = 2
    DERIVED = 3  # predictions and alerts


EVICTION_ORDER: Final = tuple(EvictionClass)
EVICTION_TARGET: Final = 0.9
"""After eviction the used bytes are at most this fraction of `max_bytes`."""
MAX_STAGED: Final = 200_000
"""Staged rows kept across failed commits (disk trouble); beyond it the oldest staged rows are dropped."""
_EVICT_SLICE: Final = 2_000
_DISK_FULL_RETRIES: Final = 8

# The `records` table (created through sqlite-utils):
#   seq    INTEGER PRIMARY KEY  per-vehicle sequence number
#   kind   INTEGER              Kind: 0 sample, 1 prediction, 2 alert
#   ts_ms  INTEGER              source timestamp, Unix epoch ms
#   name   TEXT                 signal (sample), model (prediction), rule (alert)
#   value  REAL                 NULL stands for NaN (SQLite stores NaN as NULL)
#   evict  INTEGER              EvictionClass; index (evict, seq) finds the next rows to evict
#   extra  TEXT                 JSON: prediction [model_version, output]; alert [severity, active, message]
_RECORD_COLUMNS: Final[dict[str, type]] = {
    "seq": int,
    "kind": int,
    "ts_ms": int,
    "name": str,
    "value": float,
    "evict": int,
    "extra": str,
}

_Row = tuple[int, int, int, str, float | None, int, str | None]


@dataclass
class BufferStats:
    rows: int = 0
    used_bytes: int = 0
    next_seq: int = 0
    oldest_ts_ms: int | None = None  # source time of the oldest unsent row
    evicted: dict[EvictionClass, int] = field(default_factory=lambda: dict.fromkeys(EvictionClass, 0))
    dropped: int = 0  # staged rows dropped because nothing more could be evicted (disk full)
    commit_failures: int = 0
    committed_rows: int = 0
    disk_full: int = 0  # commit attempts that met SQLITE_FULL


def _ms(ts: float) -> int:
    return round(ts * 1000)


def _sqlite_value(value: float) -> float | None:
    return None if math.isnan(value) else value


class SampleBuffer:
    """The SQLite buffer; see the module docstring. Use from one thread only."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
        self._db = sqlite_utils.Database(self._conn)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # why: see "Durability" above
        self._conn.execute("PRAGMA journal_size_limit=8388608")  # truncate the WAL to 8 MiB after checkpoints
        self._create_schema()
        row = self._conn.execute(
            "SELECT max((SELECT value FROM meta WHERE key = 'next_seq'), "
            "coalesce((SELECT max(seq) + 1 FROM records), 0))"
        ).fetchone()
        self._next_seq: int = int(row[0] or 0)
        self._committed_seq = self._next_seq
        self._staged: list[_Row] = []
        self._staged_marks: dict[str, int] = {}
        self._disk_full_logged = False
        self.stats = BufferStats(next_seq=self._next_seq)
        self._refresh_stats()

    def _create_schema(self) -> None:
        records = self._db.table("records")
        records.create(
            _RECORD_COLUMNS, pk="seq", not_null={"kind", "ts_ms", "name", "evict"}, if_not_exists=True
        )
        records.create_index(["evict", "seq"], index_name="records_by_eviction", if_not_exists=True)
        self._db.table("meta").create({"key": str, "value": int}, pk="key", if_not_exists=True)

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
        """Write the staged rows in one transaction; returns how many became durable. Never raises for a
        full disk (see the module docstring); other SQLite errors keep the rows staged for the next try."""
        if not self._staged:
            if self._staged_marks:
                self._write_marks_only()
            return 0
        for attempt in range(_DISK_FULL_RETRIES + 1):
            try:
                self._write_staged()
            except sqlite3.OperationalError as err:
                self._rollback()
                if not _is_disk_full(err):
                    self.stats.commit_failures += 1
                    log.warning("buffer commit failed, %d rows stay staged: %s", len(self._staged), err)
                    self._bound_staged()
                    return 0
                self.stats.disk_full += 1
                if not self._disk_full_logged:
                    self._disk_full_logged = True
                    log.warning(
                        "buffer disk full at %s; evicting old rows to make room (further times only counted)",
                        self.path,
                    )
                room = max(_EVICT_SLICE, 2 * len(self._staged))
                if attempt == _DISK_FULL_RETRIES or self._evict_slice(room) == 0:
                    break
                continue
            written = len(self._staged)
            self._committed_seq = self._staged[-1][0] + 1
            self._staged.clear()
            self._staged_marks.clear()
            self.stats.committed_rows += written
            self.enforce_cap()
            return written
        # Still full with nothing left to evict: drop what is staged, keep running.
        self.stats.commit_failures += 1
        self.stats.dropped += len(self._staged)
        self._staged.clear()
        self._next_seq = self._committed_seq  # the dropped numbers were never durable: reuse them
        return 0

    def _write_staged(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", self._staged)
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            (self._staged[-1][0] + 1,),
        )
        self._write_marks()
        self._conn.execute("COMMIT")

    def _write_marks(self) -> None:
        self._conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(self._staged_marks.items()),
        )

    def _write_marks_only(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._write_marks()
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            self._rollback()
            log.warning("buffer marks not written (kept staged): %s", err)
            return
        self._staged_marks.clear()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _bound_staged(self) -> None:
        excess = len(self._staged) - MAX_STAGED
        if excess > 0:
            # Dropping the oldest staged rows leaves a gap in their numbers; gaps are harmless, reuse is not.
            del self._staged[:excess]
            self.stats.dropped += excess

    # --- eviction ------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        page_size, page_count, free = (
            int(self._conn.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_size", "page_count", "freelist_count")
        )
        return (page_count - free) * page_size

    def enforce_cap(self) -> None:
        target = int(self.max_bytes * EVICTION_TARGET)
        if self.used_bytes() <= self.max_bytes:
            return
        while (used := self.used_bytes()) > target:
            rows = int(self._conn.execute("SELECT count(*) FROM records").fetchone()[0])
            if rows == 0:
                return
            per_row = max(1, used // rows)
            if self._evict_slice(max(1, min(50_000, (used - target) // per_row + 1))) == 0:
                return

    def _evict_slice(self, limit: int = _EVICT_SLICE) -> int:
        """Delete up to `limit` of the oldest rows of the lowest eviction class present; returns how many."""
        for cls in EVICTION_ORDER:
            try:
                cursor = self._conn.execute(
                    "DELETE FROM records WHERE seq IN "
                    "(SELECT seq FROM records WHERE evict = ? ORDER BY seq LIMIT ?)",
                    (int(cls), limit),
                )
            except sqlite3.OperationalError as err:
                log.warning("buffer eviction failed: %s", err)
                return 0
            if cursor.rowcount > 0:
                self.stats.evicted[cls] += cursor.rowcount
                return cursor.rowcount
        return 0

    # --- reading and acknowledging -------------------------------------------------------------------

    def pending(
        self,
        limit: int,
        kinds: Collection[Kind] = tuple(Kind),
        *,
        from_seq: int = 0,
        before_seq: int | None = None,
    ) -> list[WireRecord]:
        """The oldest committed rows of `kinds` with `from_seq <= seq < before_seq`, as wire records."""
        kind_list = sorted({int(k) for k in kinds})
        marks = ",".join("?" * len(kind_list))
        upper = self._committed_seq if before_seq is None else min(before_seq, self._committed_seq)
        cursor = self._conn.execute(
            f"SELECT seq, kind, ts_ms, name, value, extra FROM records "
            f"WHERE seq >= ? AND seq < ? AND kind IN ({marks}) ORDER BY seq LIMIT ?",
            (from_seq, upper, *kind_list, limit),
        )
        return [_to_record(*row) for row in cursor]

    def count_pending(self, kinds: Collection[Kind] = tuple(Kind), *, from_seq: int = 0) -> int:
        kind_list = sorted({int(k) for k in kinds})
        marks = ",".join("?" * len(kind_list))
        return int(
            self._conn.execute(
                f"SELECT count(*) FROM records WHERE seq >= ? AND kind IN ({marks})", (from_seq, *kind_list)
            ).fetchone()[0]
        )

    def acknowledge(self, seqs: Sequence[int]) -> int:
        """Delete rows the broker has acknowledged (PUBACK); returns how many were still there."""
        if not seqs:
            return 0
        deleted = 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for start in range(0, len(seqs), 500):
                chunk = seqs[start : start + 500]
                cursor = self._conn.execute(
                    f"DELETE FROM records WHERE seq IN ({','.join('?' * len(chunk))})", tuple(chunk)
                )
                deleted += cursor.rowcount
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            # Rows stay and are sent again later: a duplicate, never a loss.
            self._rollback()
            log.warning("buffer acknowledge failed (rows will be re-sent): %s", err)
            return 0
        return deleted

    def discard(self, seqs: Sequence[int]) -> int:
        """Delete rows that can never be sent (refused by the wire encoder)."""
        return self.acknowledge(seqs)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _refresh_stats(self) -> None:
        rows, oldest = self._conn.execute(
            "SELECT count(*), (SELECT ts_ms FROM records ORDER BY seq LIMIT 1) FROM records"
        ).fetchone()
        self.stats.rows = int(rows)
        self.stats.oldest_ts_ms = None if oldest is None else int(oldest)
        self.stats.used_bytes = self.used_bytes()
        self.stats.next_seq = self._next_seq

    def snapshot(self) -> BufferStats:
        """Fresh statistics (a copy)."""
        self._refresh_stats()
        return BufferStats(
            rows=self.stats.rows,
            used_bytes=self.stats.used_bytes,
            next_seq=self.stats.next_seq,
            oldest_ts_ms=self.stats.oldest_ts_ms,
            evicted=dict(self.stats.evicted),
            dropped=self.stats.dropped,
            commit_failures=self.stats.commit_failures,
            committed_rows=self.stats.committed_rows,
            disk_full=self.stats.disk_full,
        )

    def integrity_ok(self) -> bool:
        return bool(self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def set_max_page_count(self, pages: int) -> None:
        """Limit the file to `pages` pages: SQLite then reports SQLITE_FULL like a full disk (tests)."""
        self._conn.execute(f"PRAGMA max_page_count={int(pages)}")

    def close(self) -> None:
        self._rollback()
        self._db.close()


def _is_disk_full(err: sqlite3.OperationalError) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(err)


def _to_record(
    seq: int, kind: int, ts_ms: int, name: str, value: float | None, extra: str | None
) -> WireRecord:
    number = math.nan if value is None else float(value)
    if kind == Kind.SAMPLE:
        return SampleRecord(seq, ts_ms, name, number)
    details = json.loads(extra or "[]")
    if kind == Kind.PREDICTION:
        return PredictionRecord(seq, ts_ms, name, str(details[0]), str(details[1]), number)
    return AlertRecord(seq, ts_ms, name, str(details[0]), bool(details[1]), number, str(details[2]))


class BufferWorker:
    """Runs a `SampleBuffer` on its own thread; every method is awaited from the event loop."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voltgate-buffer")
        self._buffer: SampleBuffer | None = None

    async def open(self) -> None:
        self._buffer = await self._call_raw(lambda: SampleBuffer(self._path, self._max_bytes))

    async def _call_raw(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[SampleBuffer], _T]) -> _T:
        """Run `fn(buffer)` on the buffer's thread."""
        buffer = self._buffer
        if buffer is None:
            raise RuntimeError("BufferWorker.open() was not awaited")
        return await self._call_raw(lambda: fn(buffer))

    async def commit_samples(self, samples: Sequence[Sample], marks: Mapping[str, int] | None = None) -> int:
        """Stage and commit `samples` together with `marks` (see `SampleBuffer.mark`) in one transaction."""

        def work(buffer: SampleBuffer) -> int:
            buffer.append_samples(samples)
            for key, value in (marks or {}).items():
                buffer.mark(key, value)
            return buffer.commit()

        return await self.call(work)

    async def commit_derived(self, records: Sequence[Prediction | Alert]) -> int:
        def work(buffer: SampleBuffer) -> int:
            for record in records:
                if isinstance(record, Alert):
                    buffer.append_alert(record)
                else:
                    buffer.append_prediction(record)
            return buffer.commit()

        return await self.call(work)

    async def pending(
        self, limit: int, kinds: Collection[Kind], *, from_seq: int = 0, before_seq: int | None = None
    ) -> list[WireRecord]:
        return await self.call(lambda b: b.pending(limit, kinds, from_seq=from_seq, before_seq=before_seq))

    async def acknowledge(self, seqs: Sequence[int]) -> int:
        return await self.call(lambda b: b.acknowledge(seqs))

    async def get_mark(self, key: str) -> int | None:
        return await self.call(lambda b: b.get_mark(key))

    async def committed_seq(self) -> int:
        return await self.call(lambda b: b.committed_seq)

    async def snapshot(self) -> BufferStats:
        return await self.call(lambda b: b.snapshot())

    async def close(self) -> None:
        if self._buffer is not None:
            await self.call(lambda b: b.close())
            self._buffer = None
        self._executor.shutdown(wait=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
