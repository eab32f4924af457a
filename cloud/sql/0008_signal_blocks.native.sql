-- 0008 a few bytes per stored sample, plain PostgreSQL: a block holds one vehicle's samples of ALL
-- its signals in one UTC minute of one received message (was: of one signal), coded to compress.
--
-- Why: a parked bus sends ~66 samples a minute over ~50 signals, so blocks of one signal held one
-- sample each and cost ~375 bytes per sample; a moving bus's cost ~94. One block per vehicle, minute
-- and message carries ~600 samples (moving) or ~66 (parked) behind one row header and one index entry,
-- and its arrays are compressed in TOAST (pglz; toast_tuple_target 128, set on every partition since a
-- partitioned table takes no storage parameters, sends every block there):
-- bench/storage_layout.py measures it. The samples in a block are in (signal id, ts, seq) order, so
-- each signal's samples make a run, and `code` holds per sample four int32 numbers, each the
-- difference from what the sample before predicts (cloud/blocks.py, block_code):
--
--   signal  its id in sample_signals minus the previous sample's (0 within a run)
--   seq     seq - seq_min minus the sample's rank in (ts, position) order (0 where seq follows time)
--   ts      ms since the previous sample (the first: since `minute`): the sampling period in a run
--   steps   its value in quanta of its signal minus the previous sample's (0 on the float path)
--
-- each zigzag-coded (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...) and split into byte planes (per field the
-- samples' low bytes, then their second bytes, ...; as protocols/wire.py does on the wire): long runs
-- of equal bytes, which pglz compresses to a few bits. `exact` holds the value itself for samples on
-- the float path (NULL elsewhere; the column is NULL when the block has none). 0009's block_entries()
-- decodes a block in plain SQL (get_byte, running sums).
--
-- A sample takes the scaled path when its signal has a quantum (protocols/catalog.toml, the same
-- quanta the wire uses) and quantum * steps gives back exactly its value (compared bit for bit), else
-- the float path: every value is stored exactly. A signal's two paths are two sample_signals rows
-- (name, quantum) and (name, NULL). The receiver lays blocks out with numpy (cloud/blocks.py,
-- cloud/block_rows.py) and keeps a block's seq span below 2^30 (it splits a block otherwise) and its
-- steps below 2^30 in size (else the float path), so the int32 differences never overflow.
--
-- De-duplication stays exact per sample on (vehicle, seq, ts) (cloud/sample_store.py): above the
-- vehicle's high-water marks a block is new; else a block stored as it is is skipped, one whose seq
-- and time ranges meet no stored block of its vehicle and minute is inserted whole, and one that does
-- is decoded with those blocks and keeps the samples not stored yet.
-- samples_1m (n, total, min, max per vehicle, signal and minute) is a view decoding the blocks: exact
-- and current; the hour and day rollups are fed from rollup_log, which each write fills with the
-- minute aggregates the receiver computed (numpy) for the samples it inserted.

-- Signal dictionary: ids are never reused or changed, so a stored block never needs rewriting.
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
ALTER TABLE sample_blocks RENAME TO sample_blocks_v3;
ALTER INDEX sample_blocks_pkey RENAME TO sample_blocks_v3_pkey;
ALTER INDEX sample_blocks_minute_brin RENAME TO sample_blocks_v3_minute_brin;
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'sample_blocks_v3'::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', part, replace(part, 'sample_blocks_', 'sample_blocks_v3_'));
    END LOOP;
END $$;

CREATE TABLE sample_blocks (
    vehicle_id  text NOT NULL,
    minute      timestamptz NOT NULL,     -- the UTC minute that holds all the block's samples
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
) PARTITION BY RANGE (minute);
CREATE INDEX sample_blocks_minute_brin ON sample_blocks USING brin (minute);

DO $$
DECLARE
    part text;
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'sample_blocks_v3'::regclass ORDER BY 1 LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF sample_blocks FOR VALUES FROM (%L) TO (%L)',
            replace(part, 'sample_blocks_v3_', 'sample_blocks_'),
            to_date(right(part, 8), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC',
            (to_date(right(part, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC');
        EXECUTE format('ALTER TABLE %I SET (toast_tuple_target = 128)',
                       replace(part, 'sample_blocks_v3_', 'sample_blocks_'));
    END LOOP;
END $$;

-- The partitions the receiver creates from now on get the same storage parameter (cloud/schema.py).
-- 0009_signal_block_reads.sql carries the stored samples over and drops sample_blocks_v3.
