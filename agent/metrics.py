"""Prometheus metrics, the /metrics + /healthz endpoint, event-loop lag, and systemd notifications.

Every metric of the agent is defined here, once, in the default registry; stages import the objects they
update. Labels are bounded: `bus` is a configured bus name (≤ 4 CAN buses plus replays), `kind` a fixed
set per metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

# --- sources and decode (updated by agent/sources and agent/decode.py) ----------------------------------

FRAMES_RECEIVED: Final = Counter(
    "voltgate_can_frames_received", "CAN frames received from an interface or a log", ["bus"]
)
FRAMES_DECODED: Final = Counter(
    "voltgate_can_frames_decoded", "CAN frames decoded through the catalog into samples", ["bus"]
)
FRAMES_UNKNOWN: Final = Counter(
    "voltgate_can_frames_unknown", "CAN frames with an id not in the catalog", ["bus"]
)
FRAME_ERRORS: Final = Counter(
    "voltgate_can_frame_errors",
    "CAN frames skipped as bad, per kind (error_frame, remote, wrong_length, out_of_range, decode, ...)",
    ["bus", "kind"],
)
SAMPLES_DECODED: Final = Counter(
    "voltgate_samples_decoded", "Samples kept by the sampling policy after decoding", ["bus"]
)
GPS_SENTENCES: Final = Counter(
    "voltgate_gps_sentences",
    "NMEA sentences read from the GPS port, per result: the type accepted (RMC, GGA, GNS, GLL, VTG, GSA, "
    "ZDA; unchecked: accepted without a checksum) or why it was skipped (checksum, garbage, framing, "
    "truncated, field, overlong, unsupported, proprietary, untimed, orphan, duplicate, undated; "
    "see protocols.nmea.NmeaReader)",
    ["result"],
)
CAN_SERIAL_LINES_REJECTED: Final = Counter(
    "voltgate_can_serial_lines_rejected",
    "Malformed SLCAN lines skipped on a CAN serial port, per reason (not_ascii, unknown_type, bad_id, "
    "bad_dlc, bad_hex, bad_length, overlong, adapter_error; see agent.sources.slcan)",
    ["bus", "reason"],
)
SOURCE_RECONNECTS: Final = Counter(
    "voltgate_source_reconnects", "Source links (CAN adapter, serial port) lost and re-opened", ["source"]
)
SOURCE_UP: Final = Gauge("voltgate_source_up", "1 while a source link is open", ["source"])

# --- queues (agent/app.py) --------------------------------------------------------------------------------

QUEUE_DROPS: Final = Counter(
    "voltgate_queue_drops", "Items dropped because a bounded queue was full", ["queue"]
)
QUEUE_DEPTH: Final = Gauge("voltgate_queue_depth", "Items waiting in a bounded queue", ["queue"])

# --- buffer (agent/buffer.py via agent/app.py) ------------------------------------------------------------

SAMPLES_BUFFERED: Final = Counter(
    "voltgate_buffer_records_committed", "Records (samples, predictions, alerts) committed to the buffer"
)
BUFFER_BYTES: Final = Gauge("voltgate_buffer_bytes", "Bytes used by the buffer database (used pages)")
BUFFER_ROWS: Final = Gauge(
    "voltgate_buffer_rows", "Records in the buffer, not yet acknowledged stored by the cloud"
)
BUFFER_EVICTIONS: Final = Counter(
    "voltgate_buffer_evictions", "Records evicted by the byte cap or a full disk, per class", ["priority"]
)
BUFFER_DROPPED: Final = Counter(
    "voltgate_buffer_dropped", "Staged records dropped because the disk stayed full or commits kept failing"
)
BUFFER_COMMIT_FAILURES: Final = Counter("voltgate_buffer_commit_failures", "Buffer commits that failed")
OLDEST_UNSENT_AGE: Final = Gauge(
    "voltgate_buffer_oldest_unsent_age_seconds",
    "Wall clock minus source time of the oldest unsent record",
)
BUFFER_DISK_BYTES: Final = Gauge(
    "voltgate_buffer_disk_bytes",
    "Bytes the buffer's files take on disk, per file (db, wal, reserve; the cap covers all three)",
    ["file"],
)
BUFFER_CAP_BYTES: Final = Gauge(
    "voltgate_buffer_cap_bytes", "The buffer's byte cap (database + WAL + reserve)"
)
BUFFER_EVICTED_BYTES: Final = Counter(
    "voltgate_buffer_evicted_bytes", "Database bytes freed by eviction (as measured in pages)"
)
BUFFER_DISK_FULL: Final = Counter(
    "voltgate_buffer_disk_full_events",
    "Buffer transactions that met SQLITE_FULL, per cause (filesystem: the disk; page_limit: the cap)",
    ["cause"],
)
for _cause in ("filesystem", "page_limit"):
    BUFFER_DISK_FULL.labels(_cause)  # exported at 0 from the start: an alert rule can watch the series
BUFFER_RESERVE_PRESENT: Final = Gauge(
    "voltgate_buffer_reserve_present", "1 while the buffer's disk reserve file is in place, 0 while released"
)
BUFFER_RESERVE_RELEASES: Final = Counter(
    "voltgate_buffer_reserve_releases", "Times the buffer released its disk reserve on a full disk"
)
BUFFER_ACK_DEFERRED: Final = Gauge(
    "voltgate_buffer_ack_deferred",
    "Acknowledged records whose delete failed (disk full): kept out of sending, deleted on a later try",
)
BUFFER_ACK_DELETE_FAILURES: Final = Counter(
    "voltgate_buffer_ack_delete_failures", "Deletes of acknowledged records that failed and were deferred"
)

# --- uplink (agent/uplink.py) -----------------------------------------------------------------------------

UPLINK_BATCHES: Final = Counter("voltgate_uplink_batches", "Batches acknowledged by the broker", ["topic"])
UPLINK_RECORDS: Final = Counter("voltgate_uplink_records", "Records acknowledged by the broker", ["topic"])
UPLINK_BYTES: Final = Counter("voltgate_uplink_bytes", "Payload bytes acknowledged by the broker", ["topic"])
UPLINK_FAILURES: Final = Counter(
    "voltgate_uplink_publish_failures", "Publishes that failed (timeout, refused, disconnect)", ["reason"]
)
UPLINK_REJECTED: Final = Counter(
    "voltgate_uplink_records_rejected", "Records the wire encoder refused; deleted from the buffer"
)
UPLINK_RECONNECTS: Final = Counter("voltgate_uplink_reconnects", "Broker connections lost or failed")
UPLINK_CONNECTED: Final = Gauge("voltgate_uplink_connected", "1 while connected to the broker")
UPLINK_INFLIGHT_ROWS: Final = Gauge(
    "voltgate_uplink_inflight_rows", "Rows the broker took (PUBACK) that the cloud has not yet acknowledged"
)
UPLINK_RESENT_RECORDS: Final = Counter(
    "voltgate_uplink_resent_records", "Records re-sent because no commit ack came within the deadline"
)
UPLINK_ACKS_RECEIVED: Final = Counter("voltgate_uplink_acks_received", "Commit acknowledgements received")
UPLINK_ACKED_ROWS: Final = Counter(
    "voltgate_uplink_acked_rows", "Buffer rows deleted because the cloud acknowledged them stored"
)
UPLINK_DOWNLINK_REFUSED: Final = Counter(
    "voltgate_uplink_downlink_refused", "Downlink messages skipped", ["reason"]
)  # reason: malformed | unknown_type | subscribe

# --- fleet control (agent/fleet_control.py) ---------------------------------------------------------------

FLEET_OUTCOMES: Final = Counter(
    "voltgate_fleet_control_outcomes",
    "Desired configs and model releases handled, per kind (config, model) and outcome (applied, refused, "
    "rolled_back)",
    ["kind", "state"],
)
FLEET_REFUSED: Final = Counter(
    "voltgate_fleet_control_refused",
    "Desired configs and model releases refused, per reason (malformed, invalid_config, unknown_model, "
    "features, signature, no_inference, storage, internal), or rolled back (load)",
    ["reason"],
)
FLEET_SKIPPED: Final = Counter(
    "voltgate_fleet_control_skipped",
    "Desired messages not handled: revision already handled (handled), replaced by a newer one on the same "
    "topic before it was handled (superseded), too many topics waiting (dropped), an empty retained "
    "message (cleared)",
    ["reason"],
)
FLEET_CONFIG_REVISION: Final = Gauge(
    "voltgate_fleet_config_revision", "The desired config revision running (0: the installed file alone)"
)

# --- inference and alerts ---------------------------------------------------------------------------------

MODEL_RUNS: Final = Counter(
    "voltgate_model_runs", "Model runs that produced predictions, per model", ["model"]
)
INFERENCE_SKIPS: Final = Counter(
    "voltgate_inference_skips",
    "Model runs not made or not used: out_of_scope, run_failure, refused (a model file refused at load)",
    ["reason"],
)
ALERT_CHANGES: Final = Counter(
    "voltgate_alert_changes", "Driver alert changes (raised or cleared), per rule", ["rule"]
)
ALERTS_ACTIVE: Final = Gauge("voltgate_alerts_active", "Driver alerts active now, per severity", ["severity"])

# --- runtime ----------------------------------------------------------------------------------------------

LOOP_LAG: Final = Histogram(
    "voltgate_event_loop_lag_seconds",
    "How late the event loop woke a periodic probe",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOOP_LAG_LAST: Final = Gauge("voltgate_event_loop_lag_last_seconds", "The latest event-loop lag probe")


async def measure_loop_lag(interval_s: float = 0.5) -> None:
    """Forever: sleep `interval_s` and record how much later than asked the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - start - interval_s)
        LOOP_LAG.observe(lag)
        LOOP_LAG_LAST.set(lag)


