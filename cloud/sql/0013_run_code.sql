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
-- tick as 0010. bench/storage_layout.py (its default fleet mix, TimescaleDB compressed): 3.68 bytes a
-- sample where 0010's code gave 4.02.
--
-- The first byte tells the two codes apart: 0010's is a width (0 to 4), this one's is 128 + the
-- counts' width. Stored blocks keep 0010's code, and block_entries reads both. Coding them again in
-- SQL, as 0010 did with 0009's, runs at tens of thousands of samples a second: years for a large
-- fleet's 90 days, in one transaction. New blocks, and blocks merged with late samples, take this code.
--
-- block_code() and block_entries() keep their signatures, so the reads created by 0010 and 0012
-- (which inline block_entries when they are planned) read both codes without being created again.

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
    SELECT decode((SELECT string_agg(lpad(to_hex(w.width + CASE WHEN w.f = 0 THEN 128 ELSE 0 END), 2, '0'), ''
                                      ORDER BY w.f) FROM w)
                  || (SELECT lpad(to_hex(t.tick & 255), 2, '0') || lpad(to_hex(t.tick >> 8), 2, '0') FROM t)
                  || coalesce((SELECT string_agg(lpad(to_hex((z.z >> (8 * k.k)) & 255), 2, '0'), ''
                                                 ORDER BY z.f, k.k, z.p)
                               FROM z JOIN w ON w.f = z.f, generate_series(0, 3) AS k(k)
                               WHERE k.k < w.width), ''), 'hex');
END;

-- The samples of one block, in block order (i from 0): signal id, seq, ts, steps (the value in quanta
-- of its signal on the scaled path, 0 on the float path) and the exact value (the float path; NULL
-- elsewhere). Inlined by the planner into the reads. As in 0010: OFFSET 0 copies the block's code and
-- signals once (not once per get_byte or subscript), and the positions come from unnesting an array
-- of p_n zeros.
--
-- One pipeline reads both codes; `h` (once per block) says where each field lies. Run code: a
-- sample's run (from 1) is its bucket among the runs' `starts` (positions of their first samples,
-- from the counts); a run's first sample takes its ts and steps from the run heads, the others their
-- differences; the signal is the run's entry of `signals`. 0010's code is one run of the whole block
-- whose every sample takes its differences (signal too) from the per-sample planes.
CREATE OR REPLACE FUNCTION block_entries(p_minute timestamptz, p_seq_min bigint, p_n integer, p_signals integer[],
                                         p_code bytea, p_exact double precision[])
