"""The refresh of the hour and day rollups: the minute aggregates logged by the writes, added into
`rollup_1h` and `rollup_1d` (the tables under the views `samples_1h` and `samples_1d`).

Every write logs the minute aggregates of what it inserted (cloud/sql/0014_block_rollup_log.sql): one
`rollup_block_log` row per block inserted whole (its signals' n / total / min / max side by side in
arrays, each signal by its float-path id in `sample_signals`, which stands for its name) and
`rollup_log` rows for merged blocks. One refresh, in the caller's transaction (under the rollup lock:
only the refresh writes the rollup tables, one at a time, so no row appears between a MERGE's join
and its insert), in a few statements:

  1. the block log taken out (DELETE … RETURNING) and summed straight into hours per vehicle, signal
     id and hour, ~5 minute rows into one before any join; the ids joined to their names then, on the
     hour rows. Into the session's temporary table `refresh_hours`;
  2. the (small, usually empty) `rollup_log` taken out and summed into hours, into the same table;
  3. `MERGE` of those hours into `rollup_1h`: one join, then per row an update of the bucket there
     or an insert. UPDATE + INSERT … WHERE NOT EXISTS probed the primary key twice per row, INSERT …
     ON CONFLICT DO UPDATE twice per new row (and logs a row lock per update); MERGE cannot read a
     WITH that modifies data, hence the temporary table;
  4. the same hours summed into days and merged into `rollup_1d` (as they are when they all lie in
     one hour, as most refreshes' do: one hour row per vehicle, signal and day then).

Element k of the block log's arrays is signal k's and a name has one float-path id, so step 1 gives
one row per vehicle, signal and hour (were it not so, MERGE would fail the refresh rather than count
a row twice); only when step 2 added rows are the hours summed once more before step 3. Each logged
row is taken by one DELETE, and the whole refresh commits at once: readers see each aggregate either
in the logs or in the tables. bench/rollup_refresh.py times it beside the single statement it
replaced.
"""

from __future__ import annotations

from typing import Final

import psycopg

Cursor = psycopg.AsyncCursor[tuple[object, ...]]

# Created by the first refresh of each connection (also one opened before its schema was migrated).
_STAGING_DDL: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS refresh_hours ("
    " vehicle_id text, signal text, bucket timestamptz, n bigint, total double precision,"
    " min_value double precision, max_value double precision, minutes bigint) ON COMMIT DELETE ROWS"
)

_HOUR: Final = "date_bin(interval '1 hour', {0}, timestamptz 'epoch')"
_COLUMNS: Final = "vehicle_id, signal, bucket, n, total, min_value, max_value"

# Step 1. The arrays unnested in the select list (a ProjectSet, streamed) rather than in FROM (a
# function scan that stores each call's rows first): a third of the time for the same rows.
_TAKE_BLOCK_LOG: Final = (
    "WITH blocks AS (DELETE FROM rollup_block_log RETURNING vehicle_id, minute, signals, n, total,"
    " min_value, max_value),"
    " minutes AS (SELECT vehicle_id, minute, unnest(signals) AS signal_id, unnest(n) AS n,"
    " unnest(total) AS total, unnest(min_value) AS min_value, unnest(max_value) AS max_value"
    " FROM blocks),"
    " hours AS (SELECT vehicle_id, signal_id, " + _HOUR.format("minute") + " AS bucket, sum(n) AS n,"
    " sum(total) AS total, min(min_value) AS min_value, max(max_value) AS max_value, count(*) AS minutes"
    " FROM minutes GROUP BY 1, 2, 3)"
    " INSERT INTO refresh_hours (" + _COLUMNS + ", minutes)"
    " SELECT h.vehicle_id, d.name, h.bucket, h.n, h.total, h.min_value, h.max_value, h.minutes"
    " FROM hours AS h JOIN sample_signals AS d ON d.id = h.signal_id"
)
# Step 2.
_TAKE_LOG: Final = (
    "WITH logged AS (DELETE FROM rollup_log RETURNING " + _COLUMNS + ")"
    " INSERT INTO refresh_hours (" + _COLUMNS + ", minutes)"
    " SELECT vehicle_id, signal, " + _HOUR.format("bucket") + ", sum(n)::bigint, sum(total),"
    " min(min_value), max(max_value), count(*) FROM logged GROUP BY 1, 2, 3"
)


def _summed(width: str) -> str:
    """`refresh_hours` summed per vehicle, signal and bucket `width` wide (n, sum, min and max
    re-aggregate exactly; an hour never straddles a day)."""
    return (
        "(SELECT vehicle_id, signal, date_bin(interval '" + width + "', bucket, timestamptz 'epoch')"
        " AS bucket, sum(n)::bigint AS n, sum(total) AS total, min(min_value) AS min_value,"
        " max(max_value) AS max_value FROM refresh_hours GROUP BY 1, 2, 3)"
    )


def _merge_into(table: str, source: str) -> str:
    """Add `source` (one row per vehicle, signal and bucket) into one rollup table."""
    return (
        "MERGE INTO " + table + " AS r USING " + source + " AS a ON r.vehicle_id = a.vehicle_id"
        " AND r.signal = a.signal AND r.bucket = a.bucket"
        " WHEN MATCHED THEN UPDATE SET n = r.n + a.n, total = r.total + a.total,"
        " min_value = least(r.min_value, a.min_value), max_value = greatest(r.max_value, a.max_value)"
        " WHEN NOT MATCHED THEN INSERT (" + _COLUMNS + ")"
        " VALUES (a.vehicle_id, a.signal, a.bucket, a.n, a.total, a.min_value, a.max_value)"
    )


_MERGE_HOURS: Final = _merge_into("rollup_1h", "refresh_hours")
_MERGE_SUMMED_HOURS: Final = _merge_into("rollup_1h", _summed("1 hour"))
_MERGE_DAYS: Final = _merge_into("rollup_1d", _summed("1 day"))
# One row per vehicle, signal and hour, all in one hour: the hours are the days' rows as they are.
_MERGE_HOURS_AS_DAYS: Final = _merge_into(
    "rollup_1d",
    "(SELECT vehicle_id, signal, date_bin(interval '1 day', bucket, timestamptz 'epoch') AS bucket, n,"
    " total, min_value, max_value FROM refresh_hours)",
)
_TAKEN: Final = "SELECT coalesce(sum(minutes), 0), min(bucket) = max(bucket) FROM refresh_hours"


async def refresh(cur: Cursor) -> int:
    """Take both logs out and add them into `rollup_1h` and `rollup_1d`, in the caller's transaction
    (which holds the rollup lock). Returns the minute rows taken."""
    await cur.execute(_STAGING_DDL.encode())
    await cur.execute(_TAKE_BLOCK_LOG.encode())
    await cur.execute(_TAKE_LOG.encode())
    from_log = cur.rowcount > 0  # then a vehicle, signal and hour may have two rows
    await cur.execute(_TAKEN.encode())
    row = await cur.fetchone()
    assert row is not None
    minutes, one_hour = int(str(row[0])), row[1] is True
    if minutes:
        await cur.execute((_MERGE_SUMMED_HOURS if from_log else _MERGE_HOURS).encode())
        await cur.execute((_MERGE_HOURS_AS_DAYS if one_hour and not from_log else _MERGE_DAYS).encode())
    return minutes
