-- 0004 reading samples out of sample_blocks, the same on both flavours. Plain SQL functions: the
-- planner inlines them, so a caller's conditions on vehicle_id and signal reach the blocks' primary
-- key and only the blocks of the range are unnested.

-- Every sample with p_from <= ts < p_to.
CREATE FUNCTION samples_between(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (vehicle_id text, seq bigint, ts timestamptz, signal text, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.vehicle_id, u.seq, u.ts, b.signal, u.value
    FROM sample_blocks AS b, unnest(b.seq, b.ts, b.value) AS u(seq, ts, value)
    WHERE b.minute >= date_bin(interval '1 minute', p_from, timestamptz 'epoch') AND b.minute < p_to
      AND b.ts_last >= p_from AND b.ts_first < p_to
      AND u.ts >= p_from AND u.ts < p_to
$$;

-- The last sample of one vehicle's signal at or before p_at (no row when there is none). It lies in
-- the minute of the latest block that starts at or before p_at: only that minute's blocks are read.
CREATE FUNCTION latest_sample(p_vehicle text, p_signal text, p_at timestamptz DEFAULT 'infinity')
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT u.ts, u.value
    FROM sample_blocks AS b, unnest(b.ts, b.value, b.seq) AS u(ts, value, seq)
    WHERE b.vehicle_id = p_vehicle AND b.signal = p_signal
      AND b.minute = (
          SELECT max(m.minute) FROM sample_blocks AS m
          WHERE m.vehicle_id = p_vehicle AND m.signal = p_signal AND m.minute <= p_at AND m.ts_first <= p_at)
      AND b.ts_first <= p_at AND u.ts <= p_at
    ORDER BY u.ts DESC, u.seq DESC
    LIMIT 1
$$;
