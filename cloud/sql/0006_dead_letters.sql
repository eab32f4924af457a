-- 0006 dead letters, bounded, and refused records. The same on both flavours.
--
-- A payload is stored cut to database.dead_letter_payload_max_bytes; `payload_bytes` and
-- `payload_sha256` say what the whole was (the SHA-256 is NULL when the receiver did not hold the
-- bytes). The receiver's hourly maintenance deletes rows older than database.dead_letter_retention_days,
-- then the oldest rows while all of them together exceed database.dead_letter_max_total_bytes
-- (cloud/dead_letters.py), and cuts payloads stored longer than the limit (rows from before this
-- version: a 2 MiB one was kept whole).
--
-- Records are refused one by one, not messages: a message whose good records were stored and some
-- refused (a 2007 GPS fix, NaN, a NUL in a name) is one row whose `reason` sums them up
-- ("2 of 120 records refused: ts_too_old 1, value_not_finite 1"), `refused_records` counts them and
-- `refused` lists the first database.dead_letter_max_listed_records of them as
-- [{"seq", "ts_ms", "name", "reason", "value"}, ...] in seq order (a non-finite value as "nan", "inf"
-- or "-inf"). One row a message, not one a record: a bus with a broken clock refuses every record it
-- sends (up to 250,000 a message), and the payload kept as evidence is shared by them all. A whole
-- message refused has refused_records = 0 and no list.

ALTER TABLE dead_letters
    ADD COLUMN payload_bytes integer,
    ADD COLUMN payload_sha256 bytea,
    ADD COLUMN refused_records integer NOT NULL DEFAULT 0 CHECK (refused_records >= 0),
    ADD COLUMN refused jsonb;
UPDATE dead_letters SET payload_bytes = octet_length(payload), payload_sha256 = sha256(payload);
ALTER TABLE dead_letters ALTER COLUMN payload_bytes SET NOT NULL;
CREATE INDEX dead_letters_vehicle_received_at ON dead_letters (vehicle_id, received_at);
