"""A J1939 chassis bus as a truck sends it, through the real programs: `voltgate-agent decode` turns a
recorded log into samples, and `voltgate-agent run` replays it to the real Mosquitto, where the DM1 fault
arrives as an alert on the alerts topic (raised, then cleared) and the DM1 samples travel with the
telemetry.

The log (candump -L, written by python-can) holds CCVS1, VDHR and AMB from three senders at three priorities,
a DM1 with three DTCs and the red stop lamp over BAM once a second, a DM1 over RTS/CTS to a diagnostic tool
(once: its DTCs expire), a broken BAM (packet missing), and finally a single-frame DM1 with no DTC. Frames
are built from the published layouts (see tests/unit/test_j1939.py). Every wait is bounded and fails with
what did not arrive.

The in-process test replays a chassis log through the real `Agent` to an LED tree: DM1 alerts light the
LEDs beside the rules' alerts, pass the clock gate, and expire when their ECU falls silent.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest

from agent.app import Agent, StopTimeouts
from agent.records import Frame
from agent.settings import (
    AgentSettings,
    AlertSettings,
    BufferSettings,
    InferenceSettings,
    MetricsSettings,
    ReplaySettings,
    UplinkSettings,
)
from protocols.j1939 import PGN_DM1, pgn_id
from tests.faults.harness import free_port, wait_until
from tests.integration.agent_run import (
    REPO,
    driver_alerts,
    received_alerts,
    replaying,
    stop_agent,
    sysfs_led,
)
from tests.integration.conftest import Broker
from tests.unit.test_j1939 import (
    THREE_DTCS,
    bam_frames,
    dm1_payload,
    dtc_bytes,
    frame,
    pg_frame,
    rts_cts_frames,
)

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
    for second in range(2, 15):  # ECU 0x00 broadcasts its DM1 once a second (J1939-73)
        frames += bam_frames(PGN_DM1, dm1_payload(red=1, dtcs=THREE_DTCS), source=0x00, ts=t0 + second)
    frames += rts_cts_frames(  # once, to a diagnostic tool that asked
        PGN_DM1,
        dm1_payload(amber=1, dtcs=[*THREE_DTCS, dtc_bytes(5919, 4, 2)]),
        source=0x03,
        destination=0xF9,
        ts=t0 + 4.0,
    )
    frames.append(frame(pgn_id(PGN_DM1, 6, 0x00), dm1_payload(dtcs=[]), t0 + 15.0))  # ECU 0x00: all clear
    frames.sort(key=lambda f: f.ts)
    _write_candump(path, frames)


def _write_candump(path: Path, frames: list[Frame]) -> None:
    """`frames` in a candump -L log, in the order given (as a logger records them)."""
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
    # DM1: the BAMs of ECU 0x00 (3 DTCs; three before ECU 0x03's RTS/CTS adds 4 more, ten after), then
    # ECU 0x00 clears; the broken BAM of ECU 0x21 yields nothing
    assert values[DM1 + "ActiveDtcCount"] == [3.0] * 3 + [7.0] * 11 + [4.0]
    assert values[DM1 + "RedStopLamp"] == [1.0] * 14 + [0.0]
    assert values[DM1 + "AmberWarningLamp"] == [0.0] * 3 + [1.0] * 12
    assert {(row["message"], row["dbc_signal"]) for row in rows if row["signal"] == DM1 + "RedStopLamp"} == {
        ("DM1", "red_stop_lamp")
    }
    assert "skipping tp_sequence" in done.stderr  # the broken session, logged once and counted


async def test_agent_raises_and_clears_a_dm1_alert(mqtt_broker: Broker, tmp_path: Path) -> None:
    truck_log = tmp_path / "truck.log"
    _truck_log(truck_log)
    fleet = mqtt_broker.namespace
    more = f"""[metrics]
