-- 0012 each vehicle's latest sample per signal, kept as the receiver writes (same on both flavours).
--
-- The fleet list asks, per bus, for the latest SOC, speed, voltage, current and position: six
-- latest_sample() calls a bus, each decoding the blocks of the minute that holds the answer. At 1,000
-- buses that took seconds (bench/fleet_position.py). The receiver now keeps each vehicle's latest
-- sample of each signal (by ts, then seq) in `latest_samples`, in the same transaction as the blocks
-- (cloud/sample_store.py, from the staged blocks' statistics), so reading "the latest" is one index
-- lookup. latest_sample() answers from it whenever that row is at or before p_at; only an earlier
-- instant walks the blocks as before (`latest_sample_walk`, 0010's body), and a signal the vehicle
-- never sent (no row) answers at once with nothing.

CREATE TABLE latest_samples (
    vehicle_id text NOT NULL,
    signal text NOT NULL,
    ts timestamptz NOT NULL,
    seq bigint NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (vehicle_id, signal)
);

INSERT INTO latest_samples (vehicle_id, signal, ts, seq, value)
SELECT DISTINCT ON (vehicle_id, signal) vehicle_id, signal, ts, seq, value
FROM samples
ORDER BY vehicle_id, signal, ts DESC, seq DESC;

DROP FUNCTION latest_sample(text, text, timestamptz);

-- 0010's latest_sample(), unchanged: the last sample at or before p_at from the blocks.
CREATE FUNCTION latest_sample_walk(p_vehicle text, p_signal text, p_at timestamptz)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT x.ts, x.value FROM (
        (SELECT e.ts, coalesce(e.exact, e.steps * d.quantum) AS value
         FROM sample_blocks AS b,
              block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e
              JOIN sample_signals AS d ON d.id = e.signal_id
         WHERE b.vehicle_id = p_vehicle AND b.ts_first <= p_at AND b.minute = (SELECT m.minute FROM sample_blocks AS m
                 WHERE m.vehicle_id = p_vehicle AND m.minute <= p_at AND m.ts_first <= p_at
                   AND m.minute > (SELECT max(l.minute) FROM sample_blocks AS l
                                   WHERE l.vehicle_id = p_vehicle AND l.minute <= p_at) - interval '30 days'
                   AND m.signals && (SELECT array_agg(s.id) FROM sample_signals AS s WHERE s.name = p_signal)
                 ORDER BY m.minute DESC LIMIT 1)
           AND d.name = p_signal AND e.ts <= p_at
         ORDER BY e.ts DESC, e.seq DESC LIMIT 1)
        UNION ALL
        (SELECT e.ts, coalesce(e.exact, e.steps * d.quantum)
         FROM sample_blocks AS b,
              block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e
              JOIN sample_signals AS d ON d.id = e.signal_id
         WHERE b.vehicle_id = p_vehicle AND b.minute = (SELECT m.minute FROM sample_blocks AS m
                 WHERE m.vehicle_id = p_vehicle AND m.minute <= p_at - interval '1 minute'
                   AND m.minute > (SELECT max(l.minute) FROM sample_blocks AS l
                                   WHERE l.vehicle_id = p_vehicle AND l.minute <= p_at) - interval '30 days'
                   AND m.signals && (SELECT array_agg(s.id) FROM sample_signals AS s WHERE s.name = p_signal)
                 ORDER BY m.minute DESC LIMIT 1)
           AND d.name = p_signal
         ORDER BY e.ts DESC, e.seq DESC LIMIT 1)) AS x
    LIMIT 1;
END;

-- The last sample of one vehicle's signal at or before p_at (no row when there is none): the kept
-- latest one when it is at or before p_at, else (the latest is after p_at) the walk over the blocks.
-- The outer LIMIT stops at the first branch that answers.
CREATE FUNCTION latest_sample(p_vehicle text, p_signal text, p_at timestamptz DEFAULT 'infinity')
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT x.ts, x.value FROM (
        (SELECT l.ts, l.value FROM latest_samples AS l
         WHERE l.vehicle_id = p_vehicle AND l.signal = p_signal AND l.ts <= p_at)
        UNION ALL
        (SELECT w.ts, w.value FROM latest_samples AS l, latest_sample_walk(p_vehicle, p_signal, p_at) AS w
         WHERE l.vehicle_id = p_vehicle AND l.signal = p_signal AND l.ts > p_at)) AS x
    LIMIT 1;
END;
