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

from cloud.ingest import ingest_message
from cloud.settings import IngestSettings
from protocols import predictions
from protocols.topics import telemetry_topic

from .conftest import Database, migrated_store
from .test_cloud_api import FLEET, PLANS, START, fleet_messages

GRAFANA = Path(__file__).parents[2] / "cloud" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
RANGE = ("2024-05-14T00:00:00Z", "2024-05-15T00:00:00Z")
VARIABLES = {"bus": "KBZ-101A"}


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


def expand(raw_sql: str) -> str:
    """What Grafana's PostgreSQL datasource sends for RANGE and VARIABLES."""
    t_from, t_to = (f"'{t}'::timestamptz" for t in RANGE)
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
