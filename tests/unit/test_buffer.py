"""SampleBuffer on real SQLite files in tmp_path: numbering, acknowledgement, eviction, full disk, kill -9."""

from __future__ import annotations

import math
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer import BufferWorker, EvictionClass, Kind, SampleBuffer
from agent.buffer_space import ByteBudget
from agent.records import Alert, Prediction, Sample
from protocols.catalog import Priority
from protocols.wire import AlertRecord, PredictionRecord, SampleRecord

BIG = 1 << 30


def _sample(i: int, priority: Priority = Priority.ROUTINE, signal_name: str = "Vehicle.Speed") -> Sample:
    return Sample(1_700_000_000.0 + i / 10, signal_name, float(i), priority)


def _all_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT seq FROM records ORDER BY seq")]


def test_sequence_continues_across_reopen_and_is_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buffer = SampleBuffer(path, BIG)
    assert [buffer.append(_sample(i)) for i in range(3)] == [0, 1, 2]
    buffer.commit()
    buffer.append(_sample(3))  # staged, never committed: its number was never seen outside
    buffer.close()

    buffer = SampleBuffer(path, BIG)
    assert buffer.next_seq == 3
    buffer.append_samples(_sample(i) for i in range(3, 6))
    buffer.commit()
    # GIVEN every row acknowledged (the table is empty)
    assert buffer.acknowledge([0, 1, 2, 3, 4, 5]) == 6
    buffer.close()
    # WHEN the buffer reopens THEN numbering goes on from the high-water mark, not from max(seq)+1 = 0
    buffer = SampleBuffer(path, BIG)
    assert buffer.append(_sample(6)) == 6
    buffer.commit()
    assert [r.seq for r in buffer.pending(10)] == [6]
    buffer.close()


def test_pending_round_trips_every_kind_and_nan(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "b.sqlite3", BIG)
    buffer.append(Sample(1.5, "Vehicle.Speed", math.nan, Priority.NORMAL))
    buffer.append(Sample(2.0, "Vehicle.Speed", math.inf, Priority.NORMAL))
    buffer.append_prediction(Prediction(3.0, "soc_drop", "1.2", "soc_drop_60min_pp", 4.25))
    buffer.append_alert(Alert(4.0, "low_soc", "critical", True, 9.5, "SOC below 10 %"))
    assert buffer.pending(10) == [], "staged rows are not pending before commit"
    assert buffer.commit() == 4
    records = buffer.pending(10)
    assert isinstance(records[0], SampleRecord) and math.isnan(records[0].value) and records[0].ts_ms == 1500
    assert records[1] == SampleRecord(1, 2000, "Vehicle.Speed", math.inf)
    assert records[2] == PredictionRecord(2, 3000, "soc_drop", "1.2", "soc_drop_60min_pp", 4.25)
    assert records[3] == AlertRecord(3, 4000, "low_soc", "critical", True, 9.5, "SOC below 10 %")
    assert [r.seq for r in buffer.pending(10, (Kind.ALERT,))] == [3]
    assert [r.seq for r in buffer.pending(10, (Kind.SAMPLE,), from_seq=1)] == [1]
    assert [r.seq for r in buffer.pending(2)] == [0, 1], "oldest first, limited"
    buffer.close()


def test_acknowledge_deletes_only_the_acknowledged_rows(tmp_path: Path) -> None:
    buffer = SampleBuffer(tmp_path / "b.sqlite3", BIG)
    buffer.append_samples(_sample(i) for i in range(10))
    buffer.commit()
    assert buffer.acknowledge([1, 3, 5, 99]) == 3
    assert [r.seq for r in buffer.pending(100)] == [0, 2, 4, 6, 7, 8, 9]
    assert buffer.acknowledge([1, 3]) == 0, "acknowledging twice is harmless"
    buffer.close()


