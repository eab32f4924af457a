"""The uplink: buffered records → wire batches → MQTT 5 (QoS 1, optional TLS) → acknowledged rows deleted.

How rows leave the buffer
-------------------------
A row is deleted only after the broker's PUBACK for the message that carried it. aiomqtt 2.x makes that
easy to get right: `Client.publish(..., qos=1)` registers an event under the message id and awaits it;
the event is set by `Client._on_publish`, which paho calls from `_handle_pubackcomp`, i.e. when the PUBACK
arrives (checked in aiomqtt 2.5.1 `client.py`, `publish` and `_on_publish`, and paho-mqtt 2.2
`_handle_pubackcomp`). aiomqtt drops the MQTT 5 PUBACK reason code, so `_watch_puback_reasons` wraps paho's
callback to notice a *refusing* PUBACK (reason ≥ 0x80, e.g. "not authorized"), which must not delete rows.
Redelivery (a PUBACK lost on the way back) makes duplicates, which the receiver drops by (vehicle, seq).

Batching and ordering
---------------------
Alerts bypass batching: every wake-up first publishes pending alerts on the alerts topic. Samples and
predictions go to the telemetry topic in batches of at most `batch_max_records`, sent when a batch is
full or its oldest row has waited `batch_max_age_s`. At each connect the rows already in the buffer are
the backlog (`seq < backlog_end`); they drain oldest-first, alternating with live batches (`seq >=
backlog_end`) so fresh data keeps flowing during a long drain. Publishes are sequential: one message in
flight, so a slow link never holds more than one batch in memory.

Connection handling
-------------------
aiomqtt's reconnection pattern (docs/reconnection.md): one reusable `Client`, `async with client:` in a
loop, jittered exponential backoff between attempts. No PUBACK within `puback_timeout_s` ("connected but
stuck") ends the session; then a fresh `Client` replaces the old one, whose graceful disconnect may itself
hang on a dead socket. One log line when the link fails, one when it recovers. The status topic is
retained: "online" on connect, "offline" on a clean stop and as the last will.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import metrics
from agent.buffer import BufferWorker, Kind, WireRecord
from agent.settings import UplinkSettings
from protocols.errors import WireError
from protocols.topics import alerts_topic, status_topic, telemetry_topic
from protocols.wire import AlertRecord, Batch, PredictionRecord, SampleRecord, encode_batch, encode_status

log = logging.getLogger(__name__)

AGENT_VERSION: Final = "0.1.0"
ALERT_BATCH_MAX: Final = 100
TELEMETRY_KINDS: Final = (Kind.SAMPLE, Kind.PREDICTION)
ALERT_KINDS: Final = (Kind.ALERT,)


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


def _tls_context(settings: UplinkSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.cert_file is not None and settings.key_file is not None:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    if settings.tls_insecure:
        context.check_hostname = False
    return context


class _PubackWatch:
    """Counts PUBACKs whose MQTT 5 reason code is a failure, by wrapping the paho callback aiomqtt
    installs (aiomqtt discards the reason code). Sequential publishing makes a count change during one
    publish mean: that publish (or, conservatively, a concurrent one) was refused."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.refusals = 0
        self.last_reason = ""
        paho = client._client
        original = paho.on_publish
        assert original is not None  # aiomqtt installs Client._on_publish in its constructor

        def on_publish(
            paho_client: Any, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
        ) -> None:
            if isinstance(reason, ReasonCode) and reason.is_failure:
                self.refusals += 1
                self.last_reason = str(reason)
            original(paho_client, userdata, mid, reason, properties)  # type: ignore[call-arg]

        paho.on_publish = on_publish


