"""`voltgate-agent run` as a subprocess: a recorded log replayed through decode → buffer → uplink to the real
Mosquitto, metrics and health served, SIGTERM → staged shutdown → exit 0 with nothing left behind."""

from __future__ import annotations

import asyncio
import configparser
import io
import urllib.request
from pathlib import Path

import can

from agent.app import STOP_TIMEOUTS, SYSTEMD_TIMEOUT_STOP_S
from agent.decode import decode_log_to_csv
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from tests.faults.harness import free_port
from tests.integration.agent_run import REPO, replaying, stop_agent
from tests.integration.conftest import Broker

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

    metrics_port = free_port()
    more = f"""batch_max_records = 100
[metrics]
port = {metrics_port}
"""  # completes [uplink]
    async with replaying(
        mqtt_broker, tmp_path, vehicle_id="bus-9", log=log_path, replay="day", more=more
    ) as (collector, agent):
        await collector.wait_for(
            f"{expected} samples from the agent", lambda: len(set(collector.sample_seqs())) >= expected
        )
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "voltgate_uplink_batches_total" in body
        assert 'voltgate_alerts_active{severity="critical"}' in body  # the alert stage is exported
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/healthz")
        assert status == 200 and body.startswith("ok"), body
        agent_log = await stop_agent(agent)
        await collector.wait_for("the 'offline' status", lambda: collector.statuses[-1:] == ["offline"])

    seqs = collector.sample_seqs()
    assert sorted(set(seqs)) == list(range(expected)), "every sample exactly once after de-duplication"
    assert '"level": "info"' in agent_log, "JSON log lines as configured"
    assert "Traceback" not in agent_log
    assert '"msg": "stopped"' in agent_log