def test_byte_cap_evicts_routine_then_normal_then_critical_then_derived(tmp_path: Path) -> None:
    # GIVEN interleaved rows of every class, oldest to newest
    buffer = SampleBuffer(tmp_path / "b.sqlite3", BIG)
    class_of: dict[int, EvictionClass] = {}
    rng = random.Random(7)
    for i in range(12_000):
        choice = rng.random()
        if choice < 0.96:
            priority = rng.choice(list(Priority))
            class_of[buffer.append(_sample(i, priority))] = EvictionClass(int(priority))
        else:
            class_of[buffer.append_alert(Alert(i, "rule", "warning", True, 1.0, "m"))] = EvictionClass.DERIVED
    buffer.commit()
    full = buffer.used_bytes()

    def evicted_by_class() -> dict[EvictionClass, list[int]]:
        present = {r.seq for r in buffer.pending(1_000_000)}
        gone: dict[EvictionClass, list[int]] = {cls: [] for cls in EvictionClass}
        for seq in sorted(set(class_of) - present):
            gone[class_of[seq]].append(seq)
        return gone

    def all_of(cls: EvictionClass) -> list[int]:
        return sorted(seq for seq, c in class_of.items() if c == cls)

    def assert_eviction_order() -> None:
        """A class loses rows only once every lower class is gone, and then its oldest rows first."""
        gone = evicted_by_class()
        touched = [cls for cls in EvictionClass if gone[cls]]
        assert touched, "something was evicted"
        for cls in touched[:-1]:
            assert gone[cls] == all_of(cls), f"{cls.name} evicted only partly before a higher class"
        top = touched[-1]
        assert touched == list(EvictionClass)[: len(touched)], "no class skipped"
        assert gone[top] == all_of(top)[: len(gone[top])], f"oldest {top.name} rows first"
        assert buffer.used_bytes() <= buffer.max_bytes
        # every eviction is counted per class
        assert {cls: len(seqs) for cls, seqs in gone.items()} == buffer.snapshot().evicted

    # WHEN the cap drops to half of what is stored THEN routine rows go first, then normal ones, ...
    buffer.max_bytes = full // 2
    buffer.enforce_cap()
    assert_eviction_order()
    assert not evicted_by_class()[EvictionClass.DERIVED], "predictions and alerts go last"

    # WHEN a commit goes over a cap below what the derived rows alone need
    buffer.max_bytes = 8 * 4096 + buffer.budget.wal_bytes + buffer.budget.reserve_bytes  # 8 pages of data
    incoming = buffer.append(_sample(99_999, Priority.CRITICAL))
    assert buffer.commit() == 1
    # THEN every sample went before the first prediction or alert, oldest first; the incoming row, which the
    # room was made for, is kept
    assert_eviction_order()
    assert evicted_by_class()[EvictionClass.DERIVED]
    assert incoming in {r.seq for r in buffer.pending(1_000_000)}
    buffer.close()


def test_full_disk_degrades_evicts_and_counts_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.sqlite3"
    buffer = SampleBuffer(path, BIG)
    buffer.append_samples(_sample(i, Priority.ROUTINE) for i in range(2_000))
    buffer.append_samples(_sample(i, Priority.CRITICAL) for i in range(2_000, 2_500))
    buffer.commit()
    # GIVEN a file that may not grow any more (SQLite then reports SQLITE_FULL, as on a full disk)
    pages = int(buffer._conn.execute("PRAGMA page_count").fetchone()[0])
    buffer.set_max_page_count(pages)

    # WHEN more rows than fit are committed, again and again
    for round_ in range(5):
        buffer.append_samples(_sample(10_000 + round_ * 1_000 + i, Priority.NORMAL) for i in range(1_000))
        buffer.commit()

    # THEN the old routine rows made room, everything committed later is readable, nothing raised
    stats = buffer.snapshot()
    assert stats.evicted[EvictionClass.ROUTINE] > 0
    assert stats.evicted[EvictionClass.CRITICAL] == 0 or stats.evicted[EvictionClass.NORMAL] > 0
    seqs = [r.seq for r in buffer.pending(1_000_000)]
    assert seqs == sorted(set(seqs))
    assert max(seqs) == buffer.committed_seq - 1
    assert sum(1 for r in caplog.records if "disk full at" in r.getMessage()) == 1, "logged once"

    # AND when nothing evictable is left, staged rows are dropped, counted, and the buffer goes on
    buffer.acknowledge(seqs)
    buffer.set_max_page_count(int(buffer._conn.execute("PRAGMA page_count").fetchone()[0]))
    buffer.append_samples(_sample(i, Priority.CRITICAL) for i in range(50_000))
    assert buffer.commit() < 50_000
    after = buffer.snapshot()
    assert after.dropped + after.committed_rows - stats.committed_rows == 50_000 or after.dropped > 0
    buffer.set_max_page_count(1_000_000)
    buffer.append(_sample(1))
    assert buffer.commit() == 1
    assert buffer.integrity_ok()
    buffer.close()


