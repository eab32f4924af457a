-- 0017 room on every page of the rollup tables for their rows' next versions (same on both flavours).
--
-- Every refresh (cloud/rollups.py, every database.rollup_refresh_s) adds into the hour and day rows of
-- what was written since the last one: after the first refresh of an hour nearly every hour row it
-- touches exists already (about 11 updates per row in its hour at the default 300 s), and a day row
-- is updated all day long. With pages full an update's new version goes to another page and the
-- primary key and the BRIN index get a new entry; with half of each page free it stays on its page as
-- a heap-only tuple (HOT: no index entry, the old version pruned in place). With it a refresh whose
-- buckets exist took 40 % of the database CPU time, the first one of an hour (its days exist) 60 %, the
-- first one of a day (all new) the same (bench/rollup_refresh.py beside a run with --fillfactor 100).
-- The price: the pages written from now on hold half as many rows, for ever in rollup_1h (hours are
-- kept for ever; a row of about 140 bytes takes 280; its indexes are unchanged); rollup_1d holds 24
-- times fewer rows. Pages written before keep their rows as they are (VACUUM FULL or pg_repack gives
-- them the room).

ALTER TABLE rollup_1h SET (fillfactor = 50);
ALTER TABLE rollup_1d SET (fillfactor = 50);
