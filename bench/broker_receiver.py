"""The receiving end of the agent benches: a subscriber that collects the samples an agent delivers.

Our agent's batches (protocols.wire) are answered with the cloud's commit acknowledgements, as
`cloud.app` does after its commit (the agent keeps rows in flight until then); the baseline's zstd JSON
batches need no answer (it deletes on PUBACK).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
import zstandard

from protocols.downlink import commit_acks, encode_downlink
from protocols.wire import decode_batch

# a payload → its samples' numbers, all its records' numbers, its samples' source times (Unix s)
Decoded = tuple[list[int], list[int], list[float]]


class Receiver:
    """Subscribes to one topic and collects the distinct sample numbers that arrive, until `expected`.
    `seqs_of` decodes a payload; `on_batch` may answer with its records' numbers. With `keep_lags`, it
    also keeps each sample's lag: arrival (wall clock) − its source time."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        expected: int,
        seqs_of: Callable[[bytes], Decoded],
        on_batch: Callable[[mqtt.Client, list[int]], None] | None = None,
        keep_lags: bool = False,
    ) -> None:
        self.seqs: set[int] = set()
        self.lags_s: list[float] = []
        self.payload_bytes = 0
        self.done = threading.Event()
        self.done_at = 0.0
        self.last_at = 0.0  # perf_counter of the latest batch
        self._expected, self._seqs_of, self._on_batch = expected, seqs_of, on_batch
        self._keep_lags = keep_lags
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        self.last_at = time.perf_counter()
        self.payload_bytes += len(message.payload)
        samples, records, stamps = self._seqs_of(bytes(message.payload))
        if self._on_batch is not None:
            self._on_batch(client, records)
        if self._keep_lags:
            self.lags_s.extend(now - ts for ts in stamps)
        self.seqs.update(samples)
        if len(self.seqs) >= self._expected and not self.done.is_set():
            self.done_at = self.last_at
            self.done.set()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def wire_seqs(payload: bytes) -> Decoded:
    batch = decode_batch(payload)
    samples = [r.seq for r in batch.samples]
    others = [r.seq for records in (batch.predictions, batch.alerts) for r in records]
    return samples, samples + others, [r.ts_ms / 1000 for r in batch.samples]


def acknowledge_commit(ack_topic: str) -> Callable[[mqtt.Client, list[int]], None]:
    def answer(client: mqtt.Client, seqs: list[int]) -> None:
        for ack in commit_acks(seqs, int(time.time() * 1000)):
            client.publish(ack_topic, encode_downlink(ack), qos=1)  # queued by paho, not awaited

    return answer


_unzstd = zstandard.ZstdDecompressor()


def json_seqs(payload: bytes) -> Decoded:
    rows = json.loads(_unzstd.decompress(payload))["samples"]
    samples = [row[0] for row in rows]
    return samples, samples, [row[1] / 1000 for row in rows]
