-- 0009 reading samples out of the blocks of 0008 (same on both flavours), and carrying the samples
-- of the version-3 blocks over. The read interface is unchanged: the `samples` view, samples_between(),
-- latest_sample() and the `samples_1m` view keep their names, columns and meaning.

-- Field p_field (0 signal, 1 seq, 2 ts, 3 steps) of sample p_i (from 0) of a block of p_n samples:
-- its four byte planes start at (4 * p_field + byte) * p_n; zigzag decoded.
CREATE FUNCTION code_field(p_code bytea, p_n integer, p_field integer, p_i integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (((get_byte(p_code, 4 * p_field * p_n + p_i)::bigint
              | (get_byte(p_code, (4 * p_field + 1) * p_n + p_i)::bigint << 8)
              | (get_byte(p_code, (4 * p_field + 2) * p_n + p_i)::bigint << 16)
              | (get_byte(p_code, (4 * p_field + 3) * p_n + p_i)::bigint << 24)) >> 1)
            # -(get_byte(p_code, 4 * p_field * p_n + p_i) & 1)::bigint)::integer
$$;

-- The samples of one block, in block order (i from 0): signal id, seq, ts, steps (the value in quanta
-- of its signal on the scaled path, 0 on the float path) and the exact value (the float path; NULL
-- elsewhere). Inlined by the planner into the queries below. OFFSET 0 keeps two steps apart: the
-- block's code is copied once (each get_byte of the stored, TOAST-compressed value would decompress
-- it again), and the fields are taken out of it before the running sums sort the samples (sorting
-- rows that carry the code copies it once per sample). The positions come from unnesting an array of
-- p_n zeros rather than generate_series: the planner then guesses 10 samples a block, not 1,000, and
-- a one-bus read is not priced high enough to be JIT-compiled (seconds for these plans).
CREATE FUNCTION block_entries(p_minute timestamptz, p_seq_min bigint, p_n integer, p_code bytea,
                              p_exact double precision[])
RETURNS TABLE (i bigint, signal_id integer, seq bigint, ts timestamptz, steps bigint, exact double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT d.i, d.signal_id::integer, p_seq_min + row_number() OVER (ORDER BY d.ts_ms, d.i) - 1 + d.seq,
           p_minute + d.ts_ms * interval '1 millisecond', d.steps, d.exact
    FROM (SELECT x.i, sum(x.signal_id) OVER w AS signal_id, x.seq, sum(x.ts) OVER w AS ts_ms,
                 sum(x.steps) OVER w AS steps, x.exact
          FROM (SELECT k.i, code_field(c.code, p_n, 0, k.i) AS signal_id, code_field(c.code, p_n, 1, k.i) AS seq,
                       code_field(c.code, p_n, 2, k.i) AS ts, code_field(c.code, p_n, 3, k.i) AS steps, g.exact
                FROM (SELECT p_code || ''::bytea AS code OFFSET 0) AS c,
                     ROWS FROM (unnest(array_fill(0, ARRAY[p_n])), unnest(p_exact))
                         WITH ORDINALITY AS g(zero, exact, ordinality),
                     LATERAL (SELECT (g.ordinality - 1)::integer AS i) AS k
                OFFSET 0) AS x
          WINDOW w AS (ORDER BY x.i)) AS d
$$;

-- The code of a block (the inverse of block_entries, as cloud/blocks.py codes it) from its samples
-- in block order: signal ids, seq - seq_min, ms since the minute, steps.
CREATE FUNCTION block_code(p_signal integer[], p_seq bigint[], p_ts_ms integer[], p_steps bigint[])
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH s AS (
        SELECT u.i, u.signal_id - lag(u.signal_id, 1, 0) OVER w AS signal_id,
               (u.seq - (row_number() OVER (ORDER BY u.ts, u.i) - 1))::integer AS seq,
               u.ts - lag(u.ts, 1, 0) OVER w AS ts, (u.steps - lag(u.steps, 1, 0::bigint) OVER w)::integer AS steps
        FROM unnest(p_signal, p_seq, p_ts_ms, p_steps) WITH ORDINALITY AS u(signal_id, seq, ts, steps, i)
        WINDOW w AS (ORDER BY u.i)),
    f AS (
        SELECT s.i, f.f, CASE f.f WHEN 0 THEN s.signal_id WHEN 1 THEN s.seq WHEN 2 THEN s.ts ELSE s.steps END AS x
        FROM s, generate_series(0, 3) AS f(f))
    SELECT decode(string_agg(lpad(to_hex((((f.x << 1) # (f.x >> 31)) >> (8 * k.k)) & 255), 2, '0'), ''
                             ORDER BY f.f, k.k, f.i), 'hex')
    FROM f, generate_series(0, 3) AS k(k)
$$;

-- Carry over: one block per vehicle and minute (version 3 held each sample once), all on the float
-- path (the values stay exact; the quanta are the receiver's, not the database's).
INSERT INTO sample_signals (name) SELECT DISTINCT signal FROM sample_blocks_v3 ON CONFLICT DO NOTHING;
INSERT INTO sample_blocks (vehicle_id, minute, seq_min, seq_max, ts_first, ts_last, n, signals, code, exact)
SELECT vehicle_id, minute, seq_min, max(seq), min(ts), max(ts), count(*)::integer,
       array_agg(DISTINCT signal_id ORDER BY signal_id),
       block_code(array_agg(signal_id ORDER BY i), array_agg(seq - seq_min ORDER BY i),
                  array_agg(round(extract(epoch FROM ts - minute) * 1000)::integer ORDER BY i),
                  array_fill(0::bigint, ARRAY[count(*)::integer])),
       array_agg(value ORDER BY i)
FROM (SELECT u.*, row_number() OVER w AS i,
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
     block_entries(b.minute, b.seq_min, b.n, b.code, b.exact) AS e
     JOIN sample_signals AS d ON d.id = e.signal_id;

-- Every sample with p_from <= ts < p_to: only the blocks (partitions, chunks) of the range are read.
CREATE FUNCTION samples_between(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (vehicle_id text, seq bigint, ts timestamptz, signal text, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.vehicle_id, e.seq, e.ts, d.name, coalesce(e.exact, e.steps * d.quantum)
    FROM sample_blocks AS b,
         block_entries(b.minute, b.seq_min, b.n, b.code, b.exact) AS e
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
              block_entries(b.minute, b.seq_min, b.n, b.code, b.exact) AS e
              JOIN sample_signals AS d ON d.id = e.signal_id
         WHERE b.vehicle_id = p_vehicle AND b.ts_first <= p_at AND b.minute = (SELECT m.minute FROM sample_blocks AS m
                 WHERE m.vehicle_id = p_vehicle AND m.minute <= p_at AND m.ts_first <= p_at
                   AND m.signals && (SELECT array_agg(id) FROM sample_signals WHERE name = p_signal)
                 ORDER BY m.minute DESC LIMIT 1)
           AND d.name = p_signal AND e.ts <= p_at
         ORDER BY e.ts DESC, e.seq DESC LIMIT 1)
        UNION ALL
        (SELECT e.ts, coalesce(e.exact, e.steps * d.quantum)
         FROM sample_blocks AS b,
              block_entries(b.minute, b.seq_min, b.n, b.code, b.exact) AS e
              JOIN sample_signals AS d ON d.id = e.signal_id
         WHERE b.vehicle_id = p_vehicle AND b.minute = (SELECT m.minute FROM sample_blocks AS m
                 WHERE m.vehicle_id = p_vehicle AND m.minute <= p_at - interval '1 minute'
                   AND m.signals && (SELECT array_agg(id) FROM sample_signals WHERE name = p_signal)
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
     block_entries(b.minute, b.seq_min, b.n, b.code, b.exact) AS e
     JOIN sample_signals AS d ON d.id = e.signal_id
GROUP BY b.vehicle_id, d.name, b.minute;