# --- health -----------------------------------------------------------------------------------------------


@dataclass
class Health:
    """What /healthz and the systemd watchdog look at. The committer beats; a silent committer (stuck
    thread, full event loop) is unhealthy. A missing broker is *not* unhealthy: buses drive through
    tunnels."""

    stale_after_s: float = 10.0
    last_beat: float = field(default_factory=time.monotonic)
    details: dict[str, str] = field(default_factory=dict)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_beat < self.stale_after_s


class MetricsServer:
    """A tiny HTTP/1.0 server on the event loop: GET /metrics (Prometheus text) and GET /healthz."""

    def __init__(self, host: str, port: int, health: Health) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def serve(self) -> None:
        """Start (if needed) and serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = request.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            if parts[0] != b"GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == b"/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path == b"/healthz":
                ok = self._health.healthy()
                lines = [("ok" if ok else "unhealthy")] + [
                    f"{k}: {v}" for k, v in self._health.details.items()
                ]
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# --- systemd ----------------------------------------------------------------------------------------------


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd when NOTIFY_SOCKET is set; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("sd_notify to %s failed: %s", address, err)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the systemd watchdog period (WATCHDOG_USEC, for this process), or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2_000_000)
    except ValueError:
        return None


async def feed_watchdog(health: Health, interval_s: float) -> None:
    """Forever: WATCHDOG=1 every `interval_s` while healthy; systemd restarts the agent when pings stop."""
    while True:
        if health.healthy():
            sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


# --- clocks (agent/clock.py via agent/app.py) -------------------------------------------------------------

TIMESTAMPS_IMPLAUSIBLE: Final = Counter(
    "voltgate_timestamps_implausible",
    "Samples whose source timestamp is implausible (buffered as stamped, kept out of inference and alerts), "
    "per source and reason (ahead, behind, too_old, invalid)",
    ["source", "reason"],
)
TIMESTAMPS_CORRECTED: Final = Counter(
    "voltgate_timestamps_corrected",
    "Samples whose source timestamp was corrected, per source and reason (gps_week_rollover)",
    ["source", "reason"],
)
CLOCK_STEPS: Final = Counter(
    "voltgate_clock_steps",
    "Times a source's time base moved and stayed (a stepped clock) and the source was re-anchored",
    ["source"],
)
HOST_CLOCK_OFFSET: Final = Gauge(
    "voltgate_host_clock_offset_seconds",
    "Host wall clock minus GPS time, once a GPS fix is trusted (NaN before)",
)
HOST_CLOCK_OFFSET.set(float("nan"))
ANALYSIS_TIME_OUTLIERS: Final = Counter(
    "voltgate_analysis_time_outliers",
    "Inputs the inference or alert stage left out because their timestamp was far off its stream's now",
    ["stage"],
)
