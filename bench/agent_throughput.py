"""How fast the whole agent moves a recorded bus to the broker, on one core, against a naive baseline.

Run: python bench/agent_throughput.py [--hours H] [--naive-frames N] [--broker HOST:PORT]
Prints figures; asserts nothing. Needs the local Mosquitto (127.0.0.1:1883 by default) and two CPUs.

What is measured
----------------
* ours: `voltgate-agent run` as a subprocess pinned to one CPU (`sched_setaffinity` before exec, so every
  thread of it shares that core), replaying a `voltgate-sim record` log at `speed = "max"` through the
  whole pipeline: replay → decode (catalog + sampling policy) → SQLite buffer (WAL, synchronous=FULL) →
  wire batches → MQTT 5 QoS 1 to the broker → rows deleted when the cloud's commit acknowledgement
  comes. The subscriber in this process (on the other CPU) plays the receiver minus the database: it
  answers each batch with a commit acknowledgement on the vehicle's downlink, as `cloud.app` does after
  its commit. The clock starts when the agent logs that it is running (interpreter start-up and imports
  are reported apart) and stops when that subscriber has received every sample the log yields. CPU time is
  the agent's own (utime + stime from /proc), over the same span; peak RSS is its VmHWM.
* naive: the same job written the obvious way, in this process pinned to one CPU: python-can's
  `LogReader` feeding a `can.Listener` (what a `Notifier` calls per message), cantools `Message.decode`
  per frame, the same catalog and sampling policy (so both keep the same samples), one INSERT and one
  COMMIT per sample into SQLite (WAL, synchronous=FULL: the same durability), one JSON publish per sample
  at QoS 1 with paho-mqtt (all PUBACKs awaited at the end). It runs on the first `--naive-frames` frames.
* bytes per sample: the payload bytes the subscriber received for our run / samples; and, since a
  replay at full speed always fills batches, what the same samples cost when batched as a bus at real
  time would batch them (by `batch_max_age_s` of source time), encoded with `protocols.wire`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import can
import cantools
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.decode import Decoder  # noqa: E402
from agent.records import Sample, frame_from_message  # noqa: E402
from agent.settings import UplinkSettings  # noqa: E402
from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC, SignalSampler, load_catalog  # noqa: E402
from protocols.downlink import commit_acks, encode_downlink  # noqa: E402
from protocols.topics import downlink_ack_topic, telemetry_topic  # noqa: E402
from protocols.wire import Batch, SampleRecord, decode_batch, encode_batch  # noqa: E402

VEHICLE = "bench-bus"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH_MAX_RECORDS = 2000
BATCH_MAX_AGE_S = 0.5
COMMIT_INTERVAL_S = 0.5
TARGET_FPS = 50_000
TARGET_RATIO = 5.0
TARGET_BYTES_PER_SAMPLE = 3.0
TARGET_RSS_MB = 120.0


# --- the input -------------------------------------------------------------------------------------------


def record_log(hours: float, out: Path) -> None:
    minutes = round(hours * 60)
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", f"{minutes}m", "--out", str(out)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def reference_samples(log_path: Path) -> tuple[int, list[Sample], float]:
    """Frames in the log, the samples the agent's decode keeps from them, and the in-process decode time."""
    decoder = Decoder(load_catalog(DEFAULT_CATALOG), bus="bench")
    samples: list[Sample] = []
    start = time.perf_counter()
    with can.LogReader(log_path, relative_timestamp=False) as reader:
        for message in reader:
            samples.extend(decoder.process(frame_from_message("bench", message)))
    return decoder.stats.frames_in, samples, time.perf_counter() - start


# --- process figures ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


# --- ours -------------------------------------------------------------------------------------------------


