"""The pure ingest core: every message becomes a batch, a status or a dead letter; never a crash."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from cloud.ingest import BatchMessage, DeadLetter, StatusMessage, ingest_message
from cloud.settings import IngestSettings
from protocols.topics import TopicKind, alerts_topic, status_topic, telemetry_topic
from protocols.wire import AlertRecord, Batch, PredictionRecord, SampleRecord, encode_batch, encode_status

NOW = datetime(2024, 5, 14, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = IngestSettings()


def a_batch(vehicle: str = "bus-1", ts_ms: int = NOW_MS - 1000) -> Batch:
    return Batch(
        vehicle,
        samples=(
            SampleRecord(10, ts_ms, "Vehicle.Speed", 42.0),
            SampleRecord(11, ts_ms, "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", 77.5),
        ),
        predictions=(PredictionRecord(12, ts_ms, "soc_drop", "1.0.0", "soc_drop_60min_pp", 3.25),),
        alerts=(AlertRecord(13, ts_ms, "low_soc", "warning", True, math.nan, "SOC low"),),
    )


def test_a_good_batch_becomes_rows() -> None:
    result = ingest_message(telemetry_topic("f1", "bus-1"), encode_batch(a_batch()), NOW, LIMITS)
    assert isinstance(result, BatchMessage)
    assert (result.fleet, result.vehicle_id, result.kind) == ("f1", "bus-1", TopicKind.TELEMETRY)
    assert result.samples.seq.tolist() == [10, 11]
    assert result.samples.records() == a_batch().samples
    assert result.seq_range() == (10, 13)


def test_alerts_topic_carries_batches_too() -> None:
    result = ingest_message(alerts_topic("f1", "bus-1"), encode_batch(a_batch()), NOW, LIMITS)
    assert isinstance(result, BatchMessage)
    assert result.kind is TopicKind.ALERTS


def test_a_spoofed_vehicle_id_is_a_dead_letter() -> None:
    payload = encode_batch(a_batch("bus-2"))
    result = ingest_message(telemetry_topic("f1", "bus-1"), payload, NOW, LIMITS)
    assert isinstance(result, DeadLetter)
    assert "does not match topic" in result.reason
    assert (result.payload, result.vehicle_id) == (payload, "bus-1")


def test_garbage_and_truncated_payloads_are_dead_letters() -> None:
    payload = encode_batch(a_batch())
    for bad in (b"", b"\x00garbage\xff", payload[: len(payload) // 2], payload[:-1]):
        result = ingest_message(telemetry_topic("f1", "bus-1"), bad, NOW, LIMITS)
        assert isinstance(result, DeadLetter), bad
        assert result.reason.startswith("malformed payload"), result.reason
        assert result.payload == bad


def test_an_oversized_payload_is_refused_before_decoding() -> None:
    limits = IngestSettings(max_payload_bytes=64)
    result = ingest_message(telemetry_topic("f1", "bus-1"), b"x" * 65, NOW, limits)
    assert isinstance(result, DeadLetter)
    assert "too large" in result.reason


def test_a_topic_outside_the_scheme_is_a_dead_letter() -> None:
    result = ingest_message("someone/else/topic", b"{}", NOW, LIMITS)
    assert isinstance(result, DeadLetter)
    assert result.vehicle_id is None
    assert result.reason.startswith("bad topic")


def test_timestamps_outside_the_plausibility_window_are_dead_letters() -> None:
    too_old = NOW_MS - int(timedelta(days=LIMITS.max_sample_age_days + 1).total_seconds() * 1000)
    too_new = NOW_MS + (LIMITS.max_future_skew_s + 60) * 1000
    for ts_ms in (too_old, too_new):
        result = ingest_message(
            telemetry_topic("f1", "bus-1"), encode_batch(a_batch(ts_ms=ts_ms)), NOW, LIMITS
        )
        assert isinstance(result, DeadLetter)
        assert "timestamp out of range" in result.reason


def test_status_online_offline_and_bad() -> None:
    topic = status_topic("f1", "bus-1")
    online = ingest_message(topic, encode_status("online", NOW_MS, vin="VIN1"), NOW, LIMITS)
    assert isinstance(online, StatusMessage)
    assert online.online and online.document == {"state": "online", "ts_ms": NOW_MS, "vin": "VIN1"}
    offline = ingest_message(topic, encode_status("offline", NOW_MS, reason="connection lost"), NOW, LIMITS)
    assert isinstance(offline, StatusMessage) and not offline.online
    cleared = ingest_message(topic, b"", NOW, LIMITS)  # a retained status deleted
    assert isinstance(cleared, StatusMessage) and not cleared.online and cleared.document is None
    for bad in (
        b"not json",
        b"offline",
        b"[1, 2]",
        b'{"state": "online"}',  # no ts_ms
        b'{"state": "asleep", "ts_ms": 1}',
        b'{"state": "online", "ts_ms": 1, "info": [1]}',
        b'{"state": "online", "ts_ms": 1, "a": "\\u0000"}',
    ):
        result = ingest_message(topic, bad, NOW, LIMITS)
        assert isinstance(result, DeadLetter), bad
        assert result.reason.startswith(("malformed status", "status contains")), result.reason


@given(st.binary(max_size=2048))
def test_any_bytes_on_any_kind_never_raise(payload: bytes) -> None:
    for topic in (telemetry_topic("f", "v"), alerts_topic("f", "v"), status_topic("f", "v")):
        assert isinstance(
            ingest_message(topic, payload, NOW, LIMITS), BatchMessage | StatusMessage | DeadLetter
        )
