"""The uplink against real brokers: the shared Mosquitto on 127.0.0.1:1883, and private `mosquitto -p PORT`
subprocesses where a test must stop and restart its broker.

Every wait is bounded and fails with a message saying what did not arrive; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.buffer import BufferWorker
from agent.records import Alert, Sample
from agent.settings import UplinkSettings
from agent.uplink import Uplink
from protocols.catalog import Priority
from protocols.downlink import commit_acks, encode_downlink
from protocols.topics import downlink_ack_topic, parse_topic
from protocols.wire import Batch, decode_batch, decode_status
from tests.integration.conftest import Broker, unique_id

WAIT_S = 30.0
QUANTA = {"Vehicle.Speed": 0.1, "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": 0.1}


def _settings(host: str, port: int, fleet: str, **overrides: object) -> UplinkSettings:
    values: dict[str, object] = {
        "broker_url": f"mqtt://{host}:{port}",
        "fleet_id": fleet,
        "client_id": f"{fleet}-agent",
        "batch_max_records": 100,
        "batch_max_age_s": 0.05,
        "puback_timeout_s": 3.0,
        "connect_timeout_s": 3.0,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 1.0,
        "keepalive_s": 5,
    }
    values.update(overrides)
    return UplinkSettings.model_validate(values)


def _samples(start: int, count: int) -> list[Sample]:
    seqs = range(start, start + count)
    return [
        Sample(1_700_000_000.0 + n * 0.1, "Vehicle.Speed", float(n % 900) / 10, Priority.NORMAL) for n in seqs
    ]


class Collector:
    """A subscriber that keeps every decoded batch in arrival order and, playing the receiver, answers
    each batch with a commit acknowledgement of its seqs (unless `acking` is off)."""

    def __init__(self, acking: bool = True) -> None:
        self.batches: list[tuple[str, Batch]] = []
        self.statuses: list[str] = []
        self.changed = asyncio.Event()
        self.acking = acking
        self.acks_sent = 0

    def sample_seqs(self) -> list[int]:
        return [r.seq for topic, b in self.batches if topic.endswith("/telemetry") for r in b.samples]

    def alert_seqs(self) -> list[int]:
        return [r.seq for topic, b in self.batches if topic.endswith("/alerts") for r in b.alerts]

    async def consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            topic = str(message.topic)
            if topic.endswith("/status"):
                self.statuses.append(decode_status(payload).state)
            elif "/downlink/" not in topic:
                batch = decode_batch(payload)
                self.batches.append((topic, batch))
                if self.acking:
                    await self._acknowledge(client, topic, batch)
            self.changed.set()

    async def _acknowledge(self, client: aiomqtt.Client, topic: str, batch: Batch) -> None:
        parts = parse_topic(topic)
        seqs = [r.seq for records in (batch.samples, batch.predictions, batch.alerts) for r in records]
        for ack in commit_acks(seqs, int(time.time() * 1000)):
            await client.publish(downlink_ack_topic(parts.fleet, parts.vehicle), encode_downlink(ack), qos=1)
            self.acks_sent += 1

    async def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        async def poll() -> None:
            while not condition():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), timeout=0.5)

        try:
            await asyncio.wait_for(poll(), timeout=WAIT_S)
        except TimeoutError:
            pytest.fail(f"gave up after {WAIT_S:g} s waiting for {what}", pytrace=False)


@contextlib.asynccontextmanager
async def collecting(
    host: str,
    port: int,
    fleet: str,
    *,
    persistent_id: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    acking: bool = True,
) -> AsyncIterator[Collector]:
    collector = Collector(acking)
    properties = None
    if persistent_id is not None:  # a session that outlives a broker restart (broker persistence on)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
    client = aiomqtt.Client(
        host,
        port,
        identifier=persistent_id or unique_id("collector-"),
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=persistent_id is None,
        properties=properties,
        tls_context=tls_context,
    )
    async with client:
        await client.subscribe(f"voltgate/v1/{fleet}/#", qos=1)
        task = asyncio.create_task(collector.consume(client))
        try:
            yield collector
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def _stop(uplink: Uplink, task: asyncio.Task[None], flush_s: float = 10.0) -> None:
    uplink.stop(flush_s)
    try:
        await asyncio.wait_for(task, timeout=flush_s + 10)
    except TimeoutError:
        pytest.fail("uplink did not return from run() after stop()", pytrace=False)


async def _connected(uplink: Uplink) -> None:
    async def poll() -> None:
        while not uplink.connected:  # noqa: ASYNC110  # a plain flag, polled briefly
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout=WAIT_S)
    except TimeoutError:
        pytest.fail("the uplink did not connect to the broker", pytrace=False)


async def _rows(buffer: BufferWorker) -> int:
    return (await buffer.snapshot()).rows


# --- the shared broker ----------------------------------------------------------------------------------


async def test_every_committed_sample_arrives_once_and_leaves_the_buffer(
    mqtt_broker: Broker, buffer: BufferWorker
) -> None:
    fleet = mqtt_broker.namespace
    async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as collector:
        uplink = Uplink(_settings(mqtt_broker.host, mqtt_broker.port, fleet), "bus-1", buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        total = 0
        for _ in range(20):
            await buffer.commit_samples(_samples(total, 37))
            total += 37
            uplink.notify()
            await asyncio.sleep(0.01)
        await collector.wait_for(f"{total} samples", lambda: len(set(collector.sample_seqs())) >= total)
        await _stop(uplink, task)

    seqs = collector.sample_seqs()
    assert sorted(set(seqs)) == list(range(total)), "every committed seq arrives"
    assert await _rows(buffer) == 0, "acknowledged rows leave the buffer"
    first = next(b for _, b in collector.batches if b.samples)
    assert first.vehicle_id == "bus-1"
    assert first.samples[0].value == pytest.approx(_samples(0, 1)[0].value, abs=0.05)


async def test_alerts_bypass_batching(mqtt_broker: Broker, buffer: BufferWorker) -> None:
    # GIVEN telemetry batching that would hold samples for a minute
    fleet = mqtt_broker.namespace
    host, port = mqtt_broker.host, mqtt_broker.port
    settings = _settings(host, port, fleet, batch_max_age_s=60, batch_max_records=10_000)
    async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as collector:
        uplink = Uplink(settings, "bus-2", buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        await _connected(uplink)  # rows already buffered at connect are backlog, sent without batching delay
        await buffer.commit_samples(_samples(0, 5))
        # WHEN an alert is committed
        alert = Alert(1_700_000_001.0, "low_soc", "critical", True, 9.5, "SOC below 10 %")
        await buffer.commit_derived([alert])
        uplink.notify()
        # THEN it is published at once on the alerts topic, ahead of the held telemetry
        await collector.wait_for("the alert", lambda: collector.alert_seqs() == [5])
        assert collector.sample_seqs() == [], "telemetry is still being batched"
        topic, batch = next((t, b) for t, b in collector.batches if b.alerts)
        assert topic == f"voltgate/v1/{fleet}/bus-2/alerts"
        assert batch.alerts[0].rule == "low_soc" and batch.alerts[0].active
        # AND a stop flushes the held telemetry
        await _stop(uplink, task)
        await collector.wait_for(
            "the flushed samples", lambda: sorted(collector.sample_seqs()) == [0, 1, 2, 3, 4]
        )
    assert await _rows(buffer) == 0


async def test_status_is_retained_online_then_offline_on_clean_stop(
    mqtt_broker: Broker, buffer: BufferWorker
) -> None:
    fleet = mqtt_broker.namespace
    uplink = Uplink(_settings(mqtt_broker.host, mqtt_broker.port, fleet), "bus-3", buffer, QUANTA)
    task = asyncio.create_task(uplink.run())
    async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as collector:
        await collector.wait_for("retained 'online'", lambda: "online" in collector.statuses)
    await _stop(uplink, task)
    async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as late:
        await late.wait_for("retained 'offline' after a clean stop", lambda: late.statuses == ["offline"])


_AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.buffer import BufferWorker
    from agent.settings import UplinkSettings
    from agent.uplink import Uplink

    async def main():
        buffer = BufferWorker(Path(sys.argv[1]), 16 * 1024 * 1024)
        await buffer.open()
        settings = UplinkSettings.model_validate_json(sys.argv[2])
        uplink = Uplink(settings, "bus-4", buffer, {})
        task = asyncio.create_task(uplink.run())
        while not uplink.connected:
            await asyncio.sleep(0.05)
        print("connected", flush=True)
        await task

    asyncio.run(main())
    """
)


