-- 0010 narrower block code (same on both flavours), and reads that need no search_path.
--
-- Bytes: a block's `code` (0008) held 16 bytes per sample, four byte planes for each of its four
-- fields, most of them all zero, and timestamps in ms although the agent samples on a 100 ms grid.
-- Now (cloud/blocks.py, block_code):
--   * a 6-byte head: per field its width (0 to 4 bytes: as many as the block's largest zigzag code
--     of it needs), then the block's tick as uint16 little-endian: the greatest common divisor of
--     its samples' ms since the minute (1 when all are 0);
--   * then per field its `width` byte planes of n bytes (low bytes first), no others;
--   * ts counts ticks since the previous sample (the first: since the minute), and the first
--     sample's signal field is 0 (its id is the block's lowest: signals[1]); seq and steps as 0008.
-- bench/storage_layout.py measures the bytes. Stored blocks are coded again here.
--
-- Reads: the functions are SQL-standard bodies (BEGIN ATOMIC / RETURN), parsed when created, so the
-- objects they use are bound then, not looked up on the reader's search_path: a reader connected
-- with any search_path (Grafana's role, psql) reads `<schema>.samples`. The planner still inlines
-- them, so a read's conditions on vehicle and time reach the blocks' key and partitions / chunks.

DROP VIEW samples_1m;
DROP VIEW samples;
DROP FUNCTION samples_between(timestamptz, timestamptz);
DROP FUNCTION latest_sample(text, text, timestamptz);
DROP FUNCTION block_code(integer[], bigint[], integer[], bigint[]);

-- gcd over a set of integers (gcd(0, x) = x; 0 for none or all 0).
CREATE AGGREGATE gcd_of(integer) (SFUNC = gcd, STYPE = integer, INITCOND = '0');

-- The code of a block (the inverse of block_entries, as cloud/blocks.py codes it) from its samples
-- in block order: signal ids, seq - seq_min, ms since the minute, steps.
CREATE FUNCTION block_code(p_signal integer[], p_seq bigint[], p_ts_ms integer[], p_steps bigint[])
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH t AS (
        SELECT coalesce(nullif(gcd_of(x.ms), 0), 1) AS tick FROM unnest(p_ts_ms) AS x(ms)),
    s AS (
        SELECT u.i, u.signal_id - coalesce(lag(u.signal_id) OVER w, u.signal_id) AS signal_id,
               u.seq - (row_number() OVER (ORDER BY u.ts, u.i) - 1) AS seq,
               (u.ts - lag(u.ts, 1, 0) OVER w) / t.tick AS ts, u.steps - lag(u.steps, 1, 0::bigint) OVER w AS steps
        FROM unnest(p_signal, p_seq, p_ts_ms, p_steps) WITH ORDINALITY AS u(signal_id, seq, ts, steps, i), t
        WINDOW w AS (ORDER BY u.i)),
    f AS (
        SELECT s.i, f.f, (x.x << 1) # (x.x >> 63) AS z
        FROM s, generate_series(0, 3) AS f(f),
             LATERAL (SELECT CASE f.f WHEN 0 THEN s.signal_id::bigint WHEN 1 THEN s.seq
                                      WHEN 2 THEN s.ts::bigint ELSE s.steps END AS x) AS x),
    w AS (
        SELECT f.f, CASE WHEN max(f.z) = 0 THEN 0 WHEN max(f.z) < 256 THEN 1 WHEN max(f.z) < 65536 THEN 2
                         WHEN max(f.z) < 16777216 THEN 3 ELSE 4 END AS width
        FROM f GROUP BY f.f)
    SELECT decode((SELECT string_agg(lpad(to_hex(w.width), 2, '0'), '' ORDER BY w.f) FROM w)
                  || (SELECT lpad(to_hex(t.tick & 255), 2, '0') || lpad(to_hex(t.tick >> 8), 2, '0') FROM t)
                  || coalesce((SELECT string_agg(lpad(to_hex((f.z >> (8 * k.k)) & 255), 2, '0'), ''
                                                 ORDER BY f.f, k.k, f.i)
                               FROM f JOIN w ON w.f = f.f, generate_series(0, 3) AS k(k)
                               WHERE k.k < w.width), ''), 'hex');
END;

-- Carry the stored blocks over: decoded by 0009's block_entries, coded again.
DO $$
DECLARE
    old_check text;
BEGIN
    FOR old_check IN SELECT conname FROM pg_constraint WHERE conrelid = 'sample_blocks'::regclass
                     AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%octet_length(code)%' LOOP
        EXECUTE format('ALTER TABLE sample_blocks DROP CONSTRAINT %I', old_check);
    END LOOP;
END $$;
UPDATE sample_blocks AS b
SET code = (SELECT block_code(array_agg(e.signal_id ORDER BY e.i), array_agg(e.seq - b.seq_min ORDER BY e.i),
                              array_agg(round(extract(epoch FROM e.ts - b.minute) * 1000)::integer ORDER BY e.i),
                              array_agg(e.steps ORDER BY e.i))
            FROM block_entries(b.minute, b.seq_min, b.n, b.code, b.exact) AS e);
ALTER TABLE sample_blocks ADD CONSTRAINT sample_blocks_code_head CHECK (octet_length(code) >= 6 + n * (
    get_byte(code, 0) + get_byte(code, 1) + get_byte(code, 2) + get_byte(code, 3))
    AND (exact IS NULL OR cardinality(exact) = n));
DROP FUNCTION block_entries(timestamptz, bigint, integer, bytea, double precision[]);
DROP FUNCTION code_field(bytea, integer, integer, integer);

-- The zigzag-decoded field of sample p_i (from 0) whose p_width byte planes of p_n bytes start at
-- byte p_at of p_code.
CREATE FUNCTION code_field(p_code bytea, p_n integer, p_at integer, p_width integer, p_i integer)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (((CASE WHEN p_width > 0 THEN get_byte(p_code, p_at + p_i)::bigint ELSE 0 END
          | CASE WHEN p_width > 1 THEN get_byte(p_code, p_at + p_n + p_i)::bigint << 8 ELSE 0 END
          | CASE WHEN p_width > 2 THEN get_byte(p_code, p_at + 2 * p_n + p_i)::bigint << 16 ELSE 0 END
          | CASE WHEN p_width > 3 THEN get_byte(p_code, p_at + 3 * p_n + p_i)::bigint << 24 ELSE 0 END) >> 1)
        # -(CASE WHEN p_width > 0 THEN get_byte(p_code, p_at + p_i) & 1 ELSE 0 END)::bigint)::integer;

-- The samples of one block, in block order (i from 0): signal id, seq, ts, steps (the value in quanta
-- of its signal on the scaled path, 0 on the float path) and the exact value (the float path; NULL
-- elsewhere). Inlined by the planner into the queries below. As in 0009: OFFSET 0 copies the
-- block's code once (not once per get_byte or per sample), and the positions come from unnesting an
-- array of p_n zeros (the planner guesses 10 samples a block, and prices a one-bus read too low to
-- be JIT-compiled).
CREATE FUNCTION block_entries(p_minute timestamptz, p_seq_min bigint, p_n integer, p_signals integer[],
                              p_code bytea, p_exact double precision[])
RETURNS TABLE (i bigint, signal_id integer, seq bigint, ts timestamptz, steps bigint, exact double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT d.i, (p_signals[1] + d.signal_id)::integer, p_seq_min + row_number() OVER (ORDER BY d.ts_ms, d.i) - 1 + d.seq,
           p_minute + d.ts_ms * interval '1 millisecond', d.steps, d.exact
    FROM (SELECT x.i, sum(x.signal_id) OVER w AS signal_id, x.seq, (sum(x.ts) OVER w) * x.tick AS ts_ms,
                 sum(x.steps) OVER w AS steps, x.exact
          FROM (SELECT k.i, h.tick, code_field(c.code, p_n, 6, h.w0, k.i) AS signal_id,
                       code_field(c.code, p_n, 6 + p_n * h.w0, h.w1, k.i) AS seq,
                       code_field(c.code, p_n, 6 + p_n * (h.w0 + h.w1), h.w2, k.i) AS ts,
                       code_field(c.code, p_n, 6 + p_n * (h.w0 + h.w1 + h.w2), h.w3, k.i) AS steps, g.exact
                FROM (SELECT p_code || ''::bytea AS code OFFSET 0) AS c,
                     LATERAL (SELECT get_byte(c.code, 0) AS w0, get_byte(c.code, 1) AS w1, get_byte(c.code, 2) AS w2,
                                     get_byte(c.code, 3) AS w3, get_byte(c.code, 4) | (get_byte(c.code, 5) << 8) AS tick) AS h,
                     ROWS FROM (unnest(array_fill(0, ARRAY[p_n])), unnest(p_exact))
                         WITH ORDINALITY AS g(zero, exact, ordinality),
                     LATERAL (SELECT (g.ordinality - 1)::integer AS i) AS k
                OFFSET 0) AS x
          WINDOW w AS (ORDER BY x.i)) AS d;
END;

-- Sample rows, for reading by hand (every block of every day is decoded).
CREATE VIEW samples AS
SELECT b.vehicle_id, e.seq, e.ts, d.name AS signal, coalesce(e.exact, e.steps * d.quantum) AS value
FROM sample_blocks AS b,
     block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e
     JOIN sample_signals AS d ON d.id = e.signal_id;

-- Every sample with p_from <= ts < p_to: only the blocks (partitions, chunks) of the range are read.
CREATE FUNCTION samples_between(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (vehicle_id text, seq bigint, ts timestamptz, signal text, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT b.vehicle_id, e.seq, e.ts, d.name, coalesce(e.exact, e.steps * d.quantum)
    FROM sample_blocks AS b,
         block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e
         JOIN sample_signals AS d ON d.id = e.signal_id
    WHERE b.minute >= date_bin(interval '1 minute', p_from, timestamptz 'epoch') AND b.minute < p_to
      AND b.ts_last >= p_from AND b.ts_first < p_to
      AND e.ts >= p_from AND e.ts < p_to;
END;

-- The last sample of one vehicle's signal at or before p_at (no row when there is none), looked for
-- within the 30 days before the vehicle's latest block up to p_at (a signal the bus never sent costs
-- a walk over those days' blocks of the bus, not over all it ever sent). It lies in the latest minute up to p_at whose blocks hold the
-- signal unless all that minute's samples of it are after p_at (p_at's own minute): then in the
-- latest minute before, read only in that case (the outer LIMIT stops at the first branch).
CREATE FUNCTION latest_sample(p_vehicle text, p_signal text, p_at timestamptz DEFAULT 'infinity')
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

-- n / total / min / max per vehicle, signal and UTC minute, decoded from the blocks (exact; a block
-- lies within one minute). A caller's conditions on vehicle_id and bucket reach the blocks' key.
CREATE VIEW samples_1m AS
SELECT b.vehicle_id, d.name AS signal, b.minute AS bucket, count(*) AS n,
       sum(coalesce(e.exact, e.steps * d.quantum)) AS total,
       min(coalesce(e.exact, e.steps * d.quantum)) AS min_value,
       max(coalesce(e.exact, e.steps * d.quantum)) AS max_value
FROM sample_blocks AS b,
     block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e
     JOIN sample_signals AS d ON d.id = e.signal_id
GROUP BY b.vehicle_id, d.name, b.minute;
