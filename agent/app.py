"""The composition root: builds the stages from settings, wires them with bounded queues, runs them in one
TaskGroup, and shuts them down in stages.

    CanSource / ReplaySource ─frames:{bus}─► Decoder ─samples:{bus}─► clock gate ─┐
    GpsSource ─────────────────────────────────────samples:gps──► clock gate ─────┼─samples─► committer ─► …
    InferenceStage, AlertStage ─derived─► committer ──────────────────────────────┘
        committer ─► BufferWorker (every ≤ commit_interval_s) ─► Uplink (deleted on the cloud's ack)

    clock gate ─tap:inference─► InferenceStage ─predictions─► derived
         │ (plausible stamps only)           └─tap:alerts─┐
         └─────────────────────tap:alerts─────────────────┴─► AlertStage ─alerts─► derived, log, LEDs
    Decoder ─DM1 (on_dm1)─► clock gate ({bus}:dm1) ─tap:alerts─┘

    Uplink ─downlink config/model─► FleetControl ─► hot: Uplink batching, Decoder policies, AlertStage
                                                    thresholds, InferenceStage models (agent.fleet_control)

The clock gate (one task per source, `agent.clock.TimestampGate`) judges every sample's source timestamp
against that source's clock: every sample goes on to the committer and the buffer (a GPS fix past its
week rollover with its corrected stamp, anything else as stamped), but only plausible ones reach the
inference and alert taps, so an outlier is counted (`voltgate_timestamps_implausible{source,reason}`),
buffered for the cloud to judge, and changes nothing on the bus. Live CAN buses and the GPS are judged
against the monotonic clock anchored when the agent starts; replayed logs by their own time base.
A bus's DM1 reports (for the DTC alerts, `agent.diagnostics`) pass the same gate as a source of their own,
`{bus}:dm1`, of the bus's kind: the decoder hands them on before its samples reach the bus's gate, and one
clock judging two places of one stream would misjudge a fast replay. Implausible ones are counted like
samples and never reach the alerts (the ECU repeats its DM1 every second).

Queues are bounded. Live buses never wait: a full `frames:{bus}` queue drops the frame and the source counts
it (`voltgate_queue_drops{queue="frames:…"}`); the decoder and the committer apply backpressure upstream.
A replay hands its decoder chunks of frames (one queue item per chunk of up to `CHUNK_FRAMES`, bounded in
chunks to about `FRAME_QUEUE_MAX` frames) and waits for room: it loses nothing. Once a replay's whole log has
passed its decoder and clock gate, the committer commits at once and the uplink sends at once (the end-to-end
time of a replay does not wait for `commit_interval_s` and `batch_max_age_s`).
The taps never hold the committer back either: a full tap drops the sample (`{queue="tap:…"}`).
A replay's frame queue and the sample queue count what passes, so each commit also records, in the same
transaction, the replay position its samples reach (`replay:<name>`; see `agent.sources.replay`), and a
restarted replay resumes there.

Shutdown (SIGTERM/SIGINT), each stage bounded by `STOP_TIMEOUTS`, whose sum stays under systemd's
`TimeoutStopSec` (`SYSTEMD_TIMEOUT_STOP_S`): stop sources → drain the frame queues through the decoders →
stop inference, then alerts (LEDs off) → final commit → publish what can be published → "offline" status and
disconnect → exit 0.

The stages' counters reach Prometheus through `agent.stats_export`, once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from typing import Final, Protocol, TypeVar

from agent import metrics
from agent.alerts import AlertInput, AlertStage
from agent.buffer import BufferWorker
from agent.clock import SourceKind, TimestampGate
from agent.decode import Decoder, DecodeStats, Dm1Hook
from agent.diagnostics import Dm1Report, DtcAlerts
from agent.fleet_control import FleetControl
from agent.fleet_control_stages import RunningStages
from agent.inference import InferenceStage
from agent.preflight import load_catalogs
from agent.records import UNKNOWN_ID_FRAME, Alert, Frame, Prediction, Sample
from agent.settings import AgentSettings
from agent.sources.can import CanSource
from agent.sources.gps import GpsSource
from agent.sources.replay import CHUNK_FRAMES, ReplayFrameQueue, ReplaySource, TallyQueue, position_mark
from agent.stats_export import StatsExport
from agent.uplink import Uplink, filter_closed_socket_watchers
from protocols.catalog import Catalog
from protocols.j1939 import Dm1

log = logging.getLogger(__name__)
_Q = TypeVar("_Q")
FrameQueue = asyncio.Queue[Frame] | asyncio.Queue[list[Frame]]  # a live bus's frames, a replay's chunks

SYSTEMD_TIMEOUT_STOP_S: Final = 30.0
"""`TimeoutStopSec=` of systemd/voltgate-agent.service; the stop stages below must fit inside it."""


@dataclass(frozen=True, slots=True)
class StopTimeouts:
    sources_s: float = 3.0  # sources close their buses and ports
    drain_s: float = 3.0  # decoders empty the frame queues
    inference_s: float = 1.0  # a model run in flight finishes (~1 ms each)
    alerts_s: float = 1.0  # the last alert changes are queued, LEDs switched off
    commit_s: float = 4.0  # the last samples are committed
    publish_s: float = 10.0  # the uplink publishes what it can
    disconnect_s: float = 4.0  # "offline" status and DISCONNECT

    @property
    def total_s(self) -> float:
        return float(sum(astuple(self)))


STOP_TIMEOUTS: Final = StopTimeouts()
FRAME_QUEUE_MAX: Final = 20_000  # per bus: ~5 s of a fully loaded 500 kbit/s bus
REPLAY_QUEUE_CHUNKS: Final = max(2, FRAME_QUEUE_MAX // CHUNK_FRAMES)  # per replay, in chunks of frames
SAMPLE_QUEUE_MAX: Final = 100_000
DERIVED_QUEUE_MAX: Final = 1_000
TAP_QUEUE_MAX: Final = 50_000  # per tap: what inference or alerts may lag behind the committer
SOURCE_SAMPLES_MAX: Final = 10_000  # per source, between its decoder (or the GPS) and its clock gate
GATE_BATCH: Final = 1_000  # samples judged between two yields to the event loop


class _Source(Protocol):
    def stop(self) -> None: ...


# --- the running agent --------------------------------------------------------------------------------


class Agent:
    """The whole agent for one `AgentSettings`; `await Agent(settings).run()` until `request_stop()`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        stop_timeouts: StopTimeouts = STOP_TIMEOUTS,
        catalogs: Mapping[str, Catalog] | None = None,
    ) -> None:
        self.settings = settings
        self._catalogs = catalogs  # already loaded by the checks; else `run` loads them
        self.stop_timeouts = stop_timeouts
        self.samples: TallyQueue[Sample] = TallyQueue(SAMPLE_QUEUE_MAX)  # counts: see agent.sources.replay
        self.replay_queues: dict[str, ReplayFrameQueue] = {}
        self.replay_samples: dict[str, TallyQueue[Sample]] = {}
        # per replay: (its samples the gate has taken, `self.samples.put_total` once they were all put)
        self._relayed: dict[str, deque[tuple[int, int]]] = {}
        self.derived: asyncio.Queue[Prediction | Alert] = asyncio.Queue(DERIVED_QUEUE_MAX)
        self.health = metrics.Health(
            stale_after_s=max(10.0, 10 * settings.buffer.commit_interval_s), vehicle_id=settings.vehicle_id
        )
        self.buffer = BufferWorker(settings.buffer.path, settings.buffer.max_bytes)
        self.metrics_server: metrics.MetricsServer | None = None
        self.uplink: Uplink | None = None
        self.fleet: FleetControl | None = None
        self._stop = asyncio.Event()
        self._committer_stop = asyncio.Event()
        self._commit_now = asyncio.Event()  # commit without waiting for the interval, then send at once
        self.inference_tap: asyncio.Queue[Sample] | None = None
        self.alert_stage: AlertStage | None = None
        self.inference_stage: InferenceStage | None = None
        self.alerts_inbox: asyncio.Queue[AlertInput] | None = None
        self.tap_drops: dict[str, int] = {}
        # The clocks' anchor: the host wall clock and the monotonic clock when the agent starts.
        self.anchor_wall_s, self.anchor_mono_s = time.time(), time.monotonic()
        self.clock_gate: TimestampGate | None = None
        self.source_samples: dict[str, asyncio.Queue[Sample]] = {}

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested; shutting down in stages (at most %.0f s)", self.stop_timeouts.total_s)
            metrics.sd_notify("STOPPING=1")
        self._stop.set()

    async def run(self) -> None:
        settings = self.settings
        catalogs = self._catalogs or load_catalogs(settings)
        quanta: dict[str, float] = {}
        for catalog in catalogs.values():
            quanta.update(catalog.quanta())
        # Remote configuration and models (agent.fleet_control): the applied desired state runs at once.
        policies = {s.name: s.policy for c in catalogs.values() for s in c if s.source != "gps"}
        self.fleet = FleetControl(settings.fleet_control, settings, policies)
        self.settings = await asyncio.to_thread(self.fleet.open)
        await self.buffer.open()
        try:
            await self._run_stages(catalogs, quanta)
        finally:
            await self.buffer.close()
        log.info("stopped")

    async def _run_stages(self, catalogs: Mapping[str, Catalog], quanta: Mapping[str, float]) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        filter_closed_socket_watchers(loop)
        fleet = self.fleet
        assert fleet is not None
        self.uplink = uplink = Uplink(
            settings.uplink, settings.vehicle_id, self.buffer, quanta, on_desired=fleet.offer
        )
        can_sources = [(bus.name, CanSource(bus, catalogs[bus.name])) for bus in settings.can]
        replays: list[tuple[str, ReplaySource]] = []
        names = [bus.name for bus in settings.can] + [log_.name for log_ in settings.replay]
        alerts, inference = self._build_analysis()
        self.alert_stage, self.inference_stage = alerts, inference
        decoders = {name: Decoder(catalogs[name], bus=name, on_dm1=self._dm1_alerts(name)) for name in names}
        for log_ in settings.replay:  # a replay resumes after the frames whose samples are stored
            position = await self.buffer.get_mark(position_mark(log_.name)) or 0
            # The replay's samples pass its own counted queue, then its clock gate, then `self.samples`:
            # the frame queue counts against the first, the gate relays the counts (`_relayed`).
            replay_samples: TallyQueue[Sample] = TallyQueue(SOURCE_SAMPLES_MAX)
            self.replay_samples[log_.name] = replay_samples
            self._relayed[log_.name] = deque()
            self.replay_queues[log_.name] = ReplayFrameQueue(
                REPLAY_QUEUE_CHUNKS, replay_samples, start_position=position
            )
            dtcs = alerts.dtc_alerts(log_.name) if alerts is not None else None
            warm_up = _policy_warm_up(decoders[log_.name], dtcs)
            replay = ReplaySource(
                log_,
                catalogs[log_.name],
                start_position=position,
                warm_up=warm_up,
                ignores=decoders[log_.name].ignores,
            )
            replays.append((log_.name, replay))
        gps = GpsSource(settings.gps, catalogs["gps"]) if settings.gps.enabled else None
        bus_queues: dict[str, asyncio.Queue[Frame]] = {
            name: asyncio.Queue(FRAME_QUEUE_MAX) for name, _ in can_sources
        }
        frame_queues: dict[str, FrameQueue] = {**bus_queues, **self.replay_queues}
        frame_sources: list[tuple[str, CanSource | ReplaySource]] = [*can_sources, *replays]
        kinds: dict[str, SourceKind] = {bus.name: "live" for bus in settings.can}
        kinds.update({log_.name: "replay" for log_ in settings.replay})
        if gps is not None:
            kinds["gps"] = "gps"
        dm1_kinds = {dm1_clock(name): kinds[name] for name in names}
        self.clock_gate = TimestampGate(
            kinds | dm1_kinds,
            anchor_wall_s=self.anchor_wall_s,
            anchor_mono_s=self.anchor_mono_s,
            limits=settings.clock,
        )
        source_samples: dict[str, asyncio.Queue[Sample]] = {
            name: self.replay_samples.get(name) or asyncio.Queue(SOURCE_SAMPLES_MAX) for name in kinds
        }
        self.source_samples = source_samples
        sources: list[_Source] = [source for _, source in frame_sources] + ([gps] if gps else [])
        fleet.attach(RunningStages(uplink, decoders, alerts, inference))

        if settings.metrics.enabled:
            self.metrics_server = metrics.MetricsServer(
                settings.metrics.host, settings.metrics.port, self.health
            )
            await self.metrics_server.start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            async with asyncio.TaskGroup() as group:
                source_tasks = [
                    group.create_task(_survive(name, source.run(bus_queues[name])), name=f"source:{name}")
                    for name, source in can_sources
                ]
                source_tasks += [
                    group.create_task(self._replay(name, source), name=f"source:{name}")
                    for name, source in replays
                ]
                if gps is not None:
                    source_tasks.append(
                        group.create_task(_survive("gps", gps.run(source_samples["gps"])), name="source:gps")
                    )
                decode_tasks = [
                    group.create_task(
                        decoders[name].run(frame_queues[name], source_samples[name]), name=f"decode:{name}"
                    )
                    for name in decoders
                ]
                decode_tasks += [
                    group.create_task(self._gate(self.clock_gate, name, inbox), name=f"clock:{name}")
                    for name, inbox in source_samples.items()
                ]
                committer = group.create_task(self._commit_samples(uplink), name="commit:samples")
                derived = group.create_task(self._commit_derived(uplink), name="commit:derived")
                uplink_task = group.create_task(uplink.run(), name="uplink")
                analysis: list[tuple[InferenceStage | AlertStage, float, asyncio.Task[None]]] = []
                if inference is not None and self.inference_tap is not None:
                    work = _contained("inference", inference.run(self.inference_tap, self.derived))
                    task = group.create_task(work, name="inference")
                    analysis.append((inference, self.stop_timeouts.inference_s, task))
                if alerts is not None and self.alerts_inbox is not None:
                    work = _contained("alerts", alerts.run(self.alerts_inbox, self.derived))
                    task = group.create_task(work, name="alerts")
                    analysis.append((alerts, self.stop_timeouts.alerts_s, task))
                helpers = [
                    group.create_task(metrics.measure_loop_lag(), name="loop-lag"),
                    group.create_task(_contained("fleet-control", fleet.run()), name="fleet-control"),
                    group.create_task(
                        StatsExport(self).run(frame_sources, decoders, gps, frame_queues), name="stats-export"
                    ),
                ]
                if self.metrics_server is not None:
                    helpers.append(group.create_task(self.metrics_server.serve(), name="metrics-http"))
                if (interval := metrics.watchdog_interval_s()) is not None:
                    helpers.append(
                        group.create_task(metrics.feed_watchdog(self.health, interval), name="watchdog")
                    )
                metrics.sd_notify("READY=1")
                log.info(
                    "agent %s running: %d CAN bus(es), %d replay(s), gps %s, buffer %s",
                    settings.vehicle_id,
                    len(settings.can),
                    len(settings.replay),
                    "on" if gps else "off",
                    settings.buffer.path,
                )

                await self._stop.wait()
                t = self.stop_timeouts
                for source in sources:
                    source.stop()
                await _finish("sources", source_tasks, t.sources_s)
                await _within("drain", _drain(frame_queues.values(), source_samples.values()), t.drain_s)
                await _finish("decoders", decode_tasks, 0.0)
                for stage, timeout_s, task in analysis:  # inference first: its last predictions reach alerts
                    stage.stop()
                    await _finish(task.get_name(), [task], timeout_s)
                self._committer_stop.set()
                self._commit_now.set()
                await _finish("final commit", [committer, derived], t.commit_s)
                uplink.stop(t.publish_s)
                await _finish("uplink", [uplink_task], t.publish_s + t.disconnect_s)
                await _finish("helpers", helpers, 0.0)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _build_analysis(self) -> tuple[AlertStage | None, InferenceStage | None]:
        """The alert and inference stages as configured, and the taps that feed them."""
        settings = self.settings
        alerts: AlertStage | None = None
        inference: InferenceStage | None = None
        on_prediction: Callable[[Prediction], None] | None = None
        if settings.alerts.enabled:
            alerts = AlertStage(settings.alerts)
            alerts_inbox: asyncio.Queue[AlertInput] = asyncio.Queue(TAP_QUEUE_MAX)
            self.alerts_inbox = alerts_inbox

            def on_prediction(prediction: Prediction) -> None:
                self._offer(alerts_inbox, prediction, "tap:alerts")

        if settings.inference.enabled:
            self.inference_tap = asyncio.Queue(TAP_QUEUE_MAX)
            inference = InferenceStage(
                settings.inference,
                on_prediction=on_prediction,
                on_model_loaded=alerts.model_loaded if alerts is not None else None,
            )
        return alerts, inference

    def _dm1_alerts(self, bus: str) -> Dm1Hook | None:
        """A bus's DM1 → the clock gate (`{bus}:dm1`) → if plausible, the alert stage's DTC alerts."""
        inbox = self.alerts_inbox
        if inbox is None:
            return None
        clock = dm1_clock(bus)

        def on_dm1(ts: float, source: int, dm1: Dm1) -> None:
            gate = self.clock_gate
            if gate is None:  # not running yet
                return
            verdict = gate.judge(clock, ts, mono_s=time.monotonic(), wall_s=time.time())
            if verdict.plausible:
                self._offer(inbox, Dm1Report(verdict.ts, bus, source, dm1), "tap:alerts")

        return on_dm1

    def _offer(self, queue: asyncio.Queue[_Q], item: _Q, name: str) -> None:
        """Put without waiting; a full queue drops the item and counts it."""
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            self.tap_drops[name] = self.tap_drops.get(name, 0) + 1
            metrics.QUEUE_DROPS.labels(name).inc()

    async def _gate(self, gate: TimestampGate, source: str, inbox: asyncio.Queue[Sample]) -> None:
        """Until cancelled: judge the stamps of `source`'s samples; all go on to the committer, the
        plausible ones to the taps too. `inbox.task_done()` follows each sample (the drain waits on it)."""
        while True:
            batch = [await inbox.get()]
            batch += _drain_now(inbox, GATE_BATCH - 1)
            try:
                mono_s, wall_s = time.monotonic(), time.time()
                plausible: list[Sample] = []
                for sample in batch:
                    verdict = gate.judge(source, sample.ts, mono_s=mono_s, wall_s=wall_s)
                    kept = sample if verdict.ts == sample.ts else replace(sample, ts=verdict.ts)
                    if self.samples.full():
                        await self.samples.put(kept)
                    else:
                        self.samples.put_nowait(kept)
                    if verdict.plausible:
                        plausible.append(kept)
                self._tap(plausible)
                relayed = self._relayed.get(source)
                if relayed is not None and isinstance(inbox, TallyQueue):
                    relayed.append((inbox.taken_total, self.samples.put_total))
            finally:
                for _ in batch:
                    inbox.task_done()

    def _tap(self, batch: list[Sample]) -> None:
        if self.inference_tap is not None:
            for sample in batch:
                self._offer(self.inference_tap, sample, "tap:inference")
        if self.alerts_inbox is not None:
            for sample in batch:
                self._offer(self.alerts_inbox, sample, "tap:alerts")

    # --- committers ----------------------------------------------------------------------------------

    async def _commit_samples(self, uplink: Uplink) -> None:
        """Every `commit_interval_s`: move what the decoders produced into the buffer, in one commit, with
        each replay's position up to which the commit holds all of its samples (`replay:<name>`)."""
        interval = self.settings.buffer.commit_interval_s
        while True:
            stopping = self._committer_stop.is_set()
            if not stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._commit_now.wait(), timeout=interval)
            now = self._commit_now.is_set() and not self._committer_stop.is_set()
            self._commit_now.clear()
            batch = _drain_now(self.samples, SAMPLE_QUEUE_MAX)
            marks = self._replay_marks()  # before any await: it must describe exactly this batch
            if batch or marks:  # the clock gates have tapped the plausible samples
                written = await self.buffer.commit_samples(batch, marks)
                metrics.SAMPLES_BUFFERED.inc(written)
                if written:
                    uplink.notify()
            if now:
                uplink.send_now()
            self.health.beat()
            if stopping and self.samples.empty():
                return

    async def _replay(self, name: str, source: ReplaySource) -> None:
        """Play a replay; once its whole log has passed the decoder and the clock gate, commit and send at
        once: no more frames come, so waiting for the commit interval and the batch age only adds delay."""
        frames = self.replay_queues[name]
        await _survive(name, source.run(frames))
        if source.finished:
            await frames.join()
            await self.replay_samples[name].join()
            self._commit_now.set()

    def _replay_marks(self) -> dict[str, int]:
        taken = self.samples.taken_total
        marks: dict[str, int] = {}
        for name, queue in self.replay_queues.items():
            relayed, passed = self._relayed[name], None
            while relayed and relayed[0][1] <= taken:  # all of these are in this batch or committed
                passed = relayed.popleft()[0]
            if passed is not None and (position := queue.position_within(passed)) is not None:
                marks[position_mark(name)] = position
        return marks

    async def _commit_derived(self, uplink: Uplink) -> None:
        """Predictions and alerts are committed as they come: an alert must not wait for a timer."""
        while True:
            if self._committer_stop.is_set() and self.derived.empty():
                return
            try:
                first = await asyncio.wait_for(self.derived.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first, *_drain_now(self.derived, DERIVED_QUEUE_MAX)]
            metrics.SAMPLES_BUFFERED.inc(await self.buffer.commit_derived(batch))
            uplink.notify()