class TelemetryCounter:
    """Subscribes to one vehicle's telemetry; counts distinct samples and payload bytes, and acknowledges
    each batch on the vehicle's downlink (the agent keeps rows in flight until then)."""

    def __init__(self, host: str, port: int, fleet: str) -> None:
        self.seqs: set[int] = set()
        self.payload_bytes = 0
        self.batches = 0
        self.done = threading.Event()
        self.expected = 0
        self.done_at = 0.0
        self._topic = telemetry_topic(fleet, VEHICLE)
        self._ack_topic = downlink_ack_topic(fleet, VEHICLE)
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.subscribe(self._topic, qos=1)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.payload_bytes += len(message.payload)
        self.batches += 1
        batch = decode_batch(message.payload)
        carried = [r.seq for records in (batch.samples, batch.predictions, batch.alerts) for r in records]
        for ack in commit_acks(carried, int(time.time() * 1000)):
            client.publish(self._ack_topic, encode_downlink(ack), qos=1)  # queued by paho, not awaited
        self.seqs.update(record.seq for record in batch.samples)
        if self.expected and len(self.seqs) >= self.expected and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class Figures:
    frames: int
    samples: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    payload_bytes: int = 0
    startup_wall_s: float = 0.0
    startup_cpu_s: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_s / self.frames * 1e6


def run_ours(
    log_path: Path, frames: int, samples: int, work: Path, host: str, port: int, cpu: int
) -> Figures:
    fleet = f"bench{uuid.uuid4().hex[:8]}"
    config = work / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "{VEHICLE}"
