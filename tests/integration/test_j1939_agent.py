"""A J1939 chassis bus as a truck sends it, through the real programs: `voltgate-agent decode` turns a
recorded log into samples, and `voltgate-agent run` replays it to the real Mosquitto, where the DM1 fault
arrives as an alert on the alerts topic (raised, then cleared) and the DM1 samples travel with the
telemetry.

The log (candump -L, written by python-can) holds CCVS1, VDHR and AMB from three senders at three priorities,
a DM1 with three DTCs and the red stop lamp over BAM, a DM1 over RTS/CTS to a diagnostic tool, a broken BAM
(packet missing), and finally a single-frame DM1 with no DTC. Frames are built from the published layouts
(see tests/unit/test_j1939.py). Every wait is bounded and fails with what did not arrive.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest

from agent.app import STOP_TIMEOUTS
from agent.records import Frame
from protocols.j1939 import PGN_DM1, pgn_id
from tests.integration.conftest import Broker
from tests.integration.test_uplink import collecting
from tests.unit.test_j1939 import (
    THREE_DTCS,
    bam_frames,
    dm1_payload,
    dtc_bytes,
    frame,
    pg_frame,
    rts_cts_frames,
)

REPO = Path(__file__).resolve().parents[2]
DM1 = "Vehicle.Diagnostics.DM1."
RULE = "dm1:sa0:spn168:fmi1"


def _truck_log(path: Path) -> None:
    t0 = time.time() - 120.0  # a recent recording: the agent judges replayed stamps by their own time base
    frames: list[Frame] = []
    for i in range(20):
        ts = t0 + i * 1.1  # past the speed's 1 s minimum interval
        frames.append(pg_frame("CCVS1", {"WheelBasedVehicleSpeed": 20.0 + i}, priority=3, source=0x17, ts=ts))
        frames.append(
            pg_frame(
                "VDHR",
                {"HighResolutionTotalVehicleDistance": 1000.0 + i * 0.01},
                priority=7,
                source=0x21,
                ts=ts,
            )
        )
        frames.append(pg_frame("AMB", {"AmbientAirTemperature": 12.5}, priority=6, source=0x00, ts=ts))
    broken = bam_frames(PGN_DM1, dm1_payload(amber=1, dtcs=THREE_DTCS), source=0x21, ts=t0 + 1.0)
    frames += [f for i, f in enumerate(broken) if i != 1]  # packet 1 missing
    frames += bam_frames(PGN_DM1, dm1_payload(red=1, dtcs=THREE_DTCS), source=0x00, ts=t0 + 2.0)
    frames += rts_cts_frames(
        PGN_DM1,
        dm1_payload(amber=1, dtcs=[*THREE_DTCS, dtc_bytes(5919, 4, 2)]),
        source=0x03,
        destination=0xF9,
        ts=t0 + 4.0,
    )
    frames.append(frame(pgn_id(PGN_DM1, 6, 0x00), dm1_payload(dtcs=[]), t0 + 15.0))  # ECU 0x00: all clear
    frames.sort(key=lambda f: f.ts)
    with can.Logger(str(path)) as writer:
        for f in frames:
            writer.on_message_received(
                can.Message(
                    timestamp=f.ts,
                    arbitration_id=f.arbitration_id,
                    is_extended_id=True,
                    data=f.data,
                    channel="can1",
                )
            )


def test_decode_cli_decodes_a_truck_bus(tmp_path: Path) -> None:
    log = tmp_path / "truck.log"
    _truck_log(log)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "decode",
            "--dbc",
            str(REPO / "protocols" / "bus.dbc"),
            "--no-policy",
            str(log),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    values: dict[str, list[float]] = {}
    for row in rows:
        values.setdefault(row["signal"], []).append(float(row["value"]))
    # every CCVS1, VDHR and AMB frame decodes, whatever its sender and priority
    assert values["Vehicle.Speed"] == [20.0 + i for i in range(20)]
    assert len(values["Vehicle.TraveledDistance"]) == 20
    assert values["Vehicle.Exterior.AirTemperature"] == [12.5] * 20
    # DM1: the BAM of ECU 0x00 (3 DTCs), then ECU 0x03 over RTS/CTS (4 more), then ECU 0x00 clears;
    # the broken BAM of ECU 0x21 yields nothing
    assert values[DM1 + "ActiveDtcCount"] == [3.0, 7.0, 4.0]
    assert values[DM1 + "RedStopLamp"] == [1.0, 1.0, 0.0]
    assert values[DM1 + "AmberWarningLamp"] == [0.0, 1.0, 1.0]
    assert {(row["message"], row["dbc_signal"]) for row in rows if row["signal"] == DM1 + "RedStopLamp"} == {
        ("DM1", "red_stop_lamp")
    }
    assert "skipping tp_sequence" in done.stderr  # the broken session, logged once and counted


async def test_agent_raises_and_clears_a_dm1_alert(mqtt_broker: Broker, tmp_path: Path) -> None:
    log = tmp_path / "truck.log"
    _truck_log(log)
    fleet = mqtt_broker.namespace
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "truck-1"
log_format = "json"
[[replay]]
name = "chassis"
path = "{log}"
speed = "max"
[buffer]
path = "{tmp_path / "state" / "buffer.sqlite3"}"
commit_interval_s = 0.2
[uplink]
broker_url = "mqtt://{mqtt_broker.host}:{mqtt_broker.port}"
fleet_id = "{fleet}"
client_id = "{mqtt_broker.client_id("agent")}"
batch_max_age_s = 0.2
[metrics]
enabled = false
[inference]
enabled = false
[alerts]
led_root = "{tmp_path / "leds"}"
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

            def alerts() -> list[tuple[str, str, bool]]:
                return [
                    (a.rule, a.severity, a.active)
                    for topic, batch in collector.batches
                    if topic == f"voltgate/v1/{fleet}/truck-1/alerts"
                    for a in batch.alerts
                ]

            def samples(name: str) -> list[float]:
                return [s.value for _, batch in collector.batches for s in batch.samples if s.signal == name]

            # THEN the red-stop-lamp DTC of ECU 0x00 is raised critical, and cleared by its all-clear DM1
            await collector.wait_for("the DM1 alert raised", lambda: (RULE, "critical", True) in alerts())
            await collector.wait_for("the DM1 alert cleared", lambda: (RULE, "critical", False) in alerts())
            # AND ECU 0x03's DTCs (amber lamp) are warnings, raised once each
            assert alerts().count(("dm1:sa3:spn5919:fmi4", "warning", True)) == 1
            # AND the DM1 samples and the re-addressed chassis signals travel with the telemetry
            await collector.wait_for("the DM1 count", lambda: samples(DM1 + "ActiveDtcCount")[-1:] == [4.0])
            assert samples("Vehicle.Speed") and samples("Vehicle.Exterior.AirTemperature") == [12.5]

            agent.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(agent.wait, STOP_TIMEOUTS.total_s + 10)
            except subprocess.TimeoutExpired:
                pytest.fail("the agent did not exit after SIGTERM", pytrace=False)
            assert agent.stderr is not None
            stderr = agent.stderr.read()
            assert code == 0, stderr
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()

    # the driver log: one structured line per alert change
    driver = [json.loads(line) for line in stderr.splitlines() if '"logger": "agent.alerts.driver"' in line]
    raised = [d for d in driver if d.get("alert_rule") == RULE and d.get("alert_active") is True]
    assert len(raised) == 1 and raised[0]["alert_severity"] == "critical", driver
    assert "Traceback" not in stderr
