"""The receiver end to end: real Mosquitto, real PostgreSQL, the real `voltgate-cloud` process.

Every test has its own schema, fleet id, client ids and shared-subscription group (the broker is
shared with other tests). The receiver subscribes to every fleet, so assertions always filter on
this test's vehicles. Waits are bounded and say what they were waiting for; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud import app
from cloud.settings import load_settings
from protocols.topics import status_topic, telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch, encode_status

from .conftest import Broker, Database

REPO = Path(__file__).parents[2]
WAIT_S = 60.0
SAMPLES_PER_BATCH = 10


# ---- helpers --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s:.0f} s waiting for {what}", pytrace=False)
        time.sleep(0.1)


async def async_wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s:.0f} s waiting for {what}", pytrace=False)
        await asyncio.sleep(0.1)


def write_config(
    tmp_path: Path,
    broker: Broker,
    db: Database,
    client_id: str,
    name: str = "cloud",
    batch_max_age_s: float = 0.05,
) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "{client_id}"
shared_group = "{broker.namespace}"
session_expiry_s = 300
receive_maximum = 100
reconnect_min_s = 1
reconnect_max_s = 2

[database]
dsn = "{db.dsn}"
schema = "{db.schema}"

[ingest]
batch_max_messages = 50
batch_max_age_s = {batch_max_age_s}

[metrics]
port = 0

[log]
level = "INFO"
"""
    )
    return path


def scalar(db: Database, query: str, *params: object) -> int:
    with psycopg.connect(db.dsn, options=f"-c search_path={db.schema}") as conn:
        row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return int(row[0] or 0)


def migrate(db: Database, config: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "cloud", "migrate", "--config", str(config)],
        check=True,
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VOLTGATE_CLOUD_")}


class Publisher:
    """A plain MQTT 5 publisher playing the buses; QoS 1, waits for each PUBACK."""

    def __init__(self, broker: Broker) -> None:
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=broker.client_id("pub"), protocol=paho.MQTTv5
        )
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"broker did not acknowledge a publish to {topic}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def forget_sessions(broker: Broker, client_ids: list[str]) -> None:
    """Connect with clean start and no session expiry: the broker deletes these test sessions."""
    for client_id in client_ids:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        with suppress(OSError):
            client.connect(broker.host, broker.port, clean_start=True, properties=props)
            client.loop_start()
            time.sleep(0.2)
            client.disconnect()
            client.loop_stop()


def telemetry(vehicle: str, index: int) -> bytes:
    """Batch `index` of a vehicle: samples seq index*10 .. index*10+9, timestamps of now."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    samples = tuple(
        SampleRecord(index * SAMPLES_PER_BATCH + i, now_ms + i, "Vehicle.Speed", float(index + i))
        for i in range(SAMPLES_PER_BATCH)
    )
    return encode_batch(Batch(vehicle, samples=samples))


@pytest.fixture
def publisher(mqtt_broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(mqtt_broker)
    yield pub
    pub.close()


class ReceiverProcess:
    """`python -m cloud run` as a real subprocess, its log in a file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloud", "run", "--config", str(config)],
            cwd=REPO,
            env=clean_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_subscribed(self, times: int = 1) -> None:
        wait_until(
            lambda: (
                self.log_text().count("subscribed (shared group") >= times or self.process.poll() is not None
            ),
            f"receiver to subscribe (log: {self.log_path})",
        )
        assert self.process.poll() is None, f"receiver exited early:\n{self.log_text()}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT_S)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT_S)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT_S)
        self._log.close()


