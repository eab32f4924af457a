"""The paced run of bench/agent_throughput.py: four live CAN buses at their real pace into one agent.

Linux vcan needs the kernel module, which containers and CI runners often lack, and python-can's `virtual`
interface does not cross processes; so each bus is an SLCAN adapter (simulator.slcan: the Lawicel protocol
of a CANable or a CANUSB, the adapters a gateway without a CAN HAT uses) on a pseudo-terminal, and the agent
reads them through its `[[can]] interface = "slcan"` sources as it reads a real adapter: python-can opens
the port, sets the bitrate and opens the channel, and the agent's own reader (agent.sources.slcan) takes
each port's waiting bytes in one read and drops the frames of ids the catalog does not know before building
any frame object. This process plays the recorded mix into all four adapters at its recorded pace on the
monotonic clock (the same frames on each bus), on the other CPU than the agent's. The baseline reads the
four ports through python-can's own `slcan` interface (one Notifier thread per bus), which reads a port a
byte at a time (`serial.read(1)`): that, not its decode or its buffer, is most of its CPU here.

Figures, over the span the frames are played:

* CPU share of one core: the agent's utime + stime (all threads, /proc) ÷ the span;
* lag: for every sample delivered, the moment the subscriber has it from the broker − the sample's time
  (its frame's receipt stamp in the agent: SLCAN frames are stamped on receipt). Its floor is the batch
  age and the commit interval (BATCH_MAX_AGE_S and COMMIT_INTERVAL_S of the throughput run);
* drops: frames an adapter could not hand over because the agent was not reading (an adapter's overrun;
  `SlcanAdapter.dropped`), the agent's `voltgate_queue_drops` per queue and the SLCAN lines it rejected
  (its /metrics at the end), and catalog frames played but not received (`voltgate_can_frames_received`;
  the agent's catalog filters keep the other controllers' frames out of it);
* the adapters' backlog: frames waiting in their queues, the most seen at once (how far reading fell
  behind, before any overrun), and how late the player itself ran behind the recorded pace.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import can

from bench.broker_receiver import Receiver, acknowledge_commit, json_seqs, wire_seqs
from bench.process_figures import cpu_seconds, free_port, peak_rss_mb
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from protocols.topics import downlink_ack_topic, telemetry_topic
from simulator.slcan import RawPty, SlcanAdapter

BUSES = 4
BITRATE = 500_000
OPEN_WAIT_S = 60.0  # python-can waits 2 s after opening each port before it sets the bitrate
SETTLE_S = 3.0  # no new batch for this long after the last frame: everything played has arrived
SETTLE_MAX_S = 60.0
_METRIC = re.compile(r"^(voltgate_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$")


@dataclass
class PacedFigures:
    who: str
    buses: int
    span_s: float
    frames_played: int  # per bus
    catalog_frames_played: int  # per bus
    cpu_s: float
    rss_mb: float
    samples: int
    lags_s: list[float]
    adapter_drops: int
    backlog_peak: int
    player_late_max_s: float
    player_cpu_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # ours only: name{labels} → value
    counts: dict[str, int] = field(default_factory=dict)  # the baseline's only: its closing counts
    log_lines: list[str] = field(default_factory=list)

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.span_s

    def lag(self, q: float) -> float:
        ordered = sorted(self.lags_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def metric_sum(self, name: str) -> float:
        return sum(v for k, v in self.metrics.items() if k == name or k.startswith(name + "{"))


class BusPlayer:
    """`buses` SLCAN adapters on fresh ptys, played from one recorded log at its recorded pace."""

    def __init__(self, buses: int = BUSES) -> None:
        self.adapters = [SlcanAdapter(RawPty()) for _ in range(buses)]
        self.played = self.catalog_played = self.backlog_peak = 0
        self.late_max_s = 0.0

    @property
    def paths(self) -> list[str]:
        return [adapter.path for adapter in self.adapters]

    def wait_open(self, timeout_s: float, alive: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and alive():
            if all(adapter.is_open for adapter in self.adapters):
                return True
            time.sleep(0.05)
        return False

    def play(self, log: Path, seconds: float, catalog_ids: frozenset[int]) -> None:
        """The first `seconds` of `log` into every adapter, each frame at its recorded offset."""
        origin: tuple[float, float] | None = None  # (first frame's time, monotonic then)
        with can.LogReader(log) as reader:
            for message in reader:
                now = time.monotonic()
                if origin is None:
                    origin = (message.timestamp, now)
                offset = message.timestamp - origin[0]
                if offset >= seconds:
                    break
                delay = origin[1] + offset - now
                if delay > 0.001:
                    time.sleep(delay)
                elif delay < 0:
                    self.late_max_s = max(self.late_max_s, -delay)
                for adapter in self.adapters:
                    adapter.send(message)
                self.played += 1
                self.catalog_played += message.arbitration_id in catalog_ids
                if self.played % 500 == 0:
                    waiting = max(self.played - a.delivered - a.dropped for a in self.adapters)
                    self.backlog_peak = max(self.backlog_peak, waiting)

    @property
    def dropped(self) -> int:
        return sum(adapter.dropped for adapter in self.adapters)

    def close(self) -> None:
        for adapter in self.adapters:
            adapter.close()


@dataclass(frozen=True)
class Batching:
    """What both agents are given alike: batch rows and age, and (ours) the buffer's commit interval."""

    rows: int
    age_s: float
    commit_s: float

    def baseline_options(self) -> list[str]:
        return ["--batch-rows", str(self.rows), "--batch-age", str(self.age_s)]


