"""The whole agent (`voltgate-agent run` as a subprocess) through the faults a bus throws at it: the broker
stopped for a while and restarted, and the agent itself killed with SIGKILL mid-stream, again and again.

The source is a simulated bus's candump log (`voltgate-sim record`) replayed at recorded speed, so data
keeps arriving during an outage as on a bus. The catalog is the shipped one with its sampling policy off
(every decoded value becomes a sample, about 220 a second), so a few seconds of outage or a kill leave
hundreds of committed rows in flight.

"Committed" is observed from outside: the buffer's high-water mark (`meta.next_seq`, written in the same
transaction as the rows it numbers), read from the SQLite file with a read-only connection. Every sequence
number below the mark must reach a subscriber on the telemetry topic; after de-duplication by sequence
number each appears once, every copy of one number carries the same sample (nothing was renumbered), and
nothing at or above the final mark ever appears.

Every wait is bounded and fails saying what did not happen (with the agent's log); nothing asserts a
duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.app import STOP_TIMEOUTS
from protocols.catalog import DEFAULT_DBC
from protocols.downlink import commit_acks, encode_downlink
from protocols.topics import downlink_ack_topic, status_topic, telemetry_topic
from protocols.wire import SampleRecord, decode_batch, decode_status
from tests.faults.harness import AgentProcess, policy_off_catalog, wait_until
from tests.integration.conftest import Broker, service_unavailable, unique_id
from tests.integration.test_uplink import PrivateBroker

REPO = Path(__file__).resolve().parents[2]
VEHICLE = "bus-77"
WAIT_S = 20.0


# --- inputs -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bus_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five simulated minutes of the 12 m bus as a candump log, made by the simulator's CLI."""
    path = tmp_path_factory.mktemp("sim") / "bus.log"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", "5m", "--seed", "7", "--out", str(path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def _write_config(directory: Path, log_path: Path, host: str, port: int, fleet: str) -> Path:
    config = directory / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "{VEHICLE}"
log_format = "text"
[[replay]]
name = "bus"
path = "{log_path}"
catalog = "{policy_off_catalog(directory)}"
dbc = "{DEFAULT_DBC}"
speed = "recorded"
[buffer]
path = "{directory / "state" / "buffer.sqlite3"}"
commit_interval_s = 0.2
[uplink]
broker_url = "mqtt://{host}:{port}"
fleet_id = "{fleet}"
client_id = "{fleet}-agent"
batch_max_records = 200
batch_max_age_s = 0.2
puback_timeout_s = 5.0
connect_timeout_s = 3.0
keepalive_s = 5
backoff_initial_s = 0.2
backoff_max_s = 1.0
[metrics]
enabled = false
"""
    )
    return config


# --- the agent as a process and its buffer file -----------------------------------------------------------


@dataclass(frozen=True)
class BufferMark:
    next_seq: int  # one past the highest sequence number ever committed
    rows: int  # committed rows not yet acknowledged by the broker


def buffer_mark(path: Path) -> BufferMark:
    """The committed state of the buffer file, read-only (the way the buffer itself computes it)."""
    if not path.exists():
        return BufferMark(0, 0)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0:
            return BufferMark(0, 0)
        next_seq, rows = conn.execute(
            "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'next_seq'), 0), "
            "coalesce((SELECT max(seq) + 1 FROM records), 0)), (SELECT count(*) FROM records)"
        ).fetchone()
        return BufferMark(int(next_seq), int(rows))
    finally:
        conn.close()


# --- a subscriber that survives broker restarts -----------------------------------------------------------


@dataclass
class SeqCollector:
    """Every sample published on the vehicle's telemetry topic, by sequence number; playing the receiver,
    it answers each batch with a commit acknowledgement (the agent deletes rows only then)."""

    host: str
    port: int
    fleet: str
    persistent: bool  # a session that outlives a broker restart (needs broker persistence)
    samples: dict[int, SampleRecord] = field(default_factory=dict)
    copies: int = 0  # samples received, duplicates included
    conflicts: list[tuple[SampleRecord, SampleRecord]] = field(default_factory=list)
    vehicles: set[str] = field(default_factory=set)
    statuses: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def seqs(self) -> set[int]:
        return set(self.samples)

    def missing_below(self, mark: int) -> list[int]:
        return [seq for seq in range(mark) if seq not in self.samples]

    def _take(self, message: aiomqtt.Message) -> list[int]:
        """Record a message; returns the seqs it carried (to acknowledge)."""
        payload = message.payload
        assert isinstance(payload, bytes)
        if str(message.topic).endswith("/status"):
            self.statuses.append(decode_status(payload).state)
            return []
        batch = decode_batch(payload)
        self.vehicles.add(batch.vehicle_id)
        for record in batch.samples:
            self.copies += 1
            seen = self.samples.setdefault(record.seq, record)
            if seen != record:
                self.conflicts.append((seen, record))
        return [record.seq for record in batch.samples]

    async def run(self) -> None:
        properties = None
        if self.persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=unique_id("collector-"),
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self.persistent,
            properties=properties,
        )
        while True:
            try:
                async with client:
                    await client.subscribe(telemetry_topic(self.fleet, VEHICLE), qos=1)
                    await client.subscribe(status_topic(self.fleet, VEHICLE), qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        for ack in commit_acks(self._take(message), int(time.time() * 1000)):
                            topic = downlink_ack_topic(self.fleet, VEHICLE)
                            await client.publish(topic, encode_downlink(ack), qos=1)
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)  # the broker is down: try again


@contextlib.asynccontextmanager
async def collecting(host: str, port: int, fleet: str, *, persistent: bool) -> AsyncIterator[SeqCollector]:
    collector = SeqCollector(host, port, fleet, persistent)
    task = asyncio.create_task(collector.run(), name="collector")
    try:
        await wait_until("the collector to subscribe", collector.connected.is_set)
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _ranges(seqs: list[int]) -> str:
    """`[3, 4, 5, 9]` → `3-5, 9` (at most 10 runs)."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:10])
    return text + (f" … ({len(runs)} runs)" if len(runs) > 10 else "")


