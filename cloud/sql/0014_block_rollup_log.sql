-- 0014 the rollup log of a whole inserted block in one row (same on both flavours).
--
-- Each write logged the minute aggregates of what it inserted one row per block and signal in
-- rollup_log (0003, 0007): at the density a bus in service sends, a row for every 4 to 5 samples,
-- about a third of the write's database time (bench/cloud_ingest.py), and as many rows again for the
-- refresh to delete. A block inserted whole now logs one row here, its signals' aggregates side by side
-- in arrays (element k of each array is signal k's; `signals` holds the sample_signals ids of their
-- float paths, which stand for the names); rollup_log keeps the rest (the samples a merged block kept,
-- computed in SQL). refresh_rollups (cloud/store.py) takes both out in one transaction and
-- samples_1h / samples_1d add both, so every read stays current and every aggregate counts once.

CREATE TABLE rollup_block_log (
    vehicle_id  text NOT NULL,
    minute      timestamptz NOT NULL,
    signals     integer[] NOT NULL,
    n           integer[] NOT NULL,
    total       double precision[] NOT NULL,
    min_value   double precision[] NOT NULL,
    max_value   double precision[] NOT NULL
);

-- Both logs as minute aggregates, one row per vehicle, signal and minute of each logged block.
CREATE VIEW rollup_log_minutes AS
SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_log
UNION ALL
SELECT b.vehicle_id, d.name, b.minute, u.n, u.total, u.min_value, u.max_value
FROM rollup_block_log AS b,
     unnest(b.signals, b.n, b.total, b.min_value, b.max_value) AS u(signal_id, n, total, min_value, max_value)
     JOIN sample_signals AS d ON d.id = u.signal_id;

CREATE OR REPLACE VIEW samples_1h AS
SELECT vehicle_id, signal, bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_1h
      UNION ALL
      SELECT vehicle_id, signal, date_bin(interval '1 hour', bucket, timestamptz 'epoch'),
             n, total, min_value, max_value
      FROM rollup_log_minutes) AS r
GROUP BY vehicle_id, signal, bucket;

CREATE OR REPLACE VIEW samples_1d AS
SELECT vehicle_id, signal, bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_1d
      UNION ALL
      SELECT vehicle_id, signal, date_bin(interval '1 day', bucket, timestamptz 'epoch'),
             n, total, min_value, max_value
      FROM rollup_log_minutes) AS r
GROUP BY vehicle_id, signal, bucket;
