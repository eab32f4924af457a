"""The receiver's fleet-control task: desired state out on the downlink, applied reports in, rollouts on.

`voltgate-cloud fleet` writes what the fleet should run into the database (`cloud.fleet_store`); this task
makes it so. Every `fleet_control.poll_s`, and at once when a bus reports, it

1. stores the applied reports received since (`voltgate/v1/{fleet}/{vehicle}/applied`, retained; a bad one
   is counted, logged once, skipped);
2. advances each active rollout from the buses' reports (`cloud.rollouts.advance`: canaries first, then the
   fleet; a canary's `refused` or `rolled_back` halts it);
3. publishes, retained at QoS 1, each bus's desired configuration (`downlink/config`) and, per model name,
   the release of the rollout stage that includes it (`downlink/model/{name}`) whenever its revision is
   above the one this process last published there (so each is published once per process, and all of
   them again after a restart: the bus ignores a revision it has handled). A bus offline meanwhile gets the
   retained messages when it connects.

It has its own broker connection (`FleetLink`, paho, client id `{mqtt.client_id}-fleet`, clean start) with
the receiver's identity, so the ingest path's manual acknowledgements and persistent session stay as they
are. Its subscription to `applied` asks for the retained messages on every (re)connect: the newest report of
every bus comes again, and the store keeps the newest by the bus's timestamp. Replicas each do all of this;
the database makes their rollout moves agree (only an active rollout moves) and a message published twice is
applied once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter

from cloud import fleet_store
from cloud.errors import StoreError
from cloud.mqtt import new_client
from cloud.rollouts import ACTIVE_STATES, Rollout, advance, desired_rollout, packet_bytes
from cloud.settings import FleetControlSettings, MqttSettings
from cloud.store import Store
from protocols.downlink import DownlinkError
from protocols.errors import TopicError
from protocols.fleet_control import ModelRelease, decode_applied, encode_desired_config, encode_model_release
from protocols.topics import (
    TopicKind,
    downlink_config_topic,
    downlink_model_topic,
    parse_topic,
    subscription_filter,
)

log = logging.getLogger(__name__)

MAX_PENDING_REPORTS: Final = 10_000
MAX_CACHED_RELEASES: Final = 8

REPORTS = Counter(
    "voltgate_cloud_applied_reports_total", "Applied reports from buses, by outcome", ["outcome"]
)  # stored | older | bad | dropped
DOWNLINK_PUBLISHED = Counter(
    "voltgate_cloud_fleet_downlink_published_total", "Desired-state messages published, by kind", ["kind"]
)  # config | model
PUBLISH_REFUSED = Counter(
    "voltgate_cloud_fleet_downlink_unpublishable_total", "Desired-state messages that could not be encoded"
)
ROLLOUT_MOVES = Counter("voltgate_cloud_rollout_moves_total", "Rollouts moved on, by new state", ["state"])


@dataclass(frozen=True, slots=True)
class Report:
    topic: str
    payload: bytes


class FleetLink:
    """The fleet-control broker connection: retained downlink publishes out, applied reports in."""

    def __init__(self, settings: MqttSettings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._loop = loop
        self.reports: collections.deque[Report] = collections.deque()
        self.arrived = asyncio.Event()
        client = new_client(settings, f"{settings.client_id}-fleet")
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        self._client.connect_async(
            self._settings.host, self._settings.port, keepalive=self._settings.keepalive_s, clean_start=True
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish_retained(self, topic: str, payload: bytes) -> bool:
        """Queue a retained QoS 1 message (sent now, or after the next connect); False if paho refused it."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        return info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)

    # ---- paho's thread ----------------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("fleet control: the broker refused the connection: %s", reason)
            return
        # Retain handling 0: every (re)subscription brings each bus's latest report again.
        client.subscribe(subscription_filter(TopicKind.APPLIED), options=SubscribeOptions(qos=1))

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._push, Report(message.topic, bytes(message.payload)))

    def _push(self, report: Report) -> None:
        if len(self.reports) >= MAX_PENDING_REPORTS:
            REPORTS.labels("dropped").inc()  # retained: it comes again on the next reconnect
            return
        self.reports.append(report)
        self.arrived.set()


