"""Composition root of the receiver: broker adapter → inbox → writer (ingest + store) → ack.

One asyncio TaskGroup with three named tasks: `writer` (groups messages, writes each group in one
transaction; after the commit it publishes one commit acknowledgement per vehicle of the group on the
vehicle's downlink, then PUBACKs the messages — see `cloud.mqtt`; it decodes the next group and lays out
its samples in a worker thread while the database commits the current one), `maintenance` (partitions
ahead, retention) and `rollups` (hour and day rollups every `database.rollup_refresh_s`, and once more
after the last commit; then the kept daily KPIs, trips and charging sessions of ended days in
`web.time_zone`), and, unless `fleet_control.enabled` is off, `fleet-control` (`cloud.fleet_control`:
desired state out on the downlink, applied reports in, rollouts on, over its own broker connection), each
with its own database connection.
SIGTERM/SIGINT set the stop event: the writer stops taking messages, commits and
acknowledges the group it holds, and returns; then the broker connection is closed cleanly (the
persistent session keeps everything not yet acknowledged) and `run` returns.

With a [web] section in the settings, `run` also serves the fleet views (`cloud.api`: JSON API, page,
/metrics) from the same event loop, on their own connection pool; `serve` runs only those (e.g. on
another host, against a read replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt
from prometheus_client import start_http_server

from cloud import metrics
from cloud.api import FleetViews
from cloud.errors import RejectedDataError, StoreError
from cloud.fleet_control import FleetControl, FleetLink
from cloud.ingest import BatchMessage, DeadLetter, Ingested, ingest_messages
from cloud.kept_kpis import KeptDays
from cloud.mqtt import InboundMessage, Inbox, MqttReceiver
from cloud.sample_store import LaidOut
from cloud.settings import CloudSettings, IngestSettings, WebSettings
from cloud.store import Store, WriteStats
from protocols.downlink import CommitAck, DownlinkError, commit_acks, encode_downlink
from protocols.topics import downlink_ack_topic

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S: Final = 3600.0
# On SIGTERM while the database is down, stop retrying after this long: the group stays
# unacknowledged in the broker session. Keep under systemd's TimeoutStopSec with the disconnect.
SHUTDOWN_WRITE_GRACE_S: Final = 10.0
RETRY_MIN_S: Final = 0.5
RETRY_MAX_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Taken:
    """A group of messages as the writer's worker thread prepares it: what they decoded to, their
    samples laid out (None: by the write itself) and the commit acknowledgements to send once it is
    committed (`commit_acks_of`)."""

    group: list[InboundMessage]
    items: list[Ingested]
    laid_out: LaidOut | None
    acks: list[tuple[str, CommitAck]]


def ingest_group(group: Sequence[InboundMessage], limits: IngestSettings) -> list[Ingested]:
    return ingest_messages([(m.topic, m.payload, m.received_at) for m in group], limits)


def commit_acks_of(items: Sequence[Ingested]) -> list[tuple[str, CommitAck]]:
    """(topic, ack) of the commit acknowledgements for a group: per vehicle, one ack covering
    `handled_seqs()` of all its batches in the group (more only past `MAX_ACK_RANGES`), stamped 0
    (`stamped` gives them the commit's time)."""
    seqs_by_vehicle: dict[tuple[str, str], list[npt.NDArray[np.int64]]] = {}
    for item in items:
        if isinstance(item, BatchMessage):
            seqs_by_vehicle.setdefault((item.fleet, item.vehicle_id), []).append(item.handled_seqs())
    acks: list[tuple[str, CommitAck]] = []
    for (fleet, vehicle), parts in seqs_by_vehicle.items():
        topic = downlink_ack_topic(fleet, vehicle)
        acks += [(topic, ack) for ack in commit_acks(np.concatenate(parts), 0)]
    return acks


def stamped(acks: Sequence[tuple[str, CommitAck]], ts_ms: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of `acks` stamped `ts_ms`; `DownlinkError` when one cannot be encoded."""
    return [(topic, encode_downlink(replace(ack, ts_ms=ts_ms))) for topic, ack in acks]


def commit_ack_payloads(items: Sequence[Ingested], ts_ms: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of the commit acknowledgements for a committed group (`commit_acks_of`)."""
    return stamped(commit_acks_of(items), ts_ms)


class Writer:
    """Takes groups from the inbox, writes each in one transaction, then acknowledges it.

    A two-stage pipeline: while the database writes and commits one group (its CPU), the next group
    is taken, decoded and its samples laid out as blocks (this process's CPU, in a worker thread).
    Groups are still committed and acknowledged one at a time, in receipt order.
    """

    def __init__(self, store: Store, receiver: MqttReceiver, inbox: Inbox, limits: IngestSettings) -> None:
        self._store = store
        self._receiver = receiver
        self._inbox = inbox
        self._limits = limits
        self._ack_queue_full_logged = False

    async def run(self, stop: asyncio.Event) -> None:
        taken = await self._take(stop)
        while taken is not None:  # None: stop is set and nothing is held
            next_take = asyncio.create_task(self._take(stop), name="writer-take")
            prepared = list(taken.items)
            try:
                committed = await self._commit(taken.group, taken.items, taken.laid_out, stop)
            except BaseException:
                next_take.cancel()
                raise
            if not committed:
                # Shutting down with the database unreachable: the broker keeps this group and the
                # next one (neither is acknowledged).
                next_take.cancel()
                return
            # A message the database refused is kept as a dead letter in its place, not acknowledged.
            replaced = any(a is not b for a, b in zip(prepared, taken.items, strict=True))
            self._publish_commit_acks(commit_acks_of(taken.items) if replaced else taken.acks)
            acked = self._receiver.ack(taken.group)
            metrics.MESSAGES_ACKED.inc(acked)
            taken = await next_take

    def _publish_commit_acks(self, acks: Sequence[tuple[str, CommitAck]]) -> None:
        """Tell each vehicle of the committed group what is now stored (queued by paho, never blocks)."""
        try:
            payloads = stamped(acks, int(datetime.now(UTC).timestamp() * 1000))
        except DownlinkError as err:  # a bug, not bad input: wire seqs are within the downlink's bounds
            metrics.ACK_PUBLISH_FAILURES.labels("encode").inc()
            log.error("could not encode a commit acknowledgement: %s", err)
            return
        for topic, payload in payloads:
            if self._receiver.publish_ack(topic, payload):
                metrics.ACKS_PUBLISHED.inc()
                continue
            metrics.ACK_PUBLISH_FAILURES.labels("queue_full").inc()
            if not self._ack_queue_full_logged:
                log.warning("MQTT outgoing queue full: commit acknowledgement dropped (the bus re-sends)")
                self._ack_queue_full_logged = True

    async def _take(self, stop: asyncio.Event) -> Taken | None:
        group = await self._inbox.next_group(
            self._limits.batch_max_messages, self._limits.batch_max_age_s, stop
        )
        if not group:
            return None
        return await asyncio.to_thread(self._prepare, group)

    def _prepare(self, group: list[InboundMessage]) -> Taken:
        """Decode a group, lay out its samples and make its commit acknowledgements (in a worker
        thread: CPU only, no database)."""
        items = ingest_group(group, self._limits)
        return Taken(group, items, self._store.lay_out(items), commit_acks_of(items))

    async def _commit(
        self,
        group: Sequence[InboundMessage],
        items: list[Ingested],
        laid_out: LaidOut | None,
        stop: asyncio.Event,
    ) -> bool:
        delay = RETRY_MIN_S
        gave_up_at: float | None = None
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                stats = await self._write(group, items, laid_out)
            except StoreError as err:
                metrics.DATABASE_ERRORS.inc()
                if not failing:
                    log.error("writing to the database failed, retrying: %s", err)
                    failing = True
                if stop.is_set():
                    gave_up_at = gave_up_at or loop.time() + SHUTDOWN_WRITE_GRACE_S
                    if loop.time() >= gave_up_at:
                        log.warning(
                            "shutting down with %d messages uncommitted (left to the broker)", len(group)
                        )
                        return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                with contextlib.suppress(StoreError):
                    await self._store.reconnect()
                continue
            if failing:
                log.info("database writes work again")
            _count(items, stats)
            return True

    async def _write(
        self, group: Sequence[InboundMessage], items: list[Ingested], laid_out: LaidOut | None
    ) -> WriteStats:
        try:
            return await self._store.write(items, laid_out)
        except RejectedDataError as err:
            # One message of the group is poison for the database: write them one by one and keep
            # the ones it refuses as dead letters, so the stream goes on.
            log.warning("database rejected a group (%s); writing its messages one by one", err)
            total = WriteStats()
            for i, (message, item) in enumerate(zip(group, items, strict=True)):
                try:
                    stats = await self._store.write([item])
                except RejectedDataError as one:
                    items[i] = DeadLetter(
                        message.topic, item.vehicle_id, str(one), message.payload, message.received_at
                    )
                    stats = await self._store.write([items[i]])
                _merge(total, stats)
            return total


def _merge(total: WriteStats, part: WriteStats) -> None:
    total.messages += part.messages
    total.samples_staged += part.samples_staged
    total.samples_inserted += part.samples_inserted
    total.predictions_staged += part.predictions_staged
    total.predictions_inserted += part.predictions_inserted
    total.alerts_staged += part.alerts_staged
    total.alerts_inserted += part.alerts_inserted
    total.dead_letters += part.dead_letters
    total.statuses += part.statuses
    total.commit_seconds += part.commit_seconds


_refusals_logged: set[str] = set()  # refusal reasons logged once already (then only counted)


def _count(items: list[Ingested], stats: WriteStats) -> None:
    now_ms = datetime.now(UTC).timestamp() * 1000
    for item in items:
        if isinstance(item, BatchMessage):
            metrics.MESSAGES.labels("batch").inc()
            if len(item.samples):
                newest = int(item.samples.ts_ms.max())
                metrics.LAG_SECONDS.observe(max(0.0, (now_ms - newest) / 1000))
            for record in item.refused:
                reason = record.reason.value
                metrics.RECORDS_REFUSED.labels(reason).inc()
                if reason not in _refusals_logged:
                    _refusals_logged.add(reason)
                    log.warning(
                        "refused a record (%s) of vehicle %s: %s; the rest of its message stored, refused"
                        " ones kept as dead letters and counted in voltgate_cloud_records_refused_total",
                        reason,
                        item.vehicle_id,
                        record,
                    )
        elif isinstance(item, DeadLetter):
            metrics.MESSAGES.labels("dead_letter").inc()
        else:
            metrics.MESSAGES.labels("status").inc()
    metrics.SAMPLES_WRITTEN.inc(stats.samples_inserted)
    metrics.RECORDS_WRITTEN.labels("samples").inc(stats.samples_inserted)
    metrics.RECORDS_WRITTEN.labels("predictions").inc(stats.predictions_inserted)
    metrics.RECORDS_WRITTEN.labels("alerts").inc(stats.alerts_inserted)
    metrics.DUPLICATES_IGNORED.inc(stats.duplicates)
    metrics.DEAD_LETTERS.inc(len(stats.dead_letters))
    metrics.COMMIT_SECONDS.observe(stats.commit_seconds)
    if stats.dead_letters:
        log.debug("dead letters: %s", "; ".join(stats.dead_letters))


async def every(
    interval_s: float, job: Callable[[], Awaitable[object]], store: Store, stop: asyncio.Event, what: str
) -> None:
    """Run `job` every `interval_s` until `stop` is set; a failure is logged, and the next run gets a
    fresh connection. Used for partition maintenance (hourly; the first run happens before `run`
    starts) and the hour/day rollup refresh (`run` does a last one after the last commit)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        try:
            await job()
        except StoreError as err:
            log.error("%s failed, will retry: %s", what, err)
            with contextlib.suppress(StoreError):
                await store.reconnect()


async def run(settings: CloudSettings, stop: asyncio.Event | None = None) -> None:
    """Run the receiver until `stop` is set (or SIGTERM/SIGINT). `StoreError` if the DB is unusable."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    fleet_web = settings.web or WebSettings()  # its time zone and trip gap: those of the kept daily tables
    kept = KeptDays.of(fleet_web)
    writer_store = await Store.open(settings.database, kept=kept)
    maintenance_store = await Store.open(settings.database, kept=kept)
    rollup_store = await Store.open(settings.database, kept=kept)
    fleet_control_store = await Store.open(settings.database, kept=kept)
    metrics_server = None
    receiver: MqttReceiver | None = None
    views: FleetViews | None = None
    try:
        await maintenance_store.maintain()
        await writer_store.learn_catalog_signals()
        if settings.metrics.port:
            metrics_server, _ = start_http_server(settings.metrics.port, settings.metrics.host)
        if settings.web is not None:
            views = await FleetViews.start(settings.web, settings.database)
            log.info("fleet views at %s", views.url)
        # Above Receive Maximum: QoS 1 never overflows it; the slack is for QoS 0 status messages.
        inbox = Inbox(capacity=settings.mqtt.receive_maximum + 1000)
        receiver = MqttReceiver(settings.mqtt, loop, inbox)
        receiver.start()
        log.info(
            "receiver started: broker %s:%d, group %s, database schema %s (%s)",
            settings.mqtt.host,
            settings.mqtt.port,
            settings.mqtt.shared_group,
            settings.database.schema_name,
            writer_store.flavour.value,
        )
        writer = Writer(writer_store, receiver, inbox, settings.ingest)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(writer.run(stop), name="writer")
            hourly, rollups_every = MAINTENANCE_INTERVAL_S, settings.database.rollup_refresh_s
            maintain = every(hourly, maintenance_store.maintain, maintenance_store, stop, "maintenance")
            refresh = every(rollups_every, rollup_store.refresh_rollups, rollup_store, stop, "rollup refresh")
            tasks.create_task(maintain, name="maintenance")
            tasks.create_task(refresh, name="rollups")
            if (
                settings.fleet_control.enabled
            ):  # desired state on the downlink, rollouts (cloud.fleet_control)
                link = FleetLink(settings.mqtt, loop)
                control = FleetControl(fleet_control_store, link, settings.fleet_control)
                tasks.create_task(control.run(stop), name="fleet-control")
        with contextlib.suppress(StoreError):
            await rollup_store.refresh_rollups(keep_days=False)  # quick: ended days wait for the next run
        log.info("receiver stopped: last group committed and acknowledged")
    finally:
        if receiver is not None:
            receiver.stop()
        if views is not None:
            await views.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        await writer_store.close()
        await maintenance_store.close()
        await rollup_store.close()
        await fleet_control_store.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def serve(settings: CloudSettings, stop: asyncio.Event | None = None) -> None:
    """Serve only the fleet views until `stop` is set (or SIGTERM/SIGINT); defaults without [web]."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        views = await FleetViews.start(settings.web or WebSettings(), settings.database)
        try:
            log.info("fleet views at %s (database schema %s)", views.url, settings.database.schema_name)
            await stop.wait()
        finally:
            await views.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