async def test_worker_runs_sqlite_on_its_own_thread(tmp_path: Path) -> None:
    worker = BufferWorker(tmp_path / "b.sqlite3", BIG)
    await worker.open()
    assert await worker.commit_samples([_sample(i) for i in range(5)]) == 5
    assert await worker.commit_derived([Alert(1.0, "r", "info", False, math.nan, "")]) == 1
    assert [r.seq for r in await worker.pending(10, (Kind.SAMPLE,))] == [0, 1, 2, 3, 4]
    assert await worker.acknowledge([0, 1]) == 2
    assert await worker.discard([2]) == 1
    assert await worker.count_pending((Kind.SAMPLE,)) == 2
    assert await worker.committed_seq() == 6
    assert (await worker.snapshot()).rows == 3
    await worker.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.buffer import SampleBuffer
    from agent.records import Sample
    from protocols.catalog import Priority

    buffer = SampleBuffer(Path(sys.argv[1]), 1 << 30)
    print("start", buffer.next_seq, flush=True)
    i = 0
    while True:
        for _ in range(200):
            buffer.append(Sample(1.7e9 + i, "Vehicle.Speed", float(i), Priority.ROUTINE))
            i += 1
        buffer.commit()
        print("committed", buffer.committed_seq, flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_never_loses_or_duplicates_a_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    rng = random.Random(3)
    last_committed = 0
    for round_ in range(6):
        # GIVEN a process appending and committing in a loop
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        start = writer.stdout.readline().split()
        assert start[0] == "start", "the writer did not start"
        # THEN it resumes exactly after the last committed row of the previous round
        assert int(start[1]) >= last_committed, f"round {round_}: committed rows renumbered"
        wanted = rng.randint(3, 40)
        for _ in range(wanted):
            line = writer.stdout.readline()
            assert line.startswith("committed"), f"round {round_}: writer stopped: {line!r}"
            last_committed = int(line.split()[1])
        # WHEN it is killed with SIGKILL mid-stream
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()

        # THEN every reported commit is there, with no gap or duplicate, and the file is intact
        seqs = _all_seqs(path)
        assert len(seqs) >= last_committed, f"round {round_}: committed rows lost"
        assert seqs == list(range(len(seqs))), f"round {round_}: a gap or a duplicate"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        last_committed = len(seqs)


def test_marks_are_written_with_the_next_commit_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buffer = SampleBuffer(path, BIG)
    assert buffer.get_mark("replay.line") is None
    buffer.append(_sample(0))
    buffer.mark("replay.line", 10)
    assert buffer.get_mark("replay.line") is None, "staged, not yet committed"
    buffer.commit()
    assert buffer.get_mark("replay.line") == 10
    buffer.mark("replay.line", 7)  # last written value wins, even when smaller
    buffer.commit()  # no rows staged: the marks alone are written
    assert buffer.get_mark("replay.line") == 7
    buffer.append(_sample(1))
    buffer.mark("replay.line", 99)  # staged, then the process dies: the mark goes with its rows
    buffer.close()
    buffer = SampleBuffer(path, BIG)
    assert buffer.get_mark("replay.line") == 7
    assert [r.seq for r in buffer.pending(10)] == [0]
    buffer.close()


async def test_worker_commits_samples_and_marks_together(tmp_path: Path) -> None:
    worker = BufferWorker(tmp_path / "b.sqlite3", BIG)
    await worker.open()
    try:
        assert await worker.commit_samples([_sample(0), _sample(1)], {"replay.line": 2}) == 2
        assert await worker.get_mark("replay.line") == 2
        assert await worker.get_mark("other") is None
    finally:
        await worker.close()


def test_pragmas_are_pinned(tmp_path: Path) -> None:
    # A buffer with synchronous=OFF would pass every other test; this one would not.
    buffer = SampleBuffer(tmp_path / "b.sqlite3", 64 * 1024 * 1024)
    budget = buffer.budget
    assert buffer.pragmas() == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL: committed means durable (see the module docstring)
        "wal_autocheckpoint": budget.autocheckpoint_pages,
        "journal_size_limit": budget.wal_bytes,
        "max_page_count": budget.db_pages,
    }
    assert budget.autocheckpoint_pages * 4096 + budget.txn_bytes < budget.wal_bytes
    buffer.close()


