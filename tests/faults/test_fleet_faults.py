"""A spoofing bus under the shipped broker configuration: deploy/mosquitto/voltgate.conf and voltgate.acl
(TLS, a client certificate for everyone, the certificate's CN `{fleet}/{vehicle}` as the ACL identity) with
certificates from `voltgate-cloud certs`. The real agent and receiver run over TLS with their own
certificates; another bus of the same fleet, with a valid certificate of its own, publishes forged batches
under the victim's topics (colliding seqs, seqs far ahead, a forged downlink message). The audit of the
victim must still say lost = 0 and duplicated = 0, and nothing forged is stored.

Runs where the shipped configuration is in the tree; skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocols.topics import downlink_ack_topic, telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch
from tests.faults.audit import (
    Database,
    assert_nothing_lost,
    audit_mark,
    judge,
    prepare_audited_buffer,
    settle,
)
from tests.faults.harness import (
    BIN,
    REPO,
    AgentConfig,
    AgentProcess,
    Mosquitto,
    Program,
    Receiver,
    ReceiverConfig,
    free_port,
    wait_until,
)
from tests.integration.conftest import PG_DSN, unique_id

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DEPLOY = REPO / "deploy" / "mosquitto"
RECEIVER_CN = "voltgate-cloud"
FORGED_SEQ = 90_000_000


def certs(pki: Path, *args: str) -> None:
    done = subprocess.run(
        [BIN / "voltgate-cloud", "certs", *args, "--dir", str(pki)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"voltgate-cloud certs {' '.join(args)}: {done.stderr.strip() or done.stdout}", pytrace=False
        )


def shipped_conf(pki: Path, data: Path, bus_port: int, receiver_port: int) -> str:
    """The shipped voltgate.conf with only its paths and ports replaced (and `user` set to whoever runs the
    test, who can read the 0600 keys)."""
    text = (DEPLOY / "voltgate.conf").read_text()
    for old, new in {
        "/etc/mosquitto/voltgate/": f"{pki}/",
        "/var/lib/mosquitto/": f"{data}/",
        "listener 8883\n": f"listener {bus_port} 127.0.0.1\n",
        "listener 8884 127.0.0.1\n": f"listener {receiver_port} 127.0.0.1\n",
    }.items():
        assert old in text, f"the shipped broker config no longer contains {old!r}: update this test"
        text = text.replace(old, new)
    return text + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


def publish_as(
    pki: Path, port: int, cert: Path, key: Path, messages: list[tuple[str, bytes, bool]]
) -> list[int]:
    """Publish (topic, payload, retain) with QoS 1 as the holder of `cert`; the PUBACK reason codes."""
    reasons: list[int] = []
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("spoof-"), protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(cert), keyfile=str(key))

    def on_publish(
        client: paho.Client, userdata: object, mid: int, reason: object, properties: object
    ) -> None:
        reasons.append(int(getattr(reason, "value", 0)))
        if len(reasons) == len(messages):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain)
        done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    started: list[Program] = []
    yield started
    for program in reversed(started):
        program.ensure_dead()


async def test_spoofing_bus_under_the_shipped_acl(
    tmp_path: Path,
    database_schema: str,
    recorded_bus: Path,
    catalog_policy_off: Path,
    programs: list[Program],
) -> None:
    if not (DEPLOY / "voltgate.conf").is_file():
        pytest.skip(f"the shipped broker configuration {DEPLOY / 'voltgate.conf'} is not in this tree")
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto binary not installed")
    fleet, victim, spoofer = unique_id("f"), "bus-" + unique_id("")[:8], "bus-" + unique_id("")[:8]
    pki = tmp_path / "pki"
    certs(pki, "ca")
    certs(pki, "broker", "--host", "127.0.0.1", "--host", "localhost")
    certs(pki, "receiver")
    certs(pki, "bus", "--fleet", fleet, "--vehicle", victim, "--vehicle", spoofer)
    shutil.copy(DEPLOY / "voltgate.acl", pki / "voltgate.acl")
    bus_port, receiver_port = free_port(), free_port()
    data = tmp_path / "broker" / "data"
    data.mkdir(parents=True)
    broker = Mosquitto(
        tmp_path / "broker",
        persistence=True,
        conf_text=shipped_conf(pki, data, bus_port, receiver_port),
        port=bus_port,
    )
    programs.append(broker)
    broker.start()
    receiver = Receiver(
        tmp_path / "receiver",
        ReceiverConfig(
            broker_port=receiver_port,
            db_dsn=PG_DSN,
            schema=database_schema,
            client_id=unique_id("rx-"),
            tls_files=(
                pki / "ca.crt",
                pki / "receivers" / f"{RECEIVER_CN}.crt",
                pki / "receivers" / f"{RECEIVER_CN}.key",
            ),
        ),
    )
    programs.append(receiver)
    receiver.start_subscribed()
    buffer_path = tmp_path / "state" / "buffer.sqlite3"
    prepare_audited_buffer(buffer_path)
    bus_dir = pki / "buses" / fleet
    config = AgentConfig(
        vehicle_id=victim,
        fleet=fleet,
        broker_port=bus_port,
        buffer_path=buffer_path,
        replay_log=recorded_bus,
        catalog=catalog_policy_off,
        uplink_tls_files=(pki / "ca.crt", bus_dir / f"{victim}.crt", bus_dir / f"{victim}.key"),
    )
    agent = AgentProcess(config.write(tmp_path / "agent.toml"), tmp_path / "agent.log")
    programs.append(agent)
    db = Database(PG_DSN, database_schema, victim)
    started = time.monotonic()
    await wait_until(
        "the victim's data stored", lambda: db.stored_count() >= 500, watch=[agent, receiver, broker]
    )

    # WHEN another bus of the fleet, with a valid certificate of its own, forges the victim's data and
    # downlink
    now_ms = int(time.time() * 1000)
    colliding = Batch(
        victim, tuple(SampleRecord(seq, now_ms + seq, "Vehicle.Speed", 99.0) for seq in range(100))
    )
    ahead = Batch(
        victim, tuple(SampleRecord(FORGED_SEQ + i, now_ms + i, "Vehicle.Speed", 99.0) for i in range(10))
    )
    reasons = publish_as(
        pki,
        bus_port,
        bus_dir / f"{spoofer}.crt",
        bus_dir / f"{spoofer}.key",
        [
            (telemetry_topic(fleet, victim), encode_batch(colliding, {}), False),
            (telemetry_topic(fleet, victim), encode_batch(ahead, {}), False),
            (downlink_ack_topic(fleet, victim), b"forged: everything is stored", True),
        ],
    )
    mark = audit_mark(buffer_path)
    await wait_until(
        "more of the victim's data committed", lambda: audit_mark(buffer_path) >= mark + 1000, agent=agent
    )

    # THEN the ACL refused it all, nothing forged is stored, and the victim's audit is clean
    how = await settle(buffer_path, db)
    result = judge("test_spoofing_bus_under_the_shipped_acl", buffer_path, db, started)
    result.drain = how
    print(f"\n{result.line()}; spoofer's PUBACK reason codes {reasons}")
    forged = [seq for seq in db.stored_copies() if seq >= FORGED_SEQ]
    assert not forged, f"forged seqs stored for the victim: {forged[:10]}"
    assert_nothing_lost(result)
    assert reasons and all(code == 135 for code in reasons), (
        f"the broker accepted a forged publish: {reasons}"
    )
