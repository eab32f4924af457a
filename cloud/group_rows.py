"""The rows a write group stores besides its samples: predictions and alerts (staged by binary COPY,
inserted keyed on (vehicle_id, seq, ts)), the ingest ledger, the vehicles (locked first: see
cloud/store.py), their status and facts."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from cloud.ingest import BatchMessage, StatusMessage

Cursor = psycopg.AsyncCursor[tuple[object, ...]]

STAGING_DDL: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_predictions ("
    " vehicle_id text, seq bigint, ts_ms bigint, model text, model_version text, output text,"
    " value double precision) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_alerts ("
    " vehicle_id text, seq bigint, ts_ms bigint, rule text, severity text, active boolean,"
    " value double precision, message text) ON COMMIT DELETE ROWS",
)

TS: Final = "timestamptz 'epoch' + ts_ms * interval '1 millisecond'"

INSERT_PREDICTIONS: Final = sql.SQL(
    "INSERT INTO predictions (vehicle_id, seq, ts, model, model_version, output, value)"
    " SELECT vehicle_id, seq, " + TS + ", model, model_version, output, value FROM stage_predictions"
    " ON CONFLICT DO NOTHING"
)
INSERT_ALERTS: Final = sql.SQL(
    "INSERT INTO alerts (vehicle_id, seq, ts, rule, severity, active, value, message)"
    " SELECT vehicle_id, seq, " + TS + ", rule, severity, active, value, message FROM stage_alerts"
    " ON CONFLICT DO NOTHING"
)
# last_seen is refreshed at most every 10 s per vehicle: fewer row versions, same answer for a human.
# One statement for the group; ORDER BY: every replica locks vehicle rows in the same order (a
# conflicting row is locked whether or not the WHERE lets it be updated).
_UPSERT_VEHICLES: Final = (
    "INSERT INTO vehicles AS v (vehicle_id, fleet, first_seen, last_seen)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])"
    " ORDER BY 1"
    " ON CONFLICT (vehicle_id) DO UPDATE SET last_seen = excluded.last_seen, fleet = excluded.fleet"
    " WHERE v.last_seen < excluded.last_seen - interval '10 seconds' OR v.fleet <> excluded.fleet"
)
_UPSERT_STATUS: Final = (
    "INSERT INTO vehicle_status AS s (vehicle_id, fleet, online, document, updated_at)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (vehicle_id) DO UPDATE"
    " SET fleet = excluded.fleet, online = excluded.online, document = excluded.document,"
    " updated_at = excluded.updated_at WHERE s.updated_at <= excluded.updated_at"
)
_UPDATE_VEHICLE_FACTS: Final = (
    "UPDATE vehicles SET vin = coalesce(%s, vin), battery_capacity_kwh = coalesce(%s, battery_capacity_kwh)"
    " WHERE vehicle_id = %s"
)


async def stage_predictions(cur: Cursor, batches: list[BatchMessage]) -> int:
    rows = [
        (m.vehicle_id, p.seq, p.ts_ms, p.model, p.model_version, p.output, p.value)
        for m in batches
        for p in m.batch.predictions
    ]
    if rows:
        async with cur.copy(
            "COPY stage_predictions (vehicle_id, seq, ts_ms, model, model_version, output, value)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "int8", "int8", "text", "text", "text", "float8"])
            for row in rows:
                await copy.write_row(row)
    return len(rows)


async def stage_alerts(cur: Cursor, batches: list[BatchMessage]) -> int:
    rows = [
        (m.vehicle_id, a.seq, a.ts_ms, a.rule, a.severity, a.active, a.value, a.message)
        for m in batches
        for a in m.batch.alerts
    ]
    if rows:
        async with cur.copy(
            "COPY stage_alerts (vehicle_id, seq, ts_ms, rule, severity, active, value, message)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "int8", "int8", "text", "text", "bool", "float8", "text"])
            for row in rows:
                await copy.write_row(row)
    return len(rows)


async def write_ledger(cur: Cursor, batches: list[BatchMessage]) -> None:
    if not batches:
        return
    async with cur.copy(
        "COPY ingest_ledger (received_at, topic, vehicle_id, kind, seq_first, seq_last,"
        " n_samples, n_predictions, n_alerts, payload_bytes) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(
            ["timestamptz", "text", "text", "text", "int8", "int8", "int4", "int4", "int4", "int4"]
        )
        for m in batches:
            seqs = m.seq_range()
            first, last = seqs if seqs else (None, None)
            await copy.write_row(
                (
                    m.received_at,
                    m.topic,
                    m.vehicle_id,
                    m.kind.value,
                    first,
                    last,
                    len(m.batch.samples),
                    len(m.batch.predictions),
                    len(m.batch.alerts),
                    m.payload_bytes,
                )
            )


async def upsert_vehicles(cur: Cursor, batches: list[BatchMessage], statuses: list[StatusMessage]) -> None:
    seen: dict[str, tuple[str, datetime, datetime]] = {}
    for fleet, vehicle, at in [(m.fleet, m.vehicle_id, m.received_at) for m in batches] + [
        (s.fleet, s.vehicle_id, s.received_at) for s in statuses
    ]:
        prior = seen.get(vehicle)
        seen[vehicle] = (fleet, min(at, prior[1]) if prior else at, max(at, prior[2]) if prior else at)
    if seen:
        vehicles = sorted(seen)
        await cur.execute(
            _UPSERT_VEHICLES,
            (
                vehicles,
                [seen[v][0] for v in vehicles],
                [seen[v][1] for v in vehicles],
                [seen[v][2] for v in vehicles],
            ),
        )


async def upsert_statuses(cur: Cursor, statuses: list[StatusMessage]) -> None:
    latest: dict[str, StatusMessage] = {}
    for s in statuses:
        if s.vehicle_id not in latest or latest[s.vehicle_id].received_at <= s.received_at:
            latest[s.vehicle_id] = s
    if not latest:
        return
    rows = [
        (
            s.vehicle_id,
            s.fleet,
            s.online,
            Jsonb(s.document) if s.document is not None else None,
            s.received_at,
        )
        for _, s in sorted(latest.items())
    ]
    await cur.executemany(_UPSERT_STATUS, rows)
    facts = [
        (_str_or_none(s.document.get("vin")), _positive_or_none(s.document.get("battery_capacity_kwh")), v)
        for v, s in sorted(latest.items())
        if s.document is not None and ("vin" in s.document or "battery_capacity_kwh" in s.document)
    ]
    if facts:
        await cur.executemany(_UPDATE_VEHICLE_FACTS, facts)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _positive_or_none(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
