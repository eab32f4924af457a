"""The uplink: buffered records → wire batches → MQTT 5 (QoS 1, optional TLS); rows leave the buffer when the
cloud acknowledges them stored.

How rows leave the buffer
-------------------------
The broker is not trusted to keep anything (a restart without persistence or an expired session loses
its queue), so a PUBACK only moves a message's rows to "in flight" (`agent.inflight.InFlightWindow`, in
memory: per message its stream, seq span, unacknowledged seqs, when sent and when to re-send). The
receiver, after committing them to the database, publishes a commit acknowledgement
(`protocols.downlink`, retained, QoS 1) on this vehicle's `downlink/ack` topic; the uplink subscribes
to its `downlink_filter` (QoS 1) on every connect and deletes exactly the acknowledged rows it has in
flight (`BufferWorker.acknowledge`). Acknowledged seqs it has not sent in this process are left alone
(a retained ack may predate them if a reset buffer reused seqs): they are re-sent and acknowledged
again. In-flight rows not acknowledged within `ack_timeout_s` are re-sent, read back from the buffer
over the message's span (rows already acknowledged or evicted are simply not there); each re-send of
the same rows doubles the deadline up to `ack_timeout_max_s`, so a receiver away for hours does not
multiply the broker's queue. At most `max_inflight_records` rows are in flight: when the window is
full no new telemetry goes out (alerts have a reserve of one alert batch) until acks arrive. A
restarted agent has an empty window and re-sends everything still in its buffer; duplicates are
harmless (the receiver stores by (vehicle, seq, ts)). Rows the wire encoder refuses can never be sent
and are deleted at once, counted.

The other downlink messages, desired config and model releases (`protocols.fleet_control`), go to the
`on_desired` callback (fleet control), which only queues them: ack handling never waits on a model load.
Fleet control's applied report (`report_applied`) is published retained on `applied` at once, and again on
every connect.

PUBACKs are still awaited: aiomqtt 2.x `Client.publish(..., qos=1)` awaits the event paho sets in
`_handle_pubackcomp`, i.e. when the PUBACK arrives (aiomqtt 2.5.1 `publish`/`_on_publish`, paho-mqtt
2.2). aiomqtt drops the MQTT 5 PUBACK reason code, so `agent.mqtt_link.PubackWatch` wraps paho's
callback to notice a *refusing* PUBACK (reason ≥ 0x80, e.g. "not authorized"): that message is not in
flight.

Batching and ordering
---------------------
Alerts go first: every wake-up first publishes pending alerts on the alerts topic, then any message
whose re-send is due (alerts first), then telemetry. Samples and predictions go to the telemetry topic
in batches of at most `batch_max_records`, sent when a batch is full or its oldest row has waited
`batch_max_age_s`. At each connect the unsent rows already in the buffer are the backlog (`seq <
backlog_end`); they drain oldest-first, alternating with live batches (`seq >= backlog_end`) so fresh
data keeps flowing during a long drain. Publishes are sequential: one message awaiting its PUBACK.

Connection handling
-------------------
aiomqtt's reconnection pattern (docs/reconnection.md): one reusable `Client`, `async with client:` in a
loop, jittered exponential backoff between attempts. The backoff restarts from `backoff_initial_s`
only after a session in which the broker accepted a publish and refused none: an agent whose
publishes the broker refuses (ACL) backs off up to `backoff_max_s` instead of reconnecting twice a
second. No PUBACK within `puback_timeout_s` ("connected but stuck") ends the session; then a fresh
`Client` replaces the old one, whose graceful disconnect may itself hang on a dead socket. One log
line when the link fails, one when it recovers. The status topic is retained: "online" on connect,
"offline" on a clean stop and as the last will. On `stop()` the uplink publishes what is unsent and
waits for the acks of what is in flight, both within the flush time; what is left stays in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent import metrics
from agent.buffer import BufferWorker, Kind, WireRecord
from agent.inflight import InFlightMessage, InFlightWindow
from agent.mqtt_link import PubackWatch, abandon, filter_closed_socket_watchers, tls_context
from agent.settings import UplinkSettings
from protocols.downlink import CommitAck, DownlinkError, UnknownDownlinkTypeError, decode_downlink
from protocols.errors import WireError
from protocols.topics import (
    TopicKind,
    alerts_topic,
    applied_topic,
    downlink_ack_topic,
    downlink_config_topic,
    downlink_filter,
    status_topic,
    telemetry_topic,
    vehicle_topic,
)
from protocols.wire import AlertRecord, Batch, PredictionRecord, SampleRecord, encode_batch, encode_status

log = logging.getLogger(__name__)

__all__ = ["Uplink", "UplinkError", "encode_records", "filter_closed_socket_watchers", "next_attempt"]

AGENT_VERSION: Final = "0.1.0"
ALERT_BATCH_MAX: Final = 100
TELEMETRY_KINDS: Final = (Kind.SAMPLE, Kind.PREDICTION)
ALERT_KINDS: Final = (Kind.ALERT,)
DOWNLINK_QUEUE_MAX: Final = 100  # received downlink messages not yet handled (acks are retained anyway)


class UplinkError(Exception):
    """A broker link problem the uplink handles by reconnecting."""


class UplinkStuckError(UplinkError):
    """Connected, but no PUBACK within the deadline."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _split(
    records: Sequence[WireRecord],
) -> tuple[list[SampleRecord], list[PredictionRecord], list[AlertRecord]]:
    samples: list[SampleRecord] = []
    predictions: list[PredictionRecord] = []
    alerts: list[AlertRecord] = []
    for record in records:
        if isinstance(record, SampleRecord):
            samples.append(record)
        elif isinstance(record, PredictionRecord):
            predictions.append(record)
        else:
            alerts.append(record)
    return samples, predictions, alerts


