"""The fleet page in Debian's headless Chromium, served by the real server over the real database.

Chromium runs with `--dump-dom` (the DOM after the page's scripts ran; `--virtual-time-budget` lets
the page's fetches and rendering finish before the dump) and once more with `--screenshot`, into
`test-artifacts/` (gitignored). Without Chromium the test is skipped with the reason, unless CI=true.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud.api import FleetViews
from cloud.settings import DatabaseSettings, WebSettings

from .conftest import Database, migrated_store
from .test_cloud_api import BusPlan, fleet_messages, write_all

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
)
CHROMIUM_TIMEOUT_S = 120  # a safety net for a hung browser, not an assertion about speed

FLEET_PLANS = [
    BusPlan(
        "KBZ-101A",
        v_max_kmh=42.0,
        soc_start_pct=96.0,
        charging_h=((6.5, 8.0), (13.0, 14.5)),
        alerts=((18.5, "cell_overtemp", "critical", True, 58.5, "cell temperature 58.5 °C"),),
    ),
    BusPlan(
        "KBZ-102B",
        v_max_kmh=34.0,
        soc_start_pct=92.0,
        prediction_bias_pct=-0.6,
        charging_h=((7.0, 8.5), (14.0, 15.5)),
    ),
    BusPlan(
        "KBZ-103C", v_max_kmh=45.0, soc_start_pct=97.0, charging_h=((6.0, 7.5), (12.5, 14.0), (19.0, 20.01))
    ),
    BusPlan(
        "KBZ-104D",
        v_max_kmh=50.0,
        soc_start_pct=98.0,
        prediction_bias_pct=1.2,
        charging_h=((7.5, 9.0),),
        alerts=((19.0, "low_soc", "warning", True, 19.5, "SOC below 20 %"),),
    ),
    BusPlan(
        "KBZ-105E", v_max_kmh=38.0, soc_start_pct=90.0, online=False, charging_h=((6.0, 7.5), (13.5, 15.0))
    ),
    BusPlan(
        "KBZ-106F",
        v_max_kmh=40.0,
        soc_start_pct=94.0,
        prediction_bias_pct=0.3,
        charging_h=((8.0, 9.5), (15.0, 16.5)),
    ),
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    reason = "Chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true needs it", pytrace=False)
    pytest.skip(reason)


async def run_chromium(binary: str, profile: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


@pytest.fixture
async def server(pg_schema: Database) -> AsyncIterator[str]:
    # GIVEN six buses' last twenty hours, ending now, written through the store
    end = datetime.now(UTC).replace(microsecond=0, second=0)
    store = await migrated_store(pg_schema)
    try:
        _, messages = fleet_messages(FLEET_PLANS, end - timedelta(hours=20), hours=20, step_s=30)
        await write_all(store, messages)
    finally:
        await store.close()
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    views = await FleetViews.start(WebSettings(port=0, time_zone="Africa/Nairobi"), database)
    try:
        yield views.url
    finally:
        await views.stop()


async def test_the_page_shows_the_fleet_and_a_bus(server: str, tmp_path: Path) -> None:
    binary = chromium()
    url = f"{server}/#/bus/KBZ-101A"

    # WHEN Chromium loads the page and its scripts have run
    dom = await run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)

    # THEN the fleet list shows every bus (the critical one first), the bus's four charts are drawn,
    # the KPI table is filled
    assert 'data-state="ready"' in dom, dom[-3000:]
    listed = re.findall(r'<li class="bus-row[^"]*" data-bus="([^"]+)"', dom)
    assert sorted(listed) == sorted(plan.vehicle_id for plan in FLEET_PLANS)
    assert listed[0] == "KBZ-101A"
    assert "cell overtemp" in dom and "offline" in dom
    for chart in ("chart-soc", "chart-speed", "chart-power", "chart-pred"):
        section = dom.split(f'id="{chart}"', 1)[1].split("</figure>", 1)[0]
        assert "<path" in section, f"{chart} has no line"
    kpi_rows = dom.split('id="kpi-table"', 1)[1].count("<tr>")
    assert kpi_rows >= len(FLEET_PLANS) + 1  # the header row and at least a row per bus
    assert 'id="banner" hidden' in dom  # no error shown

    # AND a screenshot for a human to look at
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "fleet-page.png"
    shot.unlink(missing_ok=True)
    await run_chromium(
        binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1440,1720", url
    )
    assert shot.stat().st_size > 20_000
