"""The fault harness: the real programs as processes, each one the test can start, kill and restart.

    Mosquitto      its own `mosquitto -c conf` per test on a free loopback port, persistence on or off
    Receiver       `voltgate-cloud run` with a generated TOML config, its own schema, killable with SIGKILL
    AgentProcess   `voltgate-agent run` (as `python -m agent`) with a generated TOML config, killable
    PgProxy        a TCP proxy between the receiver and PostgreSQL that the test can cut and restore

Every process writes its log to a file (a pipe nobody reads could block it); a failure message carries
the tail of the log of whoever misbehaved. Every wait is a poll with a generous deadline; nothing here
asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC
from simulator.live import SimWatcher, start_live_bus
from tests.faults.ptytap import PtyTap

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy_off_catalog(directory: Path) -> Path:
    """The shipped catalog with every sampling policy off: each decoded value is kept (~220 samples/s
    from the simulated bus), so a few seconds of fault leave hundreds of committed rows in flight."""
    text = DEFAULT_CATALOG.read_text()
    text = re.sub(r"(?m)^(min_interval_s|max_interval_s|deadband) = .*$", r"\1 = 0", text)
    path = directory / "catalog-policy-off.toml"
    path.write_text(text)
    return path


def metric(port: int, name: str) -> float | None:
    """The sum of a Prometheus metric's samples (all labels) at 127.0.0.1:port/metrics; None if down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+|NaN|[+-]Inf)$", text, re.M):
        total += float(m.group(1))
    return total


# --- processes --------------------------------------------------------------------------------------------


