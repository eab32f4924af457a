"""The sample write path: a write group's samples laid out as blocks (cloud/blocks.py), staged by
binary COPY (cloud/block_rows.py) and stored exactly once per (vehicle, seq, ts).

Storage layout and why: cloud/sql/0008_signal_blocks.native.sql. Under the per-vehicle locks the
store took first in the transaction, a staged block above its vehicle's high-water marks ("unseen":
its lowest seq above the highest stored, or its first ts after the latest stored) cannot repeat a
stored sample and is inserted as it is. The others are checked: one stored before as it is (a
redelivery) is skipped; one whose seq and time ranges meet no stored block of its vehicle and minute
is inserted whole; one that does is decoded with those blocks ("stored"), keeps only the samples whose
(seq, ts) is not stored ("kept") and is coded again into a block in SQL ("merged"). The minute
aggregates of exactly the samples inserted are logged: for a block inserted whole, computed with numpy
per block and signal and staged with the block as arrays, one rollup_block_log row; for a merged one,
in SQL, rollup_log rows (cloud/sql/0014_block_rollup_log.sql). The same statement merges each
vehicle's latest sample per signal into its one `latest_values` row (cloud/sql/0016_latest_values.sql)
and raises its high-water marks.

Signal names become ids in `sample_signals`, two per signal: its scaled path (its quantum from the
catalog, the quanta the wire uses) and its float path. `SignalDictionary` caches them per connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt
import psycopg

from cloud.block_rows import COPY_SIGNATURE, COPY_TRAILER, block_rows, latest_rows
from cloud.blocks import GroupSamples, blocks_of, group_latest, unrepeated
from cloud.ingest import BatchMessage
from protocols.catalog import load_catalog

Cursor = psycopg.AsyncCursor[tuple[object, ...]]

STAGING_DDL: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_blocks ("
    " block_no integer, vehicle_id text, minute timestamptz, seq_min bigint, seq_max bigint,"
    " ts_first timestamptz, ts_last timestamptz, n integer, signals integer[], code bytea,"
    " exact double precision[], stat_signals integer[], stat_n integer[], stat_total double precision[],"
    " stat_min double precision[], stat_max double precision[]) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_latest ("
    " vehicle_id text, signals integer[], ts timestamptz[], seq bigint[], value double precision[])"
    " ON COMMIT DELETE ROWS",
)

_COLUMNS: Final = "vehicle_id, minute, seq_min, seq_max, ts_first, ts_last, n, signals, code, exact"
_DECODE: Final = "block_entries({0}.minute, {0}.seq_min, {0}.n, {0}.signals, {0}.code, {0}.exact)"

_STORE_BLOCKS: Final = (
    "WITH staged AS (SELECT s.*, s.seq_min > coalesce(v.max_sample_seq, -1)"
    " OR s.ts_first > coalesce(v.max_sample_ts, '-infinity') AS unseen"
    " FROM stage_blocks AS s JOIN vehicles AS v ON v.vehicle_id = s.vehicle_id),"
    # stored blocks that may hold one of the block's samples: same vehicle and minute, ranges meeting
    " meeting AS (SELECT s.block_no, e.* FROM staged AS s JOIN sample_blocks AS e"
    " ON e.vehicle_id = s.vehicle_id AND e.minute = s.minute AND e.seq_min <= s.seq_max"
    " AND e.seq_max >= s.seq_min AND e.ts_first <= s.ts_last AND e.ts_last >= s.ts_first"
    " WHERE NOT s.unseen),"
    " checked AS (SELECT s.*, EXISTS (SELECT 1 FROM meeting AS m WHERE m.block_no = s.block_no) AS meets"
    " FROM staged AS s WHERE NOT s.unseen AND NOT EXISTS (SELECT 1 FROM meeting AS m"
    " WHERE m.block_no = s.block_no AND m.seq_min = s.seq_min AND m.ts_first = s.ts_first"
    " AND m.code = s.code)),"
    " fresh AS (INSERT INTO sample_blocks (" + _COLUMNS + ")"
    " SELECT " + _COLUMNS + " FROM staged WHERE unseen"
    " UNION ALL SELECT " + _COLUMNS + " FROM checked WHERE NOT meets"
    " ON CONFLICT DO NOTHING RETURNING vehicle_id, minute, seq_min, ts_first, n),"
    " stored AS (SELECT m.block_no, x.seq, x.ts FROM meeting AS m, " + _DECODE.format("m") + " AS x),"
    " kept AS (SELECT s.block_no, s.vehicle_id, s.minute, e.* FROM checked AS s, "
    + _DECODE.format("s")
    + " AS e"
    " WHERE s.meets AND NOT EXISTS (SELECT 1 FROM stored AS t"
    " WHERE t.block_no = s.block_no AND t.seq = e.seq AND t.ts = e.ts)),"
    " kept_from AS (SELECT k.*, min(k.seq) OVER (PARTITION BY k.block_no) AS new_seq_min FROM kept AS k),"
    " recoded AS (SELECT block_no, vehicle_id, minute, new_seq_min AS seq_min, max(seq) AS seq_max,"
    " min(ts) AS ts_first, max(ts) AS ts_last, count(*)::integer AS n,"
    " array_agg(DISTINCT signal_id ORDER BY signal_id) AS signals,"
    " block_code(array_agg(signal_id ORDER BY i), array_agg(seq - new_seq_min ORDER BY i),"
    " array_agg(round(extract(epoch FROM ts - minute) * 1000)::integer ORDER BY i),"
    " array_agg(steps ORDER BY i)) AS code,"
    " CASE WHEN count(exact) > 0 THEN array_agg(exact ORDER BY i) END AS exact"
    " FROM kept_from GROUP BY block_no, vehicle_id, minute, new_seq_min),"
    " merged AS (INSERT INTO sample_blocks (" + _COLUMNS + ") SELECT " + _COLUMNS + " FROM recoded"
    " ON CONFLICT DO NOTHING RETURNING vehicle_id, minute, seq_min, ts_first, n)"
)
_INSERTED_COUNT: Final = (
    " SELECT (SELECT coalesce(sum(n), 0) FROM fresh) + (SELECT coalesce(sum(n), 0) FROM merged)"
)
# The minute aggregates of exactly what was inserted: whole blocks' from the staged statistics,
# merged blocks' from their kept samples.
STORE_SAMPLES: Final = (
    _STORE_BLOCKS
    # one row per block inserted whole, its statistics staged side by side (0014_block_rollup_log.sql)
    + ", logged AS (INSERT INTO rollup_block_log"
    " (vehicle_id, minute, signals, n, total, min_value, max_value)"
    " SELECT s.vehicle_id, s.minute, s.stat_signals, s.stat_n, s.stat_total, s.stat_min, s.stat_max"
    " FROM fresh AS f JOIN staged AS s ON (s.vehicle_id, s.minute, s.seq_min, s.ts_first)"
    " = (f.vehicle_id, f.minute, f.seq_min, f.ts_first)),"
    " logged_kept AS (INSERT INTO rollup_log (vehicle_id, signal, bucket, n, total, min_value, max_value)"
    " SELECT k.vehicle_id, d.name, k.minute, count(*), sum(v.value), min(v.value), max(v.value)"
    " FROM kept AS k JOIN sample_signals AS d ON d.id = k.signal_id"
    " JOIN recoded AS r ON r.block_no = k.block_no JOIN merged AS g ON (g.vehicle_id, g.minute, g.seq_min,"
    " g.ts_first) = (r.vehicle_id, r.minute, r.seq_min, r.ts_first),"
    " LATERAL (SELECT coalesce(k.exact, k.steps * d.quantum) AS value) AS v"
    " GROUP BY k.vehicle_id, d.name, k.minute),"
    # each vehicle's latest sample per signal, one row per vehicle (cloud/sql/0016_latest_values.sql):
    # its kept row merged with the group's latest samples, the later (by ts, then seq) of each signal.
    # A staged sample that repeats a stored one is still a sample the bus sent, so every staged block
    # counts; the layout marked the group's latest per vehicle and signal (cloud/blocks.py,
    # group_latest). The vehicles' rows locked first keep other replicas off these rows; a row that
    # comes out the same (a redelivery) is not written. The four arrays are built from the same rows,
    # so element k of each is one sample whatever their order (by signal id, as the subquery sorts
    # them: an ORDER BY in each aggregate sorted them four times more, 13 -> 9.7 ms a group).
    " latest AS (INSERT INTO latest_values AS l (vehicle_id, signals, ts, seq, value)"
    " SELECT t.vehicle_id, m.* FROM stage_latest AS t LEFT JOIN latest_values AS k USING (vehicle_id),"
    " LATERAL (SELECT array_agg(signal_id), array_agg(ts), array_agg(seq), array_agg(value)"
    " FROM (SELECT DISTINCT ON (signal_id) * FROM (SELECT * FROM unnest(t.signals, t.ts, t.seq, t.value)"
    " UNION ALL SELECT * FROM unnest(k.signals, k.ts, k.seq, k.value)) AS c(signal_id, ts, seq, value)"
    " ORDER BY signal_id, ts DESC, seq DESC) AS x) AS m"
    " ORDER BY t.vehicle_id"
    " ON CONFLICT (vehicle_id) DO UPDATE SET signals = excluded.signals, ts = excluded.ts,"
    " seq = excluded.seq, value = excluded.value"
    " WHERE (l.signals, l.ts, l.seq) IS DISTINCT FROM (excluded.signals, excluded.ts, excluded.seq))"
    # each vehicle's high-water marks past this group's samples (the `staged` check above read them
    # before: every part of one statement sees the same snapshot)
    ", marks AS (UPDATE vehicles AS v SET max_sample_seq = greatest(v.max_sample_seq, m.seq),"
    " max_sample_ts = greatest(v.max_sample_ts, m.ts) FROM (SELECT vehicle_id, max(seq_max) AS seq,"
    " max(ts_last) AS ts FROM stage_blocks GROUP BY vehicle_id) AS m WHERE v.vehicle_id = m.vehicle_id)"
    + _INSERTED_COUNT
)


@cache
def default_quanta() -> dict[str, float]:
    """The catalog's quanta (protocols/catalog.toml): the steps the agents send values in."""
    return load_catalog().quanta()


