"""The provisioned Grafana dashboards: every panel's SQL runs against a migrated schema with data in it.

Grafana's macros are replaced by what its PostgreSQL datasource would send for a fixed range, the
`$bus` variable by a bus of the test fleet; the queries run in a read-only transaction, as the
read-only Grafana role would run them (search_path = the receiver's schema).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from cloud.billing import Period, billing_report
from cloud.block_risk import block_risks
from cloud.ingest import ingest_message
from cloud.settings import IngestSettings, OperationsSettings, WebSettings
from cloud.web.queries import bus_states
from protocols import predictions
from protocols.topics import telemetry_topic

from .conftest import Database, migrated_store
from .test_cloud_api import FLEET, PLANS, START, fleet_messages

GRAFANA = Path(__file__).parents[2] / "cloud" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
RANGE = ("2024-05-14T00:00:00Z", "2024-05-15T00:00:00Z")
# The operations dashboard's variables hold the receiver's defaults (checked below).
VARIABLES = {"bus": "KBZ-101A", "tz": "UTC", "reserve": "15", "lookback": "14"}


def provisioned_uid() -> str:
    match = re.search(r"^\s+uid:\s*(\S+)", (GRAFANA / "datasource.yaml").read_text(), re.MULTILINE)
    assert match, "datasource.yaml names no uid"
    return match[1]


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for item in items:
        yield item
        nested = item.get("panels")
        if isinstance(nested, list):
            yield from panels(nested)


def expand(raw_sql: str, time_range: tuple[str, str] = RANGE) -> str:
    """What Grafana's PostgreSQL datasource sends for `time_range` and VARIABLES."""
    t_from, t_to = (f"'{t}'::timestamptz" for t in time_range)
    text = re.sub(r"\$__timeFilter\(([^()]+)\)", rf"\1 BETWEEN {t_from} AND {t_to}", raw_sql)
    text = text.replace("$__timeFrom()", t_from).replace("$__timeTo()", t_to)
    for name, value in VARIABLES.items():
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in text, f"unexpanded macro or variable in: {text}"
    return text


def queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, format, SQL) of every target and every query variable."""
    found: list[tuple[str, str, str, str]] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                found.append((path.name, f"variable {variable['name']}", "table", variable["query"]))
        for panel in panels(board["panels"]):
            for target in panel.get("targets", []):
                found.append((path.name, str(panel["title"]), target["format"], target["rawSql"]))
    return found


def test_prediction_outputs_in_panels_are_the_ones_the_agent_sends() -> None:
    # A panel that filters on an output name the agent never sends stays empty while its SQL runs fine.
    sent = {value for name, value in vars(predictions).items() if name.isupper() and isinstance(value, str)}
    for board, title, _, sql in queries():
        for output in re.findall(r"output\s*=\s*'([^']*)'", sql):
            assert output in sent, f"{board} / {title} filters on output {output!r}, which no agent sends"


def test_every_panel_uses_the_provisioned_datasource() -> None:
    uid = provisioned_uid()
    assert len(DASHBOARDS) >= 2
    provider = (GRAFANA / "dashboards.yaml").read_text()
    assert "type: file" in provider and "path:" in provider
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"]
        for panel in panels(board["panels"]):
            assert panel["datasource"]["uid"] == uid, f"{path.name}: {panel['title']}"
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == uid
                assert target["rawQuery"] is True


@pytest.fixture
async def fleet_db(pg_schema: Database) -> AsyncIterator[Database]:
    # GIVEN the test fleet's two hours, and one garbage message that becomes a dead letter,
    store = await migrated_store(pg_schema)
    try:
        _, messages = fleet_messages(PLANS, START, hours=2, step_s=10)
        garbage = ingest_message(
            telemetry_topic(FLEET, "KBZ-101A"),
            b"not a batch",
            datetime(2024, 5, 14, 6, tzinfo=UTC),
            IngestSettings(),
        )
        # written and committed, no rollup refreshed: the panels read what the receiver just stored
        written = [*messages, garbage]
        for first in range(0, len(written), 50):
            await store.write(written[first : first + 50])
        await store.materialize_kpis()  # the ended day's KPIs kept, as the receiver keeps them
    finally:
        await store.close()
    yield pg_schema


async def test_every_panel_query_runs_and_returns_rows(fleet_db: Database) -> None:
    found = queries()
    assert len(found) >= 20
    failures: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        fleet_db.dsn, autocommit=True, options=f"-c search_path={fleet_db.schema},public -c timezone=UTC"
    ) as conn:
        for board, title, form, raw_sql in found:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.execute(b"SET TRANSACTION READ ONLY")
                    await cur.execute(expand(raw_sql).encode())
                    rows = await cur.fetchall()
                    columns = [c.name for c in cur.description or []]
            except psycopg.Error as err:
                failures.append(f"{board} / {title}: {str(err).strip().splitlines()[0]}")
                continue
            if not rows:
                failures.append(f"{board} / {title}: no rows")
            if form == "time_series" and columns[:1] != ["time"]:
                failures.append(f"{board} / {title}: a time series needs 'time' first, got {columns}")
    assert failures == []


OPERATIONS = GRAFANA / "operations.json"


def panel_sql(title: str) -> str:
    board = json.loads(OPERATIONS.read_text())
    [panel] = [p for p in panels(board["panels"]) if p["title"].startswith(title)]
    [target] = panel["targets"]
    return str(target["rawSql"])


def test_the_operations_variables_hold_the_receivers_defaults() -> None:
    board = json.loads(OPERATIONS.read_text())
    defaults = {v["name"]: v["query"] for v in board["templating"]["list"]}
    ops = OperationsSettings()
    assert defaults == {
        "tz": WebSettings().time_zone,
        "reserve": f"{ops.reserve_soc_pct:g}",
        "lookback": str(ops.lookback_days),
    }
    assert {name: VARIABLES[name] for name in defaults} == defaults
    assert any(p["type"] == "geomap" for p in panels(board["panels"]))


async def panel_rows(
    conn: AsyncConnection[Any], raw_sql: str, time_range: tuple[str, str] = RANGE
) -> list[dict[str, Any]]:
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(b"SET TRANSACTION READ ONLY")
        await cur.execute(expand(raw_sql, time_range).encode())
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-9)
    return a == b


async def test_the_operations_panels_answer_as_the_api_does(fleet_db: Database) -> None:
    async with await psycopg.AsyncConnection.connect(
        fleet_db.dsn, autocommit=True, options=f"-c search_path={fleet_db.schema},public -c timezone=UTC"
    ) as conn:
        settings = WebSettings(time_zone=VARIABLES["tz"])
        # the map: each bus at the latest position the fleet page and the API give it
        mapped = await panel_rows(conn, panel_sql("Bus positions"))
        states = await bus_states(conn)
        assert [(r["bus"], r["latitude"], r["longitude"]) for r in mapped] == [
            (s.vehicle_id, s.latitude, s.longitude) for s in states
        ]
        assert len(mapped) == len(PLANS)

        # block risk: the next day (a typical day known, SOC from the evening before) and mid-morning
        # (today's kilometres, the on-device forecast), each as cloud.block_risk ranks the buses
        risk_sql = panel_sql("Will it finish its block?")
        compared = ("divert", "risk", "soc_pct", "soc_needed_pct", "range_km", "remaining_km", "margin_km")
        compared += ("driven_today_km", "typical_day_km", "kwh_per_km", "usable_kwh", "forecast_soc_pct")
        compared += ("forecast_hours_to_reserve",)
        answered: dict[str, set[str]] = {}
        for at in (RANGE[1], "2024-05-14T06:30:00Z"):
            rows = await panel_rows(conn, risk_sql, (RANGE[0], at))
            expected = await block_risks(conn, settings, datetime.fromisoformat(at))
            assert [r["bus"] for r in rows] == [e.vehicle_id for e in expected], at
            for row, risk in zip(rows, expected, strict=True):
                for name in compared:
                    assert same(row[name], getattr(risk, name)), (at, risk.vehicle_id, name, row[name])
                    if row[name] is not None:
                        answered.setdefault(name, set()).add(at)
        assert set(answered) == set(compared)  # every figure was compared with a value, not only nulls

        # pay-per-km: each bus's days as cloud.billing bills them
        bill_rows = await panel_rows(conn, panel_sql("Pay-per-km"))
        day = datetime.fromisoformat(RANGE[0]).date()
        bill = await billing_report(conn, settings, Period.DAY, day, day, tz="UTC", vehicle_id=None)
        assert [(r["bus"], r["day"]) for r in bill_rows] == [(b.vehicle_id, b.period_start) for b in bill]
        for row, billed in zip(bill_rows, bill, strict=True):
            for name in row.keys() - {"bus", "day", "flags"}:
                assert same(row[name], getattr(billed, name)), (billed.vehicle_id, name, row[name])
            assert (row["flags"].split(";") if row["flags"] else []) == list(billed.flags)
        assert all(b.odometer_km > 1 and b.gps_km and b.energy_used_kwh for b in bill)
        assert any(b.charging_hours > 0 for b in bill)