class Program:
    """One program as a process, its stdout and stderr appended to `log_path`."""

    name = "program"

    def __init__(self, command: Sequence[str], log_path: Path) -> None:
        self.command = [str(part) for part in command]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("a") as log_file:
            log_file.write(f"--- {self.name} started {time.strftime('%H:%M:%S')}\n")
            log_file.flush()
            self.process = subprocess.Popen(self.command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> None:
        """Fail the test if the process exited on its own."""
        if self.process is not None and (code := self.process.poll()) is not None:
            pytest.fail(
                f"{self.name} exited with {code} on its own:\n{self.log_text()[-3000:]}", pytrace=False
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown stage runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def terminate(self, timeout_s: float = 40.0) -> int:
        """SIGTERM and the exit code; fails the test if it does not exit within `timeout_s`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"{self.name} did not exit after SIGTERM:\n{self.log_text()[-3000:]}", pytrace=False)
        self.process = None
        return code

    def ensure_dead(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class AgentProcess(Program):
    """`python -m agent run --config …` (started at construction, as the agent tests expect)."""

    name = "agent"

    def __init__(self, config: Path, log_path: Path, *, start: bool = True) -> None:
        super().__init__([sys.executable, "-m", "agent", "run", "--config", str(config)], log_path)
        if start:
            self.start()

    async def terminate_async(self, timeout_s: float = 40.0) -> int:
        return await asyncio.to_thread(self.terminate, timeout_s)


class Mosquitto(Program):
    """`mosquitto -c conf` on its own loopback port; with `persistence` its sessions and queued messages
    survive a restart (saved on SIGTERM), without it a restart forgets every session."""

    name = "mosquitto"

    def __init__(
        self, directory: Path, *, persistence: bool, conf_text: str | None = None, port: int | None = None
    ) -> None:
        """`conf_text` (with its listener `port`): run that configuration instead of the generated one."""
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.data = directory / "data"
        self.data.mkdir(exist_ok=True)
        self.persistence = persistence
        conf = directory / "mosquitto.conf"
        if conf_text is not None:
            conf.write_text(conf_text)
            super().__init__(["mosquitto", "-c", str(conf)], directory / "mosquitto.log")
            return
        # `user root`: started as root, mosquitto otherwise drops to the `mosquitto` user, which cannot
        # write the test's root-owned directory, and would persist nothing (no effect when not root).
        # max_queued_messages 0: no limit on a session's queue, so the broker drops nothing by design.
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\npersistence_location {self.data}/\n"
            f"max_queued_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\nuser root\n"
        )
        super().__init__(["mosquitto", "-c", str(conf)], directory / "mosquitto.log")

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            self.alive()
            time.sleep(0.05)
        pytest.fail(f"mosquitto on port {self.port} did not start:\n{self.log_text()[-2000:]}", pytrace=False)

    def restart(self) -> None:
        """A clean stop (SIGTERM: the persistence file is written, if on) and a start."""
        if self.running:
            self.terminate(10)
        self.start()


@dataclass(frozen=True)
class ReceiverConfig:
    broker_port: int
    db_dsn: str  # possibly through a PgProxy
    schema: str
    client_id: str
    session_expiry_s: int = 3600
    web_port: int | None = None  # serve the JSON API too
    metrics_port: int = 0
    tls_files: tuple[Path, Path, Path] | None = None  # CA, client certificate, key: connect with TLS


class Receiver(Program):
    """`voltgate-cloud run --config FILE`: its schema migrated once (directly, not through a proxy)."""

    name = "receiver"

    def __init__(self, directory: Path, config: ReceiverConfig, *, migrate_dsn: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = directory / "cloud.toml"
        self._write(self.config_path, config.db_dsn)
        migrate_config = directory / "cloud-migrate.toml"
        self._write(migrate_config, migrate_dsn or config.db_dsn)
        done = subprocess.run(
            [BIN / "voltgate-cloud", "migrate", "--config", migrate_config],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            pytest.fail(f"voltgate-cloud migrate failed: {done.stderr.strip() or done.stdout}", pytrace=False)
        super().__init__(
            [BIN / "voltgate-cloud", "run", "--config", self.config_path], directory / "receiver.log"
        )

    def start_subscribed(self) -> None:
        """Start, and return once it has subscribed (before that, a fresh broker drops what a bus
        publishes: nobody is subscribed yet)."""
        before = self.log_text().count("subscribed (shared group")
        self.start()
        deadline = time.monotonic() + WAIT_S
        while self.log_text().count("subscribed (shared group") <= before:
            self.alive()
            if time.monotonic() > deadline:
                pytest.fail(f"the receiver did not subscribe:\n{self.log_text()[-3000:]}", pytrace=False)
            time.sleep(0.05)

    def _write(self, path: Path, dsn: str) -> None:
        c = self.config
        web = f'\n[web]\nhost = "127.0.0.1"\nport = {c.web_port}\n' if c.web_port is not None else ""
        tls = ""
        if c.tls_files is not None:
            ca, cert, key = c.tls_files
            tls = f'tls = true\nca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'

        path.write_text(
            f"""[mqtt]
host = "127.0.0.1"
port = {c.broker_port}
client_id = "{c.client_id}"
shared_group = "{c.client_id}"
session_expiry_s = {c.session_expiry_s}
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 2.0
{tls}
[database]
dsn = "{dsn}"
schema = "{c.schema}"
connect_timeout_s = 2

[ingest]
batch_max_age_s = 0.2

[metrics]
port = {c.metrics_port}
{web}"""
        )


# --- a live bus --------------------------------------------------------------------------------------------


@dataclass
class LiveBus:
    """The simulator as a process (real time, from now), its SLCAN adapter and GPS receiver behind
    `PtyTap`s whose `path`s the agent opens."""

    process: subprocess.Popen[str]
    slcan: PtyTap
    nmea: PtyTap

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        self.slcan.close()
        self.nmea.close()


def start_tapped_live_bus(duration_s: float, *, seed: int = 7, depart_now: bool = False) -> LiveBus:
    """`voltgate-sim run` on ptys in real time from now (`depart_now`: the bus leaves the depot at once,
    as in scripts/demo.py, instead of at 05:30 Nairobi time)."""
    now = datetime.now(UTC).replace(microsecond=0)
    options = ["--realtime", "--duration", f"{duration_s:g}s", "--seed", str(seed),
               "--start", now.strftime("%Y-%m-%dT%H:%M:%SZ"), "--status-every", "10"]  # fmt: skip
    if depart_now:
        options += ["--departure", (now + timedelta(hours=3)).strftime("%H:%M")]
    process = start_live_bus(options, program=[sys.executable, "-m", "simulator"])
    watcher = SimWatcher(process)
    watcher.start()
    if not watcher.ready.wait(60):
        process.kill()
        pytest.fail("the simulator did not open its pseudo-terminals", pytrace=False)
    return LiveBus(process, PtyTap(watcher.ptys["slcan-pty"], b"\r"), PtyTap(watcher.ptys["nmea-pty"], b"\n"))


# --- agent configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    vehicle_id: str
    fleet: str
    broker_port: int
    buffer_path: Path
    replay_log: Path | None = None  # a recorded log at recorded speed, or:
    slcan_pty: str | None = None  # a live bus: SLCAN adapter and GPS receiver on ptys
    nmea_pty: str | None = None
    catalog: Path | None = None
    metrics_port: int = 0
    inference_interval_s: float | None = None  # None: inference off (faster start, fewer moving parts)
    max_bytes: int = 64 * 1024 * 1024
    uplink_tls_files: tuple[Path, Path, Path] | None = None  # CA, bus certificate, key: mqtts
    # A message whose commit ack does not come (lost with a broker's queue, a receiver's session) is
    # re-sent after this, doubling per re-send (agent/inflight.py). The default, 60 s, was most of a
    # broker restart test's minute and more; a rig's round trip takes well under a second.
    ack_timeout_s: float = 5.0

    def write(self, path: Path) -> Path:
        catalog = f'catalog = "{self.catalog}"\ndbc = "{DEFAULT_DBC}"\n' if self.catalog is not None else ""
        sources = ""
        if self.replay_log is not None:
            sources += f'[[replay]]\nname = "bus"\npath = "{self.replay_log}"\n{catalog}speed = "recorded"\n'
        if self.slcan_pty is not None:
            sources += (
                f'[[can]]\nname = "bus"\ninterface = "slcan"\nchannel = "{self.slcan_pty}"\n'
                f"bitrate = 500000\nhardware_filters = false\n{catalog}"
            )
        if self.nmea_pty is not None:
            sources += f'[gps]\nenabled = true\nport = "{self.nmea_pty}"\nbaudrate = 9600\n'
        inference = (
            "[inference]\nenabled = false\n"
            if self.inference_interval_s is None
            else f"[inference]\ninterval_s = {self.inference_interval_s}\n"
        )
        metrics = (
            f"[metrics]\nenabled = true\nport = {self.metrics_port}\n"
            if self.metrics_port
            else "[metrics]\nenabled = false\n"
        )
        scheme, tls = "mqtt", ""
        if self.uplink_tls_files is not None:
            ca, cert, key = self.uplink_tls_files
            scheme, tls = "mqtts", f'ca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
        path.write_text(
            f"""vehicle_id = "{self.vehicle_id}"
log_format = "text"
{sources}
[buffer]
path = "{self.buffer_path}"
max_bytes = {self.max_bytes}
commit_interval_s = 0.2

[uplink]
broker_url = "{scheme}://127.0.0.1:{self.broker_port}"
{tls}
fleet_id = "{self.fleet}"
client_id = "{self.fleet}-{self.vehicle_id}"
batch_max_records = 500
batch_max_age_s = 0.5
puback_timeout_s = 5.0
ack_timeout_s = {self.ack_timeout_s}
connect_timeout_s = 3.0
keepalive_s = 5
backoff_initial_s = 0.2
backoff_max_s = 1.0

{inference}
[alerts]
led_info = ""
led_warning = ""
led_critical = ""

{metrics}"""
        )
        return path


# --- a database outage that leaves the shared PostgreSQL alone -------------------------------------------


class PgProxy:
    """A TCP proxy from a free loopback port to PostgreSQL; `cut()` resets every connection and refuses
    new ones until `restore()`.

    Why a proxy: the test machine's PostgreSQL is shared by the other tests (and by other developers'
    test runs); stopping it would fail them. Cutting the receiver's own path to it is the same outage
    seen from the receiver: connections reset, new ones refused."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True, name="pg-proxy-pump").start()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            _reset(client)
            _reset(server)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _reset(sink)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --- waiting ----------------------------------------------------------------------------------------------


async def wait_until(
    what: str,
    condition: Callable[[], bool],
    *,
    agent: Program | None = None,
    watch: Sequence[Program] = (),
    timeout_s: float = WAIT_S,
    state: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` every 0.1 s until it holds; fail saying what did not happen (with the logs of the
    watched programs) after `timeout_s`, or as soon as a watched program exits on its own."""
    watched = [*([agent] if agent is not None else []), *watch]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        for program in watched:
            program.alive()
        if asyncio.get_running_loop().time() > deadline:
            detail = f"\n{state()}" if state is not None else ""
            tails = "".join(f"\n{p.name} log:\n{p.log_text()[-3000:]}" for p in watched)
            pytest.fail(f"gave up after {timeout_s:g} s waiting for {what}{detail}{tails}", pytrace=False)
        await asyncio.sleep(0.1)