def _check_delivery(collector: SeqCollector, final: BufferMark) -> None:
    """Every committed sample exactly once after de-duplication by seq, each seq one sample."""
    missing = collector.missing_below(final.next_seq)
    assert not missing, f"{len(missing)} committed samples never arrived, first {missing[:10]}"
    beyond = sorted(seq for seq in collector.seqs() if seq >= final.next_seq)
    assert not beyond, f"samples numbered beyond the committed mark {final.next_seq}: {beyond[:10]}"
    assert not collector.conflicts, f"one seq, two different samples (renumbered): {collector.conflicts[:3]}"
    assert collector.vehicles == {VEHICLE}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private `mosquitto -c conf` on a free loopback port, with persistence (see `PrivateBroker`)."""
    if shutil.which("mosquitto") is None:
        service_unavailable("mosquitto binary not installed")
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = PrivateBroker(directory)
    yield broker
    broker.stop()


@pytest.fixture
def agent_log(tmp_path: Path) -> Path:
    return tmp_path / "agent.log"


@pytest.fixture
def running() -> Iterator[list[AgentProcess]]:
    """Agents started by the test; any still running at the end is killed."""
    agents: list[AgentProcess] = []
    yield agents
    for agent in agents:
        agent.ensure_dead()


# --- the tests --------------------------------------------------------------------------------------------


async def test_broker_outage_every_committed_sample_arrives_once(
    own_broker: PrivateBroker,
    bus_log: Path,
    tmp_path: Path,
    agent_log: Path,
    running: list[AgentProcess],
) -> None:
    fleet = unique_id("f")
    own_broker.start()
    config = _write_config(tmp_path, bus_log, "127.0.0.1", own_broker.port, fleet)
    buffer_path = tmp_path / "state" / "buffer.sqlite3"

    # GIVEN a durable subscriber (its session and queue survive the broker restart) and a running agent
    async with collecting("127.0.0.1", own_broker.port, fleet, persistent=True) as collector:
        agent = AgentProcess(config, agent_log)
        running.append(agent)
        await wait_until("the first 200 samples", lambda: len(collector.samples) >= 200, agent=agent)

        # WHEN the broker goes away while the bus keeps talking
        await asyncio.to_thread(own_broker.stop)
        at_stop = buffer_mark(buffer_path)
        await wait_until(
            "1,000 samples committed to the buffer during the outage",
            lambda: buffer_mark(buffer_path).next_seq >= at_stop.next_seq + 1000,
            agent=agent,
        )
        during = buffer_mark(buffer_path)
        assert during.rows >= 1000, f"the backlog was kept in the buffer: {during}"

        # ... and comes back
        await asyncio.to_thread(own_broker.start)
        await wait_until(
            f"the backlog below seq {during.next_seq} after the broker restart",
            lambda: not collector.missing_below(during.next_seq),
            agent=agent,
            state=lambda: (
                f"buffer now {buffer_mark(buffer_path)}, at stop {at_stop}; "
                f"missing {_ranges(collector.missing_below(during.next_seq))}"
            ),
        )
        await wait_until(
            "live samples after the backlog",
            lambda: max(collector.samples) >= during.next_seq + 200,
            agent=agent,
        )

        # THEN a SIGTERM commits and publishes the rest, and everything committed arrived once
        code = await agent.terminate_async(STOP_TIMEOUTS.total_s + 5)
        assert code == 0, agent.log_text()[-3000:]
        final = buffer_mark(buffer_path)
        assert final.rows == 0, f"a clean stop with the broker up leaves nothing unsent: {final}"
        await wait_until(
            f"every seq below the final mark {final.next_seq}",
            lambda: not collector.missing_below(final.next_seq),
        )
        await wait_until("the 'offline' status", lambda: collector.statuses[-1:] == ["offline"])

    _check_delivery(collector, final)
    log_text = agent.log_text()
    assert "recovered" in log_text, "one log line when the uplink recovers"
    assert "Traceback" not in log_text


async def test_sigkill_mid_stream_loses_and_renumbers_nothing(
    mqtt_broker: Broker,
    bus_log: Path,
    tmp_path: Path,
    agent_log: Path,
    running: list[AgentProcess],
) -> None:
    fleet = mqtt_broker.namespace
    config = _write_config(tmp_path, bus_log, mqtt_broker.host, mqtt_broker.port, fleet)
    buffer_path = tmp_path / "state" / "buffer.sqlite3"
    kills = 4

    async with collecting(mqtt_broker.host, mqtt_broker.port, fleet, persistent=False) as collector:
        marks = [buffer_mark(buffer_path)]
        for round_ in range(kills):
            # GIVEN an agent on the same buffer file, committing and publishing
            previous = marks[-1]
            agent = AgentProcess(config, agent_log)
            running.append(agent)
            await wait_until(
                f"round {round_}: 300 new samples committed and new ones published",
                lambda previous=previous: (
                    buffer_mark(buffer_path).next_seq >= previous.next_seq + 300
                    and any(seq >= previous.next_seq for seq in collector.samples)
                ),
                agent=agent,
            )
            # WHEN it is killed without warning
            await asyncio.to_thread(agent.kill)
            mark = buffer_mark(buffer_path)
            # THEN the file holds what was committed; numbers only ever grow
            assert mark.next_seq > previous.next_seq, (previous, mark)
            marks.append(mark)

        # WHEN a last agent starts on the same file, the committed backlog is published ...
        agent = AgentProcess(config, agent_log)
        running.append(agent)
        killed_at = marks[-1]
        await wait_until(
            f"every seq committed before the last kill (below {killed_at.next_seq})",
            lambda: not collector.missing_below(killed_at.next_seq),
            agent=agent,
        )
        # ... and numbering continues above the last committed seq instead of starting over
        await wait_until(
            "new samples after the last restart",
            lambda: max(collector.samples) >= killed_at.next_seq + 200,
            agent=agent,
        )
        code = await agent.terminate_async(STOP_TIMEOUTS.total_s + 5)
        assert code == 0, agent.log_text()[-3000:]
        final = buffer_mark(buffer_path)
        assert final.rows == 0, f"a clean stop with the broker up leaves nothing unsent: {final}"
        await wait_until(
            f"every seq below the final mark {final.next_seq}",
            lambda: not collector.missing_below(final.next_seq),
        )

    _check_delivery(collector, final)
    assert agent.log_text().count("--- agent started") == kills + 1
