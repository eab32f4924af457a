-- 0003 sample blocks, plain PostgreSQL: samples are stored as blocks, one row per vehicle, signal, UTC
-- minute and received message, holding that minute's samples as arrays (seq, ts, value) in time order.
--
-- Why: one row per sample cost PostgreSQL about 8 µs per sample (two B-tree entries, a heap tuple of
-- ~60 bytes, speculative insertion for ON CONFLICT) and capped ingest near 75,000 samples/s on a
-- 2-core machine; a block row costs about as much as a sample row did but carries ~30-60 samples.
-- Every block lies within one UTC minute (`minute`), so n / total / min / max of its samples roll up
-- into minute buckets exactly, from the block rows alone: `samples_1m` becomes a view over them, and
-- costs nothing to keep up at ingest.
--
-- De-duplication stays exact per sample, on (vehicle, seq, ts): the receiver takes a per-vehicle
-- lock (the `vehicles` row), stores a block whose time span meets no stored block of the same
-- vehicle and signal as it is, and for one that does keeps only its samples whose (seq, ts) is not
-- stored yet (cloud/store.py). The primary key rejects a block stored twice as a whole.

CREATE TABLE sample_blocks (
    vehicle_id  text NOT NULL,
    signal      text NOT NULL,
    minute      timestamptz NOT NULL,         -- the UTC minute that holds all the block's samples
    ts_first    timestamptz NOT NULL,         -- the block's earliest sample
    ts_last     timestamptz NOT NULL,
    seq_first   bigint NOT NULL,              -- the seq of the sample at ts_first (ties: the lowest)
    n           integer NOT NULL CHECK (n > 0),
    total       double precision NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    seq         bigint[] NOT NULL,
    ts          timestamptz[] NOT NULL,
    value       double precision[] NOT NULL,
    PRIMARY KEY (vehicle_id, signal, minute, ts_first, seq_first),
    CHECK (minute = date_bin(interval '1 minute', ts_first, timestamptz 'epoch')
           AND ts_last >= ts_first AND ts_last < minute + interval '1 minute'),
    CHECK (cardinality(seq) = n AND cardinality(ts) = n AND cardinality(value) = n)
) PARTITION BY RANGE (minute);
CREATE INDEX sample_blocks_minute_brin ON sample_blocks USING brin (minute);

-- Carry over what version 2 stored: a block per vehicle, signal and minute, in daily partitions named
-- as the receiver names them.
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM samples ORDER BY 1 LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF sample_blocks FOR VALUES FROM (%L) TO (%L)',
            'sample_blocks_p' || to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END $$;
INSERT INTO sample_blocks
SELECT vehicle_id, signal, date_bin(interval '1 minute', ts, timestamptz 'epoch'), min(ts), max(ts),
       (array_agg(seq ORDER BY ts, seq))[1], count(*), sum(value), min(value), max(value),
       array_agg(seq ORDER BY ts, seq), array_agg(ts ORDER BY ts, seq), array_agg(value ORDER BY ts, seq)
FROM samples
GROUP BY vehicle_id, signal, date_bin(interval '1 minute', ts, timestamptz 'epoch');

-- Per vehicle, the highest seq and the latest ts stored: a staged block whose lowest seq is above the
-- first or whose earliest ts is after the second cannot hold a stored sample (a duplicate repeats both),
-- so the receiver stores it without looking for duplicates. Live data passes by seq; data sent after an
-- agent lost its buffer (seq from 0 again) passes by ts; only re-sent or late data is checked.
ALTER TABLE vehicles ADD COLUMN max_sample_seq bigint, ADD COLUMN max_sample_ts timestamptz;
UPDATE vehicles AS v SET max_sample_seq = m.seq, max_sample_ts = m.ts
FROM (SELECT vehicle_id, max(seq) AS seq, max(ts) AS ts FROM samples GROUP BY vehicle_id) AS m
WHERE m.vehicle_id = v.vehicle_id;

DROP TABLE samples;

-- Sample rows as before, for reading by hand. Queries that the receiver and the dashboards run use
-- samples_between() and latest_sample(), which read only the blocks of the range.
CREATE VIEW samples AS
SELECT b.vehicle_id, u.seq, u.ts, b.signal, u.value
FROM sample_blocks AS b, unnest(b.seq, b.ts, b.value) AS u(seq, ts, value);

-- Hour and day rollups are brought up to date every few minutes (cloud/store.py, refresh_rollups),
-- as TimescaleDB's continuous-aggregate policies do, instead of with every group: one upsert per bus,
-- signal and hour per refresh rather than per message. Each group appends the minute aggregates of
-- the samples it inserted here, in its own transaction; a refresh takes them out (DELETE … RETURNING)
-- and adds them into samples_1h and samples_1d in one transaction, so each counts exactly once.
DROP TABLE samples_1m;
CREATE VIEW samples_1m AS
SELECT vehicle_id, signal, minute AS bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM sample_blocks
GROUP BY vehicle_id, signal, minute;

CREATE TABLE rollup_log (
    vehicle_id  text NOT NULL,
    signal      text NOT NULL,
    bucket      timestamptz NOT NULL,   -- the minute
    n           bigint NOT NULL,
    total       double precision NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL
);
