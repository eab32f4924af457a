"""How the buffer spends its bytes: the byte budget, the disk reserve, and eviction that frees what is needed.

Byte budget
-----------
`ByteBudget.for_cap(max_bytes)` splits the cap into three parts that together never exceed it:

* `wal_bytes` — the write-ahead log. SQLite checkpoints automatically once the WAL holds
  `autocheckpoint_pages` (half the WAL budget) and one transaction writes at most `txn_bytes` (a quarter
  of it), so the WAL file never outgrows its budget; `journal_size_limit` truncates it back to the budget
  should a checkpoint ever have been held off by a reader. After a checkpoint the WAL is rewritten from its
  start, not truncated, so its disk blocks stay allocated: a delete on a full disk writes into blocks it
  already owns.
  The WAL stays below 4,000 frames, so the `-shm` index never grows past its first 32 KiB.
* `reserve_bytes` — a preallocated file next to the database (`<db>.reserve`, see `Reserve`), released when
  the file system is full so that deletes and evictions have room, re-created when there is room again.
* `db_bytes` — the rest: the database file itself. `PRAGMA max_page_count` makes it a hard limit (the file
  can never grow past it; SQLite answers SQLITE_FULL), and the buffer evicts ahead of each commit, by an
  estimate of the staged rows' bytes, so that the limit is normally never met.

Eviction that frees what is needed
----------------------------------
Rows are clustered by eviction class (`records` is a WITHOUT ROWID table keyed by `(evict, seq)`), so the
oldest rows of one class fill whole pages of their own: deleting them frees whole pages and never leaves
the half-empty pages that interleaved classes leave behind. `evict_bytes()` deletes the oldest rows of the
lowest class present, sized by a measured bytes-per-row estimate per class (`RowBytes`), measures what the
delete actually freed (used pages before and after) and repeats until the need is met — typically one
delete, overshooting by less than a page per class touched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)


class EvictionClass(IntEnum):
    """The `evict` column: lowest goes first. Samples use their catalog `Priority` (0..2)."""

    ROUTINE = 0
    NORMAL = 1
    CRITICAL = 2
    DERIVED = 3  # predictions and alerts


EVICTION_ORDER: Final = tuple(EvictionClass)
WAL_FRACTION: Final = 16
"""The WAL gets 1/16 of the cap, within `WAL_MIN_BYTES`..`WAL_MAX_BYTES`."""
WAL_MIN_BYTES: Final = 64 * 1024
WAL_MAX_BYTES: Final = 15 * 1024 * 1024  # < 4,062 frames of 4 KiB: the -shm index keeps its first 32 KiB
RESERVE_MAX_BYTES: Final = 1024 * 1024
"""Deletes are small transactions (a few pages); 1 MiB of reserve is room for a fresh WAL and many deletes."""
_MAX_EVICT_ROUNDS: Final = 64


@dataclass(frozen=True)
class ByteBudget:
    max_bytes: int
    page_size: int
    wal_bytes: int
    reserve_bytes: int
    db_bytes: int

    @classmethod
    def for_cap(cls, max_bytes: int, page_size: int = 4096) -> ByteBudget:
        wal = min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, max_bytes // WAL_FRACTION))
        wal -= wal % page_size
        reserve = min(RESERVE_MAX_BYTES, max(page_size, max_bytes // WAL_FRACTION))
        reserve -= reserve % page_size
        db = max(8 * page_size, max_bytes - wal - reserve)
        return cls(max_bytes, page_size, wal, reserve, db - db % page_size)

    @property
    def db_pages(self) -> int:
        return self.db_bytes // self.page_size

    @property
    def autocheckpoint_pages(self) -> int:
        return max(2, self.wal_bytes // self.page_size // 2)

    @property
    def txn_bytes(self) -> int:
        """Row bytes written by one transaction at most (the rest of the WAL budget is headroom)."""
        return max(self.page_size, self.wal_bytes // 4)


class RowBytes:
    """A decaying ratio of bytes over rows: what one row costs (insert) or frees (delete), as measured."""

    def __init__(self, initial: float, weight_rows: float = 2_000.0) -> None:
        self._bytes = initial * weight_rows
        self._rows = weight_rows

    @property
    def per_row(self) -> float:
        return self._bytes / self._rows

    def observe(self, measured_bytes: int, rows: int, decay: float = 0.8) -> None:
        if rows <= 0 or measured_bytes < 0:
            return
        self._bytes = self._bytes * decay + measured_bytes
        self._rows = self._rows * decay + rows


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the pages in use (the file's pages minus the free list); valid inside a transaction."""
    page_size, page_count, free = (
        int(conn.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("page_size", "page_count", "freelist_count")
    )
    return (page_count - free) * page_size


Evicted = tuple[EvictionClass, int, int, int]
"""One deleted range: class, first seq, last seq, rows."""


def evict_bytes(
    conn: sqlite3.Connection, need: int, per_class: dict[EvictionClass, RowBytes]
) -> tuple[int, list[Evicted]]:
    """Delete the oldest rows, lowest class first, until `need` bytes are free; returns the bytes freed and
    the deleted ranges (the caller counts them once its transaction commits). Runs inside that transaction."""
    freed = 0
    ranges: list[Evicted] = []
    for _ in range(_MAX_EVICT_ROUNDS):
        if freed >= need:
            break
        cls = _lowest_class_present(conn)
        if cls is None:
            break
        estimate = per_class[cls]
        rows = max(1, math.ceil((need - freed) / max(1.0, estimate.per_row)))
        before = used_bytes(conn)
        first, last, deleted = _delete_oldest(conn, cls, rows)
        now_freed = before - used_bytes(conn)
        ranges.append((cls, first, last, deleted))
        # A delete smaller than a page frees nothing measurable: learn only from deletes that freed pages.
        if now_freed > 0:
            estimate.observe(now_freed, deleted)
        freed += now_freed
    return freed, ranges


def _lowest_class_present(conn: sqlite3.Connection) -> EvictionClass | None:
    row = conn.execute("SELECT min(evict) FROM records").fetchone()
    return None if row[0] is None else EvictionClass(int(row[0]))


def _delete_oldest(conn: sqlite3.Connection, cls: EvictionClass, rows: int) -> tuple[int, int, int]:
    """Delete the `rows` oldest rows of `cls` (one contiguous key range); returns first, last seq, count."""
    first, last, count = conn.execute(
        "SELECT min(seq), max(seq), count(*) FROM "
        "(SELECT seq FROM records WHERE evict = ? ORDER BY seq LIMIT ?)",
        (int(cls), rows),
    ).fetchone()
    if not count:
        return 0, -1, 0
    conn.execute("DELETE FROM records WHERE evict = ? AND seq <= ?", (int(cls), last))
    return int(first), int(last), int(count)


def free_disk_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def file_bytes(*paths: Path) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


DISK_SHARE: Final = 0.9
"""Of the bytes the buffer's files use plus the free space, the share the budget may take when the disk is
smaller than the configured cap: the rest is headroom for the file system and whatever shares it."""


class DiskSpace:
    """The byte budget applied to one connection, the reserve, and what a full disk changes.

    The database may use `limit_bytes()`: its share of the cap, or, once the file system was found full,
    the file's size then (until the file system has room for the reserve again)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, max_bytes: int, reserve: Reserve) -> None:
        self._conn = conn
        self.path = path
        self.reserve = reserve
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self.budget = ByteBudget.for_cap(max_bytes, self.page_size)
        self._frozen_pages: int | None = None
        self._test_pages: int | None = None
        self.disk_full = 0  # SQLITE_FULL with the file system full (or the test limit met)
        self.page_limit_full = 0  # SQLITE_FULL with room on the file system: the cap's page limit
        self._logged = False
        self.set_cap(max_bytes)

    def set_cap(self, max_bytes: int) -> None:
        self.configured_max_bytes = max_bytes
        self._set_budget(max_bytes)
        self.fit_to_disk()

    def _set_budget(self, max_bytes: int) -> None:
        self.budget = ByteBudget.for_cap(max_bytes, self.page_size)
        self.reserve.size = self.reserve.headroom = self.budget.reserve_bytes
        if max_bytes < self.configured_max_bytes:
            # Fitted to the disk: the budget, reserve included, already leaves 1 - DISK_SHARE of it free.
            self.reserve.headroom = 0
        self._apply()

    def fit_to_disk(self) -> None:
        """Hold the budget to what the file system can give: the configured cap, or, when the disk is
        smaller, DISK_SHARE of what the buffer's files use plus the free space (but not less than the
        files use now).

        Without it a cap larger than the disk sizes the WAL for the cap: the database then lives in a WAL
        that fills the disk before its first checkpoint, and a checkpoint needs the database file to grow
        into space the WAL holds: nothing can be written or deleted any more."""
        wal = self.path.with_name(self.path.name + "-wal")
        files = file_bytes(self.path, wal, self.reserve.path)
        usable = files + free_disk_bytes(self.path.parent)
        # Never below what the files hold now: a disk another program fills stops the buffer growing (and
        # a full disk is met as such, see on_full); shrinking would need a large eviction with no room.
        cap = min(self.configured_max_bytes, max(int(usable * DISK_SHARE), files))
        if abs(cap - self.budget.max_bytes) > self.budget.max_bytes // 16:
            self._set_budget(cap)

    def limit_bytes(self) -> int:
        pages = min(x for x in (self.budget.db_pages, self._frozen_pages) if x is not None)
        return pages * self.page_size

    def _apply(self) -> None:
        self._conn.execute(f"PRAGMA wal_autocheckpoint={self.budget.autocheckpoint_pages}")
        self._conn.execute(f"PRAGMA journal_size_limit={self.budget.wal_bytes}")
        pages = self.limit_bytes() // self.page_size
        self._conn.execute(f"PRAGMA max_page_count={min(pages, self._test_pages or pages)}")

    def pragmas(self) -> dict[str, int | str]:
        """The connection's settings that durability and the cap rest on (pinned by a test)."""
        names = ("journal_mode", "synchronous", "wal_autocheckpoint", "journal_size_limit", "max_page_count")
        return {name: self._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

    def set_test_pages(self, pages: int) -> None:
        self._test_pages = int(pages)
        self._apply()

    def restore_reserve(self) -> None:
        """Re-create the reserve when the file system has room for it twice over; then the database may
        grow again."""
        if self.reserve.restore() and self._frozen_pages is not None:
            self._frozen_pages = None
            self._apply()

    def on_full(self) -> None:
        """SQLITE_FULL (after the rollback): a full file system, or the cap's page limit."""
        page_count = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        test_limit = self._test_pages is not None and self._test_pages < self.budget.db_pages
        room = 2 * max(self.budget.txn_bytes, self.reserve.size)
        if not test_limit and free_disk_bytes(self.path.parent) > room:
            self.page_limit_full += 1
            return
        self.disk_full += 1
        if not self._logged:
            self._logged = True
            log.warning(
                "buffer disk full at %s; releasing the reserve, evicting old rows to make room "
                "(further times only counted)",
                self.path,
            )
        self.reserve.release()
        # Pages appended since the last checkpoint live in the WAL only; copying them needs the database
        # file to grow. Do it now, with the reserve's room, and truncate the WAL: from here on neither file
        # needs new blocks (the database may not grow, the WAL refills the room it gave back).
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as err:
            log.debug("buffer checkpoint on a full disk failed: %s", err)
        if self._frozen_pages is None or page_count < self._frozen_pages:
            self._frozen_pages = page_count
            self._apply()


class Reserve:
    """A preallocated file the buffer gives back to the file system when the disk is full.

    Released, it lets the WAL and the free list be written so rows can still be deleted; it is re-created
    (`restore()`) once the file system again has room for it and the WAL budget besides."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.headroom = size
        self.releases = 0

    @property
    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def restore(self) -> bool:
        """Create the reserve if the file system has room for it plus the headroom; returns `present`."""
        if self.present:
            return True
        if free_disk_bytes(self.path.parent) < self.size + self.headroom:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _allocate(fd, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the file system; returns whether there was one to give."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        self.releases += 1
        return True


def _allocate(fd: int, size: int) -> None:
    """Really allocate `size` bytes (zeros written where `posix_fallocate` is not supported)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno != errno.EOPNOTSUPP and err.errno != errno.EINVAL:
            raise
        chunk = b"\0" * 65536
        for offset in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[: size - offset], offset)
