-- 0007 rollups current on read, plain PostgreSQL. The hour and day rollups the receiver refreshes
-- every database.rollup_refresh_s (cloud/store.py, refresh_rollups) lagged that long behind the
-- writes: the refreshed sums move to the tables rollup_1h and rollup_1d, and samples_1h and
-- samples_1d become views adding what each write logged in rollup_log since the last refresh, so a
-- read right after a write sees it (today's day included). A refresh moves minute aggregates from
-- the log into the tables in one transaction: a reader sees each either here or there, never twice.
-- Same views as 0007_current_rollups.timescale.sql: both flavours keep their rollups the same way.

ALTER TABLE samples_1h RENAME TO rollup_1h;
ALTER TABLE samples_1d RENAME TO rollup_1d;

-- A reader's conditions on vehicle_id, signal and bucket reach both branches (they are grouping
-- columns): the tables by primary key, the log (one refresh interval of minutes) by a scan.
CREATE VIEW samples_1h AS
SELECT vehicle_id, signal, bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_1h
      UNION ALL
      SELECT vehicle_id, signal, date_bin(interval '1 hour', bucket, timestamptz 'epoch'),
             n, total, min_value, max_value
      FROM rollup_log) AS r
GROUP BY vehicle_id, signal, bucket;

CREATE VIEW samples_1d AS
SELECT vehicle_id, signal, bucket, sum(n)::bigint AS n, sum(total) AS total,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM (SELECT vehicle_id, signal, bucket, n, total, min_value, max_value FROM rollup_1d
      UNION ALL
      SELECT vehicle_id, signal, date_bin(interval '1 day', bucket, timestamptz 'epoch'),
             n, total, min_value, max_value
      FROM rollup_log) AS r
GROUP BY vehicle_id, signal, bucket;