def encode_records(
    vehicle_id: str, records: Sequence[WireRecord], quanta: Mapping[str, float]
) -> tuple[bytes | None, list[int]]:
    """Encode `records` as one batch → (payload, seqs of records the encoder refuses on their own).

    When the batch fails to encode, each record is tried alone to find the culprits; the payload then
    carries the others (None when none is left)."""

    def encode(chosen: Sequence[WireRecord]) -> bytes:
        samples, predictions, alerts = _split(chosen)
        return encode_batch(Batch(vehicle_id, tuple(samples), tuple(predictions), tuple(alerts)), quanta)

    try:
        return encode(records), []
    except WireError:
        pass
    refused: list[int] = []
    good: list[WireRecord] = []
    for record in records:
        try:
            encode([record])
        except WireError:
            refused.append(record.seq)
        else:
            good.append(record)
    return (encode(good) if good else None), refused


@dataclass(frozen=True, slots=True)
class _Stream:
    """Where rows of some kinds go: "telemetry" (samples, predictions) or "alerts"."""

    label: str
    kinds: tuple[Kind, ...]
    topic: str


class Uplink:
    """Moves committed rows from the buffer to the broker; see the module docstring."""

    def __init__(
        self,
        settings: UplinkSettings,
        vehicle_id: str,
        buffer: BufferWorker,
        quanta: Mapping[str, float],
        *,
        on_desired: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """`on_desired(topic, payload)` takes desired-config and model-release messages; it must not block."""
        self._settings = settings
        self._vehicle_id = vehicle_id
        self._buffer = buffer
        self._quanta = dict(quanta)
        self._address = settings.address
        fleet = settings.fleet_id
        self._telemetry = _Stream("telemetry", TELEMETRY_KINDS, telemetry_topic(fleet, vehicle_id))
        self._alerts = _Stream("alerts", ALERT_KINDS, alerts_topic(fleet, vehicle_id))
        self._streams = {stream.label: stream for stream in (self._telemetry, self._alerts)}
        self._status_topic = status_topic(fleet, vehicle_id)
        self._downlink_filter = downlink_filter(fleet, vehicle_id)
        self._ack_topic = downlink_ack_topic(fleet, vehicle_id)
        self._config_topic = downlink_config_topic(fleet, vehicle_id)
        self._model_filter = f"{vehicle_topic(fleet, vehicle_id, TopicKind.DOWNLINK_MODEL)}/+"
        self._applied_topic = applied_topic(fleet, vehicle_id)
        self._on_desired = on_desired
        self._applied: bytes | None = None  # the latest applied report: published on connect and on change
        self._applied_due = False
        self._window = InFlightWindow(settings.ack_timeout_s, settings.ack_timeout_max_s)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._flush_deadline: float | None = None  # loop time by which a stopping uplink gives up
        self._send_now = False  # `send_now`: the live rows go without waiting for their batch age
        self._live_waiting_since: float | None = None
        self._failing = False
        self._ever_connected = False
        self._accepted = False  # this session: a publish the broker accepted
        self._refused = False  # this session: a publish the broker refused
        self._attempt = 0
        self._logged: set[str] = set()  # kinds of problems already logged once
        self.connected = False

    @property
    def inflight_rows(self) -> int:
        """Rows sent and PUBACKed, not yet acknowledged by the cloud."""
        return self._window.rows

    def in_flight(self) -> list[InFlightMessage]:
        """What is in flight now (copies): per message its stream, seqs and re-send deadline."""
        return self._window.messages()

    @property
    def reconnect_attempt(self) -> int:
        """Failed connection attempts since the last session the broker accepted a publish in."""
        return self._attempt

    # --- control -------------------------------------------------------------------------------------

    def notify(self) -> None:
        """New rows were committed (called by the committer)."""
        self._wake.set()

    def send_now(self) -> None:
        """Send the live rows committed so far at once, whatever their age (a replay reached its end:
        nothing more comes to fill the batch)."""
        self._send_now = True
        self._wake.set()

    def report_applied(self, payload: bytes) -> None:
        """Publish this applied report (retained) now and on every connect (fleet control calls it)."""
        self._applied, self._applied_due = payload, True
        self._wake.set()

    def set_batching(self, settings: UplinkSettings) -> None:
        """Batch with `settings` from now on (a remote config: `batch_max_records`, `batch_max_age_s`)."""
        self._settings = settings
        self._wake.set()

    def stop(self, flush_s: float) -> None:
        """Publish what can be published within `flush_s`, say "offline", disconnect, return from run()."""
        self._flush_deadline = asyncio.get_running_loop().time() + flush_s
        self._stopping.set()
        self._wake.set()

    # --- the connection loop -------------------------------------------------------------------------

    def _new_client(self) -> tuple[aiomqtt.Client, PubackWatch]:
        settings = self._settings
        will = aiomqtt.Will(
            self._status_topic,
            encode_status("offline", _now_ms(), reason="connection lost"),
            qos=1,
            retain=True,
        )
        client = aiomqtt.Client(
            self._address.host,
            self._address.port,
            identifier=settings.client_id or f"voltgate-{settings.fleet_id}-{self._vehicle_id}",
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=settings.keepalive_s,
            timeout=settings.connect_timeout_s,
            tls_context=tls_context(settings) if self._address.tls else None,
            logger=logging.getLogger("agent.uplink.mqtt"),
            max_queued_incoming_messages=DOWNLINK_QUEUE_MAX,
        )
        return client, PubackWatch(client)

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; returns after `stop()` once flushed (or out of time)."""
        client, watch = self._new_client()
        while not self._stopping.is_set():
            self._accepted = self._refused = False
            try:
                async with client:
                    self._on_connected()
                    await self._session(client, watch)
                    await self._say_offline(client)
                return
            except (aiomqtt.MqttError, UplinkError, OSError) as err:
                self._on_link_failed(err)
                if isinstance(err, UplinkStuckError | aiomqtt.MqttReentrantError):
                    abandon(client)
                    client, watch = self._new_client()
            self._attempt = next_attempt(self._attempt, accepted=self._accepted, refused=self._refused)
            delay = self._backoff_s(self._attempt - 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2 ** min(attempt, 30))
        return float(
            ceiling / 2 + random.uniform(0, ceiling / 2)
        )  # "equal jitter": spread, never a tight loop

    def _on_connected(self) -> None:
        self.connected = True
        metrics.UPLINK_CONNECTED.set(1)
        if self._failing:
            log.info("uplink to %s:%d recovered", self._address.host, self._address.port)
        elif not self._ever_connected:
            log.info("uplink connected to %s:%d", self._address.host, self._address.port)
        self._failing = False
        self._ever_connected = True

    def _on_link_failed(self, err: BaseException) -> None:
        was_connected = self.connected
        self.connected = False
        metrics.UPLINK_CONNECTED.set(0)
        if was_connected or not self._failing:
            metrics.UPLINK_RECONNECTS.inc()
        if not self._failing:
            log.warning(
                "uplink to %s:%d failed (%s); retrying with backoff",
                self._address.host,
                self._address.port,
                err or type(err).__name__,
            )
            self._failing = True

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            payload = encode_status("offline", _now_ms(), reason="stopped")
            await client.publish(self._status_topic, payload, qos=1, retain=True, timeout=2.0)
        self.connected = False
        metrics.UPLINK_CONNECTED.set(0)

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(message, *args)

    # --- one connected session: a sender and a downlink reader ---------------------------------------

    async def _session(self, client: aiomqtt.Client, watch: PubackWatch) -> None:
        await self._subscribe_downlink(client)
        online = encode_status("online", _now_ms(), agent_version=AGENT_VERSION)
        await self._publish(client, watch, self._status_topic, online, retain=True)
        await self._publish_applied(client, watch)
        sender = asyncio.create_task(self._send_loop(client, watch), name="uplink-send")
        reader = asyncio.create_task(self._read_downlink(client), name="uplink-downlink")
        try:
            done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, reader):
                task.cancel()
            results = await asyncio.gather(sender, reader, return_exceptions=True)
        for result in results:  # the sender's own error first; the reader ends only on a link failure
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        if reader in done and sender not in done:
            raise UplinkError("downlink reader stopped")

    async def _subscribe_downlink(self, client: aiomqtt.Client) -> None:
        try:
            result = await client.subscribe(
                self._downlink_filter, qos=1, timeout=self._settings.puback_timeout_s
            )
        except aiomqtt.MqttCodeError as err:
            raise UplinkError(f"downlink subscribe failed: {err}") from err
        except aiomqtt.MqttError as err:
            raise UplinkStuckError(f"no SUBACK within {self._settings.puback_timeout_s:g} s") from err
        codes = result if isinstance(result, list) else []
        if any(isinstance(code, ReasonCode) and code.is_failure for code in codes):
            # Rows then never leave the buffer, but nothing is lost: they are re-sent with backoff.
            metrics.UPLINK_DOWNLINK_REFUSED.labels("subscribe").inc()
            self._log_once(
                "subscribe", "broker refused the downlink subscription %s: %s", self._downlink_filter, codes
            )

    async def _read_downlink(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not message.topic.matches(self._ack_topic):
                self._dispatch_desired(message)
                continue
            try:
                if not isinstance(payload, bytes | bytearray):
                    raise DownlinkError(f"payload of type {type(payload).__name__}")
                ack = decode_downlink(bytes(payload))
            except UnknownDownlinkTypeError as err:
                metrics.UPLINK_DOWNLINK_REFUSED.labels("unknown_type").inc()
                self._log_once("unknown_type", "downlink message of an unknown type skipped: %s", err)
                continue
            except DownlinkError as err:
                metrics.UPLINK_DOWNLINK_REFUSED.labels("malformed").inc()
                self._log_once("malformed", "malformed downlink message skipped: %s", err)
                continue
            if not message.retain:  # a live ack: the receiver is there now
                self._window.receiver_alive(asyncio.get_running_loop().time())
            await self._apply_ack(ack)

    def _dispatch_desired(self, message: aiomqtt.Message) -> None:
        """Desired config and model releases go to fleet control, which takes them without waiting."""
        topic = message.topic
        if self._on_desired is None or not (
            topic.matches(self._config_topic) or topic.matches(self._model_filter)
        ):
            return
        payload = message.payload
        self._on_desired(topic.value, bytes(payload) if isinstance(payload, bytes | bytearray) else b"")

    async def _publish_applied(self, client: aiomqtt.Client, watch: PubackWatch) -> None:
        if self._applied is None:
            return
        self._applied_due = False
        try:
            await self._publish(client, watch, self._applied_topic, self._applied, retain=True)
        except BaseException:
            self._applied_due = True
            raise

    async def _apply_ack(self, ack: CommitAck) -> None:
        """Delete exactly the acknowledged rows that this process has in flight. Others are left alone:
        a retained ack may predate them (seqs reused after a buffer was reset); they are re-sent and
        acknowledged again instead."""
        hits = self._window.acknowledge(ack.ranges)
        deleted = await self._buffer.acknowledge(hits) if hits else 0
        metrics.UPLINK_ACKS_RECEIVED.inc()
        metrics.UPLINK_LAST_ACK.set_to_current_time()
        metrics.UPLINK_ACKED_ROWS.inc(deleted)
        metrics.UPLINK_INFLIGHT_ROWS.set(self._window.rows)
        self._wake.set()

    async def _send_loop(self, client: aiomqtt.Client, watch: PubackWatch) -> None:
        backlog_end = await self._buffer.committed_seq()
        prefer_live = True
        settings = self._settings
        while True:
            loop_time = asyncio.get_running_loop().time()
            stopping = self._stopping.is_set()
            if stopping and self._flush_deadline is not None and loop_time >= self._flush_deadline:
                return
            self._wake.clear()
            settings = self._settings  # a remote config may change the batching
            if self._applied_due:
                await self._publish_applied(client, watch)
                continue
            if self._window.rows < settings.max_inflight_records + ALERT_BATCH_MAX:  # alerts' reserve
                alerts = await self._unsent(self._alerts, ALERT_BATCH_MAX, 0, None)
                if alerts:
                    await self._send(client, watch, self._alerts, alerts)
                    continue
            if not stopping and await self._resend_due(client, watch, loop_time):
                continue
            live: list[WireRecord] = []
            if self._window.rows < settings.max_inflight_records:
                limit = settings.batch_max_records
                backlog = await self._unsent(self._telemetry, limit, 0, backlog_end)
                live = await self._unsent(self._telemetry, limit, backlog_end, None)
                live_due = self._live_due(live, loop_time, stopping)
                if live_due and (prefer_live or not backlog):
                    await self._send(client, watch, self._telemetry, live)
                    if len(live) < settings.batch_max_records:
                        self._live_waiting_since = None
                        self._send_now = False
                    prefer_live = False
                    continue
                if backlog:
                    await self._send(client, watch, self._telemetry, backlog)
                    prefer_live = True
                    continue
                if stopping and not live and not self._window.rows:
                    return
            await self._sleep_until_due(live, loop_time)

    async def _unsent(
        self, stream: _Stream, limit: int, from_seq: int, before_seq: int | None
    ) -> list[WireRecord]:
        """The oldest rows of `stream` in `[from_seq, before_seq)` that are not in flight."""
        gaps = self._window.gaps(stream.label, from_seq, before_seq)
        for i, (low, high) in enumerate(gaps):
            rows = await self._buffer.pending(limit, stream.kinds, from_seq=low, before_seq=high)
            if rows:
                return rows
            if low == self._window.floor(stream.label) and i + 1 < len(gaps):
                # Nothing unsent up to the next gap (the span between is in flight): skip it next time.
                self._window.raise_floor(stream.label, gaps[i + 1][0])
        return []

    def _live_due(self, live: Sequence[WireRecord], now: float, stopping: bool) -> bool:
        if not live:
            self._live_waiting_since = None
            self._send_now = False
            return False
        if self._live_waiting_since is None:
            self._live_waiting_since = now
        return (
            stopping
            or self._send_now
            or len(live) >= self._settings.batch_max_records
            or now - self._live_waiting_since >= self._settings.batch_max_age_s
        )

    async def _sleep_until_due(self, live: Sequence[WireRecord], now: float) -> None:
        """Until new rows, an ack, a due re-send, a due live batch or the flush deadline."""
        deadlines: list[float] = []
        if live and self._live_waiting_since is not None:
            deadlines.append(self._live_waiting_since + self._settings.batch_max_age_s)
        resend_at = self._window.next_resend_at()
        if resend_at is not None and not self._stopping.is_set():
            deadlines.append(resend_at)
        if self._stopping.is_set() and self._flush_deadline is not None:
            deadlines.append(self._flush_deadline)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _resend_due(self, client: aiomqtt.Client, watch: PubackWatch, now: float) -> bool:
        """Re-send the first in-flight message whose ack is overdue; False when none is."""
        for key in self._window.due(now):
            message = self._window.get(key)
            if message is None:
                continue
            stream = self._streams[message.stream]
            span = message.last_seq - message.first_seq + 1
            rows = await self._buffer.pending(
                span, stream.kinds, from_seq=message.first_seq, before_seq=message.last_seq + 1
            )
            rows = [row for row in rows if row.seq in message.seqs]
            payload, refused = await self._encode(rows)
            skip = set(refused)
            sent = [row.seq for row in rows if row.seq not in skip]
            self._window.resending(key, sent, now)
            metrics.UPLINK_INFLIGHT_ROWS.set(self._window.rows)
            if payload is None or not sent:
                continue  # every row was acknowledged, evicted or refused meanwhile
            await self._publish(client, watch, stream.topic, payload)
            metrics.UPLINK_RESENT_RECORDS.inc(len(sent))
            return True
        return False

    async def _encode(self, records: Sequence[WireRecord]) -> tuple[bytes | None, list[int]]:
        if not records:
            return None, []
        payload, refused = await asyncio.to_thread(encode_records, self._vehicle_id, records, self._quanta)
        if refused:
            # Never sendable: deleted locally, counted (they would block the stream otherwise).
            metrics.UPLINK_REJECTED.inc(len(refused))
            self._log_once(
                "rejected",
                "wire encoder refused %d records (deleted, counted); first seq %d",
                len(refused),
                refused[0],
            )
            await self._buffer.acknowledge(refused)
        return payload, refused

    async def _send(
        self, client: aiomqtt.Client, watch: PubackWatch, stream: _Stream, records: Sequence[WireRecord]
    ) -> None:
        """Publish rows never sent before; once PUBACKed they are in flight until the cloud acks them."""
        payload, refused = await self._encode(records)
        if payload is None:
            return
        skip = set(refused)
        seqs = [record.seq for record in records if record.seq not in skip]
        key = self._window.add(stream.label, seqs, asyncio.get_running_loop().time())
        try:
            await self._publish(client, watch, stream.topic, payload)
        except BaseException:
            self._window.remove(key)  # not taken by the broker: unsent again, sent on the next session
            raise
        finally:
            metrics.UPLINK_INFLIGHT_ROWS.set(self._window.rows)
        metrics.UPLINK_BATCHES.labels(stream.label).inc()
        metrics.UPLINK_RECORDS.labels(stream.label).inc(len(seqs))
        metrics.UPLINK_BYTES.labels(stream.label).inc(len(payload))

    async def _publish(
        self, client: aiomqtt.Client, watch: PubackWatch, topic: str, payload: bytes, *, retain: bool = False
    ) -> None:
        """Publish at QoS 1 and return once the PUBACK accepted it; raise otherwise (rows then stay)."""
        refusals = watch.refusals
        try:
            # Returns when paho reports the PUBACK (see the module docstring), or times out.
            await client.publish(
                topic, payload, qos=1, retain=retain, timeout=self._settings.puback_timeout_s
            )
        except aiomqtt.MqttCodeError as err:
            metrics.UPLINK_FAILURES.labels("publish").inc()
            raise UplinkError(f"publish failed: {err}") from err
        except aiomqtt.MqttError as err:
            metrics.UPLINK_FAILURES.labels("timeout").inc()
            raise UplinkStuckError(f"no PUBACK within {self._settings.puback_timeout_s:g} s") from err
        if watch.refusals != refusals:
            self._refused = True
            metrics.UPLINK_FAILURES.labels("refused").inc()
            self._log_once("refused", "broker refused a publish on %s: %s", topic, watch.last_reason)
            raise UplinkError(f"broker refused the publish: {watch.last_reason}")
        self._accepted = True


def next_attempt(attempt: int, *, accepted: bool, refused: bool) -> int:
    """The backoff attempt after a session ended: back to the start only when the broker accepted a
    publish and refused none (a connect that works is not enough: an ACL may refuse every publish)."""
    return 1 if accepted and not refused else attempt + 1
