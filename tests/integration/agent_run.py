"""What the integration tests of `voltgate-agent run` share, beside the fault harness's `AgentProcess` and
`wait_until`: the agent replaying a log to the test broker with a collector listening, stopped by SIGTERM,
alerts as the collector received them and as the driver log wrote them, and LED class devices in a
temporary directory laid out like /sys/class/leds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.app import STOP_TIMEOUTS
from tests.faults.harness import AgentProcess
from tests.integration.conftest import Broker
from tests.integration.test_uplink import Collector, collecting

REPO = Path(__file__).resolve().parents[2]


def sysfs_led(root: Path, name: str) -> Path:
    """An LED class device as the kernel lays it out (brightness, max_brightness, the triggers offered)."""
    led = root / name
    led.mkdir(parents=True)
    (led / "brightness").write_text("0\n")
    (led / "max_brightness").write_text("1\n")
    (led / "trigger").write_text("[none] timer heartbeat default-on\n")
    return led


def replay_config(
    path: Path, broker: Broker, *, vehicle_id: str, log: Path, replay: str, state: Path, more: str = ""
) -> Path:
    """An agent configuration replaying `log` as fast as it can to `broker`, committing and publishing
    every 0.2 s, logging JSON lines; `more` adds or completes sections (TOML)."""
    path.write_text(
        f"""
vehicle_id = "{vehicle_id}"
log_format = "json"
[[replay]]
name = "{replay}"
path = "{log}"
speed = "max"
[buffer]
path = "{state / "buffer.sqlite3"}"
commit_interval_s = 0.2
[uplink]
broker_url = "mqtt://{broker.host}:{broker.port}"
fleet_id = "{broker.namespace}"
client_id = "{broker.client_id("agent")}"
batch_max_age_s = 0.2
{more}"""
    )
    return path


@asynccontextmanager
async def replaying(
    broker: Broker, directory: Path, *, vehicle_id: str, log: Path, replay: str, more: str = ""
) -> AsyncIterator[tuple[Collector, AgentProcess]]:
    """A collector subscribed to the fleet's topics, then `voltgate-agent run` replaying `log` to `broker`
    (`replay_config`; its config, buffer and log in `directory`); the agent is killed on the way out if it
    is still running."""
    config = replay_config(
        directory / "agent.toml",
        broker,
        vehicle_id=vehicle_id,
        log=log,
        replay=replay,
        state=directory / "state",
        more=more,
    )
    async with collecting(broker.host, broker.port, broker.namespace) as collector:
        agent = AgentProcess(config, directory / "agent.log")
        try:
            yield collector, agent
        finally:
            agent.ensure_dead()


async def stop_agent(agent: AgentProcess) -> str:
    """SIGTERM; the staged shutdown must end with exit 0 within its budget. Returns the agent's log."""
    code = await agent.terminate_async(STOP_TIMEOUTS.total_s + 10)
    assert code == 0, agent.log_text()[-4000:]
    return agent.log_text()


def received_alerts(collector: Collector, fleet: str, vehicle_id: str) -> list[tuple[str, str, bool]]:
    """(rule, severity, active) of every alert on the vehicle's alerts topic, in arrival order."""
    return [
        (a.rule, a.severity, a.active)
        for topic, batch in collector.batches
        if topic == f"voltgate/v1/{fleet}/{vehicle_id}/alerts"
        for a in batch.alerts
    ]


def driver_alerts(log: str) -> list[dict[str, object]]:
    """The driver log's JSON lines (one per alert change, its details as fields)."""
    return [json.loads(line) for line in log.splitlines() if '"logger": "agent.alerts.driver"' in line]
