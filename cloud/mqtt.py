"""The one adapter for paho-mqtt: a persistent MQTT 5 session with acknowledgement after commit.

Design. paho runs its own network thread (`loop_start`), which also reconnects with exponential
backoff (`reconnect_delay_set`). Its `on_message` callback does nothing but hand the message to the
asyncio loop with `call_soon_threadsafe` into an `Inbox` (a bounded deque plus an event, owned by
the loop thread), so everything after that — decoding, the database transaction, the decision to
acknowledge — runs in one place, the writer task. Acknowledgements go back through `client.ack()`,
which only queues a PUBACK in paho's (locked) outgoing queue and is safe from any thread.

Why it does not lose or duplicate anything:
- `manual_ack=True`: paho sends no PUBACK by itself; the writer acks a message only after the
  transaction holding it committed, in receipt order (MQTT 5 §4.6 wants PUBACKs in that order).
- A stable client id, clean start off and a finite session expiry: while this replica is down the
  broker keeps its subscriptions, its unacknowledged messages and new ones for it, and sends them
  again when it comes back. A message committed but not acked before a crash comes back and is a
  no-op in the store (ON CONFLICT DO NOTHING on (vehicle, seq, ts)).
- Receive Maximum (MQTT 5) caps how many unacknowledged messages the broker sends us; the inbox is
  sized above it, so in practice it never overflows (if it did, the message is dropped
  unacknowledged and counted; the broker sends it again after the next reconnect).
- Message ids are only meaningful on the connection they arrived on: each message carries the
  connection generation, and an ack for an older connection is not sent (the broker redelivers
  such messages on the new connection; they are committed again as no-ops and acked then).

Commit acknowledgements (the downlink). After a group's commit the writer publishes, per vehicle, one
retained QoS 1 acknowledgement (`protocols.downlink`) on that vehicle's `downlink/ack` topic, *then*
PUBACKs the inbound messages: a crash in between gets the messages redelivered, committed again as
no-ops and acknowledged then. `publish_ack` never blocks the writer: paho only queues the message
(sent by its network thread, and again after a reconnect); its outgoing queue is bounded
(`MAX_QUEUED_ACKS`) and an ack it cannot queue is counted and dropped — the bus re-sends those rows
after its ack timeout and gets them acknowledged then. This is what lets the bus, not the broker, keep
the data until it is stored: the broker may lose its queue (restart without persistence, session expiry).

Telemetry and alerts use shared subscriptions (replicas split the load); status is a plain
subscription (every replica sees every status, the store keeps the newest).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud import metrics
from cloud.errors import ConfigError
from cloud.settings import MqttSettings
from protocols.topics import TopicKind, shared_subscription, subscription_filter

log = logging.getLogger(__name__)

_RETAIN_ONLY_IF_NEW_SUBSCRIPTION = 1  # MQTT 5 Retain Handling: no retained flood on every reconnect
MAX_QUEUED_ACKS: Final = 10_000  # paho's outgoing queue (acks not yet PUBACKed by the broker)


def new_client(settings: MqttSettings, client_id: str, *, manual_ack: bool = False) -> paho.Client:
    """A paho MQTT 5 client with the receiver's identity: TLS files (its client certificate, when set, is
    what a broker that requires one, deploy/mosquitto/, knows it by; read here, so a bad one fails at
    start), username and reconnect back-off from `settings`."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=manual_ack
    )
    if settings.tls:
        try:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as err:
            raise ConfigError(
                f"cannot load the MQTT TLS files (mqtt.ca_file, cert_file, key_file): {err}"
            ) from err
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    client.reconnect_delay_set(
        min_delay=max(1, round(settings.reconnect_min_s)),
        max_delay=max(1, round(settings.reconnect_max_s)),
    )
    return client


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    received_at: datetime
    mid: int
    qos: int
    generation: int  # which connection it arrived on


