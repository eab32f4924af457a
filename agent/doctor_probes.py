"""What `voltgate-agent doctor` reads from the gateway: facts, not judgements (`agent.doctor` judges).

Live facts come from the running agent's `/health.json` (`agent.metrics.Health.document`). What can be
read without it: the CAN links (`ip -json -details -statistics link show`, else sysfs), a short listen on
a bus or the GPS port, the SQLite buffer opened read-only, the disk, the model files, and a real MQTT
connect to the broker with the configured identity (CONNACK, then the retained commit acknowledgement of
this vehicle). Every probe returns a small frozen dataclass or None; none raises for an absent thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings import AgentSettings, CanBusSettings, GpsSettings, UplinkSettings

# --- the running agent ------------------------------------------------------------------------------------


def health_url(settings: AgentSettings) -> str:
    host = settings.metrics.host
    if host in ("0.0.0.0", "::", ""):  # listening on every address: ask loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.metrics.port}/health.json"


@dataclass(frozen=True)
class Endpoint:
    """What answered at the health URL: the document, or why there is none."""

    document: dict[str, Any] | None
    problem: str | None  # "connection refused", "HTTP 404", "not JSON", ...


def fetch_health(url: str, timeout_s: float = 2.0) -> Endpoint:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(1_000_000)
    except urllib.error.HTTPError as err:
        return Endpoint(None, f"HTTP {err.code}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return Endpoint(None, str(getattr(reason, "strerror", None) or reason))
    try:
        document = json.loads(body)
    except ValueError:
        return Endpoint(None, "an answer that is not JSON")
    if not isinstance(document, dict) or "vehicle_id" not in document:
        return Endpoint(None, "a JSON answer that is not a voltgate health document")
    return Endpoint(document, None)


def agent_pid(config: Path, proc: Path = Path("/proc")) -> int | None:
    """The pid of an agent process running `run --config` with this config file, or None."""
    try:
        wanted = config.resolve()
    except OSError:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "run" not in args or not any("agent" in a for a in args[:3]):
            continue
        for i, arg in enumerate(args):
            value = args[i + 1] if arg == "--config" and i + 1 < len(args) else None
            if arg.startswith("--config="):
                value = arg.split("=", 1)[1]
            if value is not None and _same_file(entry, value, wanted):
                return int(entry.name)
    return None


def _same_file(process: Path, value: str, wanted: Path) -> bool:
    path = Path(value)
    if not path.is_absolute():
        try:
            path = (process / "cwd").resolve() / path  # another user's process: only root can see its cwd
        except OSError:
            return False
    return path.resolve() == wanted


# --- CAN links --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkState:
    """A network interface as `ip -details -statistics` shows it (CAN fields None for other kinds)."""

    name: str
    up: bool  # administratively up and the lower layer up (flags UP and LOWER_UP)
    kind: str | None  # linkinfo.info_kind: "can", "vcan", "slcan", ...; None when unknown
    can_state: str | None  # ERROR-ACTIVE, ERROR-WARNING, ERROR-PASSIVE, BUS-OFF, STOPPED, SLEEPING
    bitrate: int | None
    tx_errors: int | None  # the controller's error counters (berr_counter)
    rx_errors: int | None
    bus_off_count: int | None  # info_xstats.bus_off: times the controller went bus-off
    rx_packets: int | None


def parse_ip_link(text: str, name: str) -> LinkState | None:
    """One interface of `ip -json -details -statistics link show` output (iproute2's field names)."""
    try:
        links = json.loads(text)
    except ValueError:
        return None
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict) or link.get("ifname") != name:
            continue
        flags = link.get("flags") or []
        info = link.get("linkinfo") or {}
        data = info.get("info_data") or {}
        berr = data.get("berr_counter") or {}
        xstats = info.get("info_xstats") or {}
        rx = (link.get("stats64") or link.get("stats") or {}).get("rx") or {}
        return LinkState(
            name=name,
            up="UP" in flags and "LOWER_UP" in flags,
            kind=info.get("info_kind") or link.get("link_type"),
            can_state=data.get("state"),
            bitrate=(data.get("bittiming") or {}).get("bitrate"),
            tx_errors=berr.get("tx"),
            rx_errors=berr.get("rx"),
            bus_off_count=xstats.get("bus_off"),
            rx_packets=rx.get("packets"),
        )
    return None


