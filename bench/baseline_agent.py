"""The fair baseline of bench/agent_throughput.py: a telemetry agent as a competent engineer writes it.

    python bench/baseline_agent.py LOG --broker HOST:PORT --topic TOPIC --db PATH [--vehicle ID]
    python bench/baseline_agent.py --slcan PORT [--slcan PORT ...] --broker ... --topic ... --db ...

python-can's `LogReader` → cantools `Message.decode` of the frames the catalog names (values outside
the DBC range dropped, as J1939 "not available") → the catalog's sampling policy → SQLite (WAL,
synchronous=FULL) with one `executemany` per batch → the batch as zstd-compressed JSON rows over MQTT
QoS 1 (paho) → its rows deleted when the broker's PUBACK arrives. A batch closes at `--batch-rows` rows
or `--batch-age` seconds. At the end of the log it waits for every PUBACK, deletes, prints its counts as
one JSON line on stdout, and stays until its stdin closes (so the harness reads its CPU and memory
from /proc while it is alive, as it does for the agent).

Live (`--slcan`, repeated for several buses, bench/paced_buses.py): python-can's `slcan` interface on each
port at 500 kbit/s, all read by one `can.Notifier` into a `can.BufferedReader`, until its stdin closes;
then as at the end of a log.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import can
import cantools
import paho.mqtt.client as mqtt
import zstandard

from protocols.catalog import SignalSampler, load_catalog


def open_buffer(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY, ts REAL, signal TEXT, value REAL)"
    )
    return db


def logged(path: Path) -> Iterator[can.Message | None]:
    with can.LogReader(path) as log:
        for n, message in enumerate(log):
            if n == 0:
                print("baseline: first frame", file=sys.stderr, flush=True)
            yield message
    print("baseline: end of log", file=sys.stderr, flush=True)


def live(channels: list[str]) -> Iterator[can.Message | None]:
    """Frames of the live buses as they come, None when none came for a while, until stdin closes."""
    buses = [can.Bus(interface="slcan", channel=channel, bitrate=500_000) for channel in channels]
    reader = can.BufferedReader()
    notifier = can.Notifier(buses, [reader])
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    print("baseline: listening", file=sys.stderr, flush=True)
    try:
        while not closed.is_set():
            yield reader.get_message(timeout=0.1)
    finally:
        notifier.stop()
        for bus in buses:
            bus.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, nargs="?")
    parser.add_argument("--slcan", action="append", default=[], help="a live SLCAN port (repeat)")
    parser.add_argument("--broker", default="127.0.0.1:1883")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--vehicle", default="bench-bus")
    parser.add_argument("--batch-rows", type=int, default=2000)
    parser.add_argument("--batch-age", type=float, default=0.5)
    args = parser.parse_args()
    if (args.log is None) == (not args.slcan):
        parser.error("give a LOG or --slcan ports")

    # Which signals of which frame, with their policy and DBC range: read once from the catalog.
    decoders = {}
    for frame_id, spec in load_catalog().frames().items():
        message = spec.cantools_message()
        wanted = []
        for dbc_name, signal in spec.signals:
            dbc = message.get_signal_by_name(dbc_name)
            low = -math.inf if dbc.minimum is None or dbc.minimum == dbc.maximum else dbc.minimum
            high = math.inf if dbc.maximum is None or dbc.minimum == dbc.maximum else dbc.maximum
            slack = abs(dbc.scale) / 2  # float rounding of raw * scale
            wanted.append((dbc_name, signal.name, low - slack, high + slack, SignalSampler(signal.policy)))
        decoders[frame_id] = (message, wanted)

    db = open_buffer(args.db)
    acked: queue.SimpleQueue[int] = queue.SimpleQueue()
    in_flight: dict[int, tuple[int, int]] = {}  # MQTT message id → first and last seq of its batch
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"baseline-{uuid.uuid4().hex[:8]}")
    client.on_publish = lambda _client, _userdata, mid, _reason, _props: acked.put(mid)
    host, _, port = args.broker.partition(":")
    client.connect(host, int(port or 1883))
    client.loop_start()
    compressor = zstandard.ZstdCompressor()
    counts = {"frames": 0, "kept": 0, "published": 0, "acked": 0}

    def delete_acknowledged(block: bool) -> None:
        while in_flight:
            try:
                mid = acked.get(timeout=30) if block else acked.get_nowait()
            except queue.Empty:
                if block:
                    raise SystemExit("no PUBACK for 30 s") from None
                return
            first, last = in_flight.pop(mid)
            db.execute("DELETE FROM samples WHERE seq BETWEEN ? AND ?", (first, last))
            counts["acked"] += last - first + 1

    def flush(rows: list[tuple[int, float, str, float]]) -> None:
        with db:  # one transaction: this batch in, the acknowledged batches out
            db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", rows)
            delete_acknowledged(block=False)
        body = {"vehicle": args.vehicle, "samples": [[s, round(t * 1000), n, v] for s, t, n, v in rows]}
        info = client.publish(args.topic, compressor.compress(json.dumps(body).encode()), qos=1)
        in_flight[info.mid] = (rows[0][0], rows[-1][0])
        counts["published"] += len(rows)
        rows.clear()

    rows: list[tuple[int, float, str, float]] = []
    opened = 0.0
    for message in logged(args.log) if args.log is not None else live(args.slcan):
        if message is not None:
            counts["frames"] += 1
            found = decoders.get(message.arbitration_id)
            if found is None or message.is_error_frame or message.is_remote_frame:
                continue
            frame, wanted = found
            try:
                values = frame.decode(message.data, decode_choices=False)
            except cantools.database.errors.DecodeError:
                continue  # a short or malformed frame: skipped, the log goes on
            for dbc_name, name, low, high, sampler in wanted:
                value = values.get(dbc_name)
                if value is None or not low <= value <= high:
                    continue  # another multiplexer value's signal, or out of range
                if sampler.offer(message.timestamp, float(value)):
                    if not rows:
                        opened = time.monotonic()
                    rows.append((counts["kept"], message.timestamp, name, float(value)))
                    counts["kept"] += 1
        if len(rows) >= args.batch_rows or (rows and time.monotonic() - opened >= args.batch_age):
            flush(rows)
    if rows:
        flush(rows)
    with db:
        delete_acknowledged(block=True)
    counts["left_in_buffer"] = db.execute("SELECT count(*) FROM samples").fetchone()[0]
    print(json.dumps(counts), flush=True)
    if args.log is not None:
        sys.stdin.read()
    client.loop_stop()
    client.disconnect()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