def ours_config(
    work: Path, channels: list[str], broker: tuple[str, int], metrics_port: int, batching: Batching
) -> tuple[Path, str]:
    fleet = f"paced{uuid.uuid4().hex[:8]}"
    buses = "".join(
        f'[[can]]\nname = "bus{k}"\ninterface = "slcan"\nchannel = "{path}"\nbitrate = {BITRATE}\n'
        for k, path in enumerate(channels)
    )
    config = work / f"{fleet}.toml"
    config.write_text(
        f'vehicle_id = "paced-bus"\nlog_format = "text"\n{buses}'
        f'[buffer]\npath = "{work / fleet}.sqlite3"\ncommit_interval_s = {batching.commit_s}\n'
        f'[uplink]\nbroker_url = "mqtt://{broker[0]}:{broker[1]}"\nfleet_id = "{fleet}"\n'
        f"batch_max_records = {batching.rows}\nbatch_max_age_s = {batching.age_s}\n"
        f"[metrics]\nenabled = true\nport = {metrics_port}\n"
    )
    return config, fleet


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            name, labels, value = match.groups()
            found[f"{name}{{{labels}}}" if labels else name] = float(value)
    return found


def run_paced(
    who: str,
    python: str,
    log: Path,
    seconds: float,
    work: Path,
    broker: tuple[str, int],
    agent_cpu: int,
    env: dict[str, str],
    cwd: Path,
    batching: Batching,
) -> PacedFigures:
    """Play `seconds` of `log` into BUSES live SLCAN buses read by one agent, `who` "ours" or "baseline".
    Both are given `batching`."""
    catalog_ids = frozenset(load_catalog(DEFAULT_CATALOG).frames())
    player = BusPlayer()
    metrics_port = free_port()
    host, port = broker
    if who == "ours":
        config, fleet = ours_config(work, player.paths, broker, metrics_port, batching)
        receiver = Receiver(
            host, port, telemetry_topic(fleet, "paced-bus"), 1 << 62, wire_seqs,
            acknowledge_commit(downlink_ack_topic(fleet, "paced-bus")), keep_lags=True,
        )  # fmt: skip
        command = [python, "-m", "agent", "run", "--config", str(config)]
        ready = " running: "
    else:
        topic = f"bench/paced/{uuid.uuid4().hex[:8]}"
        receiver = Receiver(host, port, topic, 1 << 62, json_seqs, keep_lags=True)
        command = [
            python, str(cwd / "bench" / "baseline_agent.py"), *(f"--slcan={p}" for p in player.paths),
            "--broker", f"{host}:{port}", "--topic", topic,
            "--db", str(work / f"paced-baseline-{uuid.uuid4().hex[:8]}.sqlite3"),
            *batching.baseline_options(),
        ]  # fmt: skip
        ready = "baseline: listening"
    lines: list[str] = []
    started = threading.Event()
    process = subprocess.Popen(
        ["taskset", "-c", str(agent_cpu), *command],
        cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def watch() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if ready in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not started.wait(OPEN_WAIT_S) or not player.wait_open(OPEN_WAIT_S, lambda: process.poll() is None):
            raise SystemExit(f"paced {who}: the agent did not open its buses:\n" + "".join(lines[-30:]))
        cpu0, wall0, own0 = cpu_seconds(process.pid), time.monotonic(), time.process_time()
        player.play(log, seconds, catalog_ids)
        span = time.monotonic() - wall0
        cpu = cpu_seconds(process.pid) - cpu0
        own = time.process_time() - own0
        deadline = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < deadline and time.perf_counter() - receiver.last_at < SETTLE_S:
            time.sleep(0.2)
        metrics = scrape(metrics_port) if who == "ours" else {}
        rss = peak_rss_mb(process.pid)
    finally:
        if who == "ours":
            process.send_signal(signal.SIGTERM)
        try:  # closes the baseline's stdin: it ends
            out, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out = ""
        receiver.close()
        player.close()
    return PacedFigures(
        who=who, buses=len(player.adapters), span_s=span, frames_played=player.played,
        catalog_frames_played=player.catalog_played, cpu_s=cpu, rss_mb=rss, samples=len(receiver.seqs),
        lags_s=receiver.lags_s, adapter_drops=player.dropped, backlog_peak=player.backlog_peak,
        player_late_max_s=player.late_max_s, player_cpu_s=own, metrics=metrics, log_lines=lines,
        counts=json.loads(out.strip().splitlines()[-1]) if who == "baseline" and out.strip() else {},
    )  # fmt: skip


def describe(f: PacedFigures, target_share: float) -> list[str]:
    """The report lines of one paced run."""
    frames = f.buses * f.frames_played
    met = "MET" if f.cpu_share <= target_share else "NOT MET"
    out = [
        f"{f.who}: {f.buses} buses × {f.frames_played / f.span_s:,.0f} frames/s for {f.span_s:.1f} s "
        f"({frames:,} frames, {f.buses * f.catalog_frames_played:,} of them catalog frames)",
        f"  CPU: {f.cpu_share:.1%} of one core ({f.cpu_s / frames * 1e6:.1f} µs per frame on the bus) — "
        f"target ≤ {target_share:.0%}: {met}",
        f"  peak RSS {f.rss_mb:.1f} MB; {f.samples:,} samples delivered",
        f"  lag, frame receipt → delivered from the broker: median {f.lag(0.5):.3f} s, "
        f"p99 {f.lag(0.99):.3f} s, max {f.lag(1.0):.3f} s",
        f"  drops: {f.adapter_drops:,} frames overrun at the adapters (agent not reading); "
        f"adapter backlog peak {f.backlog_peak:,} frames",
    ]
    if f.metrics:
        received = f.metric_sum("voltgate_can_frames_received_total")
        prefix = "voltgate_queue_drops_total"
        queue_drops = {k[len(prefix) :]: v for k, v in f.metrics.items() if k.startswith(prefix)}
        per_queue = ", ".join(f"{k} {v:,.0f}" for k, v in queue_drops.items())
        rejected = f.metric_sum("voltgate_can_serial_lines_rejected_total")
        out.append(
            f"  agent: {received:,.0f} catalog frames received of {f.buses * f.catalog_frames_played:,} "
            f"played; queue drops {sum(queue_drops.values()):,.0f}"
            + (f" ({per_queue})" if per_queue else "")
            + f"; SLCAN lines rejected {rejected:,.0f}"
        )
    if f.who == "baseline" and not f.counts:
        out.append("  baseline: no closing counts; its last lines:\n" + "".join(f.log_lines[-10:]))
    if f.counts:
        out.append(
            f"  baseline: read {f.counts['frames']:,} of the {frames:,} frames played; "
            f"kept {f.counts['kept']:,} samples, {f.counts['acked']:,} acknowledged"
        )
    out.append(
        f"  player: at most {f.player_late_max_s * 1000:.1f} ms behind the recorded pace, "
        f"{f.player_cpu_s / f.span_s:.0%} of a core (the other CPU)"
    )
    return out
