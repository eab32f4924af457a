-- 0016 each vehicle's latest samples in one row (same on both flavours).
--
-- 0012 kept the latest sample of every vehicle and signal as a row of `latest_samples`, and every write
-- group updated one row per vehicle and signal it carried: at the density a bus in service sends (~75
-- signals in a 60 s message, one update per ~6 samples) that was 27 of the 35 ms of the write statement
-- (EXPLAIN ANALYZE of cloud/sample_store.py's statement on a group of bench/cloud_ingest.py's agent
-- workload, 7,500 row updates). Now a vehicle's latest samples are one row, its signals side by side
-- in arrays (element k of each is signal k's; `signals` holds the sample_signals ids of their float
-- paths, which stand for the names), and a write group updates one row per vehicle: it
-- merges the row with the group's latest samples (cloud/sample_store.py). The vehicle rows locked first
-- in the write keep other replicas off the same rows.
--
-- A row of 75 signals is ~2.2 kB; toast_tuple_target keeps rows up to a page inline and uncompressed
-- (no TOAST work on every update) and fillfactor 50 leaves room on each page for the next version
-- (a heap-only update, as 0015 did for latest_samples).

CREATE TABLE latest_values (
    vehicle_id  text PRIMARY KEY,
    signals     integer[] NOT NULL,
    ts          timestamptz[] NOT NULL,
    seq         bigint[] NOT NULL,
    value       double precision[] NOT NULL
) WITH (fillfactor = 50, toast_tuple_target = 8160);

-- every name kept so far has its float path (the receiver learns both paths of a name at once)
INSERT INTO sample_signals (name) SELECT DISTINCT signal FROM latest_samples ON CONFLICT DO NOTHING;

INSERT INTO latest_values (vehicle_id, signals, ts, seq, value)
SELECT l.vehicle_id, array_agg(d.id ORDER BY d.id), array_agg(l.ts ORDER BY d.id),
       array_agg(l.seq ORDER BY d.id), array_agg(l.value ORDER BY d.id)
FROM latest_samples AS l JOIN sample_signals AS d ON d.name = l.signal AND d.quantum IS NULL
GROUP BY l.vehicle_id;

-- The last sample of one vehicle's signal at or before p_at (no row when there is none): the kept
-- latest one when it is at or before p_at, else (the latest is after p_at) the walk over the blocks
-- (0012's latest_sample_walk). The outer LIMIT stops at the first branch that answers.
CREATE OR REPLACE FUNCTION latest_sample(p_vehicle text, p_signal text, p_at timestamptz DEFAULT 'infinity')
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT x.ts, x.value FROM (
        (SELECT l.ts[k.k], l.value[k.k]
         FROM latest_values AS l,
              LATERAL (SELECT array_position(l.signals, d.id) AS k FROM sample_signals AS d
                       WHERE d.name = p_signal AND d.quantum IS NULL) AS k
         WHERE l.vehicle_id = p_vehicle AND l.ts[k.k] <= p_at)
        UNION ALL
        (SELECT w.ts, w.value
         FROM latest_values AS l,
              LATERAL (SELECT array_position(l.signals, d.id) AS k FROM sample_signals AS d
                       WHERE d.name = p_signal AND d.quantum IS NULL) AS k,
              latest_sample_walk(p_vehicle, p_signal, p_at) AS w
         WHERE l.vehicle_id = p_vehicle AND l.ts[k.k] > p_at)) AS x
    LIMIT 1;
END;

DROP TABLE latest_samples;

-- The kept latest samples one row per vehicle and signal, for reading by hand.
CREATE VIEW latest_samples AS
SELECT l.vehicle_id, d.name AS signal, u.ts, u.seq, u.value
FROM latest_values AS l,
     unnest(l.signals, l.ts, l.seq, l.value) AS u(signal_id, ts, seq, value)
     JOIN sample_signals AS d ON d.id = u.signal_id;
