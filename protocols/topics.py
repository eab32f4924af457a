"""The MQTT topic scheme: every topic voltgate publishes or subscribes to is built and parsed here.

    voltgate/v1/{fleet}/{vehicle}/telemetry        bus → cloud, wire batches (QoS 1)
    voltgate/v1/{fleet}/{vehicle}/alerts           bus → cloud, alert-only wire batches, published at once
    voltgate/v1/{fleet}/{vehicle}/status           bus → cloud, retained status; the last will says "offline"
    voltgate/v1/{fleet}/{vehicle}/applied          bus → cloud, retained: the desired state it has applied
    voltgate/v1/{fleet}/{vehicle}/downlink/ack     cloud → bus, retained: what the cloud has stored (QoS 1)
    voltgate/v1/{fleet}/{vehicle}/downlink/config  cloud → bus, retained: the desired configuration
    voltgate/v1/{fleet}/{vehicle}/downlink/model/{name}  cloud → bus, retained: a signed model release

Payloads of `applied`, `downlink/config` and `downlink/model/{name}` are in `protocols.fleet_control`.

Only the cloud publishes under `downlink/` (the broker's ACL enforces it); a bus subscribes to its own
`downlink_filter(fleet, vehicle)`.

Receivers share the load with `shared_subscription(group, kind)`. Fleet, vehicle and group ids follow
`ID_PATTERN`, the one id rule of `protocols/` (the wire format checks vehicle ids with it too).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

from protocols.errors import TopicError

ID_MAX_LEN = 64
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A fleet, vehicle or subscription-group id: no MQTT wildcards, no separators, 1–64 characters."""

TOPIC_ROOT = "voltgate/v1"


class TopicKind(StrEnum):
    """What a topic carries; the value is the topic's tail after `{fleet}/{vehicle}/`."""

    TELEMETRY = "telemetry"
    ALERTS = "alerts"
    STATUS = "status"
    APPLIED = "applied"
    DOWNLINK_ACK = "downlink/ack"
    DOWNLINK_CONFIG = "downlink/config"
    DOWNLINK_MODEL = "downlink/model"  # followed by /{model name}


class TopicParts(NamedTuple):
    fleet: str
    vehicle: str
    kind: TopicKind


def is_valid_id(value: object) -> bool:
    """True when `value` is a string usable as a fleet, vehicle or group id."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def _checked_id(what: str, value: str) -> str:
    if not is_valid_id(value):
        raise TopicError(f"invalid {what} id {value!r}: expected 1-{ID_MAX_LEN} of A-Z a-z 0-9 _ . -")
    return value


def _checked_kind(kind: TopicKind | str) -> TopicKind:
    try:
        return TopicKind(kind)
    except ValueError:
        raise TopicError(f"unknown topic kind {kind!r}") from None


def vehicle_topic(fleet: str, vehicle: str, kind: TopicKind | str) -> str:
    """The topic of one kind for one vehicle, e.g. `voltgate/v1/depot-3/bus-0042/telemetry`."""
    fleet = _checked_id("fleet", fleet)
    vehicle = _checked_id("vehicle", vehicle)
    return f"{TOPIC_ROOT}/{fleet}/{vehicle}/{_checked_kind(kind).value}"


def telemetry_topic(fleet: str, vehicle: str) -> str:
    return vehicle_topic(fleet, vehicle, TopicKind.TELEMETRY)


def alerts_topic(fleet: str, vehicle: str) -> str:
    return vehicle_topic(fleet, vehicle, TopicKind.ALERTS)


def status_topic(fleet: str, vehicle: str) -> str:
    return vehicle_topic(fleet, vehicle, TopicKind.STATUS)


def downlink_ack_topic(fleet: str, vehicle: str) -> str:
    return vehicle_topic(fleet, vehicle, TopicKind.DOWNLINK_ACK)


def downlink_filter(fleet: str, vehicle: str) -> str:
    """Every downlink topic of one vehicle: `voltgate/v1/{fleet}/{vehicle}/downlink/#`."""
    return f"{TOPIC_ROOT}/{_checked_id('fleet', fleet)}/{_checked_id('vehicle', vehicle)}/downlink/#"


def downlink_config_topic(fleet: str, vehicle: str) -> str:
    return vehicle_topic(fleet, vehicle, TopicKind.DOWNLINK_CONFIG)


def downlink_model_topic(fleet: str, vehicle: str, model: str) -> str:
    """`voltgate/v1/{fleet}/{vehicle}/downlink/model/{model}`: one retained release per model name."""
    return f"{vehicle_topic(fleet, vehicle, TopicKind.DOWNLINK_MODEL)}/{_checked_id('model', model)}"


def applied_topic(fleet: str, vehicle: str) -> str:
    return vehicle_topic(fleet, vehicle, TopicKind.APPLIED)


def subscription_filter(kind: TopicKind | str, *, fleet: str | None = None) -> str:
    """A filter for one kind from every vehicle (of every fleet, or of `fleet`)."""
    fleet_level = "+" if fleet is None else _checked_id("fleet", fleet)
    return f"{TOPIC_ROOT}/{fleet_level}/+/{_checked_kind(kind).value}"


def shared_subscription(group: str, kind: TopicKind | str) -> str:
    """`$share/{group}/voltgate/v1/+/+/{kind}`: the receivers of one group share the messages."""
    return f"$share/{_checked_id('group', group)}/{subscription_filter(kind)}"


_ROOT_LEVELS = tuple(TOPIC_ROOT.split("/"))
_KIND_BY_TAIL = {tuple(kind.value.split("/")): kind for kind in TopicKind}
_MODEL_TAIL = tuple(TopicKind.DOWNLINK_MODEL.value.split("/"))
_MAX_LEVELS = len(_ROOT_LEVELS) + 2 + max(len(tail) for tail in _KIND_BY_TAIL) + 1  # + a model name
_MAX_TOPIC_LEN = len(TOPIC_ROOT) + 3 * (ID_MAX_LEN + 1) + 1 + max(len(kind.value) for kind in TopicKind)


def parse_topic(topic: str) -> TopicParts:
    """Split a concrete topic (no wildcards, no `$share/`) into fleet, vehicle and kind."""
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a string, not {type(topic).__name__}")
    if len(topic) > _MAX_TOPIC_LEN:
        raise TopicError(f"topic too long ({len(topic)} characters) for the voltgate scheme")
    levels = topic.split("/")
    if len(levels) > _MAX_LEVELS or tuple(levels[: len(_ROOT_LEVELS)]) != _ROOT_LEVELS:
        raise TopicError(f"not a voltgate topic: {topic!r}")
    rest = levels[len(_ROOT_LEVELS) :]
    if len(rest) < 3:
        raise TopicError(f"voltgate topic without fleet, vehicle and kind: {topic!r}")
    fleet, vehicle, tail = rest[0], rest[1], tuple(rest[2:])
    if tail[:-1] == _MODEL_TAIL and is_valid_id(tail[-1]):  # downlink/model/{name}
        tail = tail[:-1]
    kind = _KIND_BY_TAIL.get(tail)
    if kind is None:
        raise TopicError(f"unknown kind {'/'.join(tail)!r} in topic {topic!r}")
    return TopicParts(_checked_id("fleet", fleet), _checked_id("vehicle", vehicle), kind)
