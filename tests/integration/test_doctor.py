"""`voltgate-agent doctor` as a technician runs it (a subprocess) beside a real agent replaying a log to
the real Mosquitto: its lines and exit code when all is well, when the broker port has nothing listening,
when the agent's metrics port is taken by another program, and with old unsent samples in the buffer."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import select
import subprocess
import sys
import threading
import time
import tty
import urllib.request
from pathlib import Path

import can
import pytest

from agent import doctor_probes as probes
from agent.buffer import SampleBuffer
from agent.doctor import check_broker, identity
from agent.records import Priority, Sample
from agent.settings import UplinkSettings
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from tests.faults.harness import AgentProcess, free_port, wait_until
from tests.integration import test_uplink_tls
from tests.integration.agent_run import REPO, replay_config, replaying
from tests.integration.conftest import Broker, unique_id
from tests.integration.test_uplink_tls import Pki, TlsBroker

pki = test_uplink_tls.pki  # its fixtures: the test CA and certificates, a TLS-only Mosquitto
tls_broker = test_uplink_tls.tls_broker

QUICK = "[inference]\nenabled = false\n"  # the ONNX models cost start-up time; the models line says so


def _speed_log(path: Path, frames: int) -> Path:
    """A candump -L log of CCVS1 frames (vehicle speed), 1.1 s apart."""
    message = load_catalog(DEFAULT_CATALOG).database.get_message_by_name("CCVS1")
    with can.Logger(str(path)) as writer:
        for i in range(frames):
            data = message.encode(
                {"WheelBasedVehicleSpeed": float(i % 80), "ParkingBrakeSwitch": 0, "BrakeSwitch": 0},
                strict=False,
            )
            writer.on_message_received(
                can.Message(
                    timestamp=1_700_000_000.0 + i * 1.1,
                    arbitration_id=message.frame_id,
                    is_extended_id=True,
                    data=data,
                )
            )
    return path


def _settled(metrics_port: int, frames: int, models: int) -> bool:
    """The agent's health document says it has read `frames` frames of its replay and loaded `models`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health.json", timeout=2) as reply:
            health = json.load(reply)
    except (OSError, ValueError):
        return False
    counts = [source.get("count") for source in health.get("sources", {}).values()]
    return frames in counts and len(health.get("models", {})) == models


def _doctor(config: Path) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run `voltgate-agent doctor`; returns its exit code, check → (status, message), and the screen."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    lines: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines()[2:]:
        status, rest = line.split(maxsplit=1)
        check, message = rest.split("  ", 1)
        lines[check.strip()] = (status, message.strip())
    return done.returncode, lines, done.stdout


def _rows(buffer: Path) -> int:
    return probes.read_buffer(buffer).rows or 0


async def test_all_well_every_line_ok_and_exit_0(mqtt_broker: Broker, tmp_path: Path) -> None:
    # GIVEN an agent replaying a log to the broker, a collector playing the cloud and acknowledging
    log = _speed_log(tmp_path / "day.log", 200)
    metrics_port = free_port()
    more = f"[metrics]\nport = {metrics_port}\n"
    async with replaying(mqtt_broker, tmp_path, vehicle_id="bus-ok", log=log, replay="day", more=more) as (
        collector,
        agent,
    ):
        buffer = tmp_path / "state" / "buffer.sqlite3"
        await collector.wait_for("the first acknowledgement", lambda: collector.acks_sent > 0)
        await wait_until("an empty buffer", lambda: buffer.exists() and _rows(buffer) == 0, agent=agent)
        # (and the agent has read the whole log and loaded its models: both take their time on a busy machine)
        await wait_until(
            "the log read, the models loaded", lambda: _settled(metrics_port, 200, 3), agent=agent
        )
        # WHEN the technician runs doctor
        code, lines, screen = await asyncio.to_thread(_doctor, tmp_path / "agent.toml")
    # THEN every line is OK, from the live agent, and the exit code is 0
    assert code == 0, screen
    assert "facts: live" in screen
    assert {check: status for check, (status, _) in lines.items()} == {
        "agent": "OK",
        "replay day": "OK",
        "broker": "OK",
        "cloud ack": "OK",
        "buffer": "OK",
        "models": "OK",
        "disk": "OK",
    }, screen
    assert lines["replay day"][1] == "replay: 200 frames read"
    assert "last commit acknowledgement" in lines["cloud ack"][1]
    assert lines["models"][1] == "fault_risk 4, large_drop 4, soc_drop 4"  # the shipped models, loaded


