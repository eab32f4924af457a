"""The map-first fleet page with 1,000 buses, in Debian's headless Chromium driven by Selenium.

The real receiver serves the page, Leaflet (from its installed package) and the API over a fleet of
1,000 buses stored in the real PostgreSQL. Selenium is synchronous, so each browser scenario runs
in a thread while the server answers on the test's event loop. The time a search or filter takes in
the page is printed and written to `test-artifacts/map-page-timings.txt` (never asserted on).
Without Chromium and chromedriver the tests are skipped with the reason, unless CI=true.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud.api import FleetViews
from cloud.settings import DatabaseSettings, WebSettings

from .conftest import Database, migrated_store
from .large_fleet import FleetBus, bus_id, plan_fleet, write_fleet

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver as Driver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLEET_SIZE = 1_000
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
WAIT_S = 30  # a safety net for a hung page, not an assertion about speed


def browser_paths() -> tuple[str, str]:
    found = [shutil.which(name) for name in ("chromium", "chromedriver")]
    if all(found):
        return str(found[0]), str(found[1])
    reason = "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true needs them", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium(width: int = 1440, height: int = 900) -> Iterator[Driver]:
    binary, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Driver, condition: Callable[[Driver], object], what: str) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=what)


def rows(driver: Driver) -> list[str]:
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#bus-list [data-bus]')].map(r => r.dataset.bus)"
    )
    return ids


def timed(driver: Driver, script: str, *args: object) -> float:
    """Runs `script` in the page and returns the milliseconds until the list is laid out again."""
    elapsed: float = driver.execute_script(
        "const t0 = performance.now();" + script + "; document.getElementById('bus-list').offsetHeight;"
        " return performance.now() - t0;",
        *args,
    )
    return elapsed


def search(driver: Driver, text: str) -> float:
    script = "const box = document.getElementById('fleet-search'); box.value = arguments[0];"
    return timed(driver, script + " box.dispatchEvent(new Event('input'))", text)


def choose_filter(driver: Driver, name: str) -> float:
    return timed(driver, f"document.querySelector('#fleet-filters [data-filter=\"{name}\"]').click()")


def open_page(driver: Driver, url: str) -> None:
    driver.get(url)
    try:
        wait_for(driver, lambda d: d.execute_script("return document.body.dataset.state") != "loading", "")
    except Exception as err:
        raise AssertionError(f"the page did not load: {driver.get_log('browser')}") from err
    assert driver.execute_script("return document.body.dataset.state") == "ready", driver.find_element(
        By.ID, "banner"
    ).text


def severe_console_errors(driver: Driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def one_png() -> bytes:
    """A 1×1 grey PNG, for a stand-in tile server on loopback."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")  # one row: filter byte 0, one grey sample
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
async def fleet(pg_schema: Database) -> list[FleetBus]:
    # GIVEN 1,000 buses' last twelve minutes, written through the real store
    buses = plan_fleet(FLEET_SIZE)
    store = await migrated_store(pg_schema)
    try:
        await write_fleet(store, buses, datetime.now(UTC).replace(microsecond=0))
    finally:
        await store.close()
    return buses


async def serve(pg_schema: Database, web_settings: WebSettings) -> FleetViews:
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    return await FleetViews.start(web_settings, database)


@pytest.fixture
async def offline_page(pg_schema: Database, fleet: list[FleetBus]) -> AsyncIterator[str]:
    # a receiver without a tile server: the page needs no internet
    views = await serve(pg_schema, WebSettings(port=0, time_zone="Africa/Nairobi"))
    try:
        yield views.url
    finally:
        await views.stop()


def record_timings(lines: list[str]) -> None:
    print("\n" + "\n".join(lines))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "map-page-timings.txt").write_text("\n".join(lines) + "\n")