async def test_last_will_says_offline_when_the_agent_dies(mqtt_broker: Broker, tmp_path: Path) -> None:
    # GIVEN an agent process connected to the broker, its status retained "online"
    fleet = mqtt_broker.namespace
    settings = _settings(mqtt_broker.host, mqtt_broker.port, fleet)
    agent = subprocess.Popen(  # noqa: ASYNC220  # started once; the waits below are off the loop
        [sys.executable, "-c", _AGENT_SCRIPT, str(tmp_path / "b.sqlite3"), settings.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), timeout=WAIT_S)
        assert line.strip() == "connected", "the agent subprocess did not connect"
        async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as collector:
            await collector.wait_for("retained 'online'", lambda: collector.statuses == ["online"])
            # WHEN it dies without a DISCONNECT
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=WAIT_S)
            # THEN the broker publishes the last will, retained
            await collector.wait_for("the last will", lambda: collector.statuses == ["online", "offline"])
        async with collecting(mqtt_broker.host, mqtt_broker.port, fleet) as late:
            await late.wait_for("retained 'offline'", lambda: late.statuses == ["offline"])
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


# --- a private broker that the test stops and restarts ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateBroker:
    """`mosquitto -c conf` on its own port; with persistence (the default) sessions survive a restart,
    without it a restart loses every session and queued message."""

    def __init__(self, directory: Path, *, persistence: bool = True, acl: str | None = None) -> None:
        self.port = _free_port()
        self.conf = directory / "mosquitto.conf"
        data = directory / "data"
        data.mkdir()
        self.data = data
        self.persistence = persistence
        acl_line = ""
        if acl is not None:  # anonymous clients get the ACL file's top-level rules
            (directory / "acl").write_text(acl)
            acl_line = f"acl_file {directory / 'acl'}\n"
        # `user root`: started as root, mosquitto otherwise drops to the `mosquitto` user, which cannot
        # write the test's root-owned temporary directory — it then persists nothing, silently, and every
        # session is gone after a restart. (No effect when the tests do not run as root.)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {data}/\nmax_queued_messages 0\nlog_dest none\nuser root\n{acl_line}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)])
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"private mosquitto on port {self.port} did not start", pytrace=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(timeout=10)
            if self.persistence and not (self.data / "mosquitto.db").exists():
                pytest.fail("the private mosquitto saved no persistence file: sessions would not survive")
        self.process = None