@given(st.integers(min_value=256 * 1024, max_value=1 << 40))
def test_the_budget_parts_add_up_to_at_most_the_cap(max_bytes: int) -> None:
    budget = ByteBudget.for_cap(max_bytes)
    assert budget.db_bytes + budget.wal_bytes + budget.reserve_bytes <= max_bytes
    assert budget.db_bytes >= max_bytes // 2, "the database gets most of the cap"
    assert budget.wal_bytes // 4096 < 4_000, "the -shm index never grows past its first 32 KiB"


def _mixed(buffer: SampleBuffer, rng: random.Random, start: int, count: int) -> None:
    names = (
        "Vehicle.Speed",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "Vehicle.Cabin.Temp",
    )
    for i in range(start, start + count):
        if rng.random() < 0.03:
            buffer.append_alert(Alert(1.7e9 + i, "low_soc", "warning", True, 1.0, "SOC low"))
        else:
            buffer.append(_sample(i, rng.choice(list(Priority)), rng.choice(names)))


def test_database_and_wal_stay_within_the_cap_over_a_long_run(tmp_path: Path) -> None:
    # GIVEN a 1 MiB cap and far more data than fits, committed in commits of varying size
    cap = 1024 * 1024
    buffer = SampleBuffer(tmp_path / "b.sqlite3", cap)
    rng = random.Random(5)
    worst, written = 0, 0
    for _ in range(150):
        count = rng.randint(20, 1_500)
        _mixed(buffer, rng, written, count)
        written += count
        assert buffer.commit() == count, "never stuck, nothing dropped"
        stats = buffer.snapshot()
        worst = max(worst, stats.disk_bytes + stats.reserve_bytes)
    # THEN database + WAL (+ reserve) never went more than 10 % over the cap, and the cap was used
    assert worst <= cap * 1.1, f"{worst} bytes on disk for a {cap}-byte cap"
    assert stats.disk_bytes + stats.reserve_bytes >= cap * 0.8
    assert stats.wal_bytes <= buffer.budget.wal_bytes
    assert sum(stats.evicted.values()) > written // 2
    buffer.close()


def _cap_for_database(db_bytes: int) -> int:
    """The cap whose database share is `db_bytes` (the WAL and reserve shares grow with the cap)."""
    cap = db_bytes
    for _ in range(4):
        cap += db_bytes - ByteBudget.for_cap(cap).db_bytes
    return cap