def assert_exactly_once(db: Database, vehicles: list[str], batches: int) -> None:
    expected = len(vehicles) * batches * SAMPLES_PER_BATCH
    stored = scalar(db, "SELECT count(*) FROM samples WHERE vehicle_id = ANY(%s)", vehicles)
    distinct = scalar(
        db,
        "SELECT count(*) FROM (SELECT DISTINCT vehicle_id, seq FROM samples WHERE vehicle_id = ANY(%s)) d",
        vehicles,
    )
    assert (stored, distinct) == (expected, expected)
    per_vehicle_max = scalar(
        db,
        "SELECT min(m) FROM"
        " (SELECT max(seq) AS m FROM samples WHERE vehicle_id = ANY(%s) GROUP BY vehicle_id) x",
        vehicles,
    )
    assert per_vehicle_max == batches * SAMPLES_PER_BATCH - 1
    assert scalar(db, "SELECT sum(n) FROM samples_1m WHERE vehicle_id = ANY(%s)", vehicles) == expected
    # the day rollup, current though a killed receiver did not refresh it (it reads the log too)
    assert scalar(db, "SELECT sum(n) FROM samples_1d WHERE vehicle_id = ANY(%s)", vehicles) == expected


# ---- in-process receiver ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_store_once_redelivery_and_bad_payloads(
    tmp_path: Path, mqtt_broker: Broker, pg_schema: Database, publisher: Publisher
) -> None:
    client_id = mqtt_broker.client_id("rx")
    config = write_config(tmp_path, mqtt_broker, pg_schema, client_id)
    migrate(pg_schema, config)
    settings = load_settings(config)
    fleet, bus, other = mqtt_broker.namespace, f"{mqtt_broker.namespace}-bus", f"{mqtt_broker.namespace}-x"
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(settings, stop), name="receiver-under-test")
    try:
        # readiness: a (non-retained) status is stored once the subscriptions are live
        async def probe() -> None:
            while True:
                status = encode_status("online", int(time.time() * 1000))
                await asyncio.to_thread(publisher.publish, status_topic(fleet, bus), status)
                await asyncio.sleep(0.3)

        prober = asyncio.create_task(probe())
        await async_wait_until(
            lambda: task.done() or scalar(pg_schema, "SELECT count(*) FROM vehicle_status") > 0,
            "receiver ready",
        )
        prober.cancel()
        assert not task.done(), "receiver stopped early"

        # GIVEN one good batch, stored once (counted for this test's bus: a test running in another
        # process on the same broker may publish to fleets this receiver subscribes to as well)
        first = telemetry(bus, 0)
        await asyncio.to_thread(publisher.publish, telemetry_topic(fleet, bus), first)
        await async_wait_until(
            lambda: scalar(pg_schema, "SELECT count(*) FROM ingest_ledger WHERE vehicle_id = %s", bus) == 1,
            "first batch in the ledger",
        )
        assert (
            scalar(pg_schema, "SELECT count(*) FROM samples WHERE vehicle_id = %s", bus) == SAMPLES_PER_BATCH
        )

        # WHEN the same batch comes again, then garbage, a truncated and a spoofed batch, then a good one
        await asyncio.to_thread(publisher.publish, telemetry_topic(fleet, bus), first)
        good = telemetry(bus, 1)
        for payload in (b"\x00\x01garbage", good[: len(good) // 2], telemetry(other, 0)):
            await asyncio.to_thread(publisher.publish, telemetry_topic(fleet, bus), payload)
        await asyncio.to_thread(publisher.publish, telemetry_topic(fleet, bus), good)

        # THEN the redelivery changed nothing, the bad three are dead letters, the stream went on
        await async_wait_until(
            lambda: scalar(pg_schema, "SELECT count(*) FROM ingest_ledger WHERE vehicle_id = %s", bus) == 3,
            "the second good batch",
        )
        assert (
            scalar(pg_schema, "SELECT count(*) FROM samples WHERE vehicle_id = %s", bus)
            == 2 * SAMPLES_PER_BATCH
        )
        assert (
            scalar(pg_schema, "SELECT sum(n) FROM samples_1m WHERE vehicle_id = %s", bus)
            == 2 * SAMPLES_PER_BATCH
        )
        await async_wait_until(
            lambda: scalar(pg_schema, "SELECT count(*) FROM dead_letters WHERE vehicle_id = %s", bus) == 3,
            "3 dead letters",
        )
        reasons = scalar(
            pg_schema,
            "SELECT count(*) FROM dead_letters WHERE vehicle_id = %s AND "
            "(reason LIKE 'malformed payload%%' OR reason LIKE '%%does not match topic%%')",
            bus,
        )
        assert reasons == 3
        assert scalar(pg_schema, "SELECT count(*) FROM samples WHERE vehicle_id = %s", other) == 0
        # the hours are current before their refresh (every 300 s): they read the log too
        assert scalar(pg_schema, "SELECT count(*) FROM rollup_log_minutes WHERE vehicle_id = %s", bus) > 0
        assert (
            scalar(pg_schema, "SELECT sum(n) FROM samples_1h WHERE vehicle_id = %s", bus)
            == 2 * SAMPLES_PER_BATCH
        )

        # AND on the way out the receiver moves the log into the hour and day tables
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        assert scalar(pg_schema, "SELECT count(*) FROM rollup_log_minutes") == 0
        assert (
            scalar(pg_schema, "SELECT sum(n) FROM samples_1h WHERE vehicle_id = %s", bus)
            == 2 * SAMPLES_PER_BATCH
        )
        assert (
            scalar(pg_schema, "SELECT sum(n) FROM samples_1d WHERE vehicle_id = %s", bus)
            == 2 * SAMPLES_PER_BATCH
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        forget_sessions(mqtt_broker, [client_id])


# ---- the real process: SIGTERM, SIGKILL, two replicas ------------------------------------------


def test_sigterm_finishes_and_exits_zero(tmp_path: Path, mqtt_broker: Broker, pg_schema: Database) -> None:
    client_id = mqtt_broker.client_id("rx")
    config = write_config(tmp_path, mqtt_broker, pg_schema, client_id)
    migrate(pg_schema, config)
    receiver = ReceiverProcess(config, tmp_path / "rx.log")
    try:
        receiver.wait_subscribed()
        assert receiver.terminate() == 0, receiver.log_text()
        assert "receiver stopped" in receiver.log_text()
    finally:
        receiver.close()
        forget_sessions(mqtt_broker, [client_id])


def publish_stream(
    publisher: Publisher,
    fleet: str,
    vehicles: list[str],
    indices: range,
    on_batch: Callable[[int], None] = lambda index: None,
) -> None:
    for index in indices:
        for vehicle in vehicles:
            publisher.publish(telemetry_topic(fleet, vehicle), telemetry(vehicle, index))
        on_batch(index)


def test_killed_receiver_restarts_with_its_session_and_stores_everything_once(
    tmp_path: Path, mqtt_broker: Broker, pg_schema: Database, publisher: Publisher
) -> None:
    client_id = mqtt_broker.client_id("rx")
    # Groups close at 50 messages or 5 s: fewer than 50 messages sit received but uncommitted.
    config = write_config(tmp_path, mqtt_broker, pg_schema, client_id, batch_max_age_s=5.0)
    migrate(pg_schema, config)
    fleet = mqtt_broker.namespace
    vehicles = [f"{fleet}-bus{i}" for i in range(3)]
    count_samples = "SELECT count(*) FROM samples"
    receiver = ReceiverProcess(config, tmp_path / "rx.log")
    try:
        receiver.wait_subscribed()
        # GIVEN 20 batches per bus committed
        publish_stream(publisher, fleet, vehicles, range(0, 20))
        committed = 20 * len(vehicles) * SAMPLES_PER_BATCH
        wait_until(lambda: scalar(pg_schema, count_samples) == committed, f"{committed} samples committed")

        # WHEN 10 more per bus are received but not yet committed (their group is still open)
        # and the receiver is killed -9; then 30 more per bus arrive while it is down
        publish_stream(publisher, fleet, vehicles, range(20, 30))
        receiver.kill()
        assert scalar(pg_schema, count_samples) == committed, "the open group must not have been committed"
        publish_stream(publisher, fleet, vehicles, range(30, 60))

        # AND it restarts with the same client id
        restarted = ReceiverProcess(config, tmp_path / "rx.log")
        try:
            restarted.wait_subscribed(times=2)
            expected = 60 * len(vehicles) * SAMPLES_PER_BATCH
            wait_until(lambda: scalar(pg_schema, count_samples) >= expected, f"all {expected} samples")
            # THEN the broker kept the unacknowledged and the new messages in the session, and every
            # sample is stored exactly once
            assert "session present: True" in restarted.log_text()
            assert_exactly_once(pg_schema, vehicles, 60)
            assert restarted.terminate() == 0
        finally:
            restarted.close()
    finally:
        receiver.close()
        forget_sessions(mqtt_broker, [client_id])


def test_two_replicas_share_the_stream_and_one_dies(
    tmp_path: Path, mqtt_broker: Broker, pg_schema: Database, publisher: Publisher
) -> None:
    ids = [mqtt_broker.client_id("rx-a"), mqtt_broker.client_id("rx-b")]
    configs = [write_config(tmp_path, mqtt_broker, pg_schema, cid, name=cid) for cid in ids]
    migrate(pg_schema, configs[0])
    fleet = mqtt_broker.namespace
    vehicles = [f"{fleet}-bus{i}" for i in range(4)]
    batches = 50
    a = ReceiverProcess(configs[0], tmp_path / "a.log")
    b = ReceiverProcess(configs[1], tmp_path / "b.log")
    try:
        a.wait_subscribed()
        b.wait_subscribed()

        def kill_a_midway(index: int) -> None:
            if index == batches // 3:
                wait_until(lambda: scalar(pg_schema, "SELECT count(*) FROM samples") > 0, "first commits")
                a.kill()  # GIVEN replica A dies mid-stream; B carries on alone

        publish_stream(publisher, fleet, vehicles, range(batches), kill_a_midway)

        # Mosquitto keeps what it had in flight to A (and, for a shared subscription, possibly
        # more) in A's persistent session until A returns, as a supervisor would restart it.
        a2 = ReceiverProcess(configs[0], tmp_path / "a.log")
        try:
            a2.wait_subscribed(times=2)
            expected = len(vehicles) * batches * SAMPLES_PER_BATCH
            # only these buses: the receivers take every fleet's messages on the shared broker
            mine = "SELECT count(*) FROM samples WHERE vehicle_id = ANY(%s)"
            wait_until(
                lambda: scalar(pg_schema, mine, vehicles) >= expected,
                f"all {expected} samples from the two replicas",
            )
            assert_exactly_once(pg_schema, vehicles, batches)
            assert a2.terminate() == 0
            assert b.terminate() == 0
        finally:
            a2.close()
    finally:
        a.close()
        b.close()
        forget_sessions(mqtt_broker, ids)


# ---- the command line -------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud", *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def test_check_config_accepts_a_good_setup_and_explains_a_bad_one(
    tmp_path: Path, mqtt_broker: Broker, pg_schema: Database
) -> None:
    config = write_config(tmp_path, mqtt_broker, pg_schema, mqtt_broker.client_id("rx"))
    not_migrated = run_cli("check-config", "--config", str(config))
    assert not_migrated.returncode == 2
    assert "voltgate-cloud migrate" in not_migrated.stderr
    assert "Traceback" not in not_migrated.stderr

    assert run_cli("migrate", "--config", str(config)).returncode == 0
    assert "nothing" in run_cli("migrate", "--config", str(config)).stdout  # idempotent
    good = run_cli("check-config", "--config", str(config))
    assert good.returncode == 0, good.stderr

    env = clean_env() | {"VOLTGATE_CLOUD_DATABASE__DSN": "postgresql://postgres@127.0.0.1:1/test"}
    unreachable = run_cli("check-config", "--config", str(config), env=env)
    assert unreachable.returncode == 2
    assert unreachable.stderr.count("\n") == 1 and "cannot connect to the database" in unreachable.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 0\n")
    invalid = run_cli("check-config", "--config", str(bad))
    assert invalid.returncode == 2
    assert "mqtt.port" in invalid.stderr and "Traceback" not in invalid.stderr
