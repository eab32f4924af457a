"""The API's OpenAPI description against the real routes and their real answers.

The description must be valid OpenAPI 3.1, name exactly the /api routes the router serves, and every
answer of every described GET route, on the shared synthetic fleet day in the real PostgreSQL, must
validate against the schema it gives for that answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from psycopg_pool import AsyncConnectionPool

from cloud.api import create_app
from cloud.api_reads import KNOWN_SIGNALS
from cloud.openapi import OPENAPI_PATH, openapi_document
from cloud.settings import WebSettings
from protocols import signals
from protocols.catalog import load_catalog

from .conftest import Database
from .test_cloud_api import START, Api, fleet_day_api, iso


@pytest.fixture
async def api(pg_schema: Database) -> AsyncIterator[Api]:
    async with fleet_day_api(pg_schema) as served:
        yield served


def described_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def validator_for(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve inside `document`."""
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def answer_schema(document: dict[str, Any], path: str, status: str) -> dict[str, Any]:
    response = document["paths"][path]["get"]["responses"][status]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


@pytest.mark.parametrize("needs_token", [False, True])
def test_the_description_is_valid_openapi_3_1(needs_token: bool) -> None:
    document = openapi_document(KNOWN_SIGNALS, needs_token=needs_token)

    validate_openapi(document)  # raises with the first defect

    assert document["openapi"] == "3.1.0"
    assert ("security" in document) is needs_token


async def test_every_api_route_is_described_and_every_described_route_exists() -> None:
    # GIVEN the application as the receiver builds it (its pool is never opened: nothing here reads)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool("", open=False)
    app = create_app(pool, WebSettings(), "voltgate")
    served = {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if resource.canonical.startswith("/api/") and route.method != "HEAD"
    }

    document = openapi_document(KNOWN_SIGNALS, needs_token=False)

    assert served == described_routes(document)
    assert len(served) >= 11


def query_for(path: str, parameters: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Queries that give each required parameter a value from the shared fleet day (several for series)."""
    names = {p["name"] for p in parameters if p["in"] == "query"}
    day = {"from": "2024-05-14", "to": "2024-05-14"}
    if path == "/api/alerts":
        return [{}, {"from": iso(START), "to": iso(START + timedelta(hours=3)), "bus": "KBZ-102B"}]
    if path.endswith("/series"):
        span = {"from": iso(START), "to": iso(START + timedelta(hours=2))}
        return [
            {"signal": signals.SOC, **span},
            {"signal": "pack_power_kw", **span, "resolution": "1m"},
            {"signal": signals.SPEED, **span, "resolution": "1h"},
            {"signal": signals.SPEED, **span, "resolution": "1d"},
        ]
    if path == "/api/fleet/block-risk":
        return [{}, {"at": iso(START + timedelta(hours=2))}]
    if path == "/api/reports/billing":
        return [day, {"from": "2024-05-13", "to": "2024-05-20", "period": "week", "bus": "KBZ-101A"}]
    if path.endswith("/predictions"):
        return [{"from": iso(START), "to": iso(START + timedelta(hours=2))}]
    if {"from", "to"} <= names:
        return [day, {**day, "to": "2024-05-15", "tz": "Africa/Nairobi"}]
    return [{}]


async def test_every_described_get_answers_as_described(api: Api) -> None:
    document = await api.ok(OPENAPI_PATH)
    assert document == openapi_document(KNOWN_SIGNALS, needs_token=False)

    wrong: list[str] = []
    asked = 0
    for path, item in document["paths"].items():
        validator = validator_for(document, answer_schema(document, path, "200"))
        for bus in ("KBZ-101A", "KBZ-103C") if "{bus}" in path else (None,):
            url = path.replace("{bus}", bus) if bus else path
            for query in query_for(path, item["get"]["parameters"]):
                body = await api.ok(url, **query)
                asked += 1
                wrong += [f"{url} {query}: {error.message}" for error in validator.iter_errors(body)]
    assert wrong == []
    assert asked >= 20


async def test_an_unknown_signal_is_refused_with_the_known_ones(api: Api) -> None:
    document = await api.ok(OPENAPI_PATH)
    span = {"from": iso(START), "to": iso(START + timedelta(hours=1))}

    status, body = await api.get("/api/buses/KBZ-101A/series", signal="Vehicle.Speeed", **span)

    assert status == 400
    assert not list(
        validator_for(document, answer_schema(document, "/api/buses/{bus}/series", "400")).iter_errors(body)
    )
    assert body["error"].startswith("signal='Vehicle.Speeed' is not a known signal; known: ")
    listed = body["error"].split("known: ", 1)[1].split(", ")
    assert listed == sorted(KNOWN_SIGNALS)
    # the names the cloud reads from the catalog without its DBC are the catalog's as the agent loads it
    assert set(listed) == {spec.name for spec in load_catalog()} | {"pack_power_kw"}
    [signal] = [
        p for p in document["paths"]["/api/buses/{bus}/series"]["get"]["parameters"] if p["name"] == "signal"
    ]
    assert signal["schema"]["enum"] == listed