log_format = "text"
[[replay]]
name = "bench"
path = "{log_path}"
speed = "max"
[buffer]
path = "{work / "buffer.sqlite3"}"
commit_interval_s = {COMMIT_INTERVAL_S}
[uplink]
broker_url = "mqtt://{host}:{port}"
fleet_id = "{fleet}"
batch_max_records = {BATCH_MAX_RECORDS}
batch_max_age_s = {BATCH_MAX_AGE_S}
[metrics]
enabled = false
"""
    )
    counter = TelemetryCounter(host, port, fleet)
    counter.expected = samples
    ready = threading.Event()
    marks: dict[str, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: pin(cpu),
    )
    log_lines: list[str] = []

    def watch_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log_lines.append(line)
            if not ready.is_set() and " running: " in line:
                marks["ready"] = time.perf_counter()
                marks["ready_cpu"] = cpu_seconds(process.pid)
                ready.set()

    watcher = threading.Thread(target=watch_log, daemon=True)
    watcher.start()
    try:
        if not ready.wait(60) or not counter.done.wait(900):
            raise SystemExit("the agent did not finish:\n" + "".join(log_lines[-30:]))
        done_cpu = cpu_seconds(process.pid)
        rss = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        _, status, _ = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        counter.close()
    return Figures(
        frames=frames,
        samples=len(counter.seqs),
        wall_s=counter.done_at - marks["ready"],
        cpu_s=done_cpu - marks["ready_cpu"],
        rss_mb=rss,
        payload_bytes=counter.payload_bytes,
        startup_wall_s=marks["ready"] - started,
        startup_cpu_s=marks["ready_cpu"],
    )


# --- the naive baseline -----------------------------------------------------------------------------------


class NaiveListener(can.Listener):
    """Per frame: cantools decode; per kept sample: INSERT + COMMIT, and one JSON publish at QoS 1."""

    def __init__(self, db_path: Path, client: mqtt.Client, topic: str) -> None:
        catalog = load_catalog(DEFAULT_CATALOG)
        database = cantools.database.load_file(DEFAULT_DBC)
        self.by_id: dict[int, tuple[cantools.database.Message, list[tuple[str, str, SignalSampler]]]] = {}
        for frame_id, spec in catalog.frames().items():
            message = database.get_message_by_frame_id(frame_id)
            self.by_id[frame_id] = (
                message,
                [(dbc, s.name, SignalSampler(s.policy)) for dbc, s in spec.signals],
            )
        self.conn = sqlite3.connect(db_path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE samples (seq INTEGER PRIMARY KEY, ts REAL, signal TEXT, value REAL)")
        self.client = client
        self.topic = topic
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.payload_bytes = 0
        self.samples = 0

    def on_message_received(self, msg: can.Message) -> None:
        entry = self.by_id.get(msg.arbitration_id)
        if entry is None or msg.is_error_frame or msg.is_remote_frame:
            return
        message, signals = entry
        try:
            values = message.decode(msg.data, decode_choices=False)
        except Exception:  # the naive way: skip whatever does not decode
            return
        for dbc_signal, name, sampler in signals:
            raw = values.get(dbc_signal)
            if raw is None:
                continue  # a multiplexed signal of another mux value
            value = float(raw)  # type: ignore[arg-type]
            if not sampler.offer(msg.timestamp, value):
                continue
            cursor = self.conn.execute(
                "INSERT INTO samples (ts, signal, value) VALUES (?, ?, ?)", (msg.timestamp, name, value)
            )
            self.conn.commit()
            payload = json.dumps(
                {
                    "vehicle": VEHICLE,
                    "seq": cursor.lastrowid,
                    "ts": msg.timestamp,
                    "signal": name,
                    "value": value,
                }
            ).encode()
            self.payload_bytes += len(payload)
            self.infos.append(self.client.publish(self.topic, payload, qos=1))
            self.samples += 1


def first_frames(log_path: Path, count: int) -> Iterator[can.Message]:
    with can.LogReader(log_path, relative_timestamp=False) as reader:
        for n, message in enumerate(reader):
            if n >= count:
                return
            yield message


def run_naive(log_path: Path, count: int, work: Path, host: str, port: int, cpu: int) -> Figures:
    pin(cpu)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    listener = NaiveListener(work / "naive.sqlite3", client, f"bench/naive/{uuid.uuid4().hex[:8]}")
    before = os.times()
    start = time.perf_counter()
    frames = 0
    for message in first_frames(log_path, count):
        listener.on_message_received(message)
        frames += 1
    for info in listener.infos:
        info.wait_for_publish(timeout=60)
    wall = time.perf_counter() - start
    after = os.times()
    client.loop_stop()
    client.disconnect()
    listener.conn.close()
    cpu_s = (after.user - before.user) + (after.system - before.system)
    rss = peak_rss_mb(os.getpid())
    return Figures(frames, listener.samples, wall, cpu_s, rss, listener.payload_bytes)


# --- wire cost at real-time batching ------------------------------------------------------------------------


def realtime_bytes_per_sample(samples: list[Sample], age_s: float, max_records: int) -> tuple[float, float]:
    """Batches as a bus at real time forms them: a batch closes when `age_s` of source time has passed
    since its first sample or it holds `max_records`. Returns (bytes per sample, samples per batch)."""
    quanta = load_catalog(DEFAULT_CATALOG).quanta()
    total = batches = 0
    batch: list[SampleRecord] = []
    opened = 0.0

    def flush() -> None:
        nonlocal total, batches
        if batch:
            total += len(encode_batch(Batch(VEHICLE, tuple(batch)), quanta))
            batches += 1
            batch.clear()

    for seq, sample in enumerate(samples):
        if batch and (sample.ts - opened >= age_s or len(batch) >= max_records):
            flush()
        if not batch:
            opened = sample.ts
        batch.append(SampleRecord(seq, round(sample.ts * 1000), sample.signal, sample.value))
    flush()
    return total / len(samples), len(samples) / max(batches, 1)


# --- main -------------------------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0, help="simulated hours of bus to replay")
    parser.add_argument("--naive-frames", type=int, default=20_000, help="frames for the naive baseline")
    parser.add_argument("--broker", default="127.0.0.1:1883")
    args = parser.parse_args()
    host, _, port_text = args.broker.partition(":")
    port = int(port_text or 1883)
    cpus = sorted(os.sched_getaffinity(0))
    agent_cpu, other_cpu = cpus[-1], cpus[0]

    with tempfile.TemporaryDirectory(prefix="voltgate-bench-") as tmp:
        work = Path(tmp)
        log_path = work / "bus.log"
        t = time.perf_counter()
        record_log(args.hours, log_path)
        print(
            f"log: {args.hours:g} h of simulated bus, {log_path.stat().st_size / 1e6:.0f} MB candump "
            f"(recorded in {time.perf_counter() - t:.1f} s)"
        )
        pin(other_cpu)
        frames, samples, decode_s = reference_samples(log_path)
        print(
            f"     {frames:,} frames → {len(samples):,} samples kept by the catalog's sampling policy "
            f"({len(samples) / frames:.3f} per frame); "
            f"in-process read+decode alone: {frames / decode_s:,.0f} frames/s"
        )
        print(
            f"settings: commit_interval_s={COMMIT_INTERVAL_S}, batch_max_records={BATCH_MAX_RECORDS}, "
            f"batch_max_age_s={BATCH_MAX_AGE_S}; agent on CPU {agent_cpu}, subscriber on CPU {other_cpu}"
        )

        ours = run_ours(log_path, frames, len(samples), work, host, port, agent_cpu)
        print("\nours  (voltgate-agent run, replay speed=max → decode → buffer → uplink → broker, one core)")
        print(
            f"  start-up (not counted below): {ours.startup_wall_s:.2f} s wall, "
            f"{ours.startup_cpu_s:.2f} CPU-s"
        )
        print(f"  {ours.frames:,} frames, {ours.samples:,} samples delivered in {ours.wall_s:.2f} s")
        print(
            f"  {ours.fps:,.0f} frames/s; {ours.cpu_per_million:.2f} CPU-s per million frames; "
            f"peak RSS {ours.rss_mb:.1f} MB"
        )
        ours_bps = ours.payload_bytes / max(ours.samples, 1)
        print(
            f"  uplink: {ours.payload_bytes:,} payload bytes, {ours_bps:.2f} bytes/sample "
            f"(batches of up to {BATCH_MAX_RECORDS})"
        )

        naive = run_naive(log_path, min(args.naive_frames, frames), work, host, port, agent_cpu)
        print(
            f"\nnaive (LogReader → Listener → cantools decode → INSERT+COMMIT per sample → JSON QoS 1 "
            f"per sample, first {naive.frames:,} frames, one core)"
        )
        print(f"  {naive.frames:,} frames, {naive.samples:,} samples in {naive.wall_s:.2f} s")
        print(
            f"  {naive.fps:,.0f} frames/s; {naive.cpu_per_million:.2f} CPU-s per million frames; "
            f"peak RSS {naive.rss_mb:.1f} MB (bench process)"
        )
        print(f"  uplink: {naive.payload_bytes / max(naive.samples, 1):.1f} bytes/sample (JSON)")

        print("\nwire cost with real-time batching (same samples, batches closed by source-time age):")
        realtime: dict[float, float] = {}
        for age in (5.0, 30.0, 60.0):
            bps, per_batch = realtime_bytes_per_sample(samples, age, BATCH_MAX_RECORDS)
            realtime[age] = bps
            print(f"  batch_max_age_s={age:>4g}: {per_batch:7.1f} samples/batch, {bps:.2f} bytes/sample")

        ratio = ours.fps / naive.fps
        cpu_ratio = naive.cpu_per_million / ours.cpu_per_million
        print(
            f"\nours vs naive: {ratio:.1f}× the frames/s (wall), {cpu_ratio:.1f}× less CPU per frame "
            f"(the naive slice is the parked start of the day: {naive.samples / naive.frames:.3f} samples "
            f"per frame against {len(samples) / frames:.3f} over the log, which flatters the naive)"
        )
        default_age = UplinkSettings().batch_max_age_s
        if default_age not in realtime:
            realtime[default_age] = realtime_bytes_per_sample(samples, default_age, BATCH_MAX_RECORDS)[0]
        print("\ntargets")
        print(
            f"  ≥ {TARGET_FPS:,} frames/s end to end on one core: {ours.fps:,.0f} — "
            f"{_met(ours.fps >= TARGET_FPS)}"
        )
        print(f"  ≥ {TARGET_RATIO:g}× the naive baseline: {ratio:.1f}× — {_met(ratio >= TARGET_RATIO)}")
        print(
            f"  ≤ {TARGET_BYTES_PER_SAMPLE:g} bytes/sample on the wire: {ours_bps:.2f} at full batches — "
            f"{_met(ours_bps <= TARGET_BYTES_PER_SAMPLE)}; {realtime[default_age]:.2f} with the uplink's "
            f"default {default_age:g} s real-time batches — "
            f"{_met(realtime[default_age] <= TARGET_BYTES_PER_SAMPLE)}"
        )
        print(
            f"  ≤ {TARGET_RSS_MB:g} MB peak RSS: {ours.rss_mb:.1f} MB — {_met(ours.rss_mb <= TARGET_RSS_MB)}"
        )


if __name__ == "__main__":
    main()