async def test_a_broker_port_with_nothing_listening_fails_with_exit_2(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    # GIVEN an agent whose broker URL points at a port nobody listens on
    dead = Broker(mqtt_broker.host, free_port(), mqtt_broker.namespace)
    log = _speed_log(tmp_path / "day.log", 50)
    metrics_port = free_port()
    config = replay_config(
        tmp_path / "agent.toml",
        dead,
        vehicle_id="bus-nobroker",
        log=log,
        replay="day",
        state=tmp_path / "state",
        more=f"[metrics]\nport = {metrics_port}\n{QUICK}",
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        health = f"http://127.0.0.1:{metrics_port}/health.json"
        answering = lambda: probes.fetch_health(health).document is not None  # noqa: E731
        await wait_until("the agent's health document", answering, agent=agent)
        # WHEN doctor runs
        code, lines, screen = await asyncio.to_thread(_doctor, config)
    finally:
        agent.ensure_dead()  # SIGKILL: a clean stop would wait for the unreachable broker
    # THEN the broker line says what to do, and the exit code is 2
    assert code == 2, screen
    status, message = lines["broker"]
    assert status == "FAIL"
    assert f"cannot connect to 127.0.0.1:{dead.port}" in message and "check broker_url in [uplink]" in message
    assert lines["agent"][0] == "OK" and lines["models"] == ("OK", "inference disabled in the config")


async def test_a_taken_metrics_port_the_agent_keeps_buffering_doctor_says_so(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    # GIVEN another program serving HTTP on the agent's metrics port (a 404 for /health.json)
    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=squatter.serve_forever, name="squatter", daemon=True).start()
    port = squatter.server_address[1]
    log = _speed_log(tmp_path / "day.log", 50)
    more = f"[metrics]\nport = {port}\n{QUICK}"
    try:
        async with replaying(
            mqtt_broker, tmp_path, vehicle_id="bus-busy", log=log, replay="day", more=more
        ) as (collector, agent):
            # WHEN the agent starts: it runs, buffers and sends without its endpoint
            await collector.wait_for("the agent's samples", lambda: len(collector.sample_seqs()) > 0)
            code, lines, screen = await asyncio.to_thread(_doctor, tmp_path / "agent.toml")
            agent_log = agent.log_text()
    finally:
        squatter.shutdown()
        squatter.server_close()
    # THEN one clear error line in its log, no traceback; doctor names the running agent and the port
    assert "Traceback" not in agent_log
    assert agent_log.count("metrics/health endpoint") == 1, agent_log
    status, message = lines["agent"]
    assert status == "WARN" and "running (pid" in message
    assert f":{port}/health.json does not answer (HTTP 501)" in message
    assert "facts: offline" in screen
    assert lines["broker"][0] == "OK" and code == 1, screen  # warnings, no failure


def test_old_unsent_samples_warn(mqtt_broker: Broker, tmp_path: Path) -> None:
    # GIVEN a stopped agent's buffer holding samples from two hours ago, never acknowledged
    buffer_path = tmp_path / "state" / "buffer.sqlite3"
    buffer = SampleBuffer(buffer_path, 8 * 1024 * 1024)
    start = time.time() - 7200
    buffer.append_samples(Sample(start + i, "Vehicle.Speed", 10.0, Priority.NORMAL) for i in range(100))
    buffer.commit()
    buffer.close()
    log = _speed_log(tmp_path / "day.log", 5)
    config = replay_config(
        tmp_path / "agent.toml",
        mqtt_broker,
        vehicle_id="bus-old",
        log=log,
        replay="day",
        state=tmp_path / "state",
        more=f"[metrics]\nport = {free_port()}\n{QUICK}",
    )
    # WHEN doctor runs with no agent running
    code, lines, screen = _doctor(config)
    # THEN the buffer warns about the old samples; the agent line fails (not running): exit code 2
    status, message = lines["buffer"]
    assert status == "WARN" and "100 records waiting, oldest unsent 2.0 h old" in message, screen
    assert lines["agent"][0] == "FAIL" and "not running" in lines["agent"][1]
    assert lines["cloud ack"][0] == "WARN"  # the broker holds no acknowledgement for this vehicle
    assert "facts: offline" in screen and code == 2


@pytest.mark.parametrize(
    ("who", "status", "words"),
    [
        ("the bus's certificate", "OK", "accepted client certificate bus.crt (CONNACK)"),
        ("no client certificate", "FAIL", "check ca_file, cert_file and key_file in [uplink]"),
        ("a certificate from an unknown CA", "FAIL", "check ca_file, cert_file and key_file in [uplink]"),
    ],
)
def test_the_broker_line_uses_the_configured_tls_identity(
    tls_broker: TlsBroker, pki: Pki, who: str, status: str, words: str
) -> None:
    # GIVEN a broker whose only listener is TLS and requires a client certificate from its CA
    credentials = {
        "the bus's certificate": {"cert_file": pki.bus_cert, "key_file": pki.bus_key},
        "no client certificate": {},
        "a certificate from an unknown CA": {"cert_file": pki.stranger_cert, "key_file": pki.stranger_key},
    }[who]
    url = f"mqtts://127.0.0.1:{tls_broker.port}"
    settings = UplinkSettings(broker_url=url, fleet_id=unique_id("f"), ca_file=pki.ca, **credentials)
    # WHEN doctor connects with that identity
    result = check_broker(probes.probe_broker(settings, "bus-9"), identity(settings))
    # THEN a real CONNACK, or one sentence saying which files to check
    assert result[0].name == status and words in result[1], result


class SlcanAdapter:
    """A USB-CAN adapter speaking SLCAN on a pseudo-terminal: writes CCVS1 frames every 5 ms from a
    thread, and swallows the host's commands (open, bitrate)."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        message = load_catalog(DEFAULT_CATALOG).database.get_message_by_name("CCVS1")
        data = message.encode({"WheelBasedVehicleSpeed": 42.0, "ParkingBrakeSwitch": 0, "BrakeSwitch": 0})
        self._line = f"T{message.frame_id:08X}{len(data)}{data.hex().upper()}\r".encode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slcan-adapter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(OSError):
                readable, _, _ = select.select([self.master], [], [], 0)
                if readable:
                    os.read(self.master, 4096)  # the host's commands
                os.write(self.master, self._line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self._slave)


async def test_frames_per_can_bus_live_and_offline(mqtt_broker: Broker, tmp_path: Path) -> None:
    # GIVEN an SLCAN adapter sending frames and an agent configured for it (not yet running)
    adapter = SlcanAdapter()
    metrics_port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""vehicle_id = "bus-can"
log_format = "json"
[[can]]
name = "traction"
interface = "slcan"
channel = "{adapter.path}"
options = {{ sleep_after_open = 0.0 }}
[buffer]
path = "{tmp_path / "state" / "buffer.sqlite3"}"
[uplink]
broker_url = "mqtt://{mqtt_broker.host}:{mqtt_broker.port}"
fleet_id = "{mqtt_broker.namespace}"
[metrics]
port = {metrics_port}
{QUICK}"""
    )
    try:
        # WHEN doctor runs with no agent: it listens on the bus itself
        _, offline, screen = await asyncio.to_thread(_doctor, config)
        assert offline["can traction frames"][0] == "OK", screen
        assert "frames/s (listened 1.5 s)" in offline["can traction frames"][1]
        # WHEN the agent runs: doctor reads the agent's per-bus counts
        agent = AgentProcess(config, tmp_path / "agent.log")
        try:
            health = f"http://127.0.0.1:{metrics_port}/health.json"

            def counting() -> bool:
                document = probes.fetch_health(health).document or {}
                return (document.get("sources", {}).get("traction") or {}).get("per_s") is not None

            await wait_until("the agent counting frames on the bus", counting, agent=agent)
            _, live, screen = await asyncio.to_thread(_doctor, config)
        finally:
            agent.ensure_dead()  # SIGKILL: nothing acknowledges here, a clean stop would wait for acks
    finally:
        adapter.close()
    status, message = live["can traction frames"]
    assert "facts: live" in screen and status == "OK" and "frames/s" in message, screen
    assert "can traction link" not in live  # not SocketCAN: the frames line is the link's check


def test_mqtts_to_a_plain_listener_is_a_tls_failure(mqtt_broker: Broker) -> None:
    settings = UplinkSettings(broker_url=f"mqtts://{mqtt_broker.host}:{mqtt_broker.port}")
    status, message = check_broker(probes.probe_broker(settings, "bus-9"), identity(settings))
    assert status.name == "FAIL" and "is the port a TLS listener (mqtts://)?" in message, message