class SignalDictionary:
    """Signal name -> its ids in `sample_signals` (scaled path, float path), cached; new names are
    added in their own short transaction (ids are never changed, so a rolled-back write loses
    nothing)."""

    def __init__(self, quanta: Mapping[str, float]) -> None:
        self._quanta = dict(quanta)
        self._rank = {name: k for k, name in enumerate(self._quanta)}  # the catalog's order
        self._ids: dict[str, tuple[int, int]] = {}

    def knows(self, names: set[str]) -> bool:
        """Whether every one of `names` has its ids (learnt on this connection's dictionary)."""
        return names <= self._ids.keys()

    def catalog_names(self) -> set[str]:
        """The names whose quanta it was given (the catalog's signals)."""
        return set(self._quanta)

    def quantum(self, name: str) -> float:
        return self._quanta.get(name, float("nan"))

    async def learn(self, conn: psycopg.AsyncConnection[tuple[object, ...]], names: set[str]) -> None:
        # in the catalog's order (then by name): the ids of a block's signals then rank the samples of
        # one instant mostly as the agent numbered them, and the code's seq field is mostly 0
        missing = sorted(
            names - self._ids.keys(), key=lambda name: (self._rank.get(name, len(self._rank)), name)
        )
        if not missing:
            return
        quanta = [self._quanta.get(name) for name in missing]
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO sample_signals (name, quantum)"
                " SELECT name, quantum FROM (SELECT u.name, u.quantum, u.k, 0 AS path"
                " FROM unnest(%s::text[], %s::float8[]) WITH ORDINALITY AS u(name, quantum, k)"
                " UNION ALL SELECT u.name, NULL, u.k, 1"
                " FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, k)) AS x"
                " ORDER BY k, path ON CONFLICT DO NOTHING",
                (missing, quanta, missing),
            )
            await cur.execute("SELECT name, quantum, id FROM sample_signals WHERE name = ANY(%s)", (missing,))
            self._take_ids(await cur.fetchall(), missing)

    async def load(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Take the ids of every signal stored so far (a restarted receiver then lays out its first
        groups without learning them in the write)."""
        async with conn.cursor() as cur:
            await cur.execute("SELECT name, quantum, id FROM sample_signals")
            rows = await cur.fetchall()
        self._take_ids(rows, sorted({str(row[0]) for row in rows} - self._ids.keys()))

    def _take_ids(self, rows: Sequence[tuple[object, ...]], names: Sequence[str]) -> None:
        """Keep the ids of `names` found in `rows` (name, quantum, id): a name whose float path or
        scaled path (its quantum here) has no row is left to `learn`."""
        found: dict[tuple[str, float | None], int] = {}
        for name, quantum, sid in rows:
            assert isinstance(name, str) and isinstance(sid, int)
            found[(name, quantum if isinstance(quantum, float) else None)] = sid
        for name in names:
            quantum = self._quanta.get(name)
            float_id = found.get((name, None))
            scaled_id = float_id if quantum is None else found.get((name, quantum))
            if float_id is None or scaled_id is None:
                continue
            self._ids[name] = (scaled_id, float_id)

    def columns(
        self, names: Sequence[str]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """Per name: quantum (NaN: none), scaled-path id, float-path id (learnt before, for every name
        a sample uses)."""
        ids = [self._ids.get(name, (-1, -1)) for name in names]  # -1: a name no sample uses
        return (
            np.array([self.quantum(name) for name in names], dtype=np.float64),
            np.array([i[0] for i in ids], dtype=np.int32),
            np.array([i[1] for i in ids], dtype=np.int32),
        )


def used_signals(batches: Sequence[BatchMessage]) -> set[str]:
    """The signal names the group's samples use (a message's name table may list more: the names of
    records ingest refused)."""
    return {
        m.samples.signals[k] for m in batches if len(m.samples) for k in set(m.samples.signal_index.tolist())
    }


@dataclass(frozen=True, slots=True)
class LaidOut:
    """A write group's samples ready to stage: the binary COPY data of stage_blocks and
    stage_latest (b"" when the group has no sample to store), and how many samples it carried.
    Pure data, built without the database (`lay_out`), so the receiver builds it for the next group
    while the database writes the current one."""

    block_copy: bytes
    latest_copy: bytes
    samples: int


def lay_out(batches: Sequence[BatchMessage], signals: SignalDictionary) -> LaidOut | None:
    """The group's samples (those not repeated within the group) as blocks and their rollup
    statistics, in binary COPY format; None when a signal they use has no id yet (`learn` first).
    One layout for the whole group (numpy's fixed cost per call is paid once, not per message)."""
    tables = {m.samples.signals for m in batches}
    if not signals.knows({name for table in tables for name in table}) and not signals.knows(
        used_signals(batches)
    ):  # a name no good sample uses (only refused records') need not be known
        return None
    blocks = blocks_of(GroupSamples.of(unrepeated(batches), signals.columns))
    samples = sum(len(m.samples) for m in batches)
    if not len(blocks):
        return LaidOut(b"", b"", samples)
    vehicles = [m.vehicle_id for m in batches]
    names, vehicle_of_message = np.unique(vehicles, return_inverse=True)
    vehicle_of_message = vehicle_of_message.astype(np.int64)
    latest = group_latest(vehicle_of_message, blocks)
    return LaidOut(
        b"".join((COPY_SIGNATURE, block_rows(vehicles, blocks), COPY_TRAILER)),
        b"".join(
            (COPY_SIGNATURE, latest_rows(names.tolist(), vehicle_of_message, blocks, latest), COPY_TRAILER)
        ),
        samples,
    )


async def stage_samples(cur: Cursor, laid_out: LaidOut) -> int:
    """COPY a group's laid-out samples into stage_blocks and stage_latest; return how many
    samples the group carried."""
    if laid_out.block_copy:
        async with cur.copy(
            "COPY stage_blocks (block_no, "
            + _COLUMNS
            + ", stat_signals, stat_n, stat_total, stat_min, stat_max)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            await copy.write(laid_out.block_copy)
        async with cur.copy(
            "COPY stage_latest (vehicle_id, signals, ts, seq, value) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            await copy.write(laid_out.latest_copy)
    return laid_out.samples


async def store_samples(cur: Cursor) -> int:
    """Insert the staged blocks (de-duplicated, see the module), log their minute aggregates, keep
    each vehicle's latest samples and raise its high-water marks; return how many samples were
    inserted."""
    await cur.execute(STORE_SAMPLES.encode(), prepare=True)  # planning it took ~3.5 ms a group
    row = await cur.fetchone()
    return int(str(row[0])) if row else 0
