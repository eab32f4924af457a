"""How fast the whole agent moves a recorded bus to the broker on one core, against a fair baseline.

    python bench/agent_throughput.py [--runs 5] [--duration 1h] [--start ISO] [--broker HOST:PORT]

Needs the local Mosquitto (127.0.0.1:1883 by default) and two CPUs. Prints figures; asserts only that both
agents stored and forwarded every sample the sampling policy keeps.

Workload (default): one hour of `voltgate-sim record` from the simulator's default start (05:00 in
Nairobi): the bus wakes in the depot and leaves on its block at 05:30, so the hour holds both a parked
and a moving bus. 59 CAN frames/s (five frames at 100 ms cycles, one at 500 ms, seven at 1 s); most frames
carry values the sampling policy does not keep at that moment (deadbands, minimum intervals).

Peak RSS counts what the interpreter imports: where python-can finds asammdf (this repository's `mf4`
extra), `import can` loads asammdf and pandas too, in both agents; a gateway's `.[edge]` install has
neither. The bench says which case it measured.

The two agents, each a process pinned to one CPU with `taskset` (every thread of it on that core), on
the same log, with the same catalog and sampling policy, in the same run, one after the other (the order
alternates between runs):

* ours: `voltgate-agent run` replaying the log at `speed = "max"`: replay → decode → SQLite buffer (WAL,
  synchronous=FULL, commits every COMMIT_INTERVAL_S) → wire batches (at most BATCH_MAX_RECORDS rows or
  BATCH_MAX_AGE_S old) → MQTT 5 QoS 1. It deletes rows when the cloud's commit acknowledgement comes (a
  stronger guarantee than a PUBACK); the subscriber here sends those acknowledgements, as `cloud.app`
  does after its commit.
* baseline: `bench/baseline_agent.py`, the straightforward agent: python-can `LogReader` → cantools
  decode → the same policy → SQLite (WAL, synchronous=FULL) `executemany`, one transaction per batch →
  zstd-compressed JSON batches (same row and age limits) over MQTT QoS 1 with paho → rows deleted on
  PUBACK.

Figures per agent: frames/s end to end (frames of the log ÷ the time from its first frame to the moment a
subscriber on the other CPU has received every kept sample from the broker), CPU µs per frame over that
span (utime + stime of all its threads, /proc), peak RSS (VmHWM) and start-up (process start → ready to
read its first frame: the agent's "running" log line, the baseline's "first frame" line). Each figure is
the median over `--runs` paired runs with its range; ratios are per pair, ours ÷ baseline. `taskset` pins
each agent to a core but does not reserve it: on a shared machine the wall-clock rates swing with the other
work on that core (the bench prints the load average before and after); CPU µs per frame moves far less.

The end-to-end span includes each agent's tail after its last frame: the baseline flushes its last batch at
the end of the log; ours commits its buffer every COMMIT_INTERVAL_S and sends a batch when it is
BATCH_MAX_AGE_S old, so up to about a second more. A second frames/s row, first → last frame read (the
agent's replay "end of" line, the baseline's "end of log" line), shows the rate without that tail; ours
reads ahead of its decoder by at most its bounded queues.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import can
import paho.mqtt.client as mqtt
import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.decode import Decoder  # noqa: E402
from agent.records import frame_from_message  # noqa: E402
from protocols.catalog import DEFAULT_CATALOG, load_catalog  # noqa: E402
from protocols.downlink import commit_acks, encode_downlink  # noqa: E402
from protocols.topics import downlink_ack_topic, telemetry_topic  # noqa: E402
from protocols.wire import decode_batch  # noqa: E402

VEHICLE = "bench-bus"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH_MAX_RECORDS = 2000
BATCH_MAX_AGE_S = 0.5
COMMIT_INTERVAL_S = 0.5
TARGET_FPS = 50_000
TARGET_RATIO = 5.0
TARGET_RSS_MB = 120.0
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# --- the input -------------------------------------------------------------------------------------------


def record_log(duration: str, start: str | None, out: Path) -> None:
    command = [sys.executable, "-m", "simulator", "record", "--duration", duration, "--out", str(out)]
    subprocess.run(
        command + (["--start", start] if start else []),
        cwd=REPO,
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def expected_samples(log_path: Path) -> tuple[int, int]:
    """Frames in the log and the samples the catalog's sampling policy keeps from them."""
    decoder = Decoder(load_catalog(DEFAULT_CATALOG), bus="bench")
    kept = 0
    with can.LogReader(log_path, relative_timestamp=False) as reader:
        for message in reader:
            kept += len(decoder.process(frame_from_message("bench", message)))
    return decoder.stats.frames_in, kept


