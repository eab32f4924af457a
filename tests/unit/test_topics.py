"""The MQTT topic scheme: builders, the shared subscription, parsing and id validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import TopicError
from protocols.topics import (
    ID_MAX_LEN,
    TopicKind,
    TopicParts,
    alerts_topic,
    applied_topic,
    downlink_config_topic,
    downlink_model_topic,
    is_valid_id,
    parse_topic,
    shared_subscription,
    status_topic,
    subscription_filter,
    telemetry_topic,
    vehicle_topic,
)

ids = st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")
BAD_IDS = ["", "a" * (ID_MAX_LEN + 1), "bus/1", "bus+", "#", "+", "bus 1", "bus\n", "bus\x00", "büs", "$SYS"]


def test_builders_follow_the_scheme() -> None:
    assert telemetry_topic("depot-3", "bus-0042") == "voltgate/v1/depot-3/bus-0042/telemetry"
    assert alerts_topic("depot-3", "bus-0042") == "voltgate/v1/depot-3/bus-0042/alerts"
    assert status_topic("depot-3", "bus-0042") == "voltgate/v1/depot-3/bus-0042/status"
    assert downlink_config_topic("d", "b") == "voltgate/v1/d/b/downlink/config"
    assert downlink_model_topic("d", "b", "soc_drop") == "voltgate/v1/d/b/downlink/model/soc_drop"
    assert parse_topic("voltgate/v1/d/b/downlink/model/soc_drop").kind == TopicKind.DOWNLINK_MODEL
    assert applied_topic("d", "b") == "voltgate/v1/d/b/applied"
    assert vehicle_topic("d", "b", "alerts") == alerts_topic("d", "b")


def test_shared_subscription_and_filters() -> None:
    assert shared_subscription("receivers", "telemetry") == "$share/receivers/voltgate/v1/+/+/telemetry"
    assert shared_subscription("rx", TopicKind.ALERTS) == "$share/rx/voltgate/v1/+/+/alerts"
    assert subscription_filter(TopicKind.STATUS) == "voltgate/v1/+/+/status"
    assert subscription_filter("status", fleet="depot-3") == "voltgate/v1/depot-3/+/status"


@pytest.mark.parametrize("bad", BAD_IDS)
def test_builders_reject_bad_ids(bad: str) -> None:
    assert not is_valid_id(bad)
    with pytest.raises(TopicError):
        telemetry_topic(bad, "bus-1")
    with pytest.raises(TopicError):
        status_topic("fleet", bad)
    with pytest.raises(TopicError):
        shared_subscription(bad, "telemetry")


def test_builders_reject_unknown_kinds() -> None:
    with pytest.raises(TopicError):
        vehicle_topic("f", "b", "telemetry/extra")
    with pytest.raises(TopicError):
        shared_subscription("g", "#")


@given(fleet=ids, vehicle=ids, kind=st.sampled_from(TopicKind))
def test_parse_inverts_build(fleet: str, vehicle: str, kind: TopicKind) -> None:
    parts = parse_topic(vehicle_topic(fleet, vehicle, kind))
    assert parts == TopicParts(fleet, vehicle, kind)
    assert parts.kind == kind.value  # a StrEnum compares equal to its string


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "voltgate/v1",
        "voltgate/v1/f/b",
        "voltgate/v2/f/b/telemetry",
        "other/v1/f/b/telemetry",
        "/voltgate/v1/f/b/telemetry",
        "voltgate/v1/f/b/telemetry/",
        "voltgate/v1/f/b/downlink",
        "voltgate/v1/f/b/downlink/firmware",
        "voltgate/v1/f/b/telemetry/extra",
        "voltgate/v1/+/+/telemetry",
        "voltgate/v1/f/#",
        "voltgate/v1//b/telemetry",
        "voltgate/v1/f//telemetry",
        "$share/g/voltgate/v1/f/b/telemetry",
        "voltgate/v1/f/b/Telemetry",
        f"voltgate/v1/{'f' * 65}/b/telemetry",
        "voltgate/v1/f/b/" + "x/" * 10_000 + "telemetry",
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TopicError):
        parse_topic(b"voltgate/v1/f/b/telemetry")  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_parse_raises_only_topic_error(topic: str) -> None:
    try:
        parts = parse_topic(topic)
    except TopicError:
        return
    assert vehicle_topic(*parts) == topic


@given(st.text(max_size=80))
def test_id_rule_matches_the_pattern(value: str) -> None:
    expected = 1 <= len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "_.-") for c in value)
    assert is_valid_id(value) == expected


def test_downlink_topics_of_a_vehicle_match_its_downlink_filter() -> None:
    from protocols.topics import downlink_ack_topic, downlink_filter

    ack = downlink_ack_topic("depot-3", "bus-0042")
    assert ack == "voltgate/v1/depot-3/bus-0042/downlink/ack"
    assert parse_topic(ack).kind is TopicKind.DOWNLINK_ACK
    assert downlink_filter("depot-3", "bus-0042") == "voltgate/v1/depot-3/bus-0042/downlink/#"
