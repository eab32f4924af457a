"""`voltgate-agent doctor`'s checks (pure: facts in, status and one sentence out), its fact readers on real
things (`ip` on this machine, a real SQLite buffer), and the agent's health endpoint it reads, including a
port that is already taken."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from agent import doctor_probes as probes
from agent.buffer import SampleBuffer
from agent.doctor import (
    Line,
    Status,
    check_agent,
    check_buffer,
    check_can_link,
    check_clock,
    check_disk,
    check_frames_live,
    check_frames_offline,
    check_last_ack,
    check_models,
    exit_code,
    render,
)
from agent.metrics import Health, MetricsServer
from agent.records import Priority, Sample
from agent.settings import CanBusSettings
from tests.faults.harness import wait_until


def _bus(bitrate: int = 500_000) -> CanBusSettings:
    return CanBusSettings(name="traction", interface="socketcan", channel="can0", bitrate=bitrate)


def _can_link_json(state: str, bitrate: int, tx: int, rx: int, up: bool = True, bus_off: int = 0) -> str:
    """`ip -json -details -statistics link show can0` as iproute2 (ip/iplink_can.c) lays it out: flags,
    linkinfo.info_kind "can", info_data.state / berr_counter / bittiming.bitrate, info_xstats, stats64.
    Written for the test: this machine's kernel has no SocketCAN (no vcan) to capture from."""
    flags = ["NOARP", "UP", "LOWER_UP", "ECHO"] if up else ["NOARP", "ECHO"]
    link = {
        "ifindex": 3,
        "ifname": "can0",
        "flags": flags,
        "operstate": "UP" if up else "DOWN",
        "link_type": "can",
        "linkinfo": {
            "info_kind": "can",
            "info_data": {
                "state": state,
                "berr_counter": {"tx": tx, "rx": rx},
                "restart_ms": 100,
                "bittiming": {"bitrate": bitrate, "sample_point": "0.875"},
            },
            "info_xstats": {"restarts": 0, "bus_error": 3, "error_passive": 1, "bus_off": bus_off},
        },
        "stats64": {"rx": {"bytes": 800, "packets": 100, "errors": 3}, "tx": {"packets": 0}},
    }
    return json.dumps([link])


def test_exit_code_is_the_worst_status() -> None:
    ok, warn, fail = (Line("x", status, "m") for status in Status)
    assert exit_code([ok, ok]) == 0
    assert exit_code([ok, warn]) == 1
    assert exit_code([warn, fail, ok]) == 2
    assert exit_code([]) == 0
    screen = render([ok, fail], ["header"])
    assert screen.splitlines() == ["header", "OK    x  m", "FAIL  x  m"]


def test_the_agent_line() -> None:
    url = "http://127.0.0.1:9108/health.json"
    document = {"vehicle_id": "bus-1", "pid": 42, "healthy": True, "uptime_s": 7200.0}
    assert check_agent(probes.Endpoint(document, None), None, url, "bus-1") == (
        Status.OK,
        f"running (pid 42, up 2.0 h); facts from {url}",
    )
    stuck = document | {"healthy": False, "committer_age_s": 30.0}
    assert check_agent(probes.Endpoint(stuck, None), None, url, "bus-1")[0] == Status.FAIL
    assert check_agent(probes.Endpoint(document, None), None, url, "bus-2")[0] == Status.FAIL  # not ours
    silent = probes.Endpoint(None, "HTTP 404")
    status, message = check_agent(silent, 812, url, "bus-1")
    assert status == Status.WARN and "running (pid 812)" in message and "(HTTP 404)" in message
    assert check_agent(silent, 812, url, "bus-1", metrics_enabled=False)[0] == Status.OK
    assert check_agent(silent, None, url, "bus-1")[1].startswith("not running: start it")