# --- process figures ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime of all its threads


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the receiving end -----------------------------------------------------------------------------------


class Receiver:
    """Subscribes to one topic and collects the distinct sample numbers that arrive, until `expected`.
    `seqs_of` decodes a payload into its samples' numbers and all its records' numbers; `on_batch` may
    answer with the latter (our agent keeps rows in flight until the cloud acknowledges its commit)."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        expected: int,
        seqs_of: Callable[[bytes], tuple[list[int], list[int]]],
        on_batch: Callable[[mqtt.Client, list[int]], None] | None = None,
    ) -> None:
        self.seqs: set[int] = set()
        self.payload_bytes = 0
        self.done = threading.Event()
        self.done_at = 0.0
        self._expected, self._seqs_of, self._on_batch = expected, seqs_of, on_batch
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.payload_bytes += len(message.payload)
        samples, records = self._seqs_of(message.payload)
        if self._on_batch is not None:
            self._on_batch(client, records)
        self.seqs.update(samples)
        if len(self.seqs) >= self._expected and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def wire_seqs(payload: bytes) -> tuple[list[int], list[int]]:
    batch = decode_batch(payload)
    samples = [r.seq for r in batch.samples]
    return samples, samples + [r.seq for records in (batch.predictions, batch.alerts) for r in records]


def acknowledge_commit(ack_topic: str) -> Callable[[mqtt.Client, list[int]], None]:
    def answer(client: mqtt.Client, seqs: list[int]) -> None:
        for ack in commit_acks(seqs, int(time.time() * 1000)):
            client.publish(ack_topic, encode_downlink(ack), qos=1)  # queued by paho, not awaited

    return answer


_unzstd = zstandard.ZstdDecompressor()


def json_seqs(payload: bytes) -> tuple[list[int], list[int]]:
    samples = [row[0] for row in json.loads(_unzstd.decompress(payload))["samples"]]
    return samples, samples


# --- one run of one agent -----------------------------------------------------------------------------------


@dataclass
class Figures:
    frames: int
    samples: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    startup_s: float
    payload_bytes: int
    read_s: float  # first frame → last frame read

    @property
    def read_fps(self) -> float:
        return self.frames / self.read_s

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu_s / self.frames * 1e6


def run_process(
    command: list[str], markers: tuple[str, str], receiver: Receiver, cpu: int, frames: int
) -> tuple[Figures, subprocess.Popen[str], list[str]]:
    """Start `command` on `cpu`, note when its stderr shows the ready and end-of-log markers, wait until
    `receiver` has every sample; the figures of that span. The process is left running for the caller."""
    ready = threading.Event()
    marks: dict[str, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(
        ["taskset", "-c", str(cpu), *command],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_lines: list[str] = []

    def watch_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log_lines.append(line)
            if not ready.is_set() and markers[0] in line:
                marks["ready"] = time.perf_counter()
                marks["ready_cpu"] = cpu_seconds(process.pid)
                ready.set()
            elif "end" not in marks and markers[1] in line:
                marks["end"] = time.perf_counter()

    threading.Thread(target=watch_log, daemon=True).start()
    if not ready.wait(60) or not receiver.done.wait(900):
        process.kill()
        raise SystemExit(f"{command[1:3]} did not finish:\n" + "".join(log_lines[-30:]))
    figures = Figures(
        frames=frames,
        samples=len(receiver.seqs),
        wall_s=receiver.done_at - marks["ready"],
        cpu_s=cpu_seconds(process.pid) - marks["ready_cpu"],
        rss_mb=peak_rss_mb(process.pid),
        startup_s=marks["ready"] - started,
        payload_bytes=receiver.payload_bytes,
        read_s=marks.get("end", receiver.done_at) - marks["ready"],
    )
    return figures, process, log_lines


def run_ours(
    log_path: Path, frames: int, samples: int, work: Path, broker: tuple[str, int], cpu: int
) -> Figures:
    host, port = broker
    fleet = f"bench{uuid.uuid4().hex[:8]}"
    buffer = work / f"{fleet}.sqlite3"
    config = work / f"{fleet}.toml"
    config.write_text(
        f"""
