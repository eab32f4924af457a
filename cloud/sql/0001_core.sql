-- 0001 core: the tables that are the same with and without TimescaleDB.
-- Runs with search_path = <schema>, public; every object lands in the receiver's schema.

CREATE TABLE vehicles (
    vehicle_id            text PRIMARY KEY,
    fleet                 text NOT NULL,
    vin                   text,
    battery_capacity_kwh  double precision CHECK (battery_capacity_kwh > 0),
    first_seen            timestamptz NOT NULL DEFAULT now(),
    last_seen             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vehicles_fleet ON vehicles (fleet);
CREATE INDEX vehicles_vin ON vehicles (vin);  -- not unique: a wrong VIN in one status must not block ingest

-- The last retained status of each vehicle ("offline" is the MQTT last will).
CREATE TABLE vehicle_status (
    vehicle_id  text PRIMARY KEY,
    fleet       text NOT NULL,
    online      boolean NOT NULL,
    document    jsonb,
    updated_at  timestamptz NOT NULL
);

-- Raised and cleared alerts, idempotent on (vehicle, seq); ts is in the key as on the other tables.
CREATE TABLE alerts (
    vehicle_id  text NOT NULL,
    seq         bigint NOT NULL,
    ts          timestamptz NOT NULL,
    rule        text NOT NULL,
    severity    text NOT NULL,
    active      boolean NOT NULL,
    value       double precision,
    message     text NOT NULL,
    PRIMARY KEY (vehicle_id, seq, ts)
);
CREATE INDEX alerts_vehicle_ts ON alerts (vehicle_id, ts);
CREATE INDEX alerts_ts ON alerts (ts);

-- Messages that could not be stored as data, verbatim, with the reason.
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    vehicle_id   text,
    reason       text NOT NULL,
    payload      bytea NOT NULL
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);
