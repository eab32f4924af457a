"""Data faults: a full disk, a clock that lies, a bus back after 40 days, garbage on the serial lines and
hostile MQTT payloads. The audit (see `audit`) must still say lost = 0 and duplicated = 0; where a
record is refused or evicted by design the test says which and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from paho.mqtt import publish

from agent.buffer import SampleBuffer
from agent.records import Sample
from protocols.catalog import Priority
from protocols.topics import telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch
from simulator.emit_nmea import nmea_sentence
from tests.faults.audit import assert_nothing_lost, audit_mark
from tests.faults.conftest import LiveBus, Rig
from tests.faults.harness import metric, wait_until
from tests.integration.conftest import mounted_tmpfs

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DAY_MS = 86_400_000


async def committed_at_least(rig: Rig, more: int, timeout_s: float = 30.0) -> None:
    target = audit_mark(rig.buffer_path) + more
    await wait_until(
        f"{more} more samples committed to the buffer",
        lambda: audit_mark(rig.buffer_path) >= target,
        watch=rig.watched(),
        timeout_s=timeout_s,
    )


# --- disk full --------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MiB tmpfs for the agent's buffer."""
    with mounted_tmpfs(tmp_path / "small-disk", 1536 * 1024) as disk:
        yield disk


async def test_disk_full(rig_factory: Callable[..., Rig], recorded_bus: Path, small_disk: Path) -> None:
    rig = rig_factory(buffer_dir=small_disk, agent_metrics=True)
    agent = rig.start_agent(replay_log=recorded_bus)
    port = rig.agent_config.metrics_port
    await committed_at_least(rig, 300)
    # GIVEN the broker away, so the buffer grows, AND another program fills its disk to the last byte
    rig.broker.terminate()
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:  # ENOSPC ends it
        while True:
            out.write(b"\xff" * 4096)
    assert os.statvfs(small_disk).f_bavail == 0
    await committed_at_least(rig, 200)  # commits go on on the full disk
    agent.alive()
    # WHEN the broker comes back
    rig.broker.start()
    # THEN evictions on a full disk are by design (oldest routine data first): the agent counts them
    # (voltgate_buffer_evictions_total) and the audit subtracts them; nothing else is lost
    result = await rig.audit(timeout_s=60, evictions_from_port=port)
    assert_nothing_lost(result)


# --- clocks -----------------------------------------------------------------------------------------------


def crafted_fix(moment: datetime, lat_deg: float = -1.28333, lon_deg: float = 36.81667) -> bytes:
    """RMC + GGA of a valid fix at `moment` (UTC), as a receiver with a wrong clock would send them."""
    hhmmss = moment.strftime("%H%M%S") + ".00"
    ddmmyy = moment.strftime("%d%m%y")
    lat = f"{int(abs(lat_deg)):02d}{abs(lat_deg) % 1 * 60:08.5f}"
    lon = f"{int(abs(lon_deg)):03d}{abs(lon_deg) % 1 * 60:08.5f}"
    ns, ew = ("S" if lat_deg < 0 else "N"), ("W" if lon_deg < 0 else "E")
    rmc = nmea_sentence(f"GNRMC,{hhmmss},A,{lat},{ns},{lon},{ew},10.0,90.00,{ddmmyy},,,A")
    gga = nmea_sentence(f"GNGGA,{hhmmss},{lat},{ns},{lon},{ew},1,09,0.90,1650.0,M,,M,,")
    return (rmc + gga).encode("ascii")


