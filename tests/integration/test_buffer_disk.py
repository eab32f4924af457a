"""The buffer on a real full disk: a 3 MiB tmpfs filled by the buffer itself, then to the last byte by another
file. Mounting needs root; elsewhere the test is skipped with the reason."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import EvictionClass, SampleBuffer
from agent.records import Sample
from protocols.catalog import Priority

from .conftest import mounted_tmpfs

DISK_BYTES = 3 * 1024 * 1024
CAP = 64 * 1024 * 1024  # far above the disk: the disk fills first
PRIORITIES = (Priority.ROUTINE, Priority.NORMAL, Priority.CRITICAL)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
        yield disk


def _fill_to_the_last_byte(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC ends it
            while True:
                os.write(fd, b"\xff" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\xff")
    finally:
        os.close(fd)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _Bus:
    """Stages samples with a known class per seq (70 % routine, 20 % normal, 10 % critical)."""

    def __init__(self, buffer: SampleBuffer) -> None:
        self.buffer = buffer
        self.class_of: dict[int, EvictionClass] = {}
        self._rng = random.Random(9)
        self._i = 0

    def commit(self, count: int) -> int:
        for _ in range(count):
            priority = self._rng.choices(PRIORITIES, (7, 2, 1))[0]
            seq = self.buffer.append(Sample(1.7e9 + self._i / 10, "Vehicle.Speed", float(self._i), priority))
            self.class_of[seq] = EvictionClass(int(priority))
            self._i += 1
        return self.buffer.commit()

    def stored(self) -> set[int]:
        return {int(row[0]) for row in self.buffer._conn.execute("SELECT seq FROM records")}


def test_a_full_disk_never_wedges_the_buffer(small_disk: Path) -> None:
    path = small_disk / "buffer.sqlite3"
    buffer = SampleBuffer(path, CAP)
    bus = _Bus(buffer)
    try:
        assert buffer.reserve.present, "a reserve is kept while there is room"
        # GIVEN the broker away: samples are committed beyond what the disk (smaller than the cap) holds
        rounds_evicting = 0
        while rounds_evicting < 10:
            assert bus.commit(500) == 500, "never stuck: every commit goes in"
            assert _free(small_disk) > 0, "the buffer keeps within the disk it is on"
            rounds_evicting += 1 if sum(buffer.stats.evicted.values()) else 0
            assert len(bus.class_of) < 500_000, "the buffer never had to evict"
        # AND another program takes the last free byte
        _fill_to_the_last_byte(small_disk / "filler")
        assert _free(small_disk) < 4096
        for _ in range(5):
            assert bus.commit(500) == 500, "a commit on a disk with no free byte still goes in"

        # THEN the oldest routine rows made room, and only routine rows
        stats = buffer.snapshot()
        assert stats.dropped == 0
        assert stats.evicted[EvictionClass.ROUTINE] > 0
        assert stats.evicted[EvictionClass.NORMAL] == stats.evicted[EvictionClass.CRITICAL] == 0
        stored = bus.stored()
        routine = sorted(s for s, c in bus.class_of.items() if c == EvictionClass.ROUTINE)
        gone = [s for s in routine if s not in stored]
        assert gone == routine[: len(gone)], "oldest routine rows first"
        assert len(gone) == stats.evicted[EvictionClass.ROUTINE], "every evicted row counted"

        # WHEN the broker returns: the oldest rows are sent and acknowledged, round after round, on the full
        # disk, while new samples keep coming
        sent: set[int] = set()
        for _ in range(20):
            seqs = [r.seq for r in buffer.pending(1_000)]
            assert seqs, "rows to send"
            assert not sent.intersection(seqs), "an acknowledged row was offered again"
            sent.update(seqs)
            assert buffer.acknowledge(seqs) == len(seqs)
            assert bus.commit(300) == 300
        # THEN every acknowledged row is deleted from the file, none is waiting, nothing was lost or dropped
        stats = buffer.snapshot()
        assert stats.ack_deferred == 0 and stats.ack_delete_failures == 0
        assert not sent & bus.stored()
        assert stats.dropped == 0
        assert buffer.count_pending() == stats.rows == len(bus.stored())
        assert buffer.integrity_ok()
    finally:
        buffer.close()

    # AND the file system is not wedged: the buffer reopens and commits on it; with room again, the
    # reserve comes back and the database may grow again
    buffer = SampleBuffer(path, CAP)
    bus.buffer = buffer
    try:
        assert bus.commit(500) == 500
        (small_disk / "filler").unlink()
        assert bus.commit(500) == 500
        assert buffer.reserve.present
        assert buffer.snapshot().reserve_bytes == buffer.budget.reserve_bytes
        assert buffer.integrity_ok()
    finally:
        buffer.close()

    # AND a restart on a disk filled to the last byte while the agent was down opens with the reserve's room
    _fill_to_the_last_byte(small_disk / "filler")
    assert _free(small_disk) < 4096
    buffer = SampleBuffer(path, CAP)
    bus.buffer = buffer
    try:
        assert bus.commit(500) == 500
        seqs = [r.seq for r in buffer.pending(1_000)]
        assert buffer.acknowledge(seqs) == len(seqs)
        assert buffer.snapshot().ack_deferred == 0
        assert buffer.integrity_ok()
    finally:
        buffer.close()