def test_ip_json_of_a_can_link_is_parsed() -> None:
    link = probes.parse_ip_link(_can_link_json("ERROR-PASSIVE", 250_000, 0, 135, bus_off=2), "can0")
    assert link == probes.LinkState("can0", True, "can", "ERROR-PASSIVE", 250_000, 0, 135, 2, 100)
    assert probes.parse_ip_link(_can_link_json("ERROR-ACTIVE", 1, 0, 0), "can1") is None
    assert probes.parse_ip_link("not json", "can0") is None


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_ip_json_of_this_machines_loopback_is_read() -> None:
    # Real `ip -json -details -statistics` output: the loopback (no CAN here); CAN fields stay None.
    link = probes.read_link("lo")
    assert link is not None and link.up and link.kind == "loopback"
    assert link.can_state is None and link.bitrate is None
    assert link.rx_packets is not None and link.rx_packets >= 0
    assert probes.read_link("nosuchcan7") is None


@pytest.mark.parametrize(
    ("json_text", "status", "words"),
    [
        (_can_link_json("ERROR-ACTIVE", 500_000, 0, 0), Status.OK, "can0 up, 500 kbit/s, error-active"),
        (_can_link_json("ERROR-WARNING", 500_000, 96, 0), Status.WARN, "termination"),
        (_can_link_json("ERROR-PASSIVE", 500_000, 0, 135), Status.WARN, "rx 135"),
        (_can_link_json("BUS-OFF", 500_000, 256, 0, bus_off=1), Status.FAIL, "restart-ms"),
        (_can_link_json("ERROR-ACTIVE", 250_000, 0, 0), Status.FAIL, "runs at 250 kbit/s"),
        (_can_link_json("STOPPED", 500_000, 0, 0, up=False), Status.FAIL, "ip link set can0 up type can"),
    ],
)
def test_can_link_states(json_text: str, status: Status, words: str) -> None:
    result = check_can_link(_bus(), probes.parse_ip_link(json_text, "can0"))
    assert result[0] == status and words in result[1], result


def test_a_missing_can_interface_fails() -> None:
    status, message = check_can_link(_bus(), None)
    assert status == Status.FAIL and "does not exist" in message


def test_frames_per_bus() -> None:
    assert check_frames_live("t", "live", {"up": True, "count": 900, "per_s": 450.0, "last_age_s": 0.1}) == (
        Status.OK,
        "450 frames/s (900 since start)",
    )
    assert check_frames_live("t", "live", {"up": True, "count": 0, "last_age_s": None})[0] == Status.FAIL
    assert check_frames_live("t", "live", {"up": False, "count": 0})[0] == Status.FAIL
    assert check_frames_live("t", "live", {"up": True, "count": 9, "last_age_s": 60.0})[0] == Status.WARN
    assert check_frames_live("t", "replay", {"count": 9, "last_age_s": 600.0})[0] == Status.OK
    assert check_frames_offline(probes.Listen(0, 1.5))[0] == Status.FAIL
    assert check_frames_offline(probes.Listen(0, 0.0, error="No such device"))[0] == Status.FAIL
    assert check_frames_offline(probes.Listen(300, 1.5)) == (Status.OK, "200 frames/s (listened 1.5 s)")


def test_host_clock_against_gps() -> None:
    assert check_clock(0.2, 60.0)[0] == Status.OK
    assert check_clock(-3.0, 60.0)[0] == Status.WARN
    assert check_clock(120.0, 60.0)[0] == Status.FAIL
    assert check_clock(None, 60.0)[0] == Status.WARN
    assert check_clock(float("nan"), 60.0)[0] == Status.WARN


def test_buffer_with_old_unsent_samples_warns() -> None:
    cap = 512 * 1024 * 1024
    assert check_buffer(0, None, 65_536, cap, 300.0)[0] == Status.OK
    assert check_buffer(40, 20.0, 65_536, cap, 300.0)[0] == Status.OK
    status, message = check_buffer(40, 7200.0, 65_536, cap, 300.0)
    assert status == Status.WARN and "oldest unsent 2.0 h old" in message
    assert check_buffer(10, 1.0, 0.95 * cap, cap, 300.0)[0] == Status.WARN
    assert check_buffer(None, None, 0, cap, 300.0)[0] == Status.WARN


