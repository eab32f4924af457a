"""The pure ingest core: every message becomes a batch, a status or a dead letter; never a crash. A group
of messages (`ingest_messages`) becomes exactly what its messages become one by one."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from cloud.ingest import (
    BatchMessage,
    DeadLetter,
    Ingested,
    Refusal,
    RefusedRecord,
    StatusMessage,
    accepted_window_ms,
    ingest_message,
    ingest_messages,
)
from cloud.settings import IngestSettings
from protocols.topics import TopicKind, alerts_topic, applied_topic, status_topic, telemetry_topic
from protocols.wire import (
    AlertRecord,
    Batch,
    PredictionRecord,
    SampleRecord,
    decode_columnar_batch,
    encode_batch,
    encode_status,
)

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


def test_a_2007_gps_fix_among_good_samples_is_refused_alone() -> None:
    # GIVEN a minute of CAN samples and one GPS fix dated 2007 (a week-rollover receiver)
    fix_2007_ms = int(datetime(2007, 3, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)
    good = tuple(
        SampleRecord(100 + i, NOW_MS - 60_000 + i * 1000, "Vehicle.Speed", float(i)) for i in range(60)
    )
    fix = SampleRecord(160, fix_2007_ms, "Vehicle.CurrentLocation.Latitude", 52.5)
    batch = Batch("bus-1", samples=(*good[:30], fix, *good[30:]))

    # WHEN it is received
    result = ingest_message(telemetry_topic("f1", "bus-1"), encode_batch(batch), NOW, LIMITS)

    # THEN the 60 good samples are kept, the fix alone is refused, and all 61 are handled
    assert isinstance(result, BatchMessage)
    assert result.samples.records() == good
    assert result.refused == (RefusedRecord(160, fix_2007_ms, fix.signal, Refusal.TS_TOO_OLD, 52.5),)
    assert result.handled_seqs().tolist() == list(range(100, 161))
    assert result.seq_range() == (100, 160)
    assert result.refused_summary() == "1 of 61 records refused: ts_too_old 1"


def test_nan_and_infinities_are_refused_per_record() -> None:
    values = [1.0, math.nan, math.inf, -math.inf, 2.0]
    samples = tuple(SampleRecord(i, NOW_MS - 1000, f"Sig.{i % 2}", v) for i, v in enumerate(values))
    batch = Batch(
        "bus-1",
        samples=samples,
        predictions=(
            PredictionRecord(10, NOW_MS, "soc_drop", "1", "soc_drop_60min_pp", math.inf),
            PredictionRecord(11, NOW_MS, "soc_drop", "1", "soc_drop_60min_pp", 3.0),
            PredictionRecord(12, NOW_MS, "soc_drop", "1", "p_large_drop_60min", math.nan),
        ),
        alerts=(
            AlertRecord(20, NOW_MS, "low_soc", "warning", True, math.nan, "no value: kept"),
            AlertRecord(21, NOW_MS, "low_soc", "warning", True, -math.inf, "refused"),
        ),
    )
    result = ingest_message(telemetry_topic("f1", "bus-1"), encode_batch(batch), NOW, LIMITS)
    assert isinstance(result, BatchMessage)
    assert result.samples.records() == (samples[0], samples[4])
    assert [p.seq for p in result.batch.predictions] == [11]
    assert [a.seq for a in result.batch.alerts] == [20]  # an alert's NaN is the wire's "no value"
    assert [(r.seq, r.reason) for r in result.refused] == [
        (s, Refusal.VALUE_NOT_FINITE) for s in (1, 2, 3, 10, 12, 21)
    ]
    names = ["Sig.1", "Sig.0", "Sig.1", "soc_drop_60min_pp", "p_large_drop_60min", "low_soc"]
    assert [r.name for r in result.refused] == names
    assert result.handled_seqs().tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 20, 21]
    assert result.refused_summary() == "6 of 10 records refused: value_not_finite 6"


def test_a_40_day_old_backlog_is_accepted_whole() -> None:
    forty_days_ago = NOW_MS - int(timedelta(days=40).total_seconds() * 1000)
    result = ingest_message(
        telemetry_topic("f1", "bus-1"), encode_batch(a_batch(ts_ms=forty_days_ago)), NOW, LIMITS
    )
    assert isinstance(result, BatchMessage)
    assert result.refused == ()
    assert result.samples.records() == a_batch(ts_ms=forty_days_ago).samples
    assert LIMITS.max_sample_age_days >= 400  # what a bus's buffer can hold (IngestSettings says how)


def test_timestamps_outside_the_window_are_refused_per_record() -> None:
    earliest_ms, latest_ms = accepted_window_ms(NOW, LIMITS)
    assert latest_ms == NOW_MS + LIMITS.max_future_skew_s * 1000
    stamps = [earliest_ms - 1, earliest_ms, latest_ms, latest_ms + 1, NOW_MS + 365 * 86_400_000]
    samples = tuple(SampleRecord(i, ts, "Vehicle.Speed", 1.0) for i, ts in enumerate(stamps))
    result = ingest_message(
        telemetry_topic("f1", "bus-1"), encode_batch(Batch("bus-1", samples)), NOW, LIMITS
    )
    assert isinstance(result, BatchMessage)
    assert result.samples.seq.tolist() == [1, 2]  # the window's bounds are inside it
    assert [(r.seq, r.reason) for r in result.refused] == [
        (0, Refusal.TS_TOO_OLD),
        (3, Refusal.TS_IN_FUTURE),
        (4, Refusal.TS_IN_FUTURE),
    ]


def test_a_nul_in_a_text_field_refuses_only_its_records() -> None:
    batch = Batch(
        "bus-1",
        samples=(
            SampleRecord(1, NOW_MS, "Bad\x00Name", 1.0),
            SampleRecord(2, NOW_MS, "Vehicle.Speed", 2.0),
            SampleRecord(3, NOW_MS + 1, "Bad\x00Name", 3.0),
        ),
        predictions=(PredictionRecord(4, NOW_MS, "m", "1\x00", "out", 1.0),),
        alerts=(
            AlertRecord(5, NOW_MS, "low_soc", "warning", True, 1.0, "SOC\x00low"),
            AlertRecord(6, NOW_MS, "low_soc", "warning", False, 1.0, "cleared"),
        ),
    )
    result = ingest_message(telemetry_topic("f1", "bus-1"), encode_batch(batch), NOW, LIMITS)
    assert isinstance(result, BatchMessage)
    assert result.samples.seq.tolist() == [2]
    assert result.batch.predictions == ()
    assert [a.seq for a in result.batch.alerts] == [6]
    assert [(r.seq, r.reason) for r in result.refused] == [(s, Refusal.NUL_IN_TEXT) for s in (1, 3, 4, 5)]


def test_the_first_reason_that_applies_is_given() -> None:
    old_ms = NOW_MS - int(timedelta(days=LIMITS.max_sample_age_days + 1).total_seconds() * 1000)
    batch = Batch(
        "bus-1", samples=(SampleRecord(1, old_ms, "X\x00", math.nan), SampleRecord(2, old_ms, "Y", math.nan))
    )
    result = ingest_message(telemetry_topic("f1", "bus-1"), encode_batch(batch), NOW, LIMITS)
    assert isinstance(result, BatchMessage)
    assert len(result.samples) == 0
    assert [r.reason for r in result.refused] == [Refusal.NUL_IN_TEXT, Refusal.TS_TOO_OLD]
    assert result.handled_seqs().tolist() == [1, 2]


_GOOD_NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20
)
_BAD_KINDS = ("ts_too_old", "ts_in_future", "nan", "inf", "-inf", "nul")


@st.composite
def mixed_batches(draw: st.DrawFn) -> tuple[Batch, set[int]]:
    """A batch of good samples, predictions and alerts (any names, finite values, in the window) mixed
    with bad records; returns it and the seqs of the bad ones."""
    earliest_ms, latest_ms = accepted_window_ms(NOW, LIMITS)
    n = draw(st.integers(0, 40))
    seqs = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n, unique=True))
    samples, predictions, alerts, bad = [], [], [], set()
    for seq in seqs:
        ts = draw(st.integers(earliest_ms, latest_ms))
        name = draw(_GOOD_NAMES)
        value = draw(st.floats(allow_nan=False, allow_infinity=False))
        kind = draw(st.sampled_from(("sample", "sample", "prediction", "alert")))
        flaw = draw(st.sampled_from((None, None, None, *_BAD_KINDS)))
        if flaw == "nan" and kind == "alert":
            flaw = None  # an alert's NaN is the wire's "no value": a good alert
        if flaw is not None:
            bad.add(seq)
            ts = {
                "ts_too_old": earliest_ms - 1 - ts % 10**12,
                "ts_in_future": latest_ms + 1 + ts % 10**12,
            }.get(flaw, ts)
            value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(flaw, value)
            name = name + "\x00" if flaw == "nul" else name
        if kind == "sample":
            samples.append(SampleRecord(seq, ts, name, value))
        elif kind == "prediction":
            predictions.append(PredictionRecord(seq, ts, "m", "1", name, value))
        else:
            alerts.append(AlertRecord(seq, ts, name, "info", True, value, "msg"))
    return Batch("bus-1", tuple(samples), tuple(predictions), tuple(alerts)), bad


@given(mixed_batches(), st.booleans())
def test_good_records_of_any_mix_are_never_refused(case: tuple[Batch, set[int]], quantized: bool) -> None:
    batch, bad = case
    quanta = {s.signal: 0.5 for s in batch.samples} if quantized else None
    result = ingest_message(telemetry_topic("f1", "bus-1"), encode_batch(batch, quanta, level=1), NOW, LIMITS)
    assert isinstance(result, BatchMessage)
    kept = result.samples.seq.tolist() + [p.seq for p in result.batch.predictions]
    kept += [a.seq for a in result.batch.alerts]
    every = (
        {s.seq for s in batch.samples} | {p.seq for p in batch.predictions} | {a.seq for a in batch.alerts}
    )
    assert {r.seq for r in result.refused} == bad
    assert sorted(kept) == sorted(every - bad)
    assert result.handled_seqs().tolist() == sorted(every)


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


# --- a group of messages -------------------------------------------------------------------------------


def assert_same_ingested(got: Ingested, want: Ingested) -> None:
    """Equal outcomes; a batch's columns compared bit for bit, records by repr (so NaN equals NaN)."""
    assert type(got) is type(want)
    if not isinstance(want, BatchMessage):
        assert got == want
        return
    assert isinstance(got, BatchMessage)
    fields = ("topic", "fleet", "kind", "received_at", "payload_bytes", "payload", "vehicle_id")
    assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
    assert repr(got.refused) == repr(want.refused)
    assert repr((got.batch.predictions, got.batch.alerts)) == repr(
        (want.batch.predictions, want.batch.alerts)
    )
    assert got.samples.signals == want.samples.signals
    for column in ("seq", "ts_ms", "signal_index", "value"):
        a, b = getattr(got.samples, column), getattr(want.samples, column)
        assert (a.dtype, a.tobytes()) == (b.dtype, b.tobytes()), column


