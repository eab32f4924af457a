"""`voltgate-agent run` as a subprocess: a recorded log replayed through decode → buffer → uplink to the real
Mosquitto, metrics and health served, SIGTERM → staged shutdown → exit 0 with nothing left behind."""

from __future__ import annotations

import asyncio
import configparser
import io
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import can
import pytest

from agent.app import STOP_TIMEOUTS, SYSTEMD_TIMEOUT_STOP_S
from agent.decode import decode_log_to_csv
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from tests.integration.conftest import Broker
from tests.integration.test_uplink import collecting

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "voltgate-agent.service"


def test_stop_stages_fit_in_systemd_timeout_stop_sec() -> None:
    limit = SYSTEMD_TIMEOUT_STOP_S
    if UNIT.exists():
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read_string(UNIT.read_text())
        limit = float(unit["Service"].get("TimeoutStopSec", str(SYSTEMD_TIMEOUT_STOP_S)))
    # A margin for process start-up of Python and the final buffer close.
    assert STOP_TIMEOUTS.total_s + 2.0 <= limit, (STOP_TIMEOUTS, limit)


def _write_log(path: Path, frames: int) -> None:
    """A candump -L log of CCVS1 frames, 1.1 s apart (past the speed signal's minimum interval)."""
    database = load_catalog(DEFAULT_CATALOG).database
    message = database.get_message_by_name("CCVS1")
    with can.Logger(str(path)) as writer:
        for i in range(frames):
            data = message.encode(
                {"WheelBasedVehicleSpeed": float(i % 80), "ParkingBrakeSwitch": i % 2, "BrakeSwitch": 0},
                strict=False,
            )
            frame = can.Message(
                timestamp=1_700_000_000.0 + i * 1.1,
                arbitration_id=message.frame_id,
                is_extended_id=True,
                data=data,
                channel="can0",
            )
            writer.on_message_received(frame)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_agent_replays_a_log_to_the_broker_and_stops(mqtt_broker: Broker, tmp_path: Path) -> None:
    log_path = tmp_path / "day.log"
    _write_log(log_path, 300)
    expected_csv = io.StringIO()
    decode_log_to_csv(log_path, load_catalog(DEFAULT_CATALOG), expected_csv)
    expected = len(expected_csv.getvalue().splitlines()) - 1  # the same decode path, minus the header
    assert expected >= 300

    fleet = mqtt_broker.namespace
    metrics_port = _free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "bus-9"
log_format = "json"
[[replay]]
name = "day"
path = "{log_path}"
speed = "max"
[buffer]
path = "{tmp_path / "state" / "buffer.sqlite3"}"
commit_interval_s = 0.2
[uplink]
broker_url = "mqtt://{mqtt_broker.host}:{mqtt_broker.port}"
fleet_id = "{fleet}"
client_id = "{mqtt_broker.client_id("agent")}"
batch_max_records = 100
batch_max_age_s = 0.2
[metrics]
port = {metrics_port}
"""
    )
    async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as collector:
        agent = subprocess.Popen(  # noqa: ASYNC220  # started once; waits below are bounded and off the loop
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await collector.wait_for(
                f"{expected} samples from the agent", lambda: len(set(collector.sample_seqs())) >= expected
            )
            status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200 and "voltgate_uplink_batches_total" in body
            assert 'voltgate_alerts_active{severity="critical"}' in body  # the alert stage is exported
            status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/healthz")
            assert status == 200 and body.startswith("ok"), body

            agent.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(agent.wait, STOP_TIMEOUTS.total_s + 10)
            except subprocess.TimeoutExpired:
                pytest.fail("the agent did not exit after SIGTERM", pytrace=False)
            assert agent.stderr is not None
            stderr = agent.stderr.read()
            assert code == 0, stderr
            await collector.wait_for("the 'offline' status", lambda: collector.statuses[-1:] == ["offline"])
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()

    seqs = collector.sample_seqs()
    assert sorted(set(seqs)) == list(range(expected)), "every sample exactly once after de-duplication"
    assert '"level": "info"' in stderr, "JSON log lines as configured"
    assert "Traceback" not in stderr
    assert '"msg": "stopped"' in stderr
