"""The buffer's `records` table: its layout, the old layout's conversion, and the queries on it.

Rows are keyed by `(evict, seq)` (WITHOUT ROWID), so each eviction class keeps its rows in its own pages
(see `agent.buffer_space`). Every query names the classes it reads: per class, a range of `seq`, merged by
`seq` where several classes are read.
"""

from __future__ import annotations

import heapq
import json
import math
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from enum import IntEnum
from typing import Final

from agent.buffer_space import EvictionClass
from protocols.wire import AlertRecord, PredictionRecord, SampleRecord

WireRecord = SampleRecord | PredictionRecord | AlertRecord


class Kind(IntEnum):
    """What a row holds (stored as a small integer)."""

    SAMPLE = 0
    PREDICTION = 1
    ALERT = 2


# The `records` table:
#   seq    INTEGER  per-vehicle sequence number (unique)
#   kind   INTEGER  Kind: 0 sample, 1 prediction, 2 alert
#   ts_ms  INTEGER  source timestamp, Unix epoch ms
#   name   TEXT     signal (sample), model (prediction), rule (alert)
#   value  REAL     NULL stands for NaN (SQLite stores NaN as NULL)
#   evict  INTEGER  EvictionClass; with seq the primary key, so a class's rows share their pages
#   extra  TEXT     JSON: prediction [model_version, output]; alert [severity, active, message]
RECORDS_SQL: Final = (
    "CREATE TABLE IF NOT EXISTS records (seq INTEGER NOT NULL, kind INTEGER NOT NULL, "
    "ts_ms INTEGER NOT NULL, name TEXT NOT NULL, value REAL, evict INTEGER NOT NULL, extra TEXT, "
    "PRIMARY KEY (evict, seq)) WITHOUT ROWID"
)
INSERT_SQL: Final = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)"
Row = tuple[int, int, int, str, float | None, int, str | None]
"""A row as inserted: seq, kind, ts_ms, name, value, evict, extra."""

_CLASSES_OF_KIND: Final = {
    Kind.SAMPLE: (EvictionClass.ROUTINE, EvictionClass.NORMAL, EvictionClass.CRITICAL),
    Kind.PREDICTION: (EvictionClass.DERIVED,),
    Kind.ALERT: (EvictionClass.DERIVED,),
}
_ALL_CLASSES: Final = "evict IN (0, 1, 2, 3)"  # lets SQLite look a seq up by its full key
_CHUNK: Final = 500


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables; a `records` table of the earlier rowid layout is converted in the same
    transaction (same columns; its rows were interleaved by seq)."""
    conn.execute("BEGIN IMMEDIATE")
    old = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'records'").fetchone()
    converting = old is not None and "WITHOUT ROWID" not in str(old[0]).upper()
    if converting:
        conn.execute("ALTER TABLE records RENAME TO records_rowid")
    conn.execute(RECORDS_SQL)
    if converting:
        conn.execute(
            "INSERT INTO records SELECT seq, kind, ts_ms, name, value, evict, extra FROM records_rowid"
        )
        conn.execute("DROP TABLE records_rowid")
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
    conn.execute("COMMIT")


def classes_of(kinds: Collection[Kind]) -> list[EvictionClass]:
    return sorted({cls for kind in kinds for cls in _CLASSES_OF_KIND[Kind(kind)]})


def oldest_rows(
    conn: sqlite3.Connection, kinds: Collection[Kind], from_seq: int, before_seq: int, limit: int
) -> Iterator[tuple[int, int, int, str, float | None, str | None]]:
    """Rows (seq, kind, ts_ms, name, value, extra) of `kinds`, `from_seq <= seq < before_seq`, oldest first,
    at most `limit` of each class."""
    kind_list = sorted({int(k) for k in kinds})
    marks = ",".join("?" * len(kind_list))
    per_class = [
        conn.execute(
            f"SELECT seq, kind, ts_ms, name, value, extra FROM records WHERE evict = ? AND seq >= ? "
            f"AND seq < ? AND kind IN ({marks}) ORDER BY seq LIMIT ?",
            (int(cls), from_seq, before_seq, *kind_list, limit),
        ).fetchall()
        for cls in classes_of(kinds)
    ]
    return heapq.merge(*per_class)


def count_rows(conn: sqlite3.Connection, kinds: Collection[Kind], from_seq: int) -> int:
    kind_list = sorted({int(k) for k in kinds})
    marks = ",".join("?" * len(kind_list))
    return sum(
        int(
            conn.execute(
                f"SELECT count(*) FROM records WHERE evict = ? AND seq >= ? AND kind IN ({marks})",
                (int(cls), from_seq, *kind_list),
            ).fetchone()[0]
        )
        for cls in classes_of(kinds)
    )


def delete_seqs(conn: sqlite3.Connection, seqs: Sequence[int]) -> int:
    """Delete the rows with these seqs (inside the caller's transaction); returns how many there were."""
    deleted = 0
    for start in range(0, len(seqs), _CHUNK):
        chunk = tuple(seqs[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        deleted += conn.execute(
            f"DELETE FROM records WHERE {_ALL_CLASSES} AND seq IN ({marks})", chunk
        ).rowcount
    return deleted


def find_seqs(conn: sqlite3.Connection, seqs: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(seq, evict, kind) of the rows with these seqs that are in the table."""
    for start in range(0, len(seqs), _CHUNK):
        chunk = tuple(seqs[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        for seq, evict, kind in conn.execute(
            f"SELECT seq, evict, kind FROM records WHERE {_ALL_CLASSES} AND seq IN ({marks})", chunk
        ):
            yield int(seq), int(evict), int(kind)


def is_disk_full(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(err)


def to_record(
    seq: int, kind: int, ts_ms: int, name: str, value: float | None, extra: str | None
) -> WireRecord:
    number = math.nan if value is None else float(value)
    if kind == Kind.SAMPLE:
        return SampleRecord(seq, ts_ms, name, number)
    details = json.loads(extra or "[]")
    if kind == Kind.PREDICTION:
        return PredictionRecord(seq, ts_ms, name, str(details[0]), str(details[1]), number)
    return AlertRecord(seq, ts_ms, name, str(details[0]), bool(details[1]), number, str(details[2]))
