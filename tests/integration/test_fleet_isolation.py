"""Fleet isolation under the shipped broker configuration (deploy/mosquitto/), run by a real Mosquitto 2.0.

The certificates come from `cloud.certs` (what `voltgate-cloud certs` runs) into a temporary directory; the
broker runs `deploy/mosquitto/voltgate.conf` and `voltgate.acl` as shipped, with only their paths and ports
replaced (and `user` set to whoever runs the test: started as root, mosquitto would otherwise drop to the
`mosquitto` user, which cannot read the test's 0600 keys). One broker serves the module; each test uses fleet
and vehicle ids of its own.

A publish the ACL forbids gets an MQTT 5 PUBACK "Not authorized" (135) and goes nowhere; a subscription the
ACL does not cover is granted by Mosquitto 2.0 but delivers nothing the client may not read, so the tests
check deliveries, not SUBACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.buffer import BufferWorker
from agent.uplink import Uplink
from cloud.__main__ import check_broker
from cloud.certs import RECEIVER_NAME, FleetPki, Issued
from cloud.errors import CloudError
from cloud.mqtt import Inbox, MqttReceiver
from cloud.settings import MqttSettings
from protocols.topics import (
    TopicKind,
    alerts_topic,
    downlink_ack_topic,
    downlink_config_topic,
    downlink_filter,
    shared_subscription,
    status_topic,
    subscription_filter,
    telemetry_topic,
    vehicle_topic,
)
from tests.integration.conftest import service_unavailable, unique_id
from tests.integration.test_uplink import QUANTA
from tests.integration.test_uplink import _connected as uplink_connected
from tests.integration.test_uplink import _samples as uplink_samples
from tests.integration.test_uplink import _settings as uplink_settings
from tests.integration.test_uplink import _stop as uplink_stop

DEPLOY = Path(__file__).parents[2] / "deploy" / "mosquitto"
WAIT_S = 10.0
NOT_AUTHORIZED = 135
ACCEPTED = (0, 16)  # MQTT 5 PUBACK: success, and success with no subscriber matching
# What a client receives shortly after a marker message it waited for: enough for any spoofed message sent
# before the marker to have arrived too (the broker keeps one publisher's order), generous on a busy machine.
SETTLE_S = 0.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _templated(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the shipped broker config no longer contains {old!r}: update this test"
        text = text.replace(old, new)
    return text


@dataclass
class FleetBroker:
    pki: FleetPki
    bus_port: int
    receiver_port: int
    receiver: Issued


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    if shutil.which("mosquitto") is None:
        service_unavailable("mosquitto binary not installed")
    folder = tmp_path_factory.mktemp("fleet-broker")
    pki = FleetPki(folder / "pki")
    pki.init_ca()
    pki.issue_broker(["127.0.0.1", "localhost"])
    receiver = pki.issue_receiver()
    shutil.copy(DEPLOY / "voltgate.acl", pki.directory / "voltgate.acl")
    data = folder / "data"
    data.mkdir()
    bus_port, receiver_port = _free_port(), _free_port()
    conf = folder / "voltgate.conf"
    conf.write_text(
        _templated(
            (DEPLOY / "voltgate.conf").read_text(),
            {
                "/etc/mosquitto/voltgate/": f"{pki.directory}/",
                "/var/lib/mosquitto/": f"{data}/",
                "listener 8883\n": f"listener {bus_port} 127.0.0.1\n",
                "listener 8884 127.0.0.1\n": f"listener {receiver_port} 127.0.0.1\n",
            },
        )
        + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    log_path = folder / "mosquitto.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + WAIT_S
        while not all(_listening(port) for port in (bus_port, receiver_port)):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start with the shipped config:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield FleetBroker(pki, bus_port, receiver_port, receiver)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class Client:
    """A paho MQTT 5 client over TLS that records what the broker answers: PUBACK reasons, messages."""

    def __init__(
        self,
        port: int,
        ca: Path,
        identity: Issued | None,
        *,
        client_id: str | None = None,
        username: str | None = None,
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or unique_id("c-"), protocol=paho.MQTTv5
        )
        context = ssl.create_default_context(cafile=str(ca))
        if identity is not None:
            context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        self.client.tls_set_context(context)
        if username is not None:
            self.client.username_pw_set(username, "ignored")
        self.port = port
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.puback: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *_: self.subscribed.set()

    def _on_connect(self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_publish(self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: Properties) -> None:
        self.puback[mid] = reason

    def connect(self) -> Client:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        _wait(self.connected, "CONNACK")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, *filters: str) -> None:
        for topic_filter in filters:
            self.subscribed.clear()
            self.client.subscribe(topic_filter, qos=1)
            _wait(self.subscribed, f"SUBACK for {topic_filter}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's MQTT 5 reason code (ACCEPTED, or 135: not authorized)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + WAIT_S
        while info.mid not in self.puback:
            if time.monotonic() > deadline:
                pytest.fail(f"no PUBACK for {topic}", pytrace=False)
            time.sleep(0.01)
        return self.puback[info.mid].value

    def wait_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Every message received until (and with) `payload` on `topic`, then what follows within SETTLE_S."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + WAIT_S
        while (topic, payload) not in got:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{payload!r} never arrived on {topic}; got {got}", pytrace=False)
            with contextlib.suppress(queue.Empty):
                message = self.messages.get(timeout=remaining)
                got.append((message.topic, message.payload))
        time.sleep(SETTLE_S)
        while not self.messages.empty():
            message = self.messages.get_nowait()
            got.append((message.topic, message.payload))
        return got


def _wait(event: threading.Event, what: str) -> None:
    if not event.wait(WAIT_S):
        pytest.fail(f"no {what} within {WAIT_S} s", pytrace=False)


@contextlib.contextmanager
def connected(*clients: Client) -> Iterator[None]:
    try:
        for client in clients:
            client.connect()
        yield
    finally:
        for client in clients:
            client.close()


def _bus(broker: FleetBroker, fleet: str, vehicle: str, **kwargs: str) -> Client:
    return Client(broker.bus_port, broker.pki.ca_cert_path, broker.pki.issue_bus(fleet, vehicle), **kwargs)


def _receiver(broker: FleetBroker) -> Client:
    return Client(broker.receiver_port, broker.pki.ca_cert_path, broker.receiver)


def test_a_bus_publishes_its_own_uplink_and_the_receiver_reads_all_of_it(fleet_broker: FleetBroker) -> None:
    fleet, group = unique_id("f"), unique_id("g")
    bus_a, bus_b = _bus(fleet_broker, fleet, "bus-a"), _bus(fleet_broker, fleet, "bus-b")
    receiver = _receiver(fleet_broker)
    with connected(bus_a, bus_b, receiver):
        receiver.subscribe(
            shared_subscription(group, TopicKind.TELEMETRY),
            shared_subscription(group, TopicKind.ALERTS),
            subscription_filter(TopicKind.STATUS, fleet=fleet),
        )
        # WHEN each bus publishes on its own uplink topics, THEN the broker accepts them all ...
        sent = [
            (telemetry_topic(fleet, "bus-a"), b"t-a"),
            (alerts_topic(fleet, "bus-a"), b"a-a"),
            (status_topic(fleet, "bus-a"), b"s-a"),
        ]
        assert all(bus_a.publish(topic, payload) in ACCEPTED for topic, payload in sent)
        assert bus_b.publish(telemetry_topic(fleet, "bus-b"), b"t-b") in ACCEPTED
        # ... and the receiver identity reads every one of them
        got = receiver.wait_for(telemetry_topic(fleet, "bus-b"), b"t-b")
    assert sorted(got) == sorted([*sent, (telemetry_topic(fleet, "bus-b"), b"t-b")])


@pytest.mark.parametrize("port", ["bus", "receiver"])
def test_a_bus_cannot_publish_as_another_bus_or_fleet_or_on_a_downlink(
    fleet_broker: FleetBroker, port: str
) -> None:
    fleet, other_fleet = unique_id("f"), unique_id("f")
    bus_a = _bus(fleet_broker, fleet, "bus-a")
    if port == "receiver":  # the receivers' port, should a bus reach it: the same ACL applies
        bus_a.port = fleet_broker.receiver_port
    receiver = _receiver(fleet_broker)
    spoofed = [
        telemetry_topic(fleet, "bus-b"),  # another bus of its fleet
        telemetry_topic(other_fleet, "bus-a"),  # its own vehicle id in another fleet
        alerts_topic(other_fleet, "bus-a"),
        status_topic(other_fleet, "bus-a"),
        downlink_ack_topic(fleet, "bus-a"),  # its own downlink: only the cloud publishes there
        downlink_config_topic(fleet, "bus-a"),
        downlink_ack_topic(fleet, "bus-b"),
        f"{telemetry_topic(fleet, 'bus-a')}/extra",
        "voltgate/v1/other",
    ]
    with connected(bus_a, receiver):
        receiver.subscribe("voltgate/v1/#")  # everything the receiver identity may read
        # WHEN bus A publishes under any topic but its own uplink, THEN the broker refuses each one ...
        assert {topic: bus_a.publish(topic, b"spoof") for topic in spoofed} == dict.fromkeys(
            spoofed, NOT_AUTHORIZED
        )
        assert bus_a.publish(telemetry_topic(fleet, "bus-a"), b"marker") in ACCEPTED
        got = receiver.wait_for(telemetry_topic(fleet, "bus-a"), b"marker")
    # ... and none of them reaches the receiver (only the marker sent after them does)
    assert got == [(telemetry_topic(fleet, "bus-a"), b"marker")]


def test_a_bus_reads_its_own_downlink_only_and_gets_the_retained_ack(fleet_broker: FleetBroker) -> None:
    fleet = unique_id("f")
    receiver = _receiver(fleet_broker)
    # GIVEN the receiver has published retained acknowledgements for bus A and bus B, and B's config
    with connected(receiver):
        assert receiver.publish(downlink_ack_topic(fleet, "bus-a"), b"ack-a", retain=True) in ACCEPTED
        assert receiver.publish(downlink_ack_topic(fleet, "bus-b"), b"ack-b", retain=True) in ACCEPTED
        assert receiver.publish(downlink_config_topic(fleet, "bus-b"), b"config-b", retain=True) in ACCEPTED
    # WHEN bus A subscribes to its downlink, to bus B's, and to everything
    bus_a = _bus(fleet_broker, fleet, "bus-a")
    with connected(bus_a, receiver):
        bus_a.subscribe(downlink_filter(fleet, "bus-b"), "voltgate/v1/#", downlink_filter(fleet, "bus-a"))
        retained = bus_a.wait_for(downlink_ack_topic(fleet, "bus-a"), b"ack-a")
        # ... and the receiver publishes live downlink messages to both buses
        assert receiver.publish(downlink_config_topic(fleet, "bus-b"), b"live-b") in ACCEPTED
        assert receiver.publish(downlink_config_topic(fleet, "bus-a"), b"live-a") in ACCEPTED
        live = bus_a.wait_for(downlink_config_topic(fleet, "bus-a"), b"live-a")
    # THEN it gets its own retained ack and live message (once per matching subscription), nothing of B's
    assert set(retained) == {(downlink_ack_topic(fleet, "bus-a"), b"ack-a")}
    assert set(live) == {(downlink_config_topic(fleet, "bus-a"), b"live-a")}


def test_a_bus_cannot_read_other_buses_uplink(fleet_broker: FleetBroker) -> None:
    fleet = unique_id("f")
    bus_a, bus_b = _bus(fleet_broker, fleet, "bus-a"), _bus(fleet_broker, fleet, "bus-b")
    with connected(bus_a, bus_b):
        bus_a.subscribe(subscription_filter(TopicKind.TELEMETRY), "voltgate/v1/#")
        assert bus_b.publish(telemetry_topic(fleet, "bus-b"), b"t-b") in ACCEPTED
        # it may not read its own uplink either
        assert bus_a.publish(telemetry_topic(fleet, "bus-a"), b"own") in ACCEPTED
        time.sleep(SETTLE_S)
    assert bus_a.messages.empty()


def test_a_bus_claiming_the_receiver_username_keeps_its_bus_rights(fleet_broker: FleetBroker) -> None:
    # GIVEN bus A sends the receiver's name as its MQTT username: the certificate's CN wins
    fleet = unique_id("f")
    impostor = _bus(fleet_broker, fleet, "bus-a", username=RECEIVER_NAME)
    bus_b = _bus(fleet_broker, fleet, "bus-b")
    with connected(impostor, bus_b):
        impostor.subscribe(subscription_filter(TopicKind.TELEMETRY))
        assert impostor.publish(downlink_ack_topic(fleet, "bus-b"), b"forged-ack") == NOT_AUTHORIZED
        assert bus_b.publish(telemetry_topic(fleet, "bus-b"), b"t-b") in ACCEPTED
        time.sleep(SETTLE_S)
    assert impostor.messages.empty()


def test_a_bus_cannot_take_over_another_bus_session(fleet_broker: FleetBroker) -> None:
    # GIVEN bus B is connected with its client id
    fleet = unique_id("f")
    b_client_id = unique_id("voltgate-bus-b-")
    bus_b = _bus(fleet_broker, fleet, "bus-b", client_id=b_client_id)
    # WHEN bus A connects sending B's client id (on the buses' port the broker replaces it with A's identity)
    bus_a = _bus(fleet_broker, fleet, "bus-a", client_id=b_client_id)
    with connected(bus_b, bus_a):
        # THEN B keeps its connection: a session take-over would have sent B a DISCONNECT before this PUBACK
        assert bus_b.publish(telemetry_topic(fleet, "bus-b"), b"still-here") in ACCEPTED
        assert not bus_b.disconnected.is_set()


def test_the_same_vehicle_id_in_two_fleets_does_not_collide(fleet_broker: FleetBroker) -> None:
    # GIVEN two fleets each with a "bus-1" whose agents send the same default client id
    fleet_1, fleet_2 = unique_id("f"), unique_id("f")
    same_id = unique_id("voltgate-bus-1-")
    bus_1, bus_2 = (
        _bus(fleet_broker, fleet_1, "bus-1", client_id=same_id),
        _bus(fleet_broker, fleet_2, "bus-1", client_id=same_id),
    )
    with connected(bus_1, bus_2):
        assert bus_1.publish(telemetry_topic(fleet_1, "bus-1"), b"1") in ACCEPTED
        assert bus_2.publish(telemetry_topic(fleet_2, "bus-1"), b"2") in ACCEPTED
        assert not bus_1.disconnected.is_set() and not bus_2.disconnected.is_set()


@pytest.mark.parametrize("port", ["bus", "receiver"])
@pytest.mark.parametrize("who", ["no client certificate", "a certificate from another CA"])
def test_a_client_without_a_fleet_certificate_is_refused(
    fleet_broker: FleetBroker, tmp_path: Path, port: str, who: str
) -> None:
    identity = None
    if who == "a certificate from another CA":
        stranger = FleetPki(tmp_path / "stranger")
        stranger.init_ca()
        identity = stranger.issue_bus("f", "bus-a")
    number = fleet_broker.bus_port if port == "bus" else fleet_broker.receiver_port
    client = Client(number, fleet_broker.pki.ca_cert_path, identity)
    # WHEN it connects, THEN the TLS handshake fails (TLS 1.3: maybe at the first read), no CONNACK comes
    try:
        client.client.connect("127.0.0.1", number, keepalive=30)
        client.client.loop_start()
        deadline = time.monotonic() + WAIT_S
        while not (client.connected.is_set() or client.disconnected.is_set()):
            assert time.monotonic() < deadline, "neither CONNACK nor a closed connection"
            time.sleep(0.02)
    except (ssl.SSLError, OSError):
        pass  # TLS 1.2, or the alert already read: refused during connect()
    finally:
        client.client.loop_stop()
    assert not client.connected.is_set()


async def test_the_receiver_presents_its_client_certificate(fleet_broker: FleetBroker) -> None:
    # GIVEN the real receiver adapter, configured with the receiver certificate, on the receivers' port
    fleet = unique_id("f")
    settings = MqttSettings(
        host="127.0.0.1",
        port=fleet_broker.receiver_port,
        tls=True,
        ca_file=fleet_broker.pki.ca_cert_path,
        cert_file=fleet_broker.receiver.cert_path,
        key_file=fleet_broker.receiver.key_path,
        client_id=unique_id("voltgate-cloud-"),
        shared_group=unique_id("g"),
        session_expiry_s=60,
    )
    inbox = Inbox(100)
    receiver = MqttReceiver(settings, asyncio.get_running_loop(), inbox)
    receiver.start()
    bus = _bus(fleet_broker, fleet, "bus-a")
    try:
        deadline = time.monotonic() + WAIT_S
        while not receiver.connected.is_set():
            assert time.monotonic() < deadline, "the receiver never subscribed over TLS"
            await asyncio.sleep(0.05)
        # WHEN a bus publishes its telemetry
        with connected(bus):
            assert await asyncio.to_thread(bus.publish, telemetry_topic(fleet, "bus-a"), b"t") == 0
        # THEN the receiver gets it through its shared subscription
        stop = asyncio.Event()
        group = await asyncio.wait_for(inbox.next_group(10, 0.1, stop), WAIT_S)
        assert [(m.topic, m.payload) for m in group] == [(vehicle_topic(fleet, "bus-a", "telemetry"), b"t")]
        receiver.ack(group)
    finally:
        receiver.stop()


def test_check_config_knows_whether_the_broker_takes_the_receiver_certificate(
    fleet_broker: FleetBroker, tmp_path: Path
) -> None:
    pki = fleet_broker.pki
    good = MqttSettings(
        host="127.0.0.1", port=fleet_broker.receiver_port, tls=True, ca_file=pki.ca_cert_path,
        cert_file=fleet_broker.receiver.cert_path, key_file=fleet_broker.receiver.key_path,
    )  # fmt: skip
    check_broker(good, WAIT_S)

    stranger = FleetPki(tmp_path / "stranger")
    stranger.init_ca()
    foreign = stranger.issue_receiver()
    foreign_pair = {"cert_file": foreign.cert_path, "key_file": foreign.key_path}
    for settings, reason in (
        (good.model_copy(update={"cert_file": None, "key_file": None}), "certificate required"),
        (good.model_copy(update=foreign_pair), "unknown ca"),
        (good.model_copy(update={"ca_file": stranger.ca_cert_path}), "certificate verify failed"),
        (good.model_copy(update={"host": "localhost"}), ""),  # in the SANs too
    ):
        if not reason:
            check_broker(settings, WAIT_S)
            continue
        with pytest.raises(CloudError, match=reason) as caught:
            check_broker(settings, WAIT_S)
        assert "\n" not in str(caught.value)


async def test_the_agent_uplink_works_under_the_shipped_acl(
    fleet_broker: FleetBroker, buffer: BufferWorker
) -> None:
    # GIVEN a receiver identity reading everything, and the real agent uplink with its bus certificate
    fleet = unique_id("f")
    issued = fleet_broker.pki.issue_bus(fleet, "bus-7")
    settings = uplink_settings(
        "127.0.0.1", fleet_broker.bus_port, fleet, broker_url=f"mqtts://127.0.0.1:{fleet_broker.bus_port}",
        ca_file=fleet_broker.pki.ca_cert_path, cert_file=issued.cert_path, key_file=issued.key_path,
    )  # fmt: skip
    receiver = _receiver(fleet_broker)
    with connected(receiver):
        receiver.subscribe(subscription_filter(TopicKind.TELEMETRY, fleet=fleet))
        uplink = Uplink(settings, "bus-7", buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        try:
            await uplink_connected(uplink)
            # WHEN it sends committed samples
            await buffer.commit_samples(uplink_samples(0, 20))
            uplink.notify()
            message = await asyncio.to_thread(receiver.messages.get, True, WAIT_S)
        finally:
            await uplink_stop(uplink, task)
    # THEN the broker accepted them on the bus's own topic (its client id replaced by its identity)
    assert message.topic == telemetry_topic(fleet, "bus-7")