class Uplink:
    """Moves committed rows from the buffer to the broker; see the module docstring."""

    def __init__(
        self,
        settings: UplinkSettings,
        vehicle_id: str,
        buffer: BufferWorker,
        quanta: Mapping[str, float],
    ) -> None:
        self._settings = settings
        self._vehicle_id = vehicle_id
        self._buffer = buffer
        self._quanta = dict(quanta)
        self._address = settings.address
        self._telemetry_topic = telemetry_topic(settings.fleet_id, vehicle_id)
        self._alerts_topic = alerts_topic(settings.fleet_id, vehicle_id)
        self._status_topic = status_topic(settings.fleet_id, vehicle_id)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._flush_deadline: float | None = None  # loop time by which a stopping uplink gives up
        self._live_waiting_since: float | None = None
        self._failing = False
        self._ever_connected = False
        self._refusal_logged = False
        self._rejection_logged = False
        self.connected = False

    # --- control -------------------------------------------------------------------------------------

    def notify(self) -> None:
        """New rows were committed (called by the committer)."""
        self._wake.set()

    def stop(self, flush_s: float) -> None:
        """Publish what can be published within `flush_s`, say "offline", disconnect, return from run()."""
        self._flush_deadline = asyncio.get_running_loop().time() + flush_s
        self._stopping.set()
        self._wake.set()

    # --- the connection loop -------------------------------------------------------------------------

    def _new_client(self) -> tuple[aiomqtt.Client, _PubackWatch]:
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
            identifier=settings.client_id or f"voltgate-{self._vehicle_id}",
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=settings.keepalive_s,
            timeout=settings.connect_timeout_s,
            tls_context=_tls_context(settings) if self._address.tls else None,
            logger=logging.getLogger("agent.uplink.mqtt"),
        )
        return client, _PubackWatch(client)

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; returns after `stop()` once flushed (or out of time)."""
        client, watch = self._new_client()
        attempt = 0
        while not self._stopping.is_set():
            try:
                async with client:
                    self._on_connected()
                    attempt = 0
                    await self._session(client, watch)
                    await self._say_offline(client)
                return
            except (aiomqtt.MqttError, UplinkError, OSError) as err:
                self._on_link_failed(err)
                if isinstance(err, UplinkStuckError | aiomqtt.MqttReentrantError):
                    _abandon(client)
                    client, watch = self._new_client()
            delay = self._backoff_s(attempt)
            attempt += 1
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

    # --- one connected session -----------------------------------------------------------------------

    async def _session(self, client: aiomqtt.Client, watch: _PubackWatch) -> None:
        online = encode_status("online", _now_ms(), agent_version=AGENT_VERSION)
        await self._publish(client, watch, self._status_topic, online, retain=True)
        backlog_end = await self._buffer.committed_seq()
        prefer_live = True
        while True:
            loop_time = asyncio.get_running_loop().time()
            stopping = self._stopping.is_set()
            if stopping and self._flush_deadline is not None and loop_time >= self._flush_deadline:
                return
            self._wake.clear()
            if await self._send_alerts(client, watch):
                continue
            backlog = await self._buffer.pending(
                self._settings.batch_max_records, TELEMETRY_KINDS, before_seq=backlog_end
            )
            live = await self._buffer.pending(
                self._settings.batch_max_records, TELEMETRY_KINDS, from_seq=backlog_end
            )
            live_due = self._live_due(live, loop_time, stopping)
            if live_due and (prefer_live or not backlog):
                await self._send_telemetry(client, watch, live)
                if len(live) < self._settings.batch_max_records:
                    self._live_waiting_since = None
                prefer_live = False
                continue
            if backlog:
                await self._send_telemetry(client, watch, backlog)
                prefer_live = True
                continue
            if stopping and not live:
                return
            await self._sleep_until_due(live, loop_time)

    def _live_due(self, live: Sequence[WireRecord], now: float, stopping: bool) -> bool:
        if not live:
            self._live_waiting_since = None
            return False
        if self._live_waiting_since is None:
            self._live_waiting_since = now
        return (
            stopping
            or len(live) >= self._settings.batch_max_records
            or now - self._live_waiting_since >= self._settings.batch_max_age_s
        )

    async def _sleep_until_due(self, live: Sequence[WireRecord], now: float) -> None:
        timeout: float | None = None
        if live and self._live_waiting_since is not None:
            timeout = max(0.0, self._live_waiting_since + self._settings.batch_max_age_s - now)
        if self._stopping.is_set() and self._flush_deadline is not None:
            remaining = max(0.0, self._flush_deadline - now)
            timeout = remaining if timeout is None else min(timeout, remaining)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _send_alerts(self, client: aiomqtt.Client, watch: _PubackWatch) -> bool:
        alerts = await self._buffer.pending(ALERT_BATCH_MAX, ALERT_KINDS)
        if not alerts:
            return False
        await self._send(client, watch, self._alerts_topic, "alerts", alerts)
        return True

    async def _send_telemetry(
        self, client: aiomqtt.Client, watch: _PubackWatch, records: Sequence[WireRecord]
    ) -> None:
        await self._send(client, watch, self._telemetry_topic, "telemetry", records)

    async def _send(
        self,
        client: aiomqtt.Client,
        watch: _PubackWatch,
        topic: str,
        label: str,
        records: Sequence[WireRecord],
    ) -> None:
        payload, refused = await asyncio.to_thread(encode_records, self._vehicle_id, records, self._quanta)
        if refused:
            metrics.UPLINK_REJECTED.inc(len(refused))
            if not self._rejection_logged:
                log.warning(
                    "wire encoder refused %d records (deleted, counted); first seq %d",
                    len(refused),
                    refused[0],
                )
                self._rejection_logged = True
            await self._buffer.acknowledge(refused)
        if payload is None:
            return
        await self._publish(client, watch, topic, payload)
        skip = set(refused)
        seqs = [record.seq for record in records if record.seq not in skip]
        await self._buffer.acknowledge(seqs)
        metrics.UPLINK_BATCHES.labels(label).inc()
        metrics.UPLINK_RECORDS.labels(label).inc(len(seqs))
        metrics.UPLINK_BYTES.labels(label).inc(len(payload))

    async def _publish(
        self, client: aiomqtt.Client, watch: _PubackWatch, topic: str, payload: bytes, *, retain: bool = False
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
            metrics.UPLINK_FAILURES.labels("refused").inc()
            if not self._refusal_logged:
                log.warning("broker refused a publish on %s: %s", topic, watch.last_reason)
                self._refusal_logged = True
            raise UplinkError(f"broker refused the publish: {watch.last_reason}")


def filter_closed_socket_watchers(loop: asyncio.AbstractEventLoop) -> None:
    """Keep aiomqtt's teardown race out of the error log; pass every other loop error on unchanged.

    aiomqtt registers paho's write watcher with `loop.call_soon_threadsafe(loop.add_writer, fd, ...)`
    (aiomqtt/client.py, `_on_socket_register_write`). When the connection closes between that call and
    the loop running it, `add_writer` meets a closed descriptor and the loop's default handler logs an
    ERROR with a traceback, although nothing was lost: there is nothing to write to a closed socket, and
    unacknowledged rows stay in the buffer. That one case is counted and logged once at DEBUG.
    """
    watchers = {"add_writer", "add_reader"}
    logged = False

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        callback = getattr(context.get("handle"), "_callback", None)  # asyncio.Handle keeps it there
        if (
            isinstance(error, OSError)
            and error.errno == errno.EBADF
            and getattr(callback, "__name__", "") in watchers
            and getattr(callback, "__self__", None) is loop
        ):
            nonlocal logged
            metrics.UPLINK_FAILURES.labels("closed_socket_watcher").inc()
            if not logged:
                log.debug("socket watcher for an already closed MQTT connection skipped (aiomqtt race)")
                logged = True
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _abandon(client: aiomqtt.Client) -> None:
    """Forget a client replaced after a stuck session: its socket is closed, and the disconnect error it
    may still record later is consumed (no "Future exception was never retrieved")."""
    with contextlib.suppress(Exception):
        client._client.disconnect()
    disconnected = client._disconnected
    disconnected.add_done_callback(lambda future: None if future.cancelled() else future.exception())
