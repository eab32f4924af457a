"""What the integration tests of `voltgate-agent run` share: a configuration that replays a log to the test
broker, the agent as a subprocess stopped by SIGTERM, bounded waits that say what they waited for, alerts
as the collector received them and as the driver log wrote them, and LED class devices in a temporary
directory laid out like /sys/class/leds."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import pytest

from agent.app import STOP_TIMEOUTS
from tests.integration.conftest import Broker
from tests.integration.test_uplink import Collector

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


def sysfs_led(root: Path, name: str) -> Path:
    """An LED class device as the kernel lays it out (brightness, max_brightness, the triggers offered)."""
    led = root / name
    led.mkdir(parents=True)
    (led / "brightness").write_text("0\n")
    (led / "max_brightness").write_text("1\n")
    (led / "trigger").write_text("[none] timer heartbeat default-on\n")
    return led


async def until(what: str, condition: Callable[[], bool], wait_s: float = WAIT_S) -> None:
    """Poll `condition` (files and counters offer no event to wait on) for at most `wait_s`."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # LED files, log files and counters offer no event
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), wait_s)
    except TimeoutError:
        pytest.fail(f"gave up after {wait_s:g} s waiting for {what}", pytrace=False)


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
async def agent_process(
    config: Path, stderr: int | IO[str] = subprocess.PIPE
) -> AsyncIterator[subprocess.Popen[str]]:
    """`voltgate-agent run --config CONFIG` as a subprocess; killed on the way out if it is still running."""
    agent = subprocess.Popen(  # noqa: ASYNC220  # started once; waits are bounded and off the loop
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=REPO,
        stderr=stderr,
        text=True,
    )
    try:
        yield agent
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


async def stop_agent(agent: subprocess.Popen[str]) -> str:
    """SIGTERM, then the staged shutdown must end with exit 0 within its budget; returns what it wrote to
    stderr (when that is a pipe)."""
    agent.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(agent.wait, STOP_TIMEOUTS.total_s + 10)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent did not exit after SIGTERM", pytrace=False)
    stderr = agent.stderr.read() if agent.stderr is not None else ""
    assert code == 0, stderr[-4000:]
    return stderr


def received_alerts(collector: Collector, fleet: str, vehicle_id: str) -> list[tuple[str, str, bool]]:
    """(rule, severity, active) of every alert on the vehicle's alerts topic, in arrival order."""
    return [
        (a.rule, a.severity, a.active)
        for topic, batch in collector.batches
        if topic == f"voltgate/v1/{fleet}/{vehicle_id}/alerts"
        for a in batch.alerts
    ]


def driver_alerts(stderr: str) -> list[dict[str, object]]:
    """The driver log's JSON lines (one per alert change, its details as fields)."""
    return [json.loads(line) for line in stderr.splitlines() if '"logger": "agent.alerts.driver"' in line]
