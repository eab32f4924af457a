-- 0008 a few bytes per stored sample, TimescaleDB 2.x: the layout of 0008_signal_blocks.native.sql
-- (read its header for the columns, why, and how de-duplication stays exact), with sample_blocks a
-- hypertable again, compressed after 2 days as before.
--
-- Chunks of 6 hours: a block row is one bus-minute (~600 samples moving, ~66 parked; ~5 KB moving
-- before TOAST compression, ~1 KB after), so 4,000 buses write ~0.6 GB an hour and the chunk being
-- written (~4 GB with its index) stays in memory; and a chunk's compressed batch per bus (segmentby
-- vehicle_id) holds up to 360 blocks, enough for its min/max metadata on minute to prune reads. The
-- column values are TOAST-compressed arrays already; TimescaleDB's compression mainly drops the row
-- headers and the primary key index of the old chunks (bench/storage_layout.py measures both).

CREATE TABLE sample_signals (
    id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL,
    quantum  double precision CHECK (quantum > 0 AND quantum < 'infinity'),  -- NULL: the float path
    UNIQUE NULLS NOT DISTINCT (name, quantum)
);

DROP VIEW samples_1m;
DROP VIEW samples;
DROP FUNCTION samples_between(timestamptz, timestamptz);
DROP FUNCTION latest_sample(text, text, timestamptz);
SELECT remove_compression_policy('sample_blocks', if_exists => true);
SELECT remove_retention_policy('sample_blocks', if_exists => true);
ALTER TABLE sample_blocks RENAME TO sample_blocks_v3;
ALTER INDEX sample_blocks_pkey RENAME TO sample_blocks_v3_pkey;
ALTER INDEX IF EXISTS sample_blocks_minute_idx RENAME TO sample_blocks_v3_minute_idx;

CREATE TABLE sample_blocks (
    vehicle_id  text NOT NULL,
    minute      timestamptz NOT NULL,
    seq_min     bigint NOT NULL,
    seq_max     bigint NOT NULL,
    ts_first    timestamptz NOT NULL,
    ts_last     timestamptz NOT NULL,
    n           integer NOT NULL CHECK (n > 0),
    signals     integer[] NOT NULL,       -- the ids of the signals it holds, ascending
    code        bytea NOT NULL,           -- per sample: signal, seq, ts and steps, coded (see the header)
    exact       double precision[],
    PRIMARY KEY (vehicle_id, minute, seq_min, ts_first),
    CHECK (minute = date_bin(interval '1 minute', ts_first, timestamptz 'epoch')
           AND ts_last >= ts_first AND ts_last < minute + interval '1 minute' AND seq_max >= seq_min),
    CHECK (octet_length(code) = 16 * n AND (exact IS NULL OR cardinality(exact) = n))
) WITH (toast_tuple_target = 128);
SELECT create_hypertable('sample_blocks', 'minute', chunk_time_interval => INTERVAL '6 hours',
                         create_default_indexes => false);  -- reads by time alone prune by chunk

ALTER TABLE sample_blocks SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'vehicle_id',
    timescaledb.compress_orderby = 'minute DESC, seq_min DESC, ts_first DESC'
);
SELECT add_compression_policy('sample_blocks', compress_after => INTERVAL '2 days');
-- The raw retention policy is the receiver's (database.raw_retention_days, Store.maintain).

-- 0009_signal_block_reads.sql carries the stored samples over and drops sample_blocks_v3.