RETURNS TABLE (i bigint, signal_id integer, seq bigint, ts timestamptz, steps bigint, exact double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT d.i, d.signal_id, p_seq_min + row_number() OVER (ORDER BY d.ts_ms, d.i) - 1 + d.seq,
           p_minute + d.ts_ms * interval '1 millisecond', d.steps, d.exact
    FROM (SELECT x.i, (x.signals[x.run] + sum(x.signal_step) OVER w)::integer AS signal_id, x.seq,
                 sum(x.ts) OVER w * x.tick AS ts_ms, sum(x.steps) OVER w AS steps, x.exact
          FROM (SELECT p.i, p.tick, p.run, p.signals,
                       code_field(p.code, p_n, 6, p.w_signal, p.i) AS signal_step,
                       code_field(p.code, p_n, p.at_seq, p.w_seq, p.i) AS seq,
                       CASE WHEN p.first THEN code_field(p.code, p.r, p.at_first, p.w_first, p.run - 1)
                            ELSE code_field(p.code, p.later_n, p.at_ts, p.w_ts, p.later) END AS ts,
                       CASE WHEN p.first THEN code_field(p.code, p.r, p.at_base, p.w_base, p.run - 1)::bigint
                            ELSE code_field(p.code, p.later_n, p.at_steps, p.w_steps, p.later) END AS steps,
                       p.exact
                FROM (SELECT c.code, c.signals, h.*, k.i, m.run, h.runs AND runs.starts[m.run] = k.i AS first,
                             CASE WHEN h.runs THEN k.i - m.run ELSE k.i END AS later, g.exact
                      FROM (SELECT p_code || ''::bytea AS code, p_signals || '{}'::integer[] AS signals OFFSET 0) AS c,
                           LATERAL (SELECT v.runs, v.tick, v.r,
                                           CASE WHEN v.runs THEN 0 ELSE v.b0 END AS w_signal,
                                           CASE WHEN v.runs THEN v.b3 ELSE v.b1 END AS w_seq,
                                           v.b0 AS w_count, v.b1 AS w_first, v.b2 AS w_base,
                                           CASE WHEN v.runs THEN v.b4 ELSE v.b2 END AS w_ts,
                                           CASE WHEN v.runs THEN v.b5 ELSE v.b3 END AS w_steps,
                                           CASE WHEN v.runs THEN p_n - v.r ELSE p_n END AS later_n,
                                           8 + v.r * v.b0 AS at_first, 8 + v.r * (v.b0 + v.b1) AS at_base,
                                           CASE WHEN v.runs THEN 8 + v.r * (v.b0 + v.b1 + v.b2)
                                                ELSE 6 + p_n * v.b0 END AS at_seq,
                                           CASE WHEN v.runs THEN 8 + v.r * (v.b0 + v.b1 + v.b2) + p_n * v.b3
                                                ELSE 6 + p_n * (v.b0 + v.b1) END AS at_ts,
                                           CASE WHEN v.runs THEN 8 + v.r * (v.b0 + v.b1 + v.b2) + p_n * v.b3
                                                                 + (p_n - v.r) * v.b4
                                                ELSE 6 + p_n * (v.b0 + v.b1 + v.b2) END AS at_steps
                                    FROM (SELECT u.*, CASE WHEN u.runs THEN get_byte(c.code, 6) | (get_byte(c.code, 7) << 8)
                                                           ELSE get_byte(c.code, 4) | (get_byte(c.code, 5) << 8) END AS tick
                                          FROM (SELECT get_byte(c.code, 0) >= 128 AS runs, get_byte(c.code, 0) & 127 AS b0,
                                                       get_byte(c.code, 1) AS b1, get_byte(c.code, 2) AS b2,
                                                       get_byte(c.code, 3) AS b3, get_byte(c.code, 4) AS b4,
                                                       get_byte(c.code, 5) AS b5, cardinality(c.signals) AS r) AS u
                                          OFFSET 0) AS v
                                    OFFSET 0) AS h,
                           LATERAL (SELECT coalesce(array_agg(s.start ORDER BY s.run), '{0}') AS starts
                                    FROM (SELECT q.run, (sum(q.count) OVER (ORDER BY q.run) - q.count)::integer AS start
                                          FROM (SELECT q.run, code_field(c.code, h.r, 8, h.w_count, q.run - 1) AS count
                                                FROM generate_series(1, CASE WHEN h.runs THEN h.r ELSE 0 END) AS q(run)) AS q) AS s
                                    OFFSET 0) AS runs,
                           ROWS FROM (unnest(array_fill(0, ARRAY[p_n])), unnest(p_exact))
                               WITH ORDINALITY AS g(zero, exact, ordinality),
                           LATERAL (SELECT (g.ordinality - 1)::integer AS i) AS k,
                           LATERAL (SELECT width_bucket(k.i, runs.starts) AS run) AS m
                      OFFSET 0) AS p
                OFFSET 0) AS x
          WINDOW w AS (PARTITION BY x.run ORDER BY x.i)) AS d;
END;

ALTER TABLE sample_blocks ADD CONSTRAINT sample_blocks_code_head CHECK ((exact IS NULL OR cardinality(exact) = n)
    AND CASE WHEN get_byte(code, 0) >= 128
             THEN octet_length(code) >= 8
                  + cardinality(signals) * ((get_byte(code, 0) & 127) + get_byte(code, 1) + get_byte(code, 2))
                  + n * get_byte(code, 3) + (n - cardinality(signals)) * (get_byte(code, 4) + get_byte(code, 5))
             ELSE octet_length(code) >= 6 + n * (get_byte(code, 0) + get_byte(code, 1) + get_byte(code, 2)
                                                  + get_byte(code, 3)) END);