def _private_broker(tmp_path: Path, *, persistence: bool, acl: str | None = None) -> Iterator[PrivateBroker]:
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("mosquitto binary not installed (CI=true)")
        pytest.skip("mosquitto binary not installed")
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = PrivateBroker(directory, persistence=persistence, acl=acl)
    yield broker
    broker.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private broker (not started yet) whose sessions survive a restart."""
    yield from _private_broker(tmp_path, persistence=True)


@pytest.fixture
def volatile_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private broker (not started yet) without persistence: a restart forgets everything."""
    yield from _private_broker(tmp_path, persistence=False)


async def test_outage_backlog_drains_oldest_first_while_live_flows(
    private_broker: PrivateBroker, buffer: BufferWorker
) -> None:
    host, port, fleet = "127.0.0.1", private_broker.port, unique_id("f")
    collector_id = unique_id("collector-")
    private_broker.start()
    # GIVEN a durable subscriber (its session survives the broker restart) and a connected uplink
    async with collecting(host, port, fleet, persistent_id=collector_id) as collector:
        uplink = Uplink(_settings(host, port, fleet), "bus-5", buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        await buffer.commit_samples(_samples(0, 50))
        uplink.notify()
        await collector.wait_for("the first 50 samples", lambda: len(set(collector.sample_seqs())) == 50)

    # WHEN the broker goes away while the bus keeps committing samples
    private_broker.stop()
    outage_start = 50
    total = 50
    for _ in range(30):
        await buffer.commit_samples(_samples(total, 100))
        total += 100
        uplink.notify()
        await asyncio.sleep(0.02)
    outage_end = total
    assert await _rows(buffer) >= outage_end - outage_start, "the outage backlog is buffered"

    # AND comes back, while live samples keep coming
    private_broker.start()
    async with collecting(host, port, fleet, persistent_id=collector_id) as collector:
        for _ in range(400):
            await buffer.commit_samples(_samples(total, 5))
            total += 5
            uplink.notify()
            if len(set(collector.sample_seqs())) >= outage_end - outage_start and not uplink.connected:
                break
            if await _rows(buffer) == 0:
                break
            await asyncio.sleep(0.01)
        final = total
        expected = set(range(outage_start, final))
        await collector.wait_for(
            "every sample after the restart", lambda: expected <= set(collector.sample_seqs())
        )
        await _stop(uplink, task)

    # THEN nothing is lost, the outage backlog arrived oldest-first, and live batches were interleaved
    arrived = collector.sample_seqs()
    assert set(range(outage_start, final)) <= set(arrived)
    # QoS 1 may deliver twice (paho re-sends a message left unacknowledged by the broken connection):
    # compare first arrivals, as the receiver's de-duplication by (vehicle, seq) does.
    first_arrivals = list(dict.fromkeys(arrived))
    backlog_order = [seq for seq in first_arrivals if outage_start <= seq < outage_end]
    assert backlog_order == sorted(backlog_order), "the backlog drains oldest-first"
    batch_starts = [b.samples[0].seq for t, b in collector.batches if t.endswith("/telemetry") and b.samples]
    assert batch_starts != sorted(batch_starts), "live batches went out while the backlog drained"
    assert await _rows(buffer) == 0


@pytest.fixture
def read_only_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private broker whose ACL lets anonymous clients read voltgate topics and publish nothing."""
    yield from _private_broker(tmp_path, persistence=False, acl="topic read voltgate/#\n")


async def test_an_agent_the_broker_refuses_backs_off(
    read_only_broker: PrivateBroker, buffer: BufferWorker
) -> None:
    from prometheus_client import REGISTRY

    def refusals() -> float:
        value = REGISTRY.get_sample_value("voltgate_uplink_publish_failures_total", {"reason": "refused"})
        return value or 0.0

    read_only_broker.start()
    before = refusals()
    settings = _settings(
        "127.0.0.1", read_only_broker.port, unique_id("f"), backoff_initial_s=0.02, backoff_max_s=0.3
    )
    uplink = Uplink(settings, "bus-7", buffer, QUANTA)
    await buffer.commit_samples(_samples(0, 10))
    # GIVEN a broker that accepts the connection but refuses every publish ("not authorized")
    task = asyncio.create_task(uplink.run())

    # WHEN the agent connects again and again
    async def backed_off() -> None:
        while uplink.reconnect_attempt < 5:  # noqa: ASYNC110  # a plain counter, polled briefly
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(backed_off(), timeout=WAIT_S)
    except TimeoutError:
        pytest.fail(
            f"the backoff restarted at every connect (attempt {uplink.reconnect_attempt})", pytrace=False
        )
    # THEN each refused session counts as a failed attempt (the delay grows to backoff_max_s), and the
    # rows stay in the buffer
    assert refusals() - before >= 5
    assert await _rows(buffer) == 10 and uplink.inflight_rows == 0
    await _stop(uplink, task, flush_s=1.0)


# --- connected but stuck ---------------------------------------------------------------------------------


class FreezingProxy:
    """A TCP proxy to the broker that can freeze the connections it has: it keeps them open but stops
    passing the broker's packets (PUBACKs included) back, like a half-dead cellular link. New
    connections flow normally."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._live: set[int] = set()
        self._frozen: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        self._frozen |= self._live

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = id(writer)
        self._live.add(key)
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if downstream and key in self._frozen:
                        continue  # swallowed: the client never hears back
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pump(reader, up_writer, False)),
            asyncio.create_task(pump(up_reader, writer, True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_connected_but_stuck_is_detected_and_the_connection_recycled(
    mqtt_broker: Broker, buffer: BufferWorker
) -> None:
    from prometheus_client import REGISTRY

    def timeouts() -> float:
        value = REGISTRY.get_sample_value("voltgate_uplink_publish_failures_total", {"reason": "timeout"})
        return value or 0.0

    fleet = mqtt_broker.namespace
    async with (
        FreezingProxy(mqtt_broker.host, mqtt_broker.port) as proxy,
        collecting(mqtt_broker.host, mqtt_broker.port, fleet) as collector,
    ):
        uplink = Uplink(
            _settings("127.0.0.1", proxy.port, fleet, puback_timeout_s=1.0), "bus-6", buffer, QUANTA
        )
        task = asyncio.create_task(uplink.run())
        await _connected(uplink)
        before = timeouts()
        # GIVEN a connection that stays open but no longer carries the broker's PUBACKs
        proxy.freeze()
        # WHEN samples are committed
        await buffer.commit_samples(_samples(0, 40))
        uplink.notify()
        # THEN the missing PUBACK is noticed, the connection recycled, and every sample arrives
        await collector.wait_for(
            "40 samples after the recycle", lambda: len(set(collector.sample_seqs())) == 40
        )

        async def drained() -> None:
            while await _rows(buffer):  # noqa: ASYNC110  # polling a file, not an in-process flag
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(
                drained(), timeout=WAIT_S
            )  # rows leave only with a PUBACK: after the recycle
        except TimeoutError:
            pytest.fail("the buffer never drained: the stuck connection was not recycled", pytrace=False)
        assert timeouts() > before, "the stuck publish was counted as a timeout"
        await _stop(uplink, task)
