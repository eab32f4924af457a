"""bench/agent_throughput.py's parts: the fair baseline keeps what the agent keeps; the realistic bus mix
is what it says; the paced run of four live SLCAN buses counts what both agents read and deliver.

The bench compares the two only if the baseline stores and forwards every sample the catalog's sampling
policy keeps, no more and no fewer: here it runs as a process on a simulated log with a short frame in
it, against the real Mosquitto, and its delivered samples are compared with the agent's own decode.
No timed assertions: every wait has a deadline and fails with what was (not) seen; the paced run plays a
bus at the simulator's own 59 frames/s, far below what either agent reads, so a lost frame is a fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import can
import paho.mqtt.client as mqtt
import pytest
import zstandard

from agent.decode import Decoder
from agent.records import frame_from_message
from bench.bus_mix import MIX_CYCLES_MS, OTHER_ECU_CYCLE_MS, STEP_S, mix_database, record_bus_mix
from bench.paced_buses import BUSES, Batching, run_paced
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


def test_realistic_mix_sends_each_message_at_its_cycle_and_fills_the_bus(tmp_path: Path) -> None:
    # GIVEN two seconds of the mix around the bus's departure
    log = tmp_path / "mix.log"
    counts = record_bus_mix(log, 2.0, datetime(2024, 3, 4, 2, 29, 59, tzinfo=UTC), bus_frames_per_s=3000)

    # WHEN the agent's decoder reads it
    decoder = Decoder(load_catalog(), bus="test")
    stamps: list[float] = []
    per_id: Counter[int] = Counter()
    with can.LogReader(log) as reader:
        for message in reader:
            stamps.append(message.timestamp)
            per_id[message.arbitration_id] += 1
            decoder.process(frame_from_message("t", message))

    # THEN every DBC message came at its mix cycle, the other controllers' ids are ones the catalog does not
    # know, the frames add up to the asked load, and their times only move forward within the span
    db = mix_database()
    for name, cycle_ms in MIX_CYCLES_MS.items():
        assert per_id.pop(db.get_message_by_name(name).frame_id) == round(2000 / cycle_ms), name
    assert len(per_id) == counts.other_ids and all(n == round(2 / STEP_S) for n in per_id.values())
    assert decoder.stats.frames_in == counts.frames == len(stamps)
    skipped = dict(decoder.stats.skipped)
    assert skipped.pop("unknown_id") == counts.frames - counts.catalog_frames == sum(per_id.values())
    assert not any(skipped.values()), skipped
    assert abs(counts.frames_per_s - 3000) <= 1000 / OTHER_ECU_CYCLE_MS / 2  # within half an id's rate
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < 2.0


@pytest.mark.parametrize("who", ["ours", "baseline"])
def test_paced_run_reads_every_frame_of_four_live_buses(
    who: str, tmp_path: Path, mqtt_broker: Broker
) -> None:
    # GIVEN a simulated bus at the DBC's own cycles (59 frames/s)
    log = tmp_path / "bus.log"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", "20s", "--out", str(log)],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=WAIT_S,
    )  # fmt: skip

    # WHEN the paced run plays three seconds of it into four SLCAN adapters read by the agent
    figures = run_paced(
        who, sys.executable, log, 3.0, tmp_path, (mqtt_broker.host, mqtt_broker.port),
        sorted(os.sched_getaffinity(0))[-1], {**os.environ, "PYTHONPATH": str(REPO)}, REPO,
        Batching(rows=2000, age_s=0.5, commit_s=0.5),
    )  # fmt: skip

    # THEN nothing overran an adapter, the agent read every frame of all four buses, and what it kept
    # arrived at the broker, each with its lag
    assert figures.buses == BUSES and figures.frames_played > 100
    assert figures.adapter_drops == 0, "".join(figures.log_lines[-20:])
    assert figures.samples > 0 and len(figures.lags_s) >= figures.samples
    if who == "ours":
        received = figures.metric_sum("voltgate_can_frames_received_total")
        assert received == BUSES * figures.catalog_frames_played == BUSES * figures.frames_played
        assert figures.metric_sum("voltgate_queue_drops_total") == 0
        assert figures.metric_sum("voltgate_can_serial_lines_rejected_total") == 0
    else:
        assert figures.counts["frames"] == BUSES * figures.frames_played, figures.counts
        kept = figures.counts["kept"]
        assert kept == figures.counts["published"] == figures.counts["acked"] == figures.samples
        assert figures.counts["left_in_buffer"] == 0
