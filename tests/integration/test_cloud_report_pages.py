"""The fleet page's block-risk and pay-per-km tables, in Debian's headless Chromium driven by Selenium.

The receiver of tests/integration/test_cloud_analytics.py (its simulated buses and ODO-X, its
settings) serves the page; each table is checked against what the API answers for the same question.
One flavour: the API's answers are tested on both in test_cloud_analytics.py, this is the page.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from .test_cloud_analytics import DEPARTURE, Api, api, iso, simulated  # noqa: F401  (fixtures, reused)
from .test_cloud_map_page import ARTIFACTS, chromium, open_page, severe_console_errors, wait_for

By = pytest.importorskip("selenium.webdriver.common.by").By

pytestmark = [pytest.mark.asyncio, pytest.mark.flavour("native")]


def cells(driver: Any, table: str, column: int) -> list[str]:
    texts: list[str] = driver.execute_script(
        f"return [...document.querySelectorAll('#{table} tbody tr[data-bus]')]"
        f".map(r => r.children[{column}].textContent)"
    )
    return texts


def keys(driver: Any, table: str, attribute: str) -> list[str]:
    found: list[str] = driver.execute_script(
        f"return [...document.querySelectorAll('#{table} tbody tr[data-bus]')]"
        f".map(r => r.dataset.{attribute})"
    )
    return found


def set_billing(driver: Any, day_from: str, day_to: str, period: str) -> None:
    driver.execute_script(
        "document.getElementById('billing-from').value = arguments[0];"
        "document.getElementById('billing-to').value = arguments[1];"
        "document.getElementById('billing-period').value = arguments[2];"
        "document.querySelector('#billing-form button[type=submit]').click();",
        day_from,
        day_to,
        period,
    )


async def test_block_risk_and_billing_tables(api: Api) -> None:  # noqa: F811
    loop = asyncio.get_running_loop()

    def answer(path: str, **params: str) -> Any:
        return asyncio.run_coroutine_threadsafe(api.get(path, **params), loop).result()

    def scenario() -> None:
        with chromium(1440, 1000) as driver:
            # WHEN the page opens and its tables are scrolled to (they load when first seen)
            open_page(driver, f"{api.url}/")
            driver.execute_script("document.getElementById('block-risk-panel').scrollIntoView()")
            wait_for(driver, lambda d: keys(d, "block-risk-table", "bus"), "the block-risk table")

            # THEN the block-risk table ranks the buses as the API does at the fleet's latest data
            at = driver.find_element(By.ID, "block-risk-table").get_attribute("data-at")
            status, risk = answer("/api/fleet/block-risk", at=at)
            assert status == 200
            ranked = [b["vehicle_id"] for b in risk["buses"]]
            assert keys(driver, "block-risk-table", "bus") == ranked
            answers = cells(driver, "block-risk-table", 1)
            said = {True: "divert to charge", False: "can finish", None: "no answer"}
            assert answers == [said[b["divert"]] for b in risk["buses"]]
            assert "divert to charge" in answers
            # with which capacity each used
            usable = cells(driver, "block-risk-table", 8)
            assert "SoH" in usable[ranked.index("SIM-AGED")] and "SoH" not in usable[ranked.index("SIM-FULL")]

            # AND the pay-per-km report shows the API's rows for its default range (the last 7 days)
            wait_for(driver, lambda d: d.find_element(By.ID, "billing-note").text, "billing")
            day_from = driver.find_element(By.ID, "billing-from").get_attribute("value")
            day_to = driver.find_element(By.ID, "billing-to").get_attribute("value")
            status, bill = answer("/api/reports/billing", **{"from": day_from, "to": day_to, "tz": "UTC"})
            assert status == 200 and bill["rows"]
            assert keys(driver, "billing-table", "bus") == [r["vehicle_id"] for r in bill["rows"]]
            assert cells(driver, "billing-table", 2) == [f"{r['odometer_km']:,.1f}" for r in bill["rows"]]

            # WHEN a week with ODO-X's odometer reset and data gap is asked for
            set_billing(driver, "2024-03-04", "2024-03-06", "week")
            wait_for(driver, lambda d: keys(d, "billing-table", "period") == ["2024-03-04"] * 4, "weekly")
            # THEN its row carries the flags the API gives it, and the CSV link gives the same report
            params = {"from": "2024-03-04", "to": "2024-03-06", "period": "week", "tz": "UTC"}
            _, week = answer("/api/reports/billing", **params)
            odo_x = next(r for r in week["rows"] if r["vehicle_id"] == "ODO-X")
            shown = driver.execute_script(
                "return [...document.querySelectorAll('#billing-table tr[data-bus=\"ODO-X\"] [data-flag]')]"
                ".map(f => f.dataset.flag)"
            )
            assert shown == odo_x["flags"] and "odometer_rollback" in shown
            csv_text = driver.execute_async_script(
                "const done = arguments[0];"
                "fetch(document.getElementById('billing-csv').getAttribute('href'))"
                ".then(r => r.text()).then(done)"
            )
            _, expected_csv = answer("/api/reports/billing", format="csv", **params)
            assert csv_text == expected_csv
            assert severe_console_errors(driver) == []
            ARTIFACTS.mkdir(exist_ok=True)
            driver.execute_script("document.getElementById('block-risk-panel').scrollIntoView()")
            driver.save_screenshot(str(ARTIFACTS / "report-tables.png"))

            # WHEN the range is backwards, THEN the report says why, as the API does
            set_billing(driver, "2024-03-06", "2024-03-04", "day")
            backwards = {"from": "2024-03-06", "to": "2024-03-04", "tz": "UTC"}
            _, refused = answer("/api/reports/billing", **backwards)
            note = refused["error"]
            wait_for(driver, lambda d: d.find_element(By.ID, "billing-note").text == note, "the refusal")
            assert not driver.find_element(By.ID, "billing-csv").is_displayed()

            # WHEN the page is opened on SIM-LOW's morning (?at=), THEN its on-device forecast is beside it
            morning = iso(DEPARTURE + timedelta(minutes=26))
            driver.get("about:blank")
            open_page(driver, f"{api.url}/?at={morning}")
            driver.execute_script("document.getElementById('block-risk-panel').scrollIntoView()")
            wait_for(driver, lambda d: keys(d, "block-risk-table", "bus"), "the block-risk table")
            _, then = answer("/api/fleet/block-risk", at=morning)
            low = next(b for b in then["buses"] if b["vehicle_id"] == "SIM-LOW")
            ranked = keys(driver, "block-risk-table", "bus")
            assert ranked == [b["vehicle_id"] for b in then["buses"]]
            forecast = cells(driver, "block-risk-table", 9)[ranked.index("SIM-LOW")]
            reserve_h = low["forecast_hours_to_reserve"]
            expected = f"{low['forecast_soc_pct']:,.0f} % in 60 min · reserve in {reserve_h:,.1f} h"
            assert forecast.startswith(expected)

            # WHEN a bus of the block-risk table is chosen, THEN it opens at its own address
            driver.find_element(By.CSS_SELECTOR, '#block-risk-table tr[data-bus="SIM-LOW"] a').click()
            wait_for(driver, lambda d: d.find_element(By.ID, "bus-title").text == "SIM-LOW", "bus opens")
            assert driver.execute_script("return window.location.hash") == "#/bus/SIM-LOW"

    await asyncio.to_thread(scenario)
