"""The agent's running counters as Prometheus metrics: once a second, the sources', decoders', clock
gate's, analysis stages' and queues' plain counters become Prometheus counters (by increments) and gauges,
and every `BUFFER_STATS_EVERY_S` the buffer's statistics; the health endpoint's details come along."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import Counter

from agent import metrics
from agent.buffer import BufferStats, EvictionClass
from agent.records import SEVERITIES
from agent.sources.replay import ReplayFrameQueue

if TYPE_CHECKING:
    from agent.app import Agent, FrameQueue

BUFFER_STATS_EVERY_S: Final = 5.0  # counting rows of a large backlog is not free


class CounterSync:
    """Exports the sources' and decoders' plain counters to Prometheus counters (by increments)."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, tuple[str, ...]], float] = {}

    def set(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        key = (id(counter), labels)
        delta = total - self._last.get(key, 0.0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
        self._last[key] = max(total, self._last.get(key, 0.0))


class StatsExport:
    """Exports one running `Agent`'s counters until cancelled."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._sync = CounterSync()
        self._last_buffer_stats = 0.0

    async def run(
        self,
        frame_sources: Iterable[tuple[str, _StatsSource]],
        decoders: Mapping[str, _StatsDecoder],
        gps: _StatsSource | None,
        frame_queues: Mapping[str, FrameQueue],
    ) -> None:
        agent, sync = self._agent, self._sync
        while True:
            for name, source in frame_sources:
                stats = source.stats
                sync.set(metrics.FRAMES_RECEIVED, (name,), stats.frames + stats.dropped)
                agent.health.note_source(name, stats.frames + stats.dropped)
                sync.set(metrics.QUEUE_DROPS, (f"frames:{name}",), stats.dropped)
                sync.set(metrics.SOURCE_RECONNECTS, (name,), stats.reconnects)
                queue = frame_queues[name]
                depth = queue.frames_queued if isinstance(queue, ReplayFrameQueue) else queue.qsize()
                metrics.QUEUE_DEPTH.labels(f"frames:{name}").set(depth)
            for name, decoder in decoders.items():
                dstats = decoder.stats
                sync.set(metrics.FRAMES_DECODED, (name,), dstats.frames_decoded)
                sync.set(metrics.SAMPLES_DECODED, (name,), dstats.samples_kept)
                for kind, count in dstats.skipped.items():
                    if kind == "unknown_id":
                        sync.set(metrics.FRAMES_UNKNOWN, (name,), count)
                    else:
                        sync.set(metrics.FRAME_ERRORS, (name, str(kind)), count)
            if gps is not None:
                sync.set(metrics.QUEUE_DROPS, ("samples:gps",), gps.stats.dropped)
                sync.set(metrics.SOURCE_RECONNECTS, ("gps",), gps.stats.reconnects)
                agent.health.note_source("gps", gps.stats.frames + gps.stats.dropped)
            metrics.QUEUE_DEPTH.labels("samples").set(agent.samples.qsize())
            metrics.QUEUE_DEPTH.labels("derived").set(agent.derived.qsize())
            for tap_name, tap in (("tap:inference", agent.inference_tap), ("tap:alerts", agent.alerts_inbox)):
                if tap is not None:
                    metrics.QUEUE_DEPTH.labels(tap_name).set(tap.qsize())
            self._analysis()
            self._clock()
            now = time.monotonic()
            if now - self._last_buffer_stats >= BUFFER_STATS_EVERY_S:
                self._last_buffer_stats = now
                self._buffer(await agent.buffer.snapshot())
            await asyncio.sleep(1.0)

    def _analysis(self) -> None:
        agent, sync = self._agent, self._sync
        if agent.inference_stage is not None:
            istats = agent.inference_stage.stats
            for model, count in istats.by_model.items():
                sync.set(metrics.MODEL_RUNS, (model,), count)
            sync.set(metrics.INFERENCE_SKIPS, ("out_of_scope",), istats.out_of_scope)
            sync.set(metrics.INFERENCE_SKIPS, ("run_failure",), istats.run_failures)
            sync.set(metrics.INFERENCE_SKIPS, ("refused",), istats.refused)
            models = agent.inference_stage.models
            agent.health.models = {name: model.version for name, model in models.items()}
        if agent.alert_stage is not None:
            for rule, count in agent.alert_stage.stats.by_rule.items():
                sync.set(metrics.ALERT_CHANGES, (rule,), count)
            active = list(agent.alert_stage.active().values())
            for severity in SEVERITIES:
                metrics.ALERTS_ACTIVE.labels(severity).set(active.count(severity))

    def _clock(self) -> None:
        agent, sync = self._agent, self._sync
        gate = agent.clock_gate
        if gate is not None:
            for labels, count in gate.stats.implausible.items():
                sync.set(metrics.TIMESTAMPS_IMPLAUSIBLE, labels, count)
            for labels, count in gate.stats.corrected.items():
                sync.set(metrics.TIMESTAMPS_CORRECTED, labels, count)
            for source, count in gate.stats.steps.items():
                sync.set(metrics.CLOCK_STEPS, (source,), count)
            if gate.host_minus_gps_s is not None:
                metrics.HOST_CLOCK_OFFSET.set(gate.host_minus_gps_s)
                agent.health.details["host_clock_minus_gps_s"] = f"{gate.host_minus_gps_s:+.3f}"
        if agent.inference_stage is not None:
            sync.set(
                metrics.ANALYSIS_TIME_OUTLIERS, ("inference",), agent.inference_stage.stats.time_outliers
            )
        if agent.alert_stage is not None:
            sync.set(metrics.ANALYSIS_TIME_OUTLIERS, ("alerts",), agent.alert_stage.engine.time_outliers)
        for name, inbox in agent.source_samples.items():
            metrics.QUEUE_DEPTH.labels(f"samples:{name}").set(inbox.qsize())

    def _buffer(self, stats: BufferStats) -> None:
        agent, sync = self._agent, self._sync
        metrics.BUFFER_BYTES.set(stats.used_bytes)
        metrics.BUFFER_ROWS.set(stats.rows)
        for cls in EvictionClass:
            sync.set(metrics.BUFFER_EVICTIONS, (cls.name.lower(),), stats.evicted[cls])
        sync.set(metrics.BUFFER_DROPPED, (), stats.dropped)
        sync.set(metrics.BUFFER_COMMIT_FAILURES, (), stats.commit_failures)
        sync.set(metrics.BUFFER_EVICTED_BYTES, (), stats.evicted_bytes)
        sync.set(metrics.BUFFER_DISK_FULL, ("filesystem",), stats.disk_full)
        sync.set(metrics.BUFFER_DISK_FULL, ("page_limit",), stats.page_limit_full)
        sync.set(metrics.BUFFER_RESERVE_RELEASES, (), stats.reserve_releases)
        sync.set(metrics.BUFFER_ACK_DELETE_FAILURES, (), stats.ack_delete_failures)
        metrics.BUFFER_DISK_BYTES.labels("db").set(stats.db_file_bytes)
        metrics.BUFFER_DISK_BYTES.labels("wal").set(stats.wal_bytes)
        metrics.BUFFER_DISK_BYTES.labels("reserve").set(stats.reserve_bytes)
        metrics.BUFFER_CAP_BYTES.set(agent.settings.buffer.max_bytes)
        metrics.BUFFER_RESERVE_PRESENT.set(1 if stats.reserve_bytes > 0 else 0)
        metrics.BUFFER_ACK_DEFERRED.set(stats.ack_deferred)
        age = 0.0 if stats.oldest_ts_ms is None else max(0.0, time.time() - stats.oldest_ts_ms / 1000)
        metrics.OLDEST_UNSENT_AGE.set(age)
        agent.health.details["buffer_rows"] = str(stats.rows)
        agent.health.details["uplink"] = (
            "connected" if agent.uplink and agent.uplink.connected else "disconnected"
        )


class _Stats(Protocol):
    frames: int
    dropped: int
    reconnects: int


class _StatsSource(Protocol):
    @property
    def stats(self) -> _Stats: ...


class _DecodeStats(Protocol):
    frames_decoded: int
    samples_kept: int
    skipped: dict[str, int]


class _StatsDecoder(Protocol):
    @property
    def stats(self) -> _DecodeStats: ...