class FleetControl:
    """The task; `run` until `stop` is set. `step` is one round (also what the tests drive)."""

    def __init__(self, store: Store, link: FleetLink, settings: FleetControlSettings) -> None:
        self._store = store
        self._link = link
        self._settings = settings
        self._published: dict[str, int] = {}  # topic → revision this process published there
        self._releases: collections.OrderedDict[int, ModelRelease] = collections.OrderedDict()
        self._bad_logged: set[str] = set()
        self._unpublishable: set[str] = set()  # buses logged once already

    async def run(self, stop: asyncio.Event) -> None:
        self._link.start()
        failing = False
        try:
            while not stop.is_set():
                try:
                    await self.step()
                    if failing:
                        log.info("fleet control: database reachable again")
                        failing = False
                except StoreError as err:
                    if not failing:
                        log.error("fleet control failed, retrying: %s", err)
                        failing = True
                    with contextlib.suppress(StoreError):
                        await self._store.reconnect()
                await self._wait(stop)
        finally:
            self._link.stop()

    async def _wait(self, stop: asyncio.Event) -> None:
        if self._link.reports:
            return
        self._link.arrived.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._link.arrived.wait())]
        try:
            await asyncio.wait(waits, timeout=self._settings.poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def step(self) -> None:
        conn = self._store.connection
        touched = await self._store_reports()
        for fleet in sorted(set(await fleet_store.fleets(conn)) | touched):
            await self._fleet_step(fleet)

    async def _store_reports(self) -> set[str]:
        """Store the pending reports; the fleets they came from."""
        fleets: set[str] = set()
        while self._link.reports:
            report = self._link.reports[0]
            try:
                parts = parse_topic(report.topic)
                if parts.kind is not TopicKind.APPLIED:
                    raise TopicError(f"not an applied topic: {report.topic}")
                decoded = decode_applied(report.payload)
            except (DownlinkError, TopicError) as err:
                self._link.reports.popleft()
                REPORTS.labels("bad").inc()
                kind = type(err).__name__
                if kind not in self._bad_logged:
                    self._bad_logged.add(kind)
                    log.warning(
                        "fleet control: skipped a bad applied report on %s: %s (further ones counted in"
                        ' voltgate_cloud_applied_reports_total{outcome="bad"})',
                        report.topic,
                        err,
                    )
                continue
            stored = await fleet_store.store_applied(
                self._store.connection, parts.fleet, parts.vehicle, decoded
            )
            self._link.reports.popleft()  # only once stored: a database error keeps it for the next round
            REPORTS.labels("stored" if stored else "older").inc()
            fleets.add(parts.fleet)
        return fleets

    async def _fleet_step(self, fleet: str) -> None:
        conn = self._store.connection
        view = await fleet_store.fleet_view(conn, fleet)
        reports = {bus.vehicle: {m.name: m.applied for m in bus.models} for bus in view.buses}
        rollouts = list(view.rollouts)
        for i, rollout in enumerate(rollouts):
            if rollout.state not in ACTIVE_STATES:
                continue
            outcomes = {vehicle: names.get(rollout.name) for vehicle, names in reports.items()}
            state, reason = advance(rollout, view.vehicles, outcomes)
            if state is not rollout.state:
                await fleet_store.set_rollout_state(conn, rollout.rollout_id, state, reason)
                ROLLOUT_MOVES.labels(state.value).inc()
                log.info(
                    "rollout %s of %s in fleet %s: %s → %s%s",
                    rollout.rollout_id, rollout.name, fleet, rollout.state.value, state.value,
                    f" ({reason})" if reason else "",
                )  # fmt: skip
                rollouts[i] = dataclasses.replace(rollout, state=state, reason=reason)
        await self._publish(fleet, view, rollouts)

    async def _publish(self, fleet: str, view: fleet_store.FleetView, rollouts: list[Rollout]) -> None:
        for bus in view.buses:
            try:
                await self._publish_bus(fleet, bus, view, rollouts)
            except (DownlinkError, TopicError) as err:  # e.g. a message too large
                PUBLISH_REFUSED.inc()
                if bus.vehicle not in self._unpublishable:
                    self._unpublishable.add(bus.vehicle)
                    log.error(
                        "fleet control: cannot publish to bus %s of fleet %s: %s", bus.vehicle, fleet, err
                    )

    async def _publish_bus(
        self, fleet: str, bus: fleet_store.BusControl, view: fleet_store.FleetView, rollouts: list[Rollout]
    ) -> None:
        config = bus.desired_config
        if config is not None:
            topic = downlink_config_topic(fleet, bus.vehicle)
            if self._published.get(topic, 0) < config.revision:
                self._send(topic, config.revision, encode_desired_config(config), "config")
        for name in sorted({r.name for r in rollouts}):
            wanted = desired_rollout([r for r in rollouts if r.name == name], bus.vehicle, view.vehicles)
            if wanted is None:
                continue
            topic = downlink_model_topic(fleet, bus.vehicle, name)
            if self._published.get(topic, 0) != wanted.revision:
                release = await self._release(wanted)
                if packet_bytes(release, fleet) > self._settings.max_packet_bytes:
                    raise DownlinkError(
                        f"release {wanted.rollout_id} is above fleet_control.max_packet_bytes"
                    )
                self._send(topic, wanted.revision, encode_model_release(release), "model")

    def _send(self, topic: str, revision: int, payload: bytes, kind: str) -> None:
        if self._link.publish_retained(topic, payload):
            self._published[topic] = revision
            DOWNLINK_PUBLISHED.labels(kind).inc()
        else:
            log.warning("fleet control: could not queue %s (paho's queue full); next round", topic)

    async def _release(self, rollout: Rollout) -> ModelRelease:
        cached = self._releases.get(rollout.revision)
        if cached is None:
            cached = await fleet_store.release(self._store.connection, rollout)
            self._releases[rollout.revision] = cached
            while len(self._releases) > MAX_CACHED_RELEASES:
                self._releases.popitem(last=False)
        return cached
