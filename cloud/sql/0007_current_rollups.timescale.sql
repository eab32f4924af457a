-- 0007 rollups current on read, TimescaleDB: the minute -> hour -> day continuous aggregates give way
-- to the rollups the receiver keeps on plain PostgreSQL (0003_sample_blocks.native.sql and
-- 0007_current_rollups.native.sql), with the same names and columns.
--
-- Why: the aggregates were materialized only. Right after a write the minute series was empty, the
-- hour lagged 1.5-2.5 h behind (end_offset plus schedule), the day never showed today, and data
-- arriving more than 3 days late (a bus back after a week offline) never reached them without an
-- operator's refresh. The receiver knows which minutes its writes touched: every write logs their
-- aggregates in rollup_log, refresh_rollups adds them into rollup_1h and rollup_1d (late data of any
-- age included), samples_1m is a view over the blocks and samples_1h / samples_1d views over the
-- tables plus the log, so every read is current. sample_blocks, predictions and ingest_ledger stay
-- hypertables with their compression and retention policies; the minutes are kept as long as the
-- blocks (database.raw_retention_days), the hours and days for ever, as on plain PostgreSQL.

-- First the aggregates' jobs (refresh every minute, retention): delete_job cancels a run under way and
-- waits for it to end, so none reads or writes them while they are carried over and dropped (a refresh
-- racing the DROP fails it with "tuple concurrently updated").
SELECT delete_job(job_id) FROM timescaledb_information.jobs
WHERE hypertable_schema = current_schema() AND hypertable_name IN ('samples_1m', 'samples_1h', 'samples_1d');

CREATE TABLE rollup_log (
    vehicle_id  text NOT NULL,
    signal      text NOT NULL,
    bucket      timestamptz NOT NULL,   -- the minute
    n           bigint NOT NULL,
    total       double precision NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL
);

CREATE TABLE rollup_1h (
    vehicle_id  text NOT NULL,
    signal      text NOT NULL,
    bucket      timestamptz NOT NULL,
    n           bigint NOT NULL,
    total       double precision NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    PRIMARY KEY (vehicle_id, signal, bucket)
);
CREATE INDEX rollup_1h_bucket_brin ON rollup_1h USING brin (bucket);
CREATE TABLE rollup_1d (LIKE rollup_1h INCLUDING ALL);

-- Carry over, per bus, signal and hour, the most complete aggregate there is:
--  * from the blocks, for the hours from the first that lies wholly in the chunks still kept
--    (retention drops whole chunks; their bounds are whole hours for any chunk interval of whole
--    hours): they hold every sample, late ones included, whatever the aggregates materialized;
--  * before that, from the minute aggregate where it still holds the hour (its retention was 35 days,
--    its chunks whole hours too): the hour aggregate was refreshed from it and never saw more;
--  * else from the hour aggregate (no retention: the only copy of older history).
-- Only materialized rows are read (the aggregates are materialized only).
INSERT INTO rollup_1h (vehicle_id, signal, bucket, n, total, min_value, max_value)
WITH raw_from AS (
    SELECT coalesce(date_bin(interval '1 hour', min(range_start) - interval '1 microsecond', timestamptz 'epoch')
                    + interval '1 hour', 'infinity') AS t
    FROM timescaledb_information.chunks
    WHERE hypertable_schema = current_schema() AND hypertable_name = 'sample_blocks'
), from_minutes AS (
    SELECT vehicle_id, signal, time_bucket(interval '1 hour', bucket) AS bucket, sum(n)::bigint AS n,
           sum(total) AS total, min(min_value) AS min_value, max(max_value) AS max_value
    FROM samples_1m, raw_from WHERE bucket < raw_from.t
    GROUP BY 1, 2, 3
)
SELECT vehicle_id, signal, time_bucket(interval '1 hour', minute), sum(n)::bigint, sum(total),
       min(min_value), max(max_value)
FROM sample_blocks, raw_from WHERE minute >= raw_from.t
GROUP BY 1, 2, 3
UNION ALL
SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM from_minutes
UNION ALL
SELECT h.vehicle_id, h.signal, h.bucket, h.n, h.total, h.min_value, h.max_value
FROM samples_1h AS h, raw_from
WHERE h.bucket < raw_from.t AND NOT EXISTS (
    SELECT 1 FROM from_minutes AS m
    WHERE m.vehicle_id = h.vehicle_id AND m.signal = h.signal AND m.bucket = h.bucket);

-- Days from those hours: the day aggregate was refreshed from the hour aggregate, which has no
-- retention, so the hours hold at least what it held.
INSERT INTO rollup_1d (vehicle_id, signal, bucket, n, total, min_value, max_value)
SELECT vehicle_id, signal, time_bucket(interval '1 day', bucket), sum(n)::bigint, sum(total),
       min(min_value), max(max_value)
FROM rollup_1h
GROUP BY 1, 2, 3;

DROP MATERIALIZED VIEW samples_1d;
DROP MATERIALIZED VIEW samples_1h;
DROP MATERIALIZED VIEW samples_1m;

-- As on plain PostgreSQL (0003_sample_blocks.native.sql): a block lies within one UTC minute.
CREATE VIEW samples_1m AS
SELECT vehicle_id, signal, minute AS bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM sample_blocks
GROUP BY vehicle_id, signal, minute;

-- The same views as 0007_current_rollups.native.sql (read there why they are current and exact).
CREATE VIEW samples_1h AS
SELECT vehicle_id, signal, bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_1h
      UNION ALL
      SELECT vehicle_id, signal, date_bin(interval '1 hour', bucket, timestamptz 'epoch'),
             n, total, min_value, max_value
      FROM rollup_log) AS r
GROUP BY vehicle_id, signal, bucket;

CREATE VIEW samples_1d AS
SELECT vehicle_id, signal, bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_1d
      UNION ALL
      SELECT vehicle_id, signal, date_bin(interval '1 day', bucket, timestamptz 'epoch'),
             n, total, min_value, max_value
      FROM rollup_log) AS r
GROUP BY vehicle_id, signal, bucket;
