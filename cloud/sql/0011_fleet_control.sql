-- 0011 fleet control: what the cloud wants each bus to run (configuration, signed models, rollouts) and what
-- each bus reports it has applied. The same on both flavours; it uses no table of another migration, so it
-- applies in any order with the versions around it. Written by `voltgate-cloud fleet` (cloud/fleet_cli.py),
-- published on the downlink and advanced by the receiver's fleet-control task (cloud/fleet_control.py).

-- One sequence for every change: a bus applies a desired message only when its revision is above the last
-- one it handled (protocols/fleet_control.py), so any change anywhere gets a number above all before it.
CREATE SEQUENCE fleet_revision;

-- Desired settings (section → setting → value) of a fleet (vehicle_id '') or of one bus; a bus runs its
-- fleet's settings with its own over them, key by key.
CREATE TABLE desired_config (
    fleet       text NOT NULL,
    vehicle_id  text NOT NULL DEFAULT '',
    settings    jsonb NOT NULL,
    revision    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, vehicle_id)
);

-- A model as pushed: the bytes and the fleet key's Ed25519 signature over name, feature version, SHA-256.
CREATE TABLE model_releases (
    release_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fleet            text NOT NULL,
    name             text NOT NULL,
    feature_version  text NOT NULL,
    sha256           bytea NOT NULL CHECK (octet_length(sha256) = 32),
    key_id           text NOT NULL,
    signature        bytea NOT NULL CHECK (octet_length(signature) = 64),
    model            bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- A release going out to a fleet: its canaries first (named, or a percentage of the fleet's buses chosen at
-- push time), then every bus of the fleet. `halted` keeps why (a canary's failure, a newer rollout).
CREATE TABLE rollouts (
    rollout_id  text PRIMARY KEY,
    release_id  bigint NOT NULL REFERENCES model_releases,
    fleet       text NOT NULL,
    name        text NOT NULL,
    revision    bigint NOT NULL UNIQUE,
    canaries    text[] NOT NULL,
    percent     double precision CHECK (percent > 0 AND percent <= 100),
    state       text NOT NULL CHECK (state IN ('canary', 'rolling', 'done', 'halted')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollouts_fleet_name ON rollouts (fleet, name, revision);

-- The latest applied report of each bus (its retained `applied` message), as decoded: config is an outcome
-- or null, models maps a model name to its outcome (protocols/fleet_control.py).
CREATE TABLE applied_reports (
    fleet        text NOT NULL,
    vehicle_id   text NOT NULL,
    reported_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    config       jsonb,
    models       jsonb NOT NULL,
    PRIMARY KEY (fleet, vehicle_id)
);
