-- 0005 daily KPIs, trips and charging sessions per bus, kept for closed days (same on both flavours).
-- Rows are what cloud/kpis.py computes for one bus and one local day of the fleet's time zone
-- (`web.time_zone`, trip gap `web.trip_gap_s`): a trip or charging session that runs over midnight is
-- cut there, as at the ends of any range asked for. The receiver recomputes a bus-day after the day
-- has ended (`Store.materialize_kpis`); until then it is in `kpi_days_pending` and read on demand.

CREATE TABLE daily_kpis (
    vehicle_id          text NOT NULL,
    day                 date NOT NULL,
    distance_km         double precision,
    soc_start_pct       double precision,
    soc_end_pct         double precision,
    soc_min_pct         double precision,
    energy_used_kwh     double precision,
    energy_charged_kwh  double precision,
    kwh_per_km          double precision,
    moving_hours        double precision,
    alerts_raised       integer NOT NULL,
    critical_alerts     integer NOT NULL,
    gps_distance_km     double precision,
    utilization_pct     double precision,
    charging_events     integer NOT NULL,
    trip_count          integer NOT NULL,
    PRIMARY KEY (vehicle_id, day)
);
CREATE INDEX daily_kpis_day ON daily_kpis (day);  -- the whole fleet's days

-- `day` is the local day the trip (session) was computed in: the key of its recomputation.
CREATE TABLE trips (
    vehicle_id       text NOT NULL,
    day              date NOT NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz NOT NULL,
    duration_s       double precision NOT NULL,
    moving_s         double precision NOT NULL,
    distance_km      double precision,
    gps_distance_km  double precision,
    energy_used_kwh  double precision,
    kwh_per_km       double precision,
    soc_start_pct    double precision,
    soc_end_pct      double precision,
    start_lat        double precision,
    start_lon        double precision,
    end_lat          double precision,
    end_lon          double precision,
    PRIMARY KEY (vehicle_id, started_at)
);
CREATE INDEX trips_vehicle_day ON trips (vehicle_id, day);

CREATE TABLE charging_sessions (
    vehicle_id        text NOT NULL,
    day               date NOT NULL,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz NOT NULL,
    energy_added_kwh  double precision NOT NULL,
    max_power_kw      double precision NOT NULL,
    PRIMARY KEY (vehicle_id, started_at)
);
CREATE INDEX charging_sessions_vehicle_day ON charging_sessions (vehicle_id, day);

-- Bus-days whose rows are missing or stale: marked by every write (samples and alerts, in the write's
-- transaction), removed when recomputed after the day has ended. A write for a day that has already
-- ended bumps `marks`, so a recomputation that began before it does not remove the mark.
CREATE TABLE kpi_days_pending (
    vehicle_id  text NOT NULL,
    day         date NOT NULL,
    marks       bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (vehicle_id, day)
);
CREATE INDEX kpi_days_pending_day ON kpi_days_pending (day);

-- Data stored before this version: its days (UTC, and one either side for any time zone) are pending.
INSERT INTO kpi_days_pending (vehicle_id, day)
SELECT DISTINCT vehicle_id, (bucket AT TIME ZONE 'UTC')::date + d
FROM samples_1d, generate_series(-1, 1) AS d
ON CONFLICT DO NOTHING;
INSERT INTO kpi_days_pending (vehicle_id, day)
SELECT DISTINCT vehicle_id, (ts AT TIME ZONE 'UTC')::date + d FROM alerts, generate_series(-1, 1) AS d
UNION SELECT vehicle_id, current_date + d FROM vehicles, generate_series(-1, 1) AS d  -- not yet in samples_1d
ON CONFLICT DO NOTHING;
