"""bench/baseline_agent.py, the fair baseline of bench/agent_throughput.py, keeps what the agent keeps.

The bench compares the two only if the baseline stores and forwards every sample the catalog's sampling
policy keeps, no more and no fewer: here it runs as a process on a simulated log with a short frame in
it, against the real Mosquitto, and its delivered samples are compared with the agent's own decode.
No timed assertions: every wait has a deadline and fails with what was (not) seen.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import can
import paho.mqtt.client as mqtt
import pytest
import zstandard

from agent.decode import Decoder
from agent.records import frame_from_message
from protocols.catalog import load_catalog
from tests.integration.conftest import Broker

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0

pytestmark = pytest.mark.slow  # a simulated recording and two processes


def agent_kept(log: Path) -> list[tuple[int, str]]:
    decoder = Decoder(load_catalog(), bus="test")
    kept: list[tuple[int, str]] = []
    with can.LogReader(log) as reader:
        for message in reader:
            kept.extend(
                (round(s.ts * 1000), s.signal) for s in decoder.process(frame_from_message("t", message))
            )
    return kept


def test_baseline_delivers_every_sample_the_policy_keeps(tmp_path: Path, mqtt_broker: Broker) -> None:
    # GIVEN three simulated minutes around the bus's departure, and one frame too short for its message
    log = tmp_path / "bus.log"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", "3m", "--start", "2024-03-04T02:28:00Z",
         "--out", str(log)],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=WAIT_S,
    )  # fmt: skip
    lines = log.read_text().splitlines(keepends=True)
    stamp = lines[100].split()[0]
    lines.insert(101, f"{stamp} vcan0 100#01 R\n")
    log.write_text("".join(lines))
    expected = agent_kept(log)
    assert expected, "the simulated minutes yield samples"

    # AND a subscriber on the baseline's topic
    topic = f"bench/{mqtt_broker.namespace}/telemetry"
    received: list[tuple[int, str]] = []
    seen = threading.Event()
    unzstd = zstandard.ZstdDecompressor()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        body = json.loads(unzstd.decompress(message.payload))
        received.extend((ts_ms, signal) for _, ts_ms, signal, _ in body["samples"])
        if len(received) >= len(expected):
            seen.set()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=mqtt_broker.client_id("sub"))
    subscriber.on_message = on_message
    subscriber.connect(mqtt_broker.host, mqtt_broker.port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    try:
        # WHEN the baseline agent plays the log to the broker
        baseline = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "baseline_agent.py"), str(log), "--topic", topic,
             "--broker", f"{mqtt_broker.host}:{mqtt_broker.port}", "--db", str(tmp_path / "b.sqlite3")],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert baseline.stdout is not None
        line = baseline.stdout.readline()  # its counts, once every PUBACK has come
        _, err = baseline.communicate(input="", timeout=WAIT_S)
        assert baseline.returncode == 0 and line, err
        counts = json.loads(line)
        assert seen.wait(WAIT_S), f"{len(received)} of {len(expected)} samples arrived"
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()

    # THEN it read every frame, skipped the short one, and kept, stored, sent and deleted on PUBACK
    # exactly the samples the agent's decode and policy keep
    assert counts["frames"] == len(lines)
    assert counts["kept"] == counts["published"] == counts["acked"] == len(expected)
    assert counts["left_in_buffer"] == 0
    assert sorted(received) == sorted(expected)
