-- 0015 room on every page of latest_samples for its rows' next versions (same on both flavours).
--
-- Every write group updates the latest sample of each vehicle and signal it carries (0012): at the
-- density a bus in service sends, one row update per ~6 samples, the largest part of the write's
-- database time. With pages full (fillfactor 100) an update's new version goes to another page and
-- every index gets a new entry; with half of each page free it stays on its page as a heap-only tuple
-- (HOT: no index entry, and the old version is pruned in place). The update's cost fell by about 30 %
-- (rolled-back trials of the write statement on the agent workload of bench/cloud_ingest.py). The table
-- holds one row per vehicle and signal, so the space it costs is bounded by the fleet, not by time.
-- Pages written from now on keep the room; VACUUM FULL or pg_repack gives it to the existing ones.

ALTER TABLE latest_samples SET (fillfactor = 50);