async def test_year_ahead_fix_and_gps_clock_stepped_an_hour(
    rig_factory: Callable[..., Rig], live_bus_factory: Callable[..., LiveBus]
) -> None:
    rig = rig_factory(agent_metrics=True)
    bus = live_bus_factory(600)
    agent = rig.start_agent(slcan_pty=bus.slcan.path, nmea_pty=bus.nmea.path, inference_interval_s=5.0)
    port = rig.agent_config.metrics_port

    def model_runs() -> float:
        return metric(port, "voltgate_model_runs_total") or 0.0

    # GIVEN the models running every 5 s of bus time
    await wait_until("two model runs", lambda: model_runs() >= 2, agent=agent, timeout_s=60)
    now = datetime.now(UTC)
    # WHEN the GPS receiver sends one fix dated a year ahead, then its clock steps +1 h and -1 h
    for moment in (now + timedelta(days=365), now + timedelta(hours=1), now - timedelta(hours=1)):
        bus.nmea.inject(crafted_fix(moment))
        await committed_at_least(rig, 200)
    await wait_until("the injections forwarded", lambda: bus.nmea.injected >= 3, agent=agent)
    await committed_at_least(rig, 500)
    runs_after_injection = model_runs()
    await committed_at_least(rig, 1500)
    runs_later = model_runs()
    bus.stop()
    # THEN the good samples are all stored; only an implausible record may be refused, on its own
    started_ms = int(now.timestamp() * 1000) - 120_000
    result = await rig.audit(plausible_ms=(started_ms, int(time.time() * 1000) + 600_000))
    print(f"[faults] {rig.scenario}: model runs {runs_after_injection:g}, then {runs_later:g}")
    assert result.lost == 0, result.explain()
    assert result.duplicated == 0, result.explain()
    assert result.refused_plausible == 0, "good samples refused with a bad one: " + result.explain()
    # ... and one outlier does not stop the models (they keep running on the live bus's time)
    assert runs_later > runs_after_injection, (
        f"no model run after the year-ahead fix ({runs_after_injection:g} then {runs_later:g})"
    )


async def test_backlog_40_days_old(rig_factory: Callable[..., Rig], recorded_bus: Path) -> None:
    rig = rig_factory()
    # GIVEN a bus back after 40 days offline: its buffer holds 2,000 samples stamped 40 days ago
    buffer = SampleBuffer(rig.buffer_path, rig.agent_config.max_bytes)
    old_s = time.time() - 40 * 86_400
    for i in range(2000):
        buffer.append(Sample(old_s + i * 0.5, "Vehicle.Speed", float(i % 80), Priority.NORMAL))
    assert buffer.commit() == 2000
    buffer.close()
    # WHEN the agent starts and the live data flows too
    rig.start_agent(replay_log=recorded_bus)
    # THEN the backlog is stored, not refused as too old
    assert_nothing_lost(await rig.audit())


# --- garbage on the serial lines --------------------------------------------------------------------------

SLCAN_GARBAGE = (
    b"garbage\r",
    b"t12\r",
    b"T1234\r",
    b"\x00\xff\xfe\x80\r",
    b"tXYZ8DEADBEEF\r",
    b"t1239" + b"0" * 18 + b"\r",
)
NMEA_GARBAGE = (
    b"$GNRMC,123519,A,4807.038,N*00\r\n",  # bad checksum
    b"\x00\xff\xfe garbage\r\n",
    b"$GNGGA,12\r\n",  # truncated
    b"$" + b"X" * 500 + b"\r\n",  # overlong
)


async def test_slcan_and_nmea_garbage_between_valid_lines(
    rig_factory: Callable[..., Rig], live_bus_factory: Callable[..., LiveBus]
) -> None:
    rig = rig_factory(agent_metrics=True)
    bus = live_bus_factory(600)
    agent = rig.start_agent(slcan_pty=bus.slcan.path, nmea_pty=bus.nmea.path)
    port = rig.agent_config.metrics_port
    await committed_at_least(rig, 300)

    def frames() -> float:
        return metric(port, "voltgate_can_frames_received_total") or 0.0

    def reconnects() -> float:
        return metric(port, "voltgate_source_reconnects_total") or 0.0

    # GIVEN the rate of frames on a clean line
    frames_0, t_0, reconnects_0 = frames(), time.monotonic(), reconnects()
    await asyncio.sleep(8)  # a measuring window, not an assertion
    clean_per_s = (frames() - frames_0) / (time.monotonic() - t_0)
    # WHEN garbage lands between valid lines on both serial ports for a while
    frames_1, t_1 = frames(), time.monotonic()
    for i in range(60):
        bus.slcan.inject(SLCAN_GARBAGE[i % len(SLCAN_GARBAGE)])
        bus.nmea.inject(NMEA_GARBAGE[i % len(NMEA_GARBAGE)])
        await asyncio.sleep(0.2)
    await wait_until("the garbage forwarded", lambda: bus.slcan.injected >= 60, agent=agent)
    garbage_per_s = (frames() - frames_1) / (time.monotonic() - t_1)
    dropped_links = reconnects() - reconnects_0
    bus.stop()
    result = await rig.audit()
    print(
        f"[faults] {rig.scenario}: {clean_per_s:.0f} frames/s clean, {garbage_per_s:.0f} frames/s with "
        f"garbage, {dropped_links:.0f} source reconnects"
    )
    # THEN only the bad lines are lost: the link stays up and valid frames keep arriving at their rate
    assert dropped_links == 0, (
        f"the CAN link was dropped {dropped_links:.0f} times by bad lines; " + result.explain()
    )
    assert garbage_per_s >= 0.9 * clean_per_s, (
        f"valid frames lost to garbage: {clean_per_s:.0f} frames/s clean, {garbage_per_s:.0f} with garbage"
    )
    assert_nothing_lost(result, renumbering=False)


