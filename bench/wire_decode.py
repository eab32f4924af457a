"""Receiver CPU for decoding telemetry: a group of payloads decoded together against one at a time.

    python bench/wire_decode.py [--buses 100] [--minutes 4] [--group 100] [--runs 3] [--repeat 5] [--seed 7]
        [--pass-samples 16384]

Workload: what agents really send (`bench/cloud_ingest.py build_agent_workload`: a simulated bus in
service through the agent's decode and sampling policy, 60 s batches, ~480 samples each), `--buses` ×
`--minutes` payloads, cut into groups of `--group` as the receiver's writer takes them; the group
decoder works them out in passes of `--pass-samples` (`protocols.wire_group.PASS_SAMPLES`).

Each run times, in this process and one right after the other, the whole workload decoded
  * per message: `protocols.wire.decode_columnar_batch` on each payload, and
  * per group:   `protocols.wire.decode_columnar_batches` on each group,
then the same for the receiver's ingest step (`cloud.ingest.ingest_message` per message against
`ingest_messages` per group: topic, vehicle and record checks around the decode). It prints µs per
sample of each, the best of `--repeat` alternations (per message, per group, per message, ...), and
their ratio (per message / per group). The machine may be shared: read the ratios, not absolute times
from different moments.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cloud_ingest import build_agent_workload  # bench/cloud_ingest.py, beside this file

from cloud.ingest import ingest_message, ingest_messages
from cloud.settings import IngestSettings
from protocols import wire_group
from protocols.wire import decode_columnar_batch, decode_columnar_batches


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--buses", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=4)
    parser.add_argument("--group", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pass-samples", type=int, default=wire_group.PASS_SAMPLES)
    args = parser.parse_args()
    wire_group.PASS_SAMPLES = args.pass_samples

    workload = build_agent_workload("bench", args.buses, args.minutes, args.seed)
    payloads = [message.payload for message in workload]
    groups = [payloads[i : i + args.group] for i in range(0, len(payloads), args.group)]
    samples = sum(len(decode_columnar_batch(payload).samples) for payload in payloads)
    limits = IngestSettings()
    now = datetime.now(UTC)
    messages = [(message.topic, message.payload, now) for message in workload]
    message_groups = [messages[i : i + args.group] for i in range(0, len(messages), args.group)]
    print(
        f"{len(payloads)} payloads, {samples} samples ({samples / len(payloads):.0f} per payload), "
        f"groups of {args.group}, passes of {wire_group.PASS_SAMPLES} samples"
    )

    def per_message_decode() -> None:
        for payload in payloads:
            decode_columnar_batch(payload)

    def per_group_decode() -> None:
        for group in groups:
            decode_columnar_batches(group)

    def per_message_ingest() -> None:
        for topic, payload, received_at in messages:
            ingest_message(topic, payload, received_at, limits)

    def per_group_ingest() -> None:
        for group in message_groups:
            ingest_messages(group, limits)

    per_group_decode()  # warm up both paths once
    per_message_decode()
    for run in range(1, args.runs + 1):
        for step, alone, together in (
            ("decode", per_message_decode, per_group_decode),
            ("ingest", per_message_ingest, per_group_ingest),
        ):
            times = [(seconds(alone), seconds(together)) for _ in range(args.repeat)]
            a = min(t for t, _ in times) / samples * 1e6
            b = min(t for _, t in times) / samples * 1e6
            print(
                f"run {run} {step}: per message {a:.3f} µs/sample, per group {b:.3f} µs/sample, "
                f"ratio {a / b:.2f}"
            )


if __name__ == "__main__":
    main()
