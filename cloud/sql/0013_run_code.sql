-- 0013 a block's code as runs: each signal's first sample apart from the differences after it (same on
-- both flavours).
--
-- Bytes: 0010's code held, per sample, the difference of its signal id, seq, ts and steps from the
-- sample before in block order. A block holds ~70 signals' runs of ~6 samples each (a bus in
-- service, one minute), so one sample in six starts a run, and its ts and steps differences from the
-- previous signal's last sample are large: they set the width of the whole field (ts 2 bytes,
-- steps 4 bytes for every sample) and scatter non-zero bytes through its high planes, which pglz
-- then cannot squeeze. Now (cloud/blocks.py, block_code), six fields after an 8-byte head (their
-- widths, then the tick as uint16 little-endian):
--   * per run (one per signal, in the order of the block's `signals`): its count of samples, its first
--     sample's ticks since the minute, its first steps;
--   * per sample: seq as 0010 codes it;
--   * per sample after its run's first: ticks and steps since the sample before it.
-- The signal field is gone (a run's signal is its entry of `signals`). Byte planes, zigzag and the
-- tick as 0010. On the bench's fleet mix the code compresses to 2.87 bytes a sample where 0010's
-- took 3.23 (bench/storage_layout.py measures the whole table). Stored blocks are coded again here.
--
-- block_code() and block_entries() keep their signatures, so the reads created by 0010 and 0012
-- (which inline block_entries when they are planned) read the new code without being created again.

ALTER TABLE sample_blocks DROP CONSTRAINT sample_blocks_code_head;

-- The code of a block (the inverse of block_entries) from its samples in block order: signal ids,
-- seq - seq_min, ms since the minute, steps.
CREATE OR REPLACE FUNCTION block_code(p_signal integer[], p_seq bigint[], p_ts_ms integer[], p_steps bigint[])
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH t AS (
        SELECT coalesce(nullif(gcd_of(x.ms), 0), 1) AS tick FROM unnest(p_ts_ms) AS x(ms)),
    s AS (
        SELECT u.i, u.signal_id IS DISTINCT FROM lag(u.signal_id) OVER w AS first,
               u.seq - (row_number() OVER (ORDER BY u.ts, u.i) - 1) AS seq,
               u.ts / t.tick AS ticks, u.steps,
               u.ts / t.tick - lag(u.ts / t.tick) OVER w AS ts_step, u.steps - lag(u.steps) OVER w AS steps_step
        FROM unnest(p_signal, p_seq, p_ts_ms, p_steps) WITH ORDINALITY AS u(signal_id, seq, ts, steps, i), t
        WINDOW w AS (ORDER BY u.i)),
    r AS (
        SELECT s.i, lead(s.i, 1, cardinality(p_signal) + 1::bigint) OVER (ORDER BY s.i) - s.i AS count,
               s.ticks, s.steps
        FROM s WHERE s.first),
    e AS (  -- field, position within the field, value
        SELECT 0 AS f, r.i AS p, r.count AS x FROM r
        UNION ALL SELECT 1, r.i, r.ticks FROM r
        UNION ALL SELECT 2, r.i, r.steps FROM r
        UNION ALL SELECT 3, s.i, s.seq FROM s
        UNION ALL SELECT 4, s.i, s.ts_step FROM s WHERE NOT s.first
        UNION ALL SELECT 5, s.i, s.steps_step FROM s WHERE NOT s.first),
    z AS (
        SELECT e.f, e.p, (e.x::bigint << 1) # (e.x::bigint >> 63) AS z FROM e),
    w AS (
        SELECT f.f, CASE WHEN coalesce(max(z.z), 0) = 0 THEN 0 WHEN max(z.z) < 256 THEN 1
                         WHEN max(z.z) < 65536 THEN 2 WHEN max(z.z) < 16777216 THEN 3 ELSE 4 END AS width
        FROM generate_series(0, 5) AS f(f) LEFT JOIN z ON z.f = f.f GROUP BY f.f)
    SELECT decode((SELECT string_agg(lpad(to_hex(w.width), 2, '0'), '' ORDER BY w.f) FROM w)
                  || (SELECT lpad(to_hex(t.tick & 255), 2, '0') || lpad(to_hex(t.tick >> 8), 2, '0') FROM t)
                  || coalesce((SELECT string_agg(lpad(to_hex((z.z >> (8 * k.k)) & 255), 2, '0'), ''
                                                 ORDER BY z.f, k.k, z.p)
                               FROM z JOIN w ON w.f = z.f, generate_series(0, 3) AS k(k)
                               WHERE k.k < w.width), ''), 'hex');
END;

-- Carry the stored blocks over: decoded by 0010's block_entries (replaced below), coded again.
UPDATE sample_blocks AS b
SET code = (SELECT block_code(array_agg(e.signal_id ORDER BY e.i), array_agg(e.seq - b.seq_min ORDER BY e.i),
                              array_agg(round(extract(epoch FROM e.ts - b.minute) * 1000)::integer ORDER BY e.i),
                              array_agg(e.steps ORDER BY e.i))
            FROM block_entries(b.minute, b.seq_min, b.n, b.signals, b.code, b.exact) AS e);

-- The samples of one block, in block order (i from 0): signal id, seq, ts, steps (the value in quanta
-- of its signal on the scaled path, 0 on the float path) and the exact value (the float path; NULL
-- elsewhere). Inlined by the planner into the reads. As in 0010: OFFSET 0 copies the block's code and
-- signals once (not once per get_byte or subscript), and the positions come from unnesting an array
-- of p_n zeros. A sample's run (from 1) is its bucket among the runs' `starts` (positions of their first
-- samples, from the counts).
CREATE OR REPLACE FUNCTION block_entries(p_minute timestamptz, p_seq_min bigint, p_n integer, p_signals integer[],
                                         p_code bytea, p_exact double precision[])
RETURNS TABLE (i bigint, signal_id integer, seq bigint, ts timestamptz, steps bigint, exact double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT d.i, d.signal_id, p_seq_min + row_number() OVER (ORDER BY d.ts_ms, d.i) - 1 + d.seq,
           p_minute + d.ts_ms * interval '1 millisecond', d.steps, d.exact
    FROM (SELECT x.i, x.signal_id, x.seq, sum(x.ts) OVER w * x.tick AS ts_ms, sum(x.steps) OVER w AS steps,
                 x.exact
          FROM (SELECT p.i, p.tick, p.run, p.signals[p.run] AS signal_id,
                       code_field(p.code, p_n, p.at_seq, p.w3, p.i) AS seq,
                       CASE WHEN p.first THEN code_field(p.code, p.r, p.at_first, p.w1, p.run - 1)
                            ELSE code_field(p.code, p_n - p.r, p.at_ts, p.w4, p.later) END AS ts,
                       CASE WHEN p.first THEN code_field(p.code, p.r, p.at_base, p.w2, p.run - 1)::bigint
                            ELSE code_field(p.code, p_n - p.r, p.at_steps, p.w5, p.later) END AS steps,
                       p.exact
                FROM (SELECT c.code, c.signals, h.*, k.i, m.run, m.first, k.i - m.run AS later, g.exact
                      FROM (SELECT p_code || ''::bytea AS code, p_signals || '{}'::integer[] AS signals OFFSET 0) AS c,
                           LATERAL (SELECT v.*, 8 + v.r * v.w0 AS at_first, 8 + v.r * (v.w0 + v.w1) AS at_base,
                                           8 + v.r * (v.w0 + v.w1 + v.w2) AS at_seq,
                                           8 + v.r * (v.w0 + v.w1 + v.w2) + p_n * v.w3 AS at_ts,
                                           8 + v.r * (v.w0 + v.w1 + v.w2) + p_n * v.w3 + (p_n - v.r) * v.w4 AS at_steps
                                    FROM (SELECT get_byte(c.code, 0) AS w0, get_byte(c.code, 1) AS w1,
                                                 get_byte(c.code, 2) AS w2, get_byte(c.code, 3) AS w3,
                                                 get_byte(c.code, 4) AS w4, get_byte(c.code, 5) AS w5,
                                                 get_byte(c.code, 6) | (get_byte(c.code, 7) << 8) AS tick,
                                                 cardinality(c.signals) AS r OFFSET 0) AS v
                                    OFFSET 0) AS h,
                           LATERAL (SELECT array_agg(s.start ORDER BY s.run) AS starts
                                    FROM (SELECT q.run, (sum(q.count) OVER (ORDER BY q.run) - q.count)::integer AS start
                                          FROM (SELECT q.run, code_field(c.code, h.r, 8, h.w0, q.run - 1) AS count
                                                FROM generate_series(1, h.r) AS q(run)) AS q) AS s
                                    OFFSET 0) AS runs,
                           ROWS FROM (unnest(array_fill(0, ARRAY[p_n])), unnest(p_exact))
                               WITH ORDINALITY AS g(zero, exact, ordinality),
                           LATERAL (SELECT (g.ordinality - 1)::integer AS i) AS k,
                           LATERAL (SELECT width_bucket(k.i, runs.starts) AS run) AS m0,
                           LATERAL (SELECT m0.run, runs.starts[m0.run] = k.i AS first) AS m
                      OFFSET 0) AS p
                OFFSET 0) AS x
          WINDOW w AS (PARTITION BY x.run ORDER BY x.i)) AS d;
END;

ALTER TABLE sample_blocks ADD CONSTRAINT sample_blocks_code_head CHECK (octet_length(code) >= 8
    + cardinality(signals) * (get_byte(code, 0) + get_byte(code, 1) + get_byte(code, 2))
    + n * get_byte(code, 3) + (n - cardinality(signals)) * (get_byte(code, 4) + get_byte(code, 5))
    AND (exact IS NULL OR cardinality(exact) = n));
