"""The audit: every row the agent's buffer ever committed, against the rows in the database.

The agent's code is unchanged. Before its first start the buffer file is created by opening
`agent.buffer.SampleBuffer` once; then the audit adds a table `audit(seq, ts_ms, name, kind)` and an
`AFTER INSERT ON records` trigger that copies every inserted row into it, inside the agent's own
transaction: a committed row is audited, a rolled-back one (a failed commit) is not. Acknowledged
and evicted rows leave `records`; their audit rows stay.

At the end, once the agent has drained:
  stored      audited seqs found in the database (the `samples` view, `predictions`, `alerts`)
  refused     audited seqs not stored but carried by a dead letter (decoded from its payload)
  lost        audited seqs neither stored nor refused, less the evictions the agent counted by design
  duplicated  copies beyond the first of a (vehicle, seq) in the database
  renumbered  (signal, ts) samples stored under more than one seq: the same reading sent as new data
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from agent.buffer import SampleBuffer
from protocols.wire import decode_batch

AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS audit (seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL, name TEXT NOT NULL,
                                  kind INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_records AFTER INSERT ON records
BEGIN
    INSERT INTO audit (seq, ts_ms, name, kind) VALUES (NEW.seq, NEW.ts_ms, NEW.name, NEW.kind);
END;
"""