enabled = false
[inference]
enabled = false
[alerts]
led_root = "{tmp_path / "leds"}"
"""
    async with replaying(
        mqtt_broker, tmp_path, vehicle_id="truck-1", log=truck_log, replay="chassis", more=more
    ) as (collector, agent):

        def alerts() -> list[tuple[str, str, bool]]:
            return received_alerts(collector, fleet, "truck-1")

        def samples(name: str) -> list[float]:
            return [s.value for _, batch in collector.batches for s in batch.samples if s.signal == name]

        # THEN the red-stop-lamp DTC of ECU 0x00 is raised critical, and cleared by its all-clear DM1
        await collector.wait_for("the DM1 alert raised", lambda: (RULE, "critical", True) in alerts())
        await collector.wait_for("the DM1 alert cleared", lambda: (RULE, "critical", False) in alerts())
        # AND ECU 0x03's DTCs (amber lamp) are warnings, raised once each, cleared when its DM1 stops
        assert alerts().count(("dm1:sa3:spn5919:fmi4", "warning", True)) == 1
        await collector.wait_for(
            "ECU 0x03's DTCs expired", lambda: ("dm1:sa3:spn5919:fmi4", "warning", False) in alerts()
        )
        # AND the DM1 samples and the re-addressed chassis signals travel with the telemetry
        await collector.wait_for("the DM1 count", lambda: samples(DM1 + "ActiveDtcCount")[-1:] == [4.0])
        assert samples("Vehicle.Speed") and samples("Vehicle.Exterior.AirTemperature") == [12.5]
        agent_log = await stop_agent(agent)

    # the driver log: one structured line per alert change
    driver = driver_alerts(agent_log)
    raised = [d for d in driver if d.get("alert_rule") == RULE and d.get("alert_active") is True]
    assert len(raised) == 1 and raised[0]["alert_severity"] == "critical", driver
    cleared = {d["alert_rule"]: str(d["msg"]) for d in driver if d.get("alert_active") is False}
    assert cleared[RULE].endswith("no longer active")  # by ECU 0x00's all-clear DM1
    assert "no DM1 from this ECU" in cleared["dm1:sa3:spn5919:fmi4"]  # by the timeout
    assert "Traceback" not in agent_log


async def test_dm1_alerts_pass_the_clock_gate_light_the_leds_and_expire(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a chassis log (in file order, as recorded): CCVS1 every second; engine ECU 0x00's DM1 (red stop
    # lamp, 3 DTCs over BAM) every second throughout; transmission ECU 0x03's DM1 (amber lamp) for four
    # seconds, then nothing; and one DM1 of body controller 0x21 (amber lamp) stamped a year ahead
    log = tmp_path / "chassis.log"
    t0 = time.time() - 120.0
    frames: list[Frame] = []
    for i in range(12):
        ts = t0 + i
        frames.append(pg_frame("CCVS1", {"WheelBasedVehicleSpeed": 20.0 + i}, priority=3, source=0x17, ts=ts))
        frames += bam_frames(PGN_DM1, dm1_payload(red=1, dtcs=THREE_DTCS), source=0x00, ts=ts + 0.1)
        if i < 4:
            amber_dtc = dm1_payload(amber=1, dtcs=[dtc_bytes(5919, 4, 2)])
            frames.append(frame(pgn_id(PGN_DM1, 6, 0x03), amber_dtc, ts + 0.5))
        if i == 6:
            year_ahead = dm1_payload(amber=1, dtcs=[dtc_bytes(597, 2, 1)])
            frames.append(frame(pgn_id(PGN_DM1, 6, 0x21), year_ahead, ts + 365 * 86_400.0))
    _write_candump(log, frames)
    leds = tmp_path / "leds"
    amber, red = sysfs_led(leds, "bus:amber:alert"), sysfs_led(leds, "bus:red:alert")
    settings = AgentSettings(
        vehicle_id="truck-2",
        replay=[ReplaySettings(name="chassis", path=log)],
        buffer=BufferSettings(path=tmp_path / "buffer.sqlite3", commit_interval_s=0.1),
        # no broker: this test is about the agent's own alerts (the MQTT path is the test above)
        uplink=UplinkSettings(broker_url=f"mqtt://127.0.0.1:{free_port()}", backoff_max_s=1.0),
        metrics=MetricsSettings(enabled=False),
        inference=InferenceSettings(enabled=False),
        alerts=AlertSettings(led_root=leds, led_warning="bus:amber:alert", led_critical="bus:red:alert"),
    )
    agent = Agent(settings, stop_timeouts=StopTimeouts(publish_s=0.5, disconnect_s=0.5))
    with caplog.at_level(logging.INFO, logger="agent.alerts.driver"):
        running = asyncio.create_task(agent.run())
        try:
            await wait_until("the alert stage", lambda: agent.alert_stage is not None)
            stage = agent.alert_stage
            assert stage is not None
            # THEN ECU 0x03's DTC expires once its DM1 stops
            dtcs = stage.dtcs
            await wait_until(
                "ECU 0x03's DTC expired", lambda: "chassis" in dtcs and dtcs["chassis"].expired == 1
            )
            # AND ECU 0x00's DTCs, broadcast to the end, are the active alerts: the red LED blinks (the
            # kernel's timer trigger), the amber one is off
            assert set(stage.active().values()) == {"critical"} and len(stage.active()) == 3
            await wait_until("the red LED blinking", lambda: (red / "trigger").read_text() == "timer")
            assert (amber / "brightness").read_text() == "0"
            # AND the DM1 stamped a year ahead was judged by the clock gate and kept out of the alerts
            gate = agent.clock_gate
            assert gate is not None
            assert gate.stats.implausible.get(("chassis:dm1", "ahead")) == 1
        finally:
            agent.request_stop()
            await asyncio.wait_for(running, 30)
    driver = [r for r in caplog.records if r.name == "agent.alerts.driver"]
    changes = [_change(r) for r in driver]
    assert changes.count(("dm1:sa0:spn168:fmi1", "critical", True)) == 1
    assert ("dm1:sa0:spn168:fmi1", "critical", False) not in changes
    assert changes.count(("dm1:sa3:spn5919:fmi4", "warning", True)) == 1
    # ECU 0x03's last DM1 at 3.5 s; ECU 0x00's at 6.2 s is 2.7 s later, its next (7.2 s) past the timeout
    expired = [r.getMessage() for r in driver if _change(r) == ("dm1:sa3:spn5919:fmi4", "warning", False)]
    assert len(expired) == 1 and "no DM1 from this ECU for 3.7 s" in expired[0], expired
    assert not any(rule.startswith("dm1:sa33:") for rule, _, _ in changes)
    # a stopped agent leaves its LEDs off
    assert (red / "trigger").read_text() == "none" and (red / "brightness").read_text() == "0"


def _change(record: logging.LogRecord) -> tuple[str, str, bool]:
    """(rule, severity, active) of a driver log line, from its fields."""
    return record.alert_rule, record.alert_severity, record.alert_active  # type: ignore[attr-defined]