def test_eviction_frees_what_is_needed_within_10_percent(tmp_path: Path) -> None:
    # GIVEN a buffer full of interleaved rows of every class
    buffer = SampleBuffer(tmp_path / "b.sqlite3", BIG)
    rng = random.Random(11)
    _mixed(buffer, rng, 0, 60_000)
    buffer.commit()
    for fraction in (0.19, 0.05, 0.3):
        before = buffer.snapshot()
        # WHEN the cap drops so that `fraction` of the used bytes must go
        used = buffer.used_bytes()
        buffer.max_bytes = _cap_for_database(used - int(used * fraction))
        need = used - buffer.budget.db_bytes
        freed = buffer.enforce_cap()
        after = buffer.snapshot()
        # THEN it freed what was needed and at most 10 % more, measured in bytes and in rows
        assert need <= freed <= need * 1.1, (fraction, need, freed)
        assert after.evicted_bytes - before.evicted_bytes == freed
        evicted_rows = sum(after.evicted.values()) - sum(before.evicted.values())
        assert evicted_rows == before.rows - after.rows
        assert evicted_rows / before.rows <= (need / used) * 1.1, (fraction, evicted_rows, before.rows)
    buffer.close()


def test_a_failed_acknowledgement_delete_is_remembered_never_resent_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.sqlite3"
    buffer = SampleBuffer(path, BIG)
    buffer.append_samples(_sample(i) for i in range(10))
    buffer.append_alert(Alert(20.0, "r", "info", True, 1.0, ""))
    buffer.commit()
    # GIVEN deletes fail (a real SQLite error, as a full disk gives one)
    buffer._conn.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON records BEGIN SELECT RAISE(ABORT, 'no room'); END"
    )
    # WHEN rows are acknowledged
    assert buffer.acknowledge([0, 1, 2, 10, 99]) == 4
    assert buffer.acknowledge([1]) == 0, "acknowledging twice is harmless"
    # THEN they are never offered again, nor counted, though still in the file
    assert [r.seq for r in buffer.pending(100)] == [3, 4, 5, 6, 7, 8, 9]
    assert [r.seq for r in buffer.pending(2)] == [3, 4]
    assert buffer.count_pending() == 7
    assert buffer.count_pending((Kind.ALERT,)) == 0
    stats = buffer.snapshot()
    assert (stats.rows, stats.ack_deferred, stats.ack_delete_failures) == (7, 4, 2)
    assert len(_all_seqs(path)) == 11
    assert sum(1 for r in caplog.records if "could not delete acknowledged" in r.getMessage()) == 1
    # WHEN deletes work again THEN the next call deletes them
    buffer._conn.execute("DROP TRIGGER no_delete")
    buffer.append(_sample(11))
    assert buffer.commit() == 1
    assert _all_seqs(path) == [3, 4, 5, 6, 7, 8, 9, 11]
    assert buffer.snapshot().ack_deferred == 0
    buffer.close()


def test_a_file_of_the_rowid_layout_is_converted_on_open(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE [records] ([seq] INTEGER PRIMARY KEY, [kind] INTEGER NOT NULL, [ts_ms] INTEGER "
            "NOT NULL, [name] TEXT NOT NULL, [value] FLOAT, [evict] INTEGER NOT NULL, [extra] TEXT)"
        )
        conn.execute("CREATE INDEX records_by_eviction ON records (evict, seq)")
        conn.execute("CREATE TABLE [meta] ([key] TEXT PRIMARY KEY, [value] INTEGER)")
        conn.executemany(
            "INSERT INTO records VALUES (?, 0, ?, 'Vehicle.Speed', ?, ?, NULL)",
            [(i, 1000 * i, float(i), i % 3) for i in range(5)],
        )
        conn.execute("INSERT INTO meta VALUES ('next_seq', 7)")
    buffer = SampleBuffer(path, BIG)
    assert [r.seq for r in buffer.pending(10)] == [0, 1, 2, 3, 4]
    assert buffer.next_seq == 7
    assert buffer.snapshot().rows == 5
    buffer.close()
    with sqlite3.connect(path) as conn:
        assert (
            "WITHOUT ROWID"
            in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'records'").fetchone()[0]
        )
