"""The real `Agent` on a live virtual CAN bus and a GPS on a pty: one BMS frame stamped a year ahead and GPS
fixes dated 2007 (a receiver past its week rollover). The outlier is counted, buffered as stamped and kept
out of inference and alerts (predictions keep coming every interval, an alert raised before it clears
after its hold time); the GPS fixes are corrected by 1024 weeks and used.

Waits are bounded and say what they waited for; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sqlite3
import time
import tty
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import can
import pytest

from agent.app import Agent, StopTimeouts
from agent.buffer import Kind
from agent.clock import GPS_WEEK_ROLLOVER_S
from agent.settings import (
    AgentSettings,
    AlertSettings,
    BufferSettings,
    CanBusSettings,
    GpsSettings,
    InferenceSettings,
    MetricsSettings,
    UplinkSettings,
)
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from simulator.emit_nmea import nmea_sentence

MODELS = Path(__file__).resolve().parents[2] / "models"
WAIT_S = 30.0
YEAR_S = 365 * 86_400.0
DATABASE = load_catalog(DEFAULT_CATALOG).database


async def _until(what: str, condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # the agent's counters offer no event to wait on
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"gave up after {WAIT_S:g} s waiting for {what}", pytrace=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bms_frames(ts: float, temp_c: float, soc_pct: float) -> list[can.Message]:
    temperature = DATABASE.get_message_by_name("BMS_Temperature")
    pack = DATABASE.get_message_by_name("BMS_PackStatus")
    values = {
        temperature: {"CellTemperatureMax": temp_c, "CellTemperatureMin": temp_c - 3.0},
        pack: {"PackVoltage": 640.0, "PackCurrent": 20.0, "SOC": soc_pct},
    }
    return [
        can.Message(
            timestamp=ts,
            arbitration_id=message.frame_id,
            is_extended_id=False,
            data=message.encode({s.name: max(s.minimum or 0, 0) for s in message.signals} | signals),
        )
        for message, signals in values.items()
    ]


def _rolled_over_fix(ts: float) -> bytes:
    """RMC + GGA of one epoch at `ts`, dated as a receiver past its week rollover does: 1024 weeks early."""
    moment = datetime.fromtimestamp(round(ts - GPS_WEEK_ROLLOVER_S), UTC)
    hhmmss, ddmmyy = f"{moment:%H%M%S}.00", f"{moment:%d%m%y}"
    rmc = f"GPRMC,{hhmmss},A,0117.00000,S,03649.00000,E,10.000,90.00,{ddmmyy},,,A"
    gga = f"GPGGA,{hhmmss},0117.00000,S,03649.00000,E,1,08,1.00,1650.0,M,,M,,"
    return (nmea_sentence(rmc) + nmea_sentence(gga)).encode()


async def test_a_year_ahead_frame_and_a_2007_gps_fix_change_nothing_downstream(tmp_path: Path) -> None:
    channel = f"clock-{uuid.uuid4().hex[:8]}"
    master, slave = os.openpty()
    tty.setraw(slave)
    buffer_path = tmp_path / "buffer.sqlite3"
    settings = AgentSettings(
        vehicle_id="bus-clock",
        can=[CanBusSettings(name="traction", interface="virtual", channel=channel, bitrate=None)],
        gps=GpsSettings(enabled=True, port=os.ttyname(slave)),
        buffer=BufferSettings(path=buffer_path, commit_interval_s=0.1),
        # no broker: every record stays in the buffer, where the test reads it
        uplink=UplinkSettings(broker_url=f"mqtt://127.0.0.1:{_closed_port()}", backoff_max_s=1.0),
        metrics=MetricsSettings(enabled=False),
        inference=InferenceSettings(models=[MODELS / "fault_risk.onnx"], interval_s=1.0),
        alerts=AlertSettings(min_hold_s=1.0, led_root=tmp_path / "leds", led_warning=None, led_critical=None),
    )
    agent = Agent(settings, stop_timeouts=StopTimeouts(publish_s=0.5, disconnect_s=0.5))
    bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    running = asyncio.create_task(agent.run())

    async def send(temp_c: float, soc_pct: float, seconds: float) -> None:
        end = time.monotonic() + seconds
        wobble = 0.0
        while time.monotonic() < end:
            wobble = 1.0 - wobble  # past the deadbands: the sampling policy keeps them, time flows
            for frame in _bms_frames(time.time(), temp_c + wobble, soc_pct + wobble):
                bus.send(frame)
            await asyncio.sleep(0.05)

    try:
        await _until("the agent's stages", lambda: agent.alert_stage is not None)
        alerts, inference = agent.alert_stage, agent.inference_stage
        assert alerts is not None and inference is not None
        # GIVEN a hot pack: the over-temperature warning is raised
        deadline = time.monotonic() + WAIT_S
        while "over_temperature" not in alerts.engine.active():
            assert time.monotonic() < deadline, "no over-temperature warning from a hot pack"
            await send(46.0, 60.0, 0.2)
        await send(46.0, 60.0, 0.5)
        # WHEN one frame pair is stamped a year ahead (hotter than critical, SOC critically low)
        outlier_ts = time.time() + YEAR_S
        for frame in _bms_frames(outlier_ts, 70.0, 5.0):
            bus.send(frame)
        # ... and the GPS receiver reports fixes of 2007
        now = time.time()
        fixes = b"".join(_rolled_over_fix(now + i) for i in range(-3, 1))  # the last one closes at flush
        await asyncio.to_thread(os.write, master, fixes)
        # ... while the pack cools down
        await send(35.0, 60.0, 0.5)
        deadline = time.monotonic() + WAIT_S
        while "over_temperature" in alerts.engine.active():  # frames must flow: the hold time is source time
            assert time.monotonic() < deadline, "the warning did not clear after its hold time"
            await send(35.0, 60.0, 0.2)
        ticks_at_clear = inference.stats.ticks
        await send(35.0, 60.0, 2.5)
        await _until(
            "a GPS fix through the gate",
            lambda: agent.clock_gate is not None and bool(agent.clock_gate.stats.corrected),
        )
        gate = agent.clock_gate
        assert gate is not None
        # THEN the outlier is counted, and only it
        ahead = gate.stats.implausible.get(("traction", "ahead"), 0)
        assert ahead >= 2 and set(gate.stats.implausible) == {("traction", "ahead")}
        assert gate.stats.steps == {}
        # AND the 2007 fixes were moved on by 1024 weeks
        assert gate.stats.corrected.get(("gps", "gps_week_rollover"), 0) >= 1
        # AND inference and alerts never saw it: their "now" is the host's, predictions kept coming
        assert inference.stats.time_outliers == 0 and alerts.engine.time_outliers == 0
        assert inference.clock.now < time.time() + 60 and alerts.engine.readings.now < time.time() + 60
        await _until("two more ticks after the clear", lambda: inference.stats.ticks >= ticks_at_clear + 2)
        assert alerts.stats.raised == 1 and alerts.stats.cleared == 1, alerts.stats.by_rule
    finally:
        agent.request_stop()
        await asyncio.wait_for(running, 30)
        bus.shutdown()
        os.close(master)
        os.close(slave)

    # AND the buffer holds everything: the outlier as stamped, the GPS fixes with their corrected time
    with sqlite3.connect(buffer_path) as db:
        rows = db.execute("SELECT kind, ts_ms, name FROM records").fetchall()
        kinds = dict(db.execute("SELECT kind, count(*) FROM records GROUP BY kind").fetchall())
    far = [ts_ms for _, ts_ms, _ in rows if ts_ms > (now + YEAR_S / 2) * 1000]
    assert len(far) == ahead and all(abs(ts_ms / 1000 - outlier_ts) < 0.01 for ts_ms in far)
    gps = [ts_ms / 1000 for _, ts_ms, name in rows if name.startswith("Vehicle.CurrentLocation")]
    assert gps and all(abs(ts - now) < 10 for ts in gps), gps
    assert kinds.get(Kind.ALERT) == 2  # raised, cleared
    predictions = sorted({ts_ms for kind, ts_ms, _ in rows if kind == Kind.PREDICTION})
    assert len([ts_ms for ts_ms in predictions if ts_ms > now * 1000]) >= 2, "predictions after the outlier"
    gaps = [b - a for a, b in itertools.pairwise(predictions)]
    assert all(gap <= 2_000 for gap in gaps), gaps