def prepare_audited_buffer(path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
    """Create the buffer file as the agent would, then install the audit table and trigger."""
    SampleBuffer(path, max_bytes).close()
    conn = sqlite3.connect(path)
    try:
        conn.executescript(AUDIT_SQL)
    finally:
        conn.close()


@dataclass(frozen=True)
class AuditedRow:
    ts_ms: int
    name: str
    kind: int


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def audited_rows(path: Path) -> dict[int, AuditedRow]:
    """seq → what the buffer committed under it (the first commit, should a seq ever come twice)."""
    conn = _read_only(path)
    try:
        rows: dict[int, AuditedRow] = {}
        for seq, ts_ms, name, kind in conn.execute("SELECT seq, ts_ms, name, kind FROM audit ORDER BY rowid"):
            rows.setdefault(int(seq), AuditedRow(int(ts_ms), str(name), int(kind)))
        return rows
    finally:
        conn.close()


def audit_reuses(path: Path) -> int:
    """Audit rows beyond the first for one seq: a committed seq handed out again (must be 0)."""
    conn = _read_only(path)
    try:
        return int(conn.execute("SELECT count(*) - count(DISTINCT seq) FROM audit").fetchone()[0])
    finally:
        conn.close()


def audit_mark(path: Path) -> int:
    """One past the highest seq the buffer has committed (0 before the first commit)."""
    conn = _read_only(path)
    try:
        return int(conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM audit").fetchone()[0])
    finally:
        conn.close()


def buffer_rows(path: Path) -> int:
    """Rows still in the buffer (not yet deleted by the agent)."""
    try:
        conn = _read_only(path)
    except sqlite3.Error:
        return -1
    try:
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        conn.close()


# --- the database side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    dsn: str
    schema: str
    vehicle: str

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        # the default search_path: every query names the schema (the reads need nothing else)
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def stored_copies(self) -> Counter[int]:
        """seq → how many rows of this vehicle carry it (samples, predictions and alerts together)."""
        s = self.schema
        with self._connect() as conn:
            rows = conn.execute(
                f'SELECT seq, count(*) FROM (SELECT seq FROM "{s}".samples WHERE vehicle_id = %(v)s '
                f'UNION ALL SELECT seq FROM "{s}".predictions WHERE vehicle_id = %(v)s '
                f'UNION ALL SELECT seq FROM "{s}".alerts WHERE vehicle_id = %(v)s) AS x GROUP BY seq',
                {"v": self.vehicle},
            ).fetchall()
        return Counter({int(seq): int(n) for seq, n in rows})  # type: ignore[call-overload]

    def stored_count(self) -> int:
        with self._connect() as conn:
            row = conn.execute(
                f'SELECT coalesce(sum(n), 0) FROM "{self.schema}".sample_blocks WHERE vehicle_id = %s',
                (self.vehicle,),
            ).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def renumbered(self) -> int:
        """Samples stored again under another seq: (signal, ts) pairs with more than one seq."""
        with self._connect() as conn:
            row = conn.execute(
                f'SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(DISTINCT seq) AS n FROM "{self.schema}".'
                "samples WHERE vehicle_id = %s GROUP BY signal, ts HAVING count(DISTINCT seq) > 1) AS x",
                (self.vehicle,),
            ).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def renumbered_examples(self, limit: int = 5) -> list[tuple[str, str, list[int]]]:
        """(signal, ts, seqs) of a few readings stored under more than one seq."""
        with self._connect() as conn:
            rows = conn.execute(
                f'SELECT signal, ts::text, array_agg(DISTINCT seq) FROM "{self.schema}".samples '
                "WHERE vehicle_id = %s GROUP BY signal, ts HAVING count(DISTINCT seq) > 1 LIMIT %s",
                (self.vehicle, limit),
            ).fetchall()
        return [(str(s), str(t), list(q)) for s, t, q in rows]  # type: ignore[call-overload]

    def dead_letters(self) -> list[tuple[str, str, bytes]]:
        """(topic, reason, payload) of every dead letter."""
        with self._connect() as conn:
            rows = conn.execute(
                f'SELECT topic, reason, payload FROM "{self.schema}".dead_letters ORDER BY id'
            ).fetchall()
        return [(str(t), str(r), bytes(p)) for t, r, p in rows]  # type: ignore[call-overload]

    def refused_seqs(self) -> set[int]:
        """Seqs of this vehicle that a dead letter carries (its payload decoded; undecodable ones and other
        vehicles' are skipped). A per-record dead letter with a `seq` column is read directly."""
        seqs: set[int] = set()
        with self._connect() as conn:
            columns = {
                str(row[0])
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = 'dead_letters'",
                    (self.schema,),
                )
            }
            if "seq" in columns:
                seqs |= {
                    int(row[0])  # type: ignore[call-overload]
                    for row in conn.execute(
                        f'SELECT seq FROM "{self.schema}".dead_letters '
                        "WHERE vehicle_id = %s AND seq IS NOT NULL",
                        (self.vehicle,),
                    )
                }
        # A message stored in part lists its refused records (migration 0006: `refused_records`, `refused`);
        # only those are refused, the rest of its payload was stored. A whole dead letter lists none.
        listed: dict[bytes, list[int]] = {}
        if "refused_records" in columns:
            with self._connect() as conn:
                for payload, count, refused in conn.execute(
                    f'SELECT payload, refused_records, refused FROM "{self.schema}".dead_letters '
                    "WHERE vehicle_id = %s AND refused_records > 0",
                    (self.vehicle,),
                ):
                    records = refused or []
                    if len(records) == count:  # every refused record is listed
                        listed[bytes(payload)] = [int(r["seq"]) for r in records]
        for topic, _, payload in self.dead_letters():
            if f"/{self.vehicle}/" not in topic:
                continue
            if payload in listed:
                seqs |= set(listed[payload])
                continue
            try:
                batch = decode_batch(payload)
            except Exception:  # any malformed payload: not ours to decode
                continue
            if batch.vehicle_id == self.vehicle:
                seqs |= {r.seq for r in (*batch.samples, *batch.predictions, *batch.alerts)}
        return seqs


# --- the verdict -----------------------------------------------------------------------------------------


@dataclass
class AuditResult:
    scenario: str
    committed: int
    stored: int
    refused: int
    missing: int  # neither stored nor refused
    evicted: int  # evictions the agent counted by design (subtracted from `missing`)
    duplicated: int
    renumbered: int
    reused: int
    seconds: float
    refused_plausible: int = 0  # refused although its own timestamp was plausible
    left_in_buffer: int = 0  # rows the agent still holds after the drain
    drain: str = ""  # how the wait for the drain ended
    missing_examples: list[int] = field(default_factory=list)
    renumbered_examples: list[tuple[str, str, list[int]]] = field(default_factory=list)
    dead_letter_reasons: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.missing - self.evicted)

    def line(self) -> str:
        return (
            f"[faults] {self.scenario}: committed {self.committed} stored {self.stored} lost {self.lost} "
            f"duplicated {self.duplicated} renumbered {self.renumbered} refused {self.refused} "
            f"(plausible {self.refused_plausible}) evicted {self.evicted} "
            f"left in buffer {self.left_in_buffer} in {self.seconds:.0f} s (drain: {self.drain})"
        )

    def explain(self) -> str:
        why = f"; {self.evicted} evicted by design (disk full) subtracted" if self.evicted else ""
        first = f"; first missing seqs {self.missing_examples}" if self.missing_examples else ""
        again = f"; renumbered e.g. {self.renumbered_examples}" if self.renumbered_examples else ""
        dead = f"; dead letters e.g. {self.dead_letter_reasons}" if self.dead_letter_reasons else ""
        return self.line() + why + first + again + dead


