"""Fleet control in the database (cloud/sql/0011_fleet_control.sql): desired configuration, signed model
releases, rollouts and the buses' applied reports; and the view of one fleet that the receiver publishes
from, `voltgate-cloud fleet status` prints and the API answers (`fleet_view`).

Every function takes an autocommit connection whose search_path starts at the receiver's schema (as
`cloud.store.connect` makes); a function that writes more than one row opens its own transaction.
psycopg's errors become `StoreError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb

from cloud.errors import StoreError
from cloud.rollouts import Rollout, RolloutState, desired_rollout, rollout_id_for
from protocols.fleet_control import (
    AppliedReport,
    DesiredConfig,
    ModelRelease,
    Outcome,
    OutcomeState,
    SettingValue,
    encode_applied,
)

Connection = psycopg.AsyncConnection[tuple[object, ...]]
Settings = dict[str, dict[str, SettingValue]]


def merge_settings(
    fleet: Mapping[str, Mapping[str, SettingValue]],
    own: Mapping[str, Mapping[str, SettingValue]],
) -> Settings:
    """A bus's settings: its fleet's, with its own over them setting by setting."""
    merged: Settings = {section: dict(values) for section, values in fleet.items()}
    for section, values in own.items():
        merged.setdefault(section, {}).update(values)
    return merged


@dataclass(frozen=True, slots=True)
class ModelControl:
    """One model name on one bus: the release it should run and what it reported."""

    name: str
    desired_revision: int | None
    rollout: str | None
    rollout_state: str | None
    applied: Outcome | None


@dataclass(frozen=True, slots=True)
class BusControl:
    """One bus: desired configuration and models beside its latest applied report."""

    vehicle: str
    fleet: str
    desired_config: DesiredConfig | None
    applied_config: Outcome | None
    models: list[ModelControl]
    reported_at: datetime | None


@dataclass(frozen=True, slots=True)
class FleetView:
    fleet: str
    buses: list[BusControl]
    rollouts: list[Rollout] = field(default_factory=list)  # every rollout of the fleet, oldest first
    vehicles: tuple[str, ...] = ()  # the buses the database knows for the fleet


async def _fetch(conn: Connection, query: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    try:
        cur = await conn.execute(query.encode(), params)
        return await cur.fetchall()
    except psycopg.Error as err:
        raise StoreError(f"fleet control: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


async def fleets(conn: Connection) -> list[str]:
    """Every fleet with a desired configuration or a rollout."""
    rows = await _fetch(conn, "SELECT fleet FROM desired_config UNION SELECT fleet FROM rollouts ORDER BY 1")
    return [str(r[0]) for r in rows]


async def fleet_vehicles(conn: Connection, fleet: str) -> tuple[str, ...]:
    rows = await _fetch(conn, "SELECT vehicle_id FROM vehicles WHERE fleet = %s ORDER BY 1", (fleet,))
    return tuple(str(r[0]) for r in rows)


async def fleet_of(conn: Connection, vehicle: str) -> str | None:
    rows = await _fetch(conn, "SELECT fleet FROM vehicles WHERE vehicle_id = %s", (vehicle,))
    return str(rows[0][0]) if rows else None


async def stored_settings(conn: Connection, fleet: str, vehicle: str | None) -> Settings:
    """The settings stored for the fleet (vehicle None) or for one bus only; {} when none."""
    rows = await _fetch(
        conn,
        "SELECT settings FROM desired_config WHERE fleet = %s AND vehicle_id = %s",
        (fleet, vehicle or ""),
    )
    return dict(rows[0][0]) if rows else {}  # type: ignore[call-overload]


async def put_settings(conn: Connection, fleet: str, vehicle: str | None, settings: Settings) -> int:
    """Store the settings of the fleet (vehicle None) or of one bus under a new revision; return it."""
    rows = await _fetch(
        conn,
        "INSERT INTO desired_config (fleet, vehicle_id, settings, revision)"
        " VALUES (%s, %s, %s, nextval('fleet_revision'))"
        " ON CONFLICT (fleet, vehicle_id) DO UPDATE SET settings = excluded.settings,"
        " revision = excluded.revision, updated_at = now() RETURNING revision",
        (fleet, vehicle or "", Jsonb(settings)),
    )
    return int(str(rows[0][0]))


async def desired_configs(conn: Connection, fleet: str, vehicles: Sequence[str]) -> dict[str, DesiredConfig]:
    """Each bus's desired configuration (fleet settings, its own over them; the higher revision of the two).
    A bus with neither has none. `ts_ms` is when the newer of the two was set."""
    rows = await _fetch(
        conn,
        "SELECT vehicle_id, settings, revision, updated_at FROM desired_config WHERE fleet = %s",
        (fleet,),
    )
    by_vehicle = {str(r[0]): r for r in rows}
    fleet_row = by_vehicle.pop("", None)
    desired: dict[str, DesiredConfig] = {}
    for vehicle in sorted(set(vehicles) | set(by_vehicle)):
        parts = [row for row in (fleet_row, by_vehicle.get(vehicle)) if row is not None]
        if not parts:
            continue
        own = by_vehicle.get(vehicle)
        settings = merge_settings(
            fleet_row[1] if fleet_row else {},  # type: ignore[arg-type]
            own[1] if own else {},  # type: ignore[arg-type]
        )
        newest = max(parts, key=lambda row: int(str(row[2])))
        updated = newest[3]
        assert isinstance(updated, datetime)
        desired[vehicle] = DesiredConfig(_ms(updated), int(str(newest[2])), settings)
    return desired


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def add_release(
    conn: Connection, fleet: str, release: ModelRelease, canaries: Sequence[str], percent: float | None
) -> Rollout:
    """Store a signed release and start its rollout at `canary` (an unfinished older rollout of the same
    model name in the fleet is halted: superseded). `release.revision` and `.rollout` come from
    `reserve_revision`; the signature does not cover them."""
    try:
        async with conn.transaction():
            cur = await conn.execute(
                b"INSERT INTO model_releases (fleet, name, feature_version, sha256, key_id, signature, model)"
                b" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING release_id",
                (
                    fleet,
                    release.name,
                    release.feature_version,
                    release.sha256,
                    release.key_id,
                    release.signature,
                    release.model,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            release_id = int(str(row[0]))
            await conn.execute(
                b"UPDATE rollouts SET state = 'halted', reason = %s, updated_at = now()"
                b" WHERE fleet = %s AND name = %s AND state IN ('canary', 'rolling')",
                (f"superseded by rollout {release.rollout}", fleet, release.name),
            )
            await conn.execute(
                b"INSERT INTO rollouts"
                b" (rollout_id, release_id, fleet, name, revision, canaries, percent, state)"
                b" VALUES (%s, %s, %s, %s, %s, %s, %s, 'canary')",
                (release.rollout, release_id, fleet, release.name, release.revision, list(canaries), percent),
            )
    except psycopg.Error as err:
        raise StoreError(f"storing the model release: {_first_line(err)}") from err
    return Rollout(
        release.rollout, release_id, fleet, release.name, release.revision, tuple(canaries), percent,
        RolloutState.CANARY,
    )  # fmt: skip


async def reserve_revision(conn: Connection, name: str) -> tuple[int, str]:
    """A new revision from the fleet sequence and the rollout id made of it."""
    rows = await _fetch(conn, "SELECT nextval('fleet_revision')")
    revision = int(str(rows[0][0]))
    return revision, rollout_id_for(name, revision)


async def rollouts(conn: Connection, fleet: str) -> list[Rollout]:
    rows = await _fetch(
        conn,
        "SELECT rollout_id, release_id, fleet, name, revision, canaries, percent, state, reason"
        " FROM rollouts WHERE fleet = %s ORDER BY revision",
        (fleet,),
    )
    return [
        Rollout(
            str(r[0]),
            int(str(r[1])),
            str(r[2]),
            str(r[3]),
            int(str(r[4])),
            tuple(str(v) for v in r[5]),  # type: ignore[attr-defined]
            None if r[6] is None else float(str(r[6])),
            RolloutState(str(r[7])),
            None if r[8] is None else str(r[8]),
        )
        for r in rows
    ]


async def set_rollout_state(
    conn: Connection, rollout_id: str, state: RolloutState, reason: str | None
) -> None:
    """Move a rollout on; only an active one moves (a concurrent replica's halt or supersession stays)."""
    await _fetch(
        conn,
        "UPDATE rollouts SET state = %s, reason = %s, updated_at = now()"
        " WHERE rollout_id = %s AND state IN ('canary', 'rolling') RETURNING 1",
        (state.value, reason, rollout_id),
    )


async def release(conn: Connection, rollout: Rollout) -> ModelRelease:
    """The signed release of a rollout, as it travels (revision and rollout id of the rollout)."""
    rows = await _fetch(
        conn,
        "SELECT name, feature_version, sha256, key_id, signature, model, created_at"
        " FROM model_releases WHERE release_id = %s",
        (rollout.release_id,),
    )
    name, feature_version, sha256, key_id, signature, model, created_at = rows[0]
    assert isinstance(created_at, datetime)
    assert isinstance(sha256, bytes) and isinstance(signature, bytes) and isinstance(model, bytes)
    return ModelRelease(
        _ms(created_at), rollout.revision, rollout.rollout_id, str(name), str(feature_version),
        sha256, str(key_id), signature, model,
    )  # fmt: skip


async def store_applied(conn: Connection, fleet: str, vehicle: str, report: AppliedReport) -> bool:
    """Keep a bus's applied report unless a newer one is stored already; True when stored."""
    body = json.loads(encode_applied(report))
    rows = await _fetch(
        conn,
        "INSERT INTO applied_reports AS a (fleet, vehicle_id, reported_at, config, models)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (fleet, vehicle_id) DO UPDATE SET"
        " reported_at = excluded.reported_at, received_at = now(), config = excluded.config,"
        " models = excluded.models WHERE a.reported_at <= excluded.reported_at RETURNING 1",
        (
            fleet,
            vehicle,
            datetime.fromtimestamp(report.ts_ms / 1000, UTC),
            None if body["config"] is None else Jsonb(body["config"]),
            Jsonb(body["models"]),
        ),
    )
    return bool(rows)


def _outcome(value: object) -> Outcome | None:
    if not isinstance(value, dict):
        return None
    state = OutcomeState(value["state"])
    return Outcome(int(value["revision"]), state, str(value["detail"]), str(value["running"]))


Reported = tuple[datetime, Outcome | None, dict[str, Outcome]]


async def applied_reports(conn: Connection, fleet: str) -> dict[str, Reported]:
    """Each bus's latest report: (reported at, config outcome, model name → outcome)."""
    rows = await _fetch(
        conn, "SELECT vehicle_id, reported_at, config, models FROM applied_reports WHERE fleet = %s", (fleet,)
    )
    reports: dict[str, Reported] = {}
    for vehicle, reported_at, config, models in rows:
        assert isinstance(reported_at, datetime) and isinstance(models, dict)
        outcomes = {str(name): o for name, value in models.items() if (o := _outcome(value)) is not None}
        reports[str(vehicle)] = (reported_at, _outcome(config), outcomes)
    return reports


async def fleet_view(conn: Connection, fleet: str) -> FleetView:
    """Desired against applied for every bus of the fleet (and any bus with settings of its own)."""
    vehicles = await fleet_vehicles(conn, fleet)
    configs = await desired_configs(conn, fleet, vehicles)
    all_rollouts = await rollouts(conn, fleet)
    reports = await applied_reports(conn, fleet)
    names = sorted({r.name for r in all_rollouts})
    buses = []
    for vehicle in sorted(set(vehicles) | set(configs) | set(reports)):
        reported_at, config_outcome, model_outcomes = reports.get(vehicle, (None, None, {}))
        models = []
        for name in sorted(set(names) | set(model_outcomes)):
            wanted = desired_rollout([r for r in all_rollouts if r.name == name], vehicle, vehicles)
            models.append(
                ModelControl(
                    name,
                    wanted.revision if wanted else None,
                    wanted.rollout_id if wanted else None,
                    wanted.state.value if wanted else None,
                    model_outcomes.get(name),
                )
            )
        buses.append(BusControl(vehicle, fleet, configs.get(vehicle), config_outcome, models, reported_at))
    return FleetView(fleet, buses, all_rollouts, vehicles)
