-- 0002 time series, TimescaleDB 2.x: hypertables, compression, continuous aggregates.
-- Written against the TimescaleDB 2.x API (create_hypertable, add_compression_policy,
-- continuous aggregates on continuous aggregates need 2.9+, ON CONFLICT into compressed chunks 2.11+).
-- The retention policies of samples and ingest_ledger are set by the receiver at start from
-- database.raw_retention_days
-- (at least 7 days, always longer than the 3-day refresh window of samples_1m, so a refresh
-- never runs over raw data that retention has already dropped).

CREATE TABLE samples (
    vehicle_id  text NOT NULL,
    seq         bigint NOT NULL,
    ts          timestamptz NOT NULL,
    signal      text NOT NULL,
    value       double precision NOT NULL,
    PRIMARY KEY (vehicle_id, seq, ts)           -- a hypertable's unique keys must contain ts
);
-- Chunk sizing: 4,000 buses x 50 samples/s = 200k rows/s = 720M rows/h; at ~100 bytes per row with
-- its indexes that is ~70 GB/h before compression. One-hour chunks keep the chunk being written
-- (and its indexes) within a quarter of a large database host's memory at that load; a smaller
-- fleet can widen it with set_chunk_time_interval('samples', ...).
SELECT create_hypertable('samples', 'ts', chunk_time_interval => INTERVAL '1 hour');
CREATE INDEX samples_vehicle_ts ON samples (vehicle_id, ts DESC);
ALTER TABLE samples SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'vehicle_id',
    timescaledb.compress_orderby = 'ts DESC, seq DESC'
);
SELECT add_compression_policy('samples', compress_after => INTERVAL '2 days');

CREATE TABLE predictions (
    vehicle_id     text NOT NULL,
    seq            bigint NOT NULL,
    ts             timestamptz NOT NULL,
    model          text NOT NULL,
    model_version  text NOT NULL,
    output         text NOT NULL,
    value          double precision NOT NULL,
    PRIMARY KEY (vehicle_id, seq, ts)
);
SELECT create_hypertable('predictions', 'ts', chunk_time_interval => INTERVAL '7 days');
CREATE INDEX predictions_vehicle_ts ON predictions (vehicle_id, ts DESC);
ALTER TABLE predictions SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'vehicle_id',
    timescaledb.compress_orderby = 'ts DESC, seq DESC'
);
SELECT add_compression_policy('predictions', compress_after => INTERVAL '14 days');

CREATE TABLE ingest_ledger (
    received_at    timestamptz NOT NULL,
    topic          text NOT NULL,
    vehicle_id     text NOT NULL,
    kind           text NOT NULL,
    seq_first      bigint,
    seq_last       bigint,
    n_samples      integer NOT NULL,
    n_predictions  integer NOT NULL,
    n_alerts       integer NOT NULL,
    payload_bytes  integer NOT NULL
);
SELECT create_hypertable('ingest_ledger', 'received_at', chunk_time_interval => INTERVAL '1 day');
CREATE INDEX ingest_ledger_vehicle ON ingest_ledger (vehicle_id, received_at DESC);

-- Continuous aggregates minute -> hour -> day, re-aggregatable columns only (n, total, min, max).
CREATE MATERIALIZED VIEW samples_1m WITH (timescaledb.continuous) AS
SELECT vehicle_id, signal, time_bucket(INTERVAL '1 minute', ts) AS bucket,
       count(*) AS n, sum(value) AS total, min(value) AS min_value, max(value) AS max_value
FROM samples
GROUP BY vehicle_id, signal, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW samples_1h WITH (timescaledb.continuous) AS
SELECT vehicle_id, signal, time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(n)::bigint AS n, sum(total) AS total, min(min_value) AS min_value, max(max_value) AS max_value
FROM samples_1m
GROUP BY vehicle_id, signal, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW samples_1d WITH (timescaledb.continuous) AS
SELECT vehicle_id, signal, time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(n)::bigint AS n, sum(total) AS total, min(min_value) AS min_value, max(max_value) AS max_value
FROM samples_1h
GROUP BY vehicle_id, signal, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;

-- Refresh windows: each lies well inside the retention of its source (raw >= 7 days,
-- samples_1m 35 days, samples_1h and samples_1d kept), so no refresh can erase materialized
-- buckets whose source rows retention has dropped. Data older than a window (a bus offline for
-- days) is picked up by refresh_continuous_aggregate over that range, run by an operator.
SELECT add_continuous_aggregate_policy('samples_1m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('samples_1h',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes');
SELECT add_continuous_aggregate_policy('samples_1d',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');
SELECT add_retention_policy('samples_1m', drop_after => INTERVAL '35 days');
