"""The edge to aiomqtt: what the uplink needs from an MQTT client that aiomqtt does not give directly.

- `tls_context(settings)`: the TLS context for `mqtts://` (CA file or the system store, client cert).
- `PubackWatch`: aiomqtt drops the MQTT 5 PUBACK reason code; this wraps the paho callback aiomqtt
  installs to notice a *refusing* PUBACK (reason ≥ 0x80, e.g. "not authorized").
- `abandon(client)`: forget a client replaced after a stuck session, without a stray error later.
- `filter_closed_socket_watchers(loop)`: keep aiomqtt's teardown race out of the error log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import metrics
from agent.settings import UplinkSettings

log = logging.getLogger(__name__)


def tls_context(settings: UplinkSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.cert_file is not None and settings.key_file is not None:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    if settings.tls_insecure:
        context.check_hostname = False
    return context


class PubackWatch:
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


def abandon(client: aiomqtt.Client) -> None:
    """Forget a client replaced after a stuck session: its socket is closed, and the disconnect error it
    may still record later is consumed (no "Future exception was never retrieved")."""
    with contextlib.suppress(Exception):
        client._client.disconnect()
    disconnected = client._disconnected
    disconnected.add_done_callback(lambda future: None if future.cancelled() else future.exception())