def one_by_one(messages: list[tuple[str, bytes, datetime]]) -> list[Ingested]:
    return [ingest_message(topic, payload, received_at, LIMITS) for topic, payload, received_at in messages]


def a_mixed_group() -> list[tuple[str, bytes, datetime]]:
    topic = telemetry_topic("f1", "bus-1")
    good = encode_batch(a_batch())
    old_ms = NOW_MS - (LIMITS.max_sample_age_days + 1) * 86_400_000
    specials = Batch(
        "bus-1", tuple(SampleRecord(20 + i, NOW_MS, "Soc", v) for i, v in enumerate([1.5, math.nan]))
    )
    return [
        (topic, good, NOW),
        (alerts_topic("f1", "bus-1"), good, NOW),
        (topic, encode_batch(a_batch("bus-2")), NOW),  # a spoofed vehicle id
        (topic, good[:-1], NOW),  # truncated
        (topic, b"\x00garbage\xff", NOW),
        (topic, encode_batch(a_batch(ts_ms=old_ms)), NOW),  # every record refused: too old
        (topic, encode_batch(specials, {"Soc": 0.5}), NOW),  # one sample refused: NaN
        (telemetry_topic("f1", "bus-3"), encode_batch(a_batch("bus-3")), NOW + timedelta(days=400)),
        (topic, encode_batch(Batch("bus-1")), NOW),  # nothing in it
        (status_topic("f1", "bus-1"), encode_status("online", NOW_MS), NOW),
        (status_topic("f1", "bus-1"), b"", NOW),
        (status_topic("f1", "bus-1"), b"not json", NOW),
        (applied_topic("f1", "bus-1"), good, NOW),  # not a kind the receiver stores
        ("not/a/voltgate/topic", good, NOW),
        (topic, b"x" * (LIMITS.max_payload_bytes + 1), NOW),
        (topic, good, NOW),
    ]


