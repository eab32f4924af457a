"""The shipped broker config admits every message the contract allows (a model release is the largest)."""

from __future__ import annotations

import re
from pathlib import Path

from cloud.settings import FleetControlSettings
from protocols.downlink import MAX_DOWNLINK_BYTES

CONF = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "voltgate.conf"
MQTT_OVERHEAD = 1024  # fixed header, topic and properties of a PUBLISH


def test_broker_packet_limit_admits_the_largest_downlink_message() -> None:
    match = re.search(r"^max_packet_size (\d+)$", CONF.read_text(), re.MULTILINE)
    assert match is not None
    assert int(match.group(1)) >= MAX_DOWNLINK_BYTES + MQTT_OVERHEAD


def test_the_receiver_publishes_what_the_shipped_broker_admits() -> None:
    match = re.search(r"^max_packet_size (\d+)$", CONF.read_text(), re.MULTILINE)
    assert match is not None
    assert FleetControlSettings().max_packet_bytes == int(match.group(1))