# --- hostile MQTT payloads --------------------------------------------------------------------------------


async def test_hostile_mqtt_payloads(rig_factory: Callable[..., Rig], recorded_bus: Path) -> None:
    rig = rig_factory()
    rig.start_agent(replay_log=recorded_bus)
    await committed_at_least(rig, 500)
    await wait_until("data stored", lambda: rig.db.stored_count() >= 300, watch=rig.watched())
    topic = telemetry_topic(rig.agent_config.fleet, rig.vehicle)
    now_ms = int(time.time() * 1000)
    hostile_seq = 50_000_000
    not_finite = Batch(
        rig.vehicle,
        (
            SampleRecord(hostile_seq, now_ms, "Vehicle.Speed", math.nan),
            SampleRecord(hostile_seq + 1, now_ms + 1, "Vehicle.Speed", math.inf),
            SampleRecord(hostile_seq + 2, now_ms + 2, "Vehicle.Speed", -math.inf),
            SampleRecord(hostile_seq + 3, now_ms + 3, "Vehicle.Speed", 12.5),  # a good record among them
        ),
    )
    other_vehicle = Batch("bus-spoofed", (SampleRecord(hostile_seq + 10, now_ms, "Vehicle.Speed", 1.0),))
    payloads = [
        b"\x00garbage\xff" * 10,
        b"",
        os.urandom(2 * 1024 * 1024),  # huge
        encode_batch(not_finite, {}),
        encode_batch(other_vehicle, {}),  # another vehicle's id on this bus's topic
    ]
    # WHEN someone publishes hostile payloads on the bus's telemetry topic, between good data
    for payload in payloads:
        await asyncio.to_thread(
            publish.single, topic, payload, qos=1, hostname="127.0.0.1", port=rig.broker.port
        )
        await committed_at_least(rig, 100)
    rig.receiver.alive()
    # THEN the receiver kept going and stored the good data before and after
    result = await rig.audit()
    with psycopg.connect(rig.db.dsn, autocommit=True) as conn:
        not_finite_stored = conn.execute(
            f'SELECT count(*) FROM "{rig.db.schema}".samples WHERE vehicle_id = %s '
            "AND value IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)",
            (rig.vehicle,),
        ).fetchone()
        spoofed = conn.execute(
            f'SELECT count(*) FROM "{rig.db.schema}".samples WHERE vehicle_id = %s', ("bus-spoofed",)
        ).fetchone()
    assert_nothing_lost(result)
    rig.receiver.alive()
    assert not_finite_stored is not None and not_finite_stored[0] == 0, (
        f"{not_finite_stored[0] if not_finite_stored else '?'} NaN/inf values stored; " + result.explain()
    )
    assert spoofed is not None and spoofed[0] == 0, (
        "a payload's vehicle id differing from its topic was stored"
    )
    good_among_bad = rig.db.stored_copies().get(hostile_seq + 3, 0)
    assert good_among_bad == 1, (
        "the good record of the NaN/inf message was refused with them (record-level refusal)"
    )