def read_link(name: str, sys_net: Path = Path("/sys/class/net")) -> LinkState | None:
    """The interface's state: `ip -json` when iproute2 is installed, else what sysfs has (no CAN state)."""
    ip = shutil.which("ip")
    if ip is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [ip, "-json", "-details", "-statistics", "link", "show", "dev", name],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if done.returncode == 0:
                return parse_ip_link(done.stdout, name)
            if "does not exist" in done.stderr:
                return None
    device = sys_net / name
    if not device.is_dir():
        return None

    def read(relative: str) -> str | None:
        with contextlib.suppress(OSError):
            return (device / relative).read_text().strip()
        return None

    flags = int(read("flags") or "0", 16)
    packets = read("statistics/rx_packets")
    return LinkState(
        name=name,
        up=bool(flags & 0x1) and read("carrier") == "1",  # IFF_UP, and the carrier (LOWER_UP)
        kind=None,
        can_state=None,
        bitrate=None,
        tx_errors=None,
        rx_errors=None,
        bus_off_count=None,
        rx_packets=int(packets) if packets and packets.isdigit() else None,
    )


@dataclass(frozen=True)
class Listen:
    """What a short listen heard: frames (or NMEA fixes) and how long it listened, or why it could not."""

    count: int
    seconds: float
    error: str | None = None
    valid_fixes: int = 0  # GPS: fixes with a position
    last_fix_ts: float | None = None  # GPS: its time (Unix seconds, from the receiver)
    host_minus_gps_s: float | None = None


def listen_can(bus: CanBusSettings, seconds: float) -> Listen:
    """Open the bus read-only as the agent would and count frames for `seconds` (agent not running)."""
    import can

    start = time.monotonic()
    try:
        kwargs: dict[str, Any] = dict(bus.options)
        if bus.bitrate is not None and bus.interface not in ("socketcan", "virtual"):
            kwargs["bitrate"] = bus.bitrate
        with can.Bus(interface=bus.interface, channel=bus.channel, **kwargs) as handle:
            count = 0
            while (left := seconds - (time.monotonic() - start)) > 0:
                if handle.recv(timeout=left) is not None:
                    count += 1
    except (can.CanError, OSError, ValueError, ImportError) as err:
        return Listen(0, time.monotonic() - start, error=str(err) or type(err).__name__)
    return Listen(count, time.monotonic() - start)


def listen_gps(settings: GpsSettings, seconds: float) -> Listen:
    """Read the GPS port for `seconds` and parse its NMEA (agent not running: it would own the port)."""
    import serial

    from protocols.nmea import NmeaReader

    reader = NmeaReader(checksum_required=not settings.accept_missing_checksum)
    start = time.monotonic()
    count = valid = 0
    last_ts: float | None = None
    offset: float | None = None
    try:
        with serial.Serial(settings.port, settings.baudrate, timeout=0.2) as port:
            while time.monotonic() - start < seconds:
                fixes = reader.feed(bytes(port.read(4096)))
                for fix in fixes:
                    count += 1
                    if fix.valid:
                        valid += 1
                        last_ts, offset = fix.ts, time.time() - fix.ts
    except (OSError, serial.SerialException, ValueError) as err:
        return Listen(0, time.monotonic() - start, error=str(err) or type(err).__name__)
    return Listen(count, time.monotonic() - start, None, valid, last_ts, offset)


# --- the buffer and the disk ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferFacts:
    exists: bool
    disk_bytes: int  # database + WAL
    rows: int | None  # records waiting (samples, predictions, alerts)
    oldest_ts_s: float | None  # source time of the oldest unsent record
    error: str | None = None


def read_buffer(path: Path) -> BufferFacts:
    """Open the buffer read-only (safe beside a running agent: WAL readers never block its writer)."""
    if not path.is_file():
        return BufferFacts(False, 0, None, None)
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.is_file())
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as err:
        return BufferFacts(True, size, None, None, str(err))
    try:
        rows = int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
        oldest: tuple[int, int] | None = None  # (seq, ts_ms): the table is keyed (evict, seq)
        for evict in range(4):
            row = conn.execute(
                "SELECT seq, ts_ms FROM records WHERE evict = ? ORDER BY seq LIMIT 1", (evict,)
            ).fetchone()
            if row is not None and (oldest is None or row[0] < oldest[0]):
                oldest = (int(row[0]), int(row[1]))
    except sqlite3.Error as err:
        return BufferFacts(True, size, None, None, str(err))
    finally:
        conn.close()
    return BufferFacts(True, size, rows, None if oldest is None else oldest[1] / 1000)


@dataclass(frozen=True)
class DiskFacts:
    path: Path  # the directory measured
    free_bytes: int
    total_bytes: int


