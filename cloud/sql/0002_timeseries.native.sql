-- 0002 time series, plain PostgreSQL (no TimescaleDB): native range partitioning by day.
-- The receiver creates the daily partitions ahead (and on demand for late data) and drops
-- those past the retention; the rollup tables are maintained in the same transaction as the
-- inserts, from the rows actually inserted, so a redelivered batch changes nothing.

CREATE TABLE samples (
    vehicle_id  text NOT NULL,
    seq         bigint NOT NULL,
    ts          timestamptz NOT NULL,
    signal      text NOT NULL,
    value       double precision NOT NULL,
    PRIMARY KEY (vehicle_id, seq, ts)           -- the partition key must be in the unique key
) PARTITION BY RANGE (ts);
CREATE INDEX samples_ts_brin ON samples USING brin (ts);
CREATE INDEX samples_vehicle_ts ON samples (vehicle_id, ts);

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
CREATE INDEX predictions_vehicle_ts ON predictions (vehicle_id, ts);

-- One row per received batch message (redeliveries included), partitioned like samples.
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
) PARTITION BY RANGE (received_at);
CREATE INDEX ingest_ledger_received_at_brin ON ingest_ledger USING brin (received_at);
CREATE INDEX ingest_ledger_vehicle ON ingest_ledger (vehicle_id, received_at);

-- Rollups with the same names and columns as the TimescaleDB continuous aggregates.
-- Buckets are aligned on UTC (date_bin from the Unix epoch, as time_bucket does).
CREATE TABLE samples_1m (
    vehicle_id  text NOT NULL,
    signal      text NOT NULL,
    bucket      timestamptz NOT NULL,
    n           bigint NOT NULL,
    total       double precision NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    PRIMARY KEY (vehicle_id, signal, bucket)
);
CREATE INDEX samples_1m_bucket_brin ON samples_1m USING brin (bucket);
CREATE TABLE samples_1h (LIKE samples_1m INCLUDING ALL);
CREATE TABLE samples_1d (LIKE samples_1m INCLUDING ALL);