vehicle_id = "{VEHICLE}"
log_format = "text"
[[replay]]
name = "bench"
path = "{log_path}"
speed = "max"
[buffer]
path = "{buffer}"
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
    receiver = Receiver(
        host,
        port,
        telemetry_topic(fleet, VEHICLE),
        samples,
        wire_seqs,
        acknowledge_commit(downlink_ack_topic(fleet, VEHICLE)),
    )
    command = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    try:
        figures, process, _ = run_process(
            command, (" running: ", "replay bench: end of "), receiver, cpu, frames
        )
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        receiver.close()
    return figures


def run_baseline(
    log_path: Path, frames: int, samples: int, work: Path, broker: tuple[str, int], cpu: int
) -> tuple[Figures, dict[str, int]]:
    host, port = broker
    topic = f"bench/baseline/{uuid.uuid4().hex[:8]}"
    receiver = Receiver(host, port, topic, samples, json_seqs)
    command = [
        sys.executable, str(REPO / "bench" / "baseline_agent.py"), str(log_path),
        "--broker", f"{host}:{port}",
        "--topic", topic, "--db", str(work / f"baseline-{uuid.uuid4().hex[:8]}.sqlite3"),
        "--vehicle", VEHICLE, "--batch-rows", str(BATCH_MAX_RECORDS), "--batch-age", str(BATCH_MAX_AGE_S),
    ]  # fmt: skip
    try:
        figures, process, log_lines = run_process(
            command, ("baseline: first frame", "baseline: end of log"), receiver, cpu, frames
        )
        out, _ = process.communicate(input="", timeout=60)  # closing stdin lets it exit
    finally:
        receiver.close()
    if process.returncode != 0:
        raise SystemExit("the baseline agent failed:\n" + "".join(log_lines[-30:]))
    counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return figures, counts


