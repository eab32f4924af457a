-- 0009 reading samples out of the blocks of 0008 (same on both flavours), and carrying the samples
-- of the version-3 blocks over. The read interface is unchanged: the `samples` view, samples_between(),
-- latest_sample() and the `samples_1m` view keep their names, columns and meaning.

-- The samples of one block, in block order, as stored: signal id, seq, ts, steps (the running sum of
-- the step column: the value in quanta on the scaled path, 0 on the float path) and the exact value
-- (the float path; NULL elsewhere). Inlined by the planner into the queries below; each block is
-- decoded on its own (the window runs over one block's unnested arrays).
CREATE FUNCTION block_entries(p_minute timestamptz, p_seq_min bigint, p_signal integer[], p_seq integer[],
                              p_ts integer[], p_step integer[], p_exact double precision[])
RETURNS TABLE (i bigint, signal_id integer, seq bigint, ts timestamptz, steps bigint, exact double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT u.i, u.signal_id, p_seq_min + sum(u.seq) OVER w,
           p_minute + sum(u.ts) OVER w * interval '1 millisecond', sum(u.step) OVER w, u.exact
    FROM unnest(p_signal, p_seq, p_ts, p_step, p_exact) WITH ORDINALITY AS u(signal_id, seq, ts, step, exact, i)
    WINDOW w AS (ORDER BY u.i)
$$;

-- Carry over: one block per vehicle and minute (version 3 held each sample once), all on the float
-- path (the values stay exact; the quanta are the receiver's, not the database's).
INSERT INTO sample_signals (name) SELECT DISTINCT signal FROM sample_blocks_v3 ON CONFLICT DO NOTHING;
INSERT INTO sample_blocks (vehicle_id, minute, seq_min, seq_max, ts_first, ts_last, n, signal, seq, ts, step, exact)
SELECT vehicle_id, minute, seq_min, max(seq), min(ts), max(ts), count(*)::integer,
       array_agg(signal_id ORDER BY i), array_agg((seq - coalesce(prev_seq, seq_min))::integer ORDER BY i),
       array_agg(round(extract(epoch FROM ts - coalesce(prev_ts, minute)) * 1000)::integer ORDER BY i),
       array_fill(0, ARRAY[count(*)::integer]), array_agg(value ORDER BY i)
FROM (SELECT u.*, row_number() OVER w AS i, lag(u.seq) OVER w AS prev_seq, lag(u.ts) OVER w AS prev_ts,
             min(u.seq) OVER (PARTITION BY u.vehicle_id, u.minute, u.span) AS seq_min
      FROM (SELECT b.vehicle_id, b.minute, d.id AS signal_id, x.seq, x.ts, x.value, x.seq >> 30 AS span
            FROM sample_blocks_v3 AS b JOIN sample_signals AS d ON d.name = b.signal AND d.quantum IS NULL,
                 unnest(b.seq, b.ts, b.value) AS x(seq, ts, value)) AS u
      WINDOW w AS (PARTITION BY u.vehicle_id, u.minute, u.span ORDER BY u.signal_id, u.ts, u.seq)) AS o
GROUP BY vehicle_id, minute, span, seq_min;
DROP TABLE sample_blocks_v3;

-- Sample rows as before, for reading by hand (every block of every day is decoded).
CREATE VIEW samples AS
SELECT b.vehicle_id, e.seq, e.ts, d.name AS signal, coalesce(e.exact, e.steps * d.quantum) AS value
FROM sample_blocks AS b,
     block_entries(b.minute, b.seq_min, b.signal, b.seq, b.ts, b.step, b.exact) AS e
     JOIN sample_signals AS d ON d.id = e.signal_id;

-- Every sample with p_from <= ts < p_to: only the blocks (partitions, chunks) of the range are read.
CREATE FUNCTION samples_between(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (vehicle_id text, seq bigint, ts timestamptz, signal text, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.vehicle_id, e.seq, e.ts, d.name, coalesce(e.exact, e.steps * d.quantum)
    FROM sample_blocks AS b,
         block_entries(b.minute, b.seq_min, b.signal, b.seq, b.ts, b.step, b.exact) AS e
         JOIN sample_signals AS d ON d.id = e.signal_id
    WHERE b.minute >= date_bin(interval '1 minute', p_from, timestamptz 'epoch') AND b.minute < p_to
      AND b.ts_last >= p_from AND b.ts_first < p_to
      AND e.ts >= p_from AND e.ts < p_to
$$;

-- The last sample of one vehicle's signal at or before p_at (no row when there is none). It lies in
-- the latest minute up to p_at whose blocks hold the signal (found walking the vehicle's blocks back
-- by primary key) unless all that minute's samples of it are after p_at (p_at's own minute): then
-- in the latest minute before, read only in that case (the outer LIMIT stops at the first branch).
CREATE FUNCTION latest_sample(p_vehicle text, p_signal text, p_at timestamptz DEFAULT 'infinity')
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT x.ts, x.value FROM (
        (SELECT e.ts, coalesce(e.exact, e.steps * d.quantum) AS value
         FROM sample_blocks AS b,
              block_entries(b.minute, b.seq_min, b.signal, b.seq, b.ts, b.step, b.exact) AS e
              JOIN sample_signals AS d ON d.id = e.signal_id
         WHERE b.vehicle_id = p_vehicle AND b.ts_first <= p_at AND b.minute = (SELECT m.minute FROM sample_blocks AS m
                 WHERE m.vehicle_id = p_vehicle AND m.minute <= p_at AND m.ts_first <= p_at
                   AND m.signal && (SELECT array_agg(id) FROM sample_signals WHERE name = p_signal)
                 ORDER BY m.minute DESC LIMIT 1)
           AND d.name = p_signal AND e.ts <= p_at
         ORDER BY e.ts DESC, e.seq DESC LIMIT 1)
        UNION ALL
        (SELECT e.ts, coalesce(e.exact, e.steps * d.quantum)
         FROM sample_blocks AS b,
              block_entries(b.minute, b.seq_min, b.signal, b.seq, b.ts, b.step, b.exact) AS e
              JOIN sample_signals AS d ON d.id = e.signal_id
         WHERE b.vehicle_id = p_vehicle AND b.minute = (SELECT m.minute FROM sample_blocks AS m
                 WHERE m.vehicle_id = p_vehicle AND m.minute <= p_at - interval '1 minute'
                   AND m.signal && (SELECT array_agg(id) FROM sample_signals WHERE name = p_signal)
                 ORDER BY m.minute DESC LIMIT 1)
           AND d.name = p_signal
         ORDER BY e.ts DESC, e.seq DESC LIMIT 1)) AS x
    LIMIT 1
$$;

-- n / total / min / max per vehicle, signal and UTC minute, decoded from the blocks (exact; a block
-- lies within one minute). A caller's conditions on vehicle_id and bucket reach the blocks' key.
CREATE VIEW samples_1m AS
SELECT b.vehicle_id, d.name AS signal, b.minute AS bucket, count(*) AS n,
       sum(coalesce(e.exact, e.steps * d.quantum)) AS total,
       min(coalesce(e.exact, e.steps * d.quantum)) AS min_value,
       max(coalesce(e.exact, e.steps * d.quantum)) AS max_value
FROM sample_blocks AS b,
     block_entries(b.minute, b.seq_min, b.signal, b.seq, b.ts, b.step, b.exact) AS e
     JOIN sample_signals AS d ON d.id = e.signal_id
GROUP BY b.vehicle_id, d.name, b.minute;