def offline_scenario(url: str, buses: list[FleetBus]) -> None:
    critical = [b.vehicle_id for b in buses if b.critical]
    alerting = {b.vehicle_id for b in buses if b.critical or b.warning}
    with chromium() as driver:
        # WHEN the page opens without a bus in its address
        open_page(driver, f"{url}/")

        # THEN every bus is listed, the map shows markers (clusters) and no tiles, no bus is selected
        assert len(rows(driver)) == FLEET_SIZE
        assert driver.find_element(By.ID, "fleet-count").text == "1,000 of 1,000"
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".bus-cluster, .bus-marker"), "markers")
        assert driver.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .tone-crit"), "none critical"
        assert not driver.find_elements(By.CSS_SELECTOR, "img.leaflet-tile")
        assert not driver.find_element(By.ID, "bus-panel").is_displayed()
        assert not driver.find_elements(By.CSS_SELECTOR, ".bus-row.selected")
        assert driver.execute_script("return window.location.hash") in ("", "#/")

        # AND the most urgent buses come first; a critical alert is never shown as low risk
        first = driver.find_element(By.CSS_SELECTOR, "#bus-list [data-bus]")
        assert first.get_attribute("data-bus") in critical
        risk = first.find_element(By.CSS_SELECTOR, ".risk")
        assert "risk-high" in risk.get_attribute("class") and risk.text.lower().startswith("high")
        low_beside_critical = driver.execute_script(
            "return [...document.querySelectorAll('.bus-row.tone-crit .risk')]"
            ".filter(r => !r.classList.contains('risk-high')).length"
        )
        assert low_beside_critical == 0
        # alert chips stay inside the list: no row is wider than the list
        overflowing = driver.execute_script(
            "const list = document.getElementById('bus-list');"
            "return [...list.querySelectorAll('.bus-row')]"
            ".filter(r => r.scrollWidth > list.clientWidth).length"
        )
        assert overflowing == 0

        # WHEN one bus is searched for, then the list filtered
        timings = [f"fleet page with {FLEET_SIZE:,} buses (headless Chromium, ms until the list is laid out)"]
        target = bus_id(417)
        elapsed = search(driver, target)
        timings.append(f"search for one bus:          {elapsed:7.1f} ms")
        assert rows(driver) == [target]
        elapsed = search(driver, "")
        timings.append(f"clear the search (all rows): {elapsed:7.1f} ms")
        assert len(rows(driver)) == FLEET_SIZE
        elapsed = choose_filter(driver, "alerting")
        timings.append(f"filter: alerting:            {elapsed:7.1f} ms")
        assert set(rows(driver)) == alerting
        elapsed = choose_filter(driver, "at-risk")
        timings.append(f"filter: at risk:             {elapsed:7.1f} ms")
        assert set(rows(driver)) >= set(critical)
        elapsed = choose_filter(driver, "online")
        timings.append(f"filter: online:              {elapsed:7.1f} ms")
        assert set(rows(driver)) == {b.vehicle_id for b in buses if b.online}
        elapsed = timed(
            driver,
            "const s = document.getElementById('fleet-sort'); s.value = 'soc-asc';"
            " s.dispatchEvent(new Event('change'))",
        )
        timings.append(f"sort by SOC (online buses):  {elapsed:7.1f} ms")
        socs = [b.soc_pct for b in sorted(buses, key=lambda b: b.soc_pct) if b.online]
        assert rows(driver)[0] == next(b.vehicle_id for b in buses if b.online and b.soc_pct == socs[0])
        choose_filter(driver, "all")
        record_timings(timings)

        # WHEN a bus is chosen in the list
        chosen = critical[3]
        search(driver, chosen)
        driver.find_element(By.CSS_SELECTOR, f'[data-bus="{chosen}"]').click()

        # THEN it opens beside the list at its own address, live: its charts on the last two hours,
        # its alerts listed, its route drawn on the map
        wait_for(driver, lambda d: d.find_element(By.ID, "bus-panel").is_displayed(), "bus panel")
        assert driver.execute_script("return window.location.hash") == f"#/bus/{chosen}"
        assert driver.find_element(By.ID, "bus-title").text == chosen
        # (the time of its latest data beside the time the receiver last heard it: imported history)
        assert "latest data" in driver.find_element(By.ID, "bus-facts").text.lower()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-soc path"), "SOC chart")
        assert driver.find_element(By.CSS_SELECTOR, "#range-buttons button.active").text == "2 h"
        assert "insulation fault" in driver.find_element(By.ID, "bus-alerts").text.lower()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "path.bus-route"), "route on the map")
        assert driver.find_elements(By.CSS_SELECTOR, ".bus-marker.is-selected")

        # WHEN the back button is pressed, THEN the bus closes; forward opens it again
        driver.back()
        wait_for(driver, lambda d: not d.find_element(By.ID, "bus-panel").is_displayed(), "bus closes")
        driver.forward()
        wait_for(driver, lambda d: d.find_element(By.ID, "bus-panel").is_displayed(), "bus opens again")

        # WHEN the bus's address is loaded afresh, THEN the bus opens with its row selected in view
        other = bus_id(998)
        driver.get("about:blank")  # else only the fragment would change, in the same document
        open_page(driver, f"{url}/#/bus/{other}")
        wait_for(driver, lambda d: d.find_element(By.ID, "bus-title").text == other, "bus from the address")
        row = driver.find_element(By.CSS_SELECTOR, f'[data-bus="{other}"]')
        assert "selected" in row.get_attribute("class")
        in_view = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(), l = document.getElementById('bus-list')"
            ".getBoundingClientRect(); return r.top >= l.top && r.bottom <= l.bottom",
            row,
        )
        assert in_view
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-speed path"), "speed chart")
        assert severe_console_errors(driver) == []

        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "map-page.png"))


async def test_the_map_page_with_a_thousand_buses(offline_page: str, fleet: list[FleetBus]) -> None:
    await asyncio.to_thread(offline_scenario, offline_page, fleet)


@pytest.fixture
async def tile_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in tile server on loopback (the real ones are on the internet), recording requests."""
    requested: list[str] = []
    png = one_png()

    async def tile(request: web.Request) -> web.Response:
        requested.append(request.path)
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/tiles/{z}/{x}/{y}.png", tile)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/tiles/{{z}}/{{x}}/{{y}}.png", requested
    finally:
        await runner.cleanup()


async def test_tiles_come_from_the_configured_server(
    pg_schema: Database, fleet: list[FleetBus], tile_server: tuple[str, list[str]]
) -> None:
    # GIVEN a receiver whose settings name a tile server
    template, requested = tile_server
    views = await serve(pg_schema, WebSettings(port=0, map_tile_url=template, map_attribution="test tiles"))

    def scenario() -> None:
        with chromium(1200, 800) as driver:
            open_page(driver, f"{views.url}/")
            # THEN the map loads its tiles from there (the page's policy lets it) beside the markers
            wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "img.leaflet-tile-loaded"), "tiles")
            assert driver.find_elements(By.CSS_SELECTOR, ".bus-cluster, .bus-marker")
            assert "test tiles" in driver.find_element(By.CSS_SELECTOR, ".leaflet-control-attribution").text
            assert severe_console_errors(driver) == []

    try:
        await asyncio.to_thread(scenario)
    finally:
        await views.stop()
    assert requested and all(path.startswith("/tiles/") for path in requested)