def read_disk(buffer_path: Path) -> DiskFacts | None:
    directory = buffer_path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return DiskFacts(directory, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


# --- models -----------------------------------------------------------------------------------------------


def load_models(paths: list[Path]) -> list[tuple[Path, str, str | None]]:
    """Each model file loaded and checked as the agent would: (path, "name version" or the problem,
    None or the problem again)."""
    from models.runtime import ModelError, load_model

    results: list[tuple[Path, str, str | None]] = []
    for path in paths:
        try:
            model = load_model(path)
        except (ModelError, OSError) as err:
            results.append((path, str(err), str(err)))
        else:
            results.append((path, f"{model.name} {model.version}", None))
    return results


# --- the broker -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerProbe:
    """A real connect with the configured identity: where it got to, and the retained commit ack."""

    host: str
    port: int
    tls: bool
    stage: str  # "ok", "dns", "tcp", "timeout", "tls", "refused", "error"
    detail: str = ""
    last_ack_ts_s: float | None = None  # the cloud's latest retained commit ack for this vehicle


def probe_broker(
    settings: UplinkSettings, vehicle_id: str, timeout_s: float = 5.0, ack_wait_s: float = 1.0
) -> BrokerProbe:
    address = settings.address
    host, port, tls = address.host, address.port, address.tls
    timeout_s = min(timeout_s, settings.connect_timeout_s)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror as err:
        return BrokerProbe(host, port, tls, "dns", err.strerror or str(err))
    except TimeoutError:
        return BrokerProbe(host, port, tls, "timeout", f"no answer within {timeout_s:g} s")
    except OSError as err:
        return BrokerProbe(host, port, tls, "tcp", err.strerror or str(err))
    if tls and (problem := _tls_problem(settings, timeout_s)) is not None:
        return BrokerProbe(host, port, tls, "tls", problem)
    return asyncio.run(_mqtt_connect(settings, vehicle_id, timeout_s, ack_wait_s))


def _tls_problem(settings: UplinkSettings, timeout_s: float, alert_wait_s: float = 0.5) -> str | None:
    """A TLS handshake with the configured files, then a short read: with TLS 1.3 a broker refuses a
    client certificate (or its absence) only after the handshake, with an alert (an MQTT broker sends
    nothing else before CONNECT); the MQTT client would only see a timeout."""
    import ssl

    from agent.mqtt_link import tls_context

    host, port, _ = settings.address
    try:
        context = tls_context(settings)
    except (OSError, ssl.SSLError) as err:
        return f"cannot load the TLS files: {err}"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.settimeout(alert_wait_s)
            with contextlib.suppress(TimeoutError):
                conn.recv(1)
    except ssl.SSLError as err:
        return getattr(err, "reason", None) or str(err)
    except TimeoutError:
        return None  # the MQTT connect reports it
    except OSError as err:  # TCP was accepted a moment ago: the handshake itself failed
        return f"{err.strerror or err} in the handshake; is the port a TLS listener (mqtts://)?"
    return None


async def _mqtt_connect(
    settings: UplinkSettings, vehicle_id: str, timeout_s: float, ack_wait_s: float
) -> BrokerProbe:
    import ssl

    import aiomqtt

    from agent.mqtt_link import tls_context
    from protocols.downlink import CommitAck, DownlinkError, decode_downlink
    from protocols.topics import downlink_ack_topic

    host, port, tls = settings.address
    identifier = settings.client_id or f"voltgate-{settings.fleet_id}-{vehicle_id}"
    try:
        context = tls_context(settings) if tls else None
    except (OSError, ssl.SSLError) as err:
        return BrokerProbe(host, port, tls, "tls", f"cannot load the TLS files: {err}")
    client = aiomqtt.Client(
        host,
        port,
        identifier=f"{identifier}-doctor",  # never the agent's own id: that would end its session
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=timeout_s,
        tls_context=context,
    )
    last_ack: float | None = None
    try:
        async with client:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.subscribe(downlink_ack_topic(settings.fleet_id, vehicle_id), qos=1)
                async with asyncio.timeout(ack_wait_s):
                    async for message in client.messages:
                        if message.retain and isinstance(message.payload, bytes):
                            with contextlib.suppress(DownlinkError):
                                ack = decode_downlink(message.payload)
                                if isinstance(ack, CommitAck):
                                    last_ack = ack.ts_ms / 1000
                        break
    except aiomqtt.MqttCodeError as err:
        return BrokerProbe(host, port, tls, "refused", str(err.rc))
    except aiomqtt.MqttError as err:
        text = str(err)
        stage = "tls" if "SSL" in text or "certificate" in text.lower() else "error"
        if "timed out" in text.lower():
            stage = "timeout"
        return BrokerProbe(host, port, tls, stage, text)
    return BrokerProbe(host, port, tls, "ok", last_ack_ts_s=last_ack)
