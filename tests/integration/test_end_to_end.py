"""End to end, every program as a process: the simulated bus (SLCAN and NMEA on ptys) → `voltgate-agent run`
(decode, buffer, inference every 10 s of bus time) → Mosquitto (its own instance) → `voltgate-cloud run` →
PostgreSQL (a fresh schema) → the receiver's JSON API, which must show the bus with its SOC and position,
its SOC series, and the agent's SOC-drop predictions (named `protocols.predictions.SOC_DROP_PP` on both
sides of the wire).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from protocols.signals import SOC
from tests.faults.harness import (
    AgentConfig,
    AgentProcess,
    LiveBus,
    Mosquitto,
    Program,
    Receiver,
    ReceiverConfig,
    free_port,
    start_tapped_live_bus,
    wait_until,
)
from tests.integration.conftest import TIMESCALE_DSN, Database, service_unavailable, unique_id

pytestmark = pytest.mark.slow


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@pytest.fixture
def stack() -> Iterator[list[Program | LiveBus]]:
    """Everything the test starts; stopped at the end whatever happened."""
    started: list[Program | LiveBus] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, LiveBus):
            thing.stop()
        else:
            thing.ensure_dead()


# A bus in real time for over a minute: run once, on the production flavour (TimescaleDB) where the test
# machine has it, else on plain PostgreSQL. Every store and read below is tested on both flavours apart.
@pytest.mark.flavour("timescale" if TIMESCALE_DSN else "native")
async def test_simulated_bus_reaches_the_api(pg_schema: Database, tmp_path: Path, stack: list[Any]) -> None:
    if shutil.which("mosquitto") is None:
        service_unavailable("mosquitto binary not installed")
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    stack.append(broker)
    broker.start()
    web_port = free_port()
    receiver = Receiver(
        tmp_path / "receiver",
        ReceiverConfig(broker.port, pg_schema.dsn, pg_schema.schema, unique_id("rx-"), web_port=web_port),
    )
    stack.append(receiver)
    receiver.start_subscribed()
    # GIVEN a bus leaving the depot now, and its agent
    bus = start_tapped_live_bus(900, depart_now=True)
    stack.append(bus)
    vehicle = "bus-e2e-" + unique_id("")[:6]
    config = AgentConfig(
        vehicle_id=vehicle,
        fleet=unique_id("f"),
        broker_port=broker.port,
        buffer_path=tmp_path / "state" / "buffer.sqlite3",
        slcan_pty=bus.slcan.path,
        nmea_pty=bus.nmea.path,
        inference_interval_s=10.0,
    )
    agent = AgentProcess(config.write(tmp_path / "agent.toml"), tmp_path / "agent.log")
    stack.append(agent)
    api = f"http://127.0.0.1:{web_port}/api"
    watched = [agent, receiver, broker]
    started = datetime.now(UTC) - timedelta(minutes=5)

    def window() -> str:
        return urlencode(
            {"from": started.isoformat(), "to": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}
        )

    def listed() -> dict[str, Any] | None:
        body = get_json(f"{api}/buses")
        for entry in (body or {}).get("buses", []):
            if entry.get("id") == vehicle:
                return dict(entry)
        return None

    def has(check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
        return lambda: (entry := listed()) is not None and check(entry)

    # THEN the bus list shows it with its SOC and position
    await wait_until(
        "the bus in /api/buses with SOC and position",
        has(lambda e: e.get("soc_pct") is not None and e.get("location") is not None),
        watch=watched,
        timeout_s=120,
        state=lambda: f"/api/buses: {get_json(f'{api}/buses')}",
    )
    entry = listed()
    assert entry is not None
    assert entry["location"]["lat"] == pytest.approx(-1.28, abs=0.5), entry  # Nairobi, route 102
    # ... its SOC series
    series_url = lambda: f"{api}/buses/{vehicle}/series?signal={SOC}&{window()}"  # noqa: E731
    await wait_until(
        "SOC points in the series",
        lambda: bool((get_json(series_url()) or {}).get("points")),
        watch=watched,
        timeout_s=60,
        state=lambda: f"series: {get_json(series_url())}",
    )
    # ... and the agent's SOC-drop predictions
    predictions_url = lambda: f"{api}/buses/{vehicle}/predictions?{window()}"  # noqa: E731
    await wait_until(
        "SOC-drop predictions from the agent in /api/buses/{bus}/predictions",
        lambda: bool((get_json(predictions_url()) or {}).get("points")),
        watch=watched,
        timeout_s=150,
        state=lambda: f"predictions: {get_json(predictions_url())}\nagent log:\n{agent.log_text()[-2000:]}",
    )
    predictions = get_json(predictions_url())
    point = predictions["points"][0]
    assert point["predicted_drop_pct"] is not None and point["soc_at_prediction_pct"] is not None, point
    bus_state = get_json(f"{api}/buses/{vehicle}")
    assert bus_state["id"] == vehicle and bus_state["soc_pct"] is not None, bus_state
    await asyncio.to_thread(agent.terminate)
    assert "Traceback" not in agent.log_text() and "Traceback" not in receiver.log_text()