def dm1_clock(bus: str) -> str:
    """The clock gate's source of the DM1 reports of `bus` (`voltgate_timestamps_implausible{source}`)."""
    return f"{bus}:dm1"


def _policy_warm_up(
    decoder: Decoder, dtc_alerts: DtcAlerts | None = None
) -> Callable[[Sequence[Frame]], None]:
    """For a resumed replay: the frames it skips go through the decoder's sampling policy (and the DTC
    alerts' state) so that its state is the one an uninterrupted run would have; their samples and alerts
    were stored by an earlier run and are dropped, and this run's decode counters do not count them."""

    def warm_up(frames: Sequence[Frame]) -> None:
        counted, decoder.stats = decoder.stats, DecodeStats()
        hook = decoder.on_dm1
        decoder.on_dm1 = dtc_alerts.observe if dtc_alerts is not None else None
        try:
            for frame in frames:
                if frame is UNKNOWN_ID_FRAME:
                    continue
                decoder.process(frame)
                if dtc_alerts is not None:  # an ECU gone silent in the skipped part expired then too
                    dtc_alerts.expire(frame.ts)
        finally:
            decoder.stats, decoder.on_dm1 = counted, hook

    return warm_up


def _drain_now(queue: asyncio.Queue[_Q], limit: int) -> list[_Q]:
    items: list[_Q] = []
    while len(items) < limit:
        try:
            items.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    return items