def judge(
    scenario: str,
    buffer_path: Path,
    db: Database,
    started: float,
    *,
    evicted: int = 0,
    plausible: Callable[[int], bool] | None = None,
) -> AuditResult:
    audited = audited_rows(buffer_path)
    copies = db.stored_copies()
    refused = db.refused_seqs() & audited.keys()
    stored = audited.keys() & copies.keys()
    missing = sorted(audited.keys() - copies.keys() - refused)
    refused_plausible = sum(1 for seq in refused if plausible is not None and plausible(audited[seq].ts_ms))
    return AuditResult(
        scenario=scenario,
        committed=len(audited),
        stored=len(stored),
        refused=len(refused),
        missing=len(missing),
        evicted=evicted,
        duplicated=sum(n - 1 for n in copies.values() if n > 1),
        renumbered=db.renumbered(),
        reused=audit_reuses(buffer_path),
        seconds=time.monotonic() - started,
        refused_plausible=refused_plausible,
        missing_examples=missing[:10],
        left_in_buffer=buffer_rows(buffer_path),
        renumbered_examples=db.renumbered_examples(),
        dead_letter_reasons=sorted({reason[:120] for _, reason, _ in db.dead_letters()})[:3],
    )


async def settle(buffer_path: Path, db: Database, *, quiet_s: float = 6.0, timeout_s: float = 120.0) -> str:
    """Wait until everything committed is accounted for in the database, or until the buffer is empty and
    the database has stopped changing for `quiet_s` (the rest will not come), or `timeout_s`. Returns how
    it ended; the caller's audit then says what is missing. Nothing here is asserted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: tuple[int, int] | None = None
    last_change = loop.time()
    while loop.time() < deadline:
        with contextlib.suppress(psycopg.Error, sqlite3.Error):
            rows = await asyncio.to_thread(buffer_rows, buffer_path)
            audited = await asyncio.to_thread(audited_rows, buffer_path)
            copies = await asyncio.to_thread(db.stored_copies)
            if rows == 0 and audited.keys() <= copies.keys():
                return "complete"
            now = (rows, len(copies))
            if now != last:
                last, last_change = now, loop.time()
            elif rows == 0 and loop.time() - last_change >= quiet_s:
                return f"buffer empty, database unchanged for {quiet_s:g} s"
        await asyncio.sleep(0.5)
    return f"deadline of {timeout_s:g} s"


def assert_nothing_lost(result: AuditResult, *, renumbering: bool = True) -> None:
    """lost = 0, duplicated = 0, and no seq reused or dead-lettered. `renumbering`: also no reading stored
    twice under two seqs; only meaningful with a replayed log, whose frames carry distinct recorded times
    (over SLCAN, python-can stamps a burst of frames with one host time, and one signal decoded from two
    frames of a burst shares a (signal, ts) legitimately)."""
    assert result.committed > 0, result.explain()
    assert result.reused == 0, "a committed seq was handed out again: " + result.explain()
    assert result.lost == 0, "committed samples never stored: " + result.explain()
    assert result.duplicated == 0, "(vehicle, seq) stored more than once: " + result.explain()
    assert not renumbering or result.renumbered == 0, (
        "a reading stored again under a new seq: " + result.explain()
    )
    assert result.refused == 0, "committed samples dead-lettered: " + result.explain()
    assert result.left_in_buffer == 0, "the agent never drained its buffer: " + result.explain()