def test_a_group_ingests_as_its_messages_one_by_one() -> None:
    messages = a_mixed_group()
    got = ingest_messages(messages, LIMITS)
    want = one_by_one(messages)
    assert len(got) == len(messages)
    for item, expected in zip(got, want, strict=True):
        assert_same_ingested(item, expected)
    # the group covers every outcome
    assert [type(item).__name__[0] for item in want] == list("BBDDDBBBBSSDDDDB")
    assert [len(item.refused) for item in want if isinstance(item, BatchMessage)] == [0, 0, 4, 1, 4, 0, 0]
    assert ingest_messages([], LIMITS) == []


def test_a_decoder_failure_costs_only_its_message() -> None:
    # GIVEN a decoder bug (simulated: the real decoder has none we know of) that raises on one payload
    messages = a_mixed_group()
    poisoned = messages[6][1]

    def buggy(payload: bytes) -> object:
        if payload == poisoned:
            raise ZeroDivisionError("bug")
        return decode_columnar_batch(payload)

    def buggy_group(payloads: list[bytes]) -> object:
        raise ZeroDivisionError("bug")

    with (
        mock.patch("cloud.ingest.decode_columnar_batch", buggy),
        mock.patch("cloud.ingest.decode_columnar_batches", buggy_group),
    ):
        got = ingest_messages(messages, LIMITS)
        want = one_by_one(messages)
    for item, expected in zip(got, want, strict=True):
        assert_same_ingested(item, expected)
    assert isinstance(got[6], DeadLetter)
    assert got[6].reason == "decoder failed: ZeroDivisionError: bug"
    assert isinstance(got[0], BatchMessage)


@given(st.lists(mixed_batches(), max_size=4), st.booleans())
def test_any_mix_of_batches_ingests_as_one_by_one(
    cases: list[tuple[Batch, set[int]]], quantized: bool
) -> None:
    messages = []
    for batch, _ in cases:
        quanta = {s.signal: 0.5 for s in batch.samples} if quantized else None
        messages.append((telemetry_topic("f1", "bus-1"), encode_batch(batch, quanta, level=1), NOW))
    for item, expected in zip(ingest_messages(messages, LIMITS), one_by_one(messages), strict=True):
        assert_same_ingested(item, expected)
