"""GET /api/buses/{bus}/control: one bus's desired configuration and models beside what it reported applied.

    {"bus", "fleet", "reported_at": instant | null,
     "config": {"desired_revision": int | null, "applied": Outcome | null},
     "models": [{"name", "desired_revision", "rollout", "rollout_state", "applied": Outcome | null}, ...]}
    Outcome = {"revision", "state": "applied" | "refused" | "rolled_back", "detail", "running"}

Added to the fleet views' app as the analytics routes are (`cloud.analytics_http`); described in
`cloud.openapi`.
"""

from __future__ import annotations

from aiohttp import web

from cloud import fleet_store
from cloud.analytics_http import Pool, known_bus
from cloud.api_params import bus_id, json_response
from cloud.settings import WebSettings
from protocols.fleet_control import Outcome, outcome_json


def outcome_or_none(outcome: Outcome | None) -> dict[str, object] | None:
    return None if outcome is None else outcome_json(outcome)


def control_json(bus: str, fleet: str, view: fleet_store.FleetView) -> dict[str, object]:
    found = next((b for b in view.buses if b.vehicle == bus), None)
    desired = found.desired_config if found else None
    return {
        "bus": bus,
        "fleet": fleet,
        "reported_at": found.reported_at if found else None,
        "config": {
            "desired_revision": desired.revision if desired else None,
            "applied": outcome_or_none(found.applied_config if found else None),
        },
        "models": [
            {
                "name": m.name,
                "desired_revision": m.desired_revision,
                "rollout": m.rollout,
                "rollout_state": m.rollout_state,
                "applied": outcome_or_none(m.applied),
            }
            for m in (found.models if found else [])
        ],
    }


def add_routes(app: web.Application, pool: Pool, settings: WebSettings) -> None:
    """GET /api/buses/{bus}/control on the fleet views' app."""

    async def control(request: web.Request) -> web.Response:
        bus = bus_id(request.match_info["bus"])
        async with pool.connection() as conn:
            await known_bus(conn, bus)
            fleet = await fleet_store.fleet_of(conn, bus)
            assert fleet is not None  # known_bus: it is in `vehicles`
            view = await fleet_store.fleet_view(conn, fleet)
        return json_response(control_json(bus, fleet, view))

    app.router.add_get("/api/buses/{bus}/control", control)