def test_last_cloud_acknowledgement() -> None:
    assert check_last_ack(None, None, 0, 300.0)[0] == Status.OK
    assert check_last_ack(None, 10.0, 50, 300.0)[0] == Status.OK  # just started
    assert check_last_ack(None, 3600.0, 50, 300.0)[0] == Status.WARN
    assert check_last_ack(4000.0, 9000.0, 50, 300.0)[0] == Status.WARN
    assert check_last_ack(2.0, 9000.0, 50, 300.0) == (Status.OK, "last commit acknowledgement 2 s ago")


def test_models_and_disk() -> None:
    assert check_models(True, 2, {"soc_drop": "4", "large_drop": "4"}, []) == (
        Status.OK,
        "large_drop 4, soc_drop 4",
    )
    assert check_models(True, 3, {"soc_drop": "4"}, [])[0] == Status.WARN
    assert check_models(True, 1, {}, ["model x.onnx: features differ"])[0] == Status.FAIL
    assert check_models(False, 3, {}, [])[0] == Status.OK
    cap = 512 * 1024 * 1024
    gib = 1024**3
    assert check_disk(probes.DiskFacts(Path("/var"), 10 * gib, 30 * gib), 0, cap)[0] == Status.OK
    assert check_disk(probes.DiskFacts(Path("/var"), 100 * 2**20, 30 * gib), 0, cap)[0] == Status.WARN
    assert check_disk(probes.DiskFacts(Path("/var"), 2**20, 30 * gib), 0, cap)[0] == Status.FAIL
    assert check_disk(None, 0, cap)[0] == Status.WARN


def test_buffer_is_read_read_only(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    assert probes.read_buffer(path) == probes.BufferFacts(False, 0, None, None)
    buffer = SampleBuffer(path, 1024 * 1024)
    old = time.time() - 7200
    buffer.append_samples(Sample(old + i, "Vehicle.Speed", 1.0, Priority(i % 3)) for i in range(30))
    buffer.commit()
    buffer.acknowledge(range(5))  # the five oldest are stored in the cloud
    facts = probes.read_buffer(path)  # beside the open writer, as beside a running agent
    buffer.close()
    assert facts.rows == 25
    assert facts.oldest_ts_s == pytest.approx(old + 5, abs=0.002)
    assert facts.disk_bytes > 0 and facts.error is None


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


async def test_health_document_is_served_as_json() -> None:
    health = Health(vehicle_id="bus-7")
    health.note_source("traction", 0)
    server = MetricsServer("127.0.0.1", 0, health)
    assert await server.start()
    task = asyncio.create_task(server.serve())
    try:
        health.note_source("traction", 100)
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/health.json")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    document = json.loads(body)
    assert status == 200 and document["vehicle_id"] == "bus-7" and document["healthy"] is True
    traction = document["sources"]["traction"]
    assert traction["count"] == 100 and traction["last_age_s"] >= 0 and traction["per_s"] > 0
    assert set(document) >= {"buffer", "uplink", "models", "host_clock_minus_gps_s", "pid"}
    endpoint = probes.Endpoint(document, None)
    assert endpoint.document is not None


async def test_a_taken_port_is_one_error_line_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a port another program listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer("127.0.0.1", port, Health(), retry_s=0.01)
        # WHEN the agent's endpoint starts there, and retries
        with caplog.at_level(logging.INFO, logger="agent.metrics"):
            assert not await server.start()
            task = asyncio.create_task(server.serve())
            await wait_until("three binds tried", lambda: server.bind_failures >= 3)
        # THEN one error line, the retries only counted; once the port is free it listens after all
    try:
        await wait_until("the endpoint listening once the port is free", lambda: server.listening)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not available" in errors[0].getMessage()