class Inbox:
    """Messages handed from paho's thread to the asyncio loop. Touched only on the loop thread.

    `clock`: the loop's clock (`loop.time`) unless given; each message's arrival is kept by it, so a
    group waits for more messages only until its oldest one has waited `max_age_s`."""

    def __init__(self, capacity: int, clock: Callable[[], float] | None = None) -> None:
        # (when it arrived by `clock`, the message)
        self._items: collections.deque[tuple[float, InboundMessage]] = collections.deque()
        self._capacity = capacity
        self._clock = clock
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, message: InboundMessage) -> None:
        if len(self._items) >= self._capacity:
            metrics.INBOX_DROPPED.inc()
            return
        self._items.append((self._now(), message))
        self._ready.set()

    async def next_group(
        self, max_messages: int, max_age_s: float, stop: asyncio.Event
    ) -> list[InboundMessage]:
        """Up to `max_messages`, waiting for more only until the oldest of them has waited `max_age_s`
        since it arrived (messages that piled up while the writer was busy are taken at once); []
        once `stop` is set."""
        while not self._items:
            if stop.is_set():
                return []
            await self._wait(0.25)
        deadline = self._items[0][0] + max_age_s
        while len(self._items) < max_messages and not stop.is_set():
            remaining = deadline - self._now()
            if remaining <= 0:
                break
            await self._wait(remaining)
        return [self._items.popleft()[1] for _ in range(min(max_messages, len(self._items)))]

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def _wait(self, timeout_s: float) -> None:
        # Waiting on an event (not on a queue get) so that a timeout can never swallow a message.
        self._ready.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)


class MqttReceiver:
    """The receiving side of the broker connection; see the module docstring for the design."""

    def __init__(self, settings: MqttSettings, loop: asyncio.AbstractEventLoop, inbox: Inbox) -> None:
        self._settings = settings
        self._loop = loop
        self._inbox = inbox
        self._generation = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._was_connected = False
        client = new_client(settings, settings.client_id, manual_ack=True)
        client.max_queued_messages_set(MAX_QUEUED_ACKS)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client

    def start(self) -> None:
        """Connect in the background (retrying with backoff until it works) and start paho's thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.session_expiry_s
        props.ReceiveMaximum = self._settings.receive_maximum
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """Acknowledge committed messages, in receipt order; returns how many PUBACKs were queued."""
        acked = 0
        with self._lock:
            generation = self._generation
        for message in messages:
            if message.qos > 0 and message.generation == generation:
                self._client.ack(message.mid, message.qos)
                acked += 1
        return acked

    def publish_ack(self, topic: str, payload: bytes) -> bool:
        """Queue a retained QoS 1 commit acknowledgement; False when paho's bounded queue is full.

        Never blocks: paho sends it from its network thread, or after the next connect when the link
        is down (`MQTT_ERR_NO_CONN` still means queued)."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        return info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)

    def stop(self) -> None:
        """Disconnect cleanly (the session stays on the broker) and stop paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()

    # ---- paho's thread ----------------------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s",
                self._settings.host,
                self._settings.port,
                reason_code,
            )
            return
        with self._lock:
            self._generation += 1
        if self._was_connected and not flags.session_present:
            log.warning(
                "broker lost this receiver's session (expired or broker restarted without persistence)"
            )
        log.info(
            "connected to broker %s:%d as %s (session present: %s)",
            self._settings.host,
            self._settings.port,
            self._settings.client_id,
            flags.session_present,
        )
        self._was_connected = True
        group = self._settings.shared_group
        client.subscribe(
            [
                (shared_subscription(group, TopicKind.TELEMETRY), SubscribeOptions(qos=1)),
                (shared_subscription(group, TopicKind.ALERTS), SubscribeOptions(qos=1)),
                (
                    subscription_filter(TopicKind.STATUS),
                    SubscribeOptions(qos=1, retainHandling=_RETAIN_ONLY_IF_NEW_SUBSCRIPTION),
                ),
            ]
        )

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s", ", ".join(refused))
        else:
            log.info("subscribed (shared group %s): telemetry, alerts, status", self._settings.shared_group)
            self.connected.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self.connected.is_set():
            log.warning("disconnected from broker: %s; reconnecting", reason_code)
        self.connected.clear()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            generation = self._generation
        inbound = InboundMessage(
            topic=message.topic,
            payload=bytes(message.payload),
            received_at=datetime.now(UTC),
            mid=message.mid,
            qos=message.qos,
            generation=generation,
        )
        # RuntimeError: the loop is closing; not acked, so the broker sends it again next time.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._inbox.push, inbound)