async def _survive(source: str, work: Awaitable[None]) -> None:
    """A source that gives up (an unreadable replay log, ...) is logged; the rest of the agent goes on."""
    try:
        await work
    except Exception as err:  # the source's own error tree, or a bug: either way one source, not the agent
        log.error("source %s stopped: %s", source, err, exc_info=not isinstance(err, OSError | ValueError))


async def _contained(stage: str, work: Awaitable[None]) -> None:
    """Inference and alerts never take the agent down: a failure is logged and that stage ends."""
    try:
        await work
    except Exception:  # a bug in one analysis stage; samples still reach the buffer and the broker
        log.exception("stage %s stopped", stage)


async def _drain(frame_queues: Iterable[FrameQueue], sample_queues: Iterable[asyncio.Queue[Sample]]) -> None:
    """The frame queues through the decoders, then the sources' samples through the clock gates."""
    await asyncio.gather(*(queue.join() for queue in frame_queues))
    await asyncio.gather(*(queue.join() for queue in sample_queues))


async def _within(stage: str, work: Awaitable[None], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(work, timeout=timeout_s)
    except TimeoutError:
        log.warning("shutdown stage %r did not finish within %.1f s; going on", stage, timeout_s)


async def _finish(stage: str, tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait up to `timeout_s` for `tasks`, then cancel the rest (and wait for them to unwind)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s) if timeout_s > 0 else (set(), set(tasks))
    pending = {task for task in pending if not task.done()}
    if pending and timeout_s > 0:
        log.warning(
            "shutdown stage %r timed out after %.1f s; cancelling %d task(s)", stage, timeout_s, len(pending)
        )
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


async def run(settings: AgentSettings, catalogs: Mapping[str, Catalog] | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT, then shut down in stages; `catalogs` as `preflight` loads them."""
    await Agent(settings, catalogs=catalogs).run()
