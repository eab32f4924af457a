"""What the receiver acknowledges after a commit: per vehicle, one commit ack of every seq it handled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from cloud.app import commit_ack_payloads
from cloud.ingest import BatchMessage, DeadLetter, StatusMessage
from cloud.mqtt import MAX_QUEUED_ACKS, Inbox, MqttReceiver
from cloud.settings import MqttSettings
from protocols.downlink import CommitAck, decode_downlink, encode_downlink
from protocols.topics import TopicKind, alerts_topic, downlink_ack_topic, telemetry_topic
from protocols.wire import AlertRecord, Batch, SampleRecord

NOW = datetime(2024, 5, 14, 12, 0, tzinfo=UTC)
TS_MS = int(NOW.timestamp() * 1000)


def _batch(fleet: str, vehicle: str, seqs: range, kind: TopicKind = TopicKind.TELEMETRY) -> BatchMessage:
    if kind is TopicKind.ALERTS:
        alerts = tuple(AlertRecord(s, TS_MS, "low_soc", "warning", True, 9.0, "SOC low") for s in seqs)
        batch = Batch(vehicle, alerts=alerts)
        topic = alerts_topic(fleet, vehicle)
    else:
        batch = Batch(vehicle, samples=tuple(SampleRecord(s, TS_MS, "Vehicle.Speed", 1.0) for s in seqs))
        topic = telemetry_topic(fleet, vehicle)
    return BatchMessage.of(topic, fleet, kind, batch, NOW, 100)


def test_one_ack_per_vehicle_covering_all_its_batches_of_the_group() -> None:
    items = [
        _batch("f1", "bus-1", range(0, 100)),
        _batch("f1", "bus-2", range(5, 10)),
        _batch("f1", "bus-1", range(100, 150)),
        _batch("f1", "bus-1", range(200, 201), TopicKind.ALERTS),
        StatusMessage(telemetry_topic("f1", "bus-3"), "f1", "bus-3", True, {}, NOW),
        DeadLetter(telemetry_topic("f1", "bus-4"), "bus-4", "malformed payload", b"x", NOW),
        _batch("f2", "bus-1", range(0, 3)),  # same vehicle id in another fleet: its own topic
    ]
    acks = {topic: decode_downlink(payload) for topic, payload in commit_ack_payloads(items, TS_MS)}
    assert acks == {
        downlink_ack_topic("f1", "bus-1"): CommitAck(TS_MS, ((0, 149), (200, 200))),
        downlink_ack_topic("f1", "bus-2"): CommitAck(TS_MS, ((5, 9),)),
        downlink_ack_topic("f2", "bus-1"): CommitAck(TS_MS, ((0, 2),)),
    }


def test_a_group_without_batches_acknowledges_nothing() -> None:
    status = StatusMessage(telemetry_topic("f1", "bus-3"), "f1", "bus-3", True, {}, NOW)
    assert commit_ack_payloads([status], TS_MS) == []


def test_acks_queue_without_blocking_up_to_a_bound() -> None:
    # GIVEN a receiver whose broker link is down (never connected: paho only queues)
    loop = asyncio.new_event_loop()
    try:
        receiver = MqttReceiver(MqttSettings(client_id="unit-acks"), loop, Inbox(capacity=10))
        payload = encode_downlink(CommitAck(TS_MS, ((0, 9),)))
        topic = downlink_ack_topic("f1", "bus-1")
        # WHEN more acks are published than the outgoing queue holds
        queued = [receiver.publish_ack(topic, payload) for _ in range(MAX_QUEUED_ACKS + 3)]
    finally:
        loop.close()
    # THEN each call returns at once; the ones beyond the bound are refused (the writer counts them)
    assert queued.count(True) == MAX_QUEUED_ACKS and queued[-3:] == [False] * 3