# --- report ---------------------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(ours: list[Figures], base: list[Figures]) -> dict[str, float]:
    metrics: list[tuple[str, Callable[[Figures], float], str, str]] = [
        ("frames/s end to end", lambda f: f.fps, ",.0f", "higher is better"),
        ("frames/s first → last frame read", lambda f: f.read_fps, ",.0f", "higher is better"),
        ("CPU µs per frame", lambda f: f.cpu_us_per_frame, ".1f", "lower is better"),
        ("peak RSS, MB", lambda f: f.rss_mb, ".1f", "lower is better"),
        ("start-up to first frame, s", lambda f: f.startup_s, ".2f", "lower is better"),
        ("payload bytes per sample", lambda f: f.payload_bytes / f.samples, ".2f", "lower is better"),
    ]
    print(f"\n{'median (range) over ' + str(len(ours)) + ' paired runs':<34} {'ours':>24} {'baseline':>24}  "
          f"{'ours ÷ baseline':>22}")  # fmt: skip
    ratios: dict[str, float] = {}
    for name, value, fmt, better in metrics:
        a, b = [value(f) for f in ours], [value(f) for f in base]
        per_pair = [x / y for x, y in zip(a, b, strict=True)]
        ratios[name] = statistics.median(per_pair)
        print(
            f"{name:<34} {spread(a, fmt):>24} {spread(b, fmt):>24}  {spread(per_pair, '.2f'):>22}  {better}"
        )
    return ratios


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="paired runs (ours and the baseline)")
    parser.add_argument("--duration", default="1h", help="simulated bus time to record and replay")
    parser.add_argument(
        "--start", default=None, help="simulation start (default: the simulator's, 05:00 local)"
    )
    parser.add_argument("--broker", default="127.0.0.1:1883")
    args = parser.parse_args()
    host, _, port_text = args.broker.partition(":")
    broker = (host, int(port_text or 1883))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(
            "needs two CPUs: one for the agent under test, one for the broker and the subscriber"
        )
    agent_cpu, other_cpu = cpus[-1], cpus[0]
    load_before = os.getloadavg()[0]
    os.sched_setaffinity(0, {other_cpu})

    with tempfile.TemporaryDirectory(prefix="voltgate-bench-") as tmp:
        work = Path(tmp)
        log_path = work / "bus.log"
        record_log(args.duration, args.start, log_path)
        frames, samples = expected_samples(log_path)
        print(
            f"log: {args.duration} of simulated bus from {args.start or 'the simulator default start'}, "
            f"{log_path.stat().st_size / 1e6:.0f} MB candump, {frames:,} frames → {samples:,} samples "
            f"kept by the sampling policy ({samples / frames:.3f} per frame)"
        )
        print(
            f"both: batches of ≤ {BATCH_MAX_RECORDS} rows or {BATCH_MAX_AGE_S} s, MQTT QoS 1 to "
            f"{args.broker}; agent under test on CPU {agent_cpu}, subscriber on CPU {other_cpu}"
        )
        ours: list[Figures] = []
        base: list[Figures] = []
        for run in range(args.runs):
            order = ("ours", "baseline") if run % 2 == 0 else ("baseline", "ours")
            for who in order:
                if who == "ours":
                    ours.append(run_ours(log_path, frames, samples, work, broker, agent_cpu))
                    assert ours[-1].samples == samples, (ours[-1].samples, samples)
                else:
                    figures, counts = run_baseline(log_path, frames, samples, work, broker, agent_cpu)
                    base.append(figures)
                    assert counts["frames"] == frames, (counts, frames)
                    assert counts["kept"] == counts["published"] == counts["acked"] == samples, (
                        counts,
                        samples,
                    )
                    assert counts["left_in_buffer"] == 0, counts
                    assert figures.samples == samples, (figures.samples, samples)
            print(
                f"  run {run + 1}: ours {ours[-1].fps:,.0f} frames/s, "
                f"{ours[-1].cpu_us_per_frame:.1f} µs/frame; "
                f"baseline {base[-1].fps:,.0f} frames/s, {base[-1].cpu_us_per_frame:.1f} µs/frame"
            )
    if importlib.util.find_spec("asammdf") is not None:
        print(
            "note: asammdf is installed here, so `import can` loads it and pandas in both agents (peak RSS)"
        )
    print(
        f"every run: both agents stored and delivered all {samples:,} samples "
        "(baseline: all PUBACKed, buffer empty)"
    )
    print(
        f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {len(cpus)} CPUs"
    )
    ratios = report(ours, base)
    fps = statistics.median(f.fps for f in ours)
    rss = statistics.median(f.rss_mb for f in ours)
    ratio = ratios["frames/s end to end"]
    print("\ntargets (medians)")
    print(f"  ≥ {TARGET_FPS:,} frames/s end to end on one core: {fps:,.0f} — {_met(fps >= TARGET_FPS)}")
    print(f"  ≥ {TARGET_RATIO:g}× the fair baseline's frames/s: {ratio:.2f}× — {_met(ratio >= TARGET_RATIO)}")
    print(f"  ≤ {TARGET_RSS_MB:g} MB peak RSS: {rss:.1f} MB — {_met(rss <= TARGET_RSS_MB)}")
    print("  bytes per sample on the uplink at real-time batch ages: bench/wire_size.py")


if __name__ == "__main__":
    main()
