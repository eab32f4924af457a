"""The simulator's outputs end to end: `voltgate-sim` as a subprocess writing logs that python-can reads
back and cantools decodes with the project DBC, streaming over SLCAN on a pty (read by python-can's
`slcan` interface: the real serial adapter protocol, across processes), NMEA on a pty, and a virtual bus.

No timed assertions: every wait has a deadline and fails with what was (not) seen.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import tty
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import can
import cantools
import pytest
import serial
from cantools.database.can import Database

from protocols.catalog import DEFAULT_DBC
from protocols.nmea import GpsFix, NmeaReader
from simulator.__main__ import main

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # deadline for anything a subprocess should do within seconds


@pytest.fixture(scope="module")
def db() -> Database:
    loaded = cantools.database.load_file(str(DEFAULT_DBC))
    assert isinstance(loaded, Database)
    return loaded


def sim_command() -> list[str]:
    """The installed console script when it is there (it is what users run), else the module."""
    script = Path(sys.executable).with_name("voltgate-sim")
    if script.exists():
        return [str(script)]
    found = shutil.which("voltgate-sim")
    return [found] if found else [sys.executable, "-m", "simulator"]


def record(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*sim_command(), "record", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"voltgate-sim record failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def decode_log(db: Database, path: Path) -> tuple[int, Counter[str], list[str]]:
    """(frames, frames per message name, failures) of a recorded log, read with python-can's reader."""
    frames = 0
    names: Counter[str] = Counter()
    failures: list[str] = []
    for msg in can.LogReader(str(path)):
        frames += 1
        try:
            message = db.get_message_by_frame_id(msg.arbitration_id)
            message.decode(bytes(msg.data))
            names[message.name] += 1
        except Exception as err:  # any failure counts; keep the first few for the message
            if len(failures) < 5:
                failures.append(f"{msg}: {err!r}")
            else:
                failures.append("")
    return frames, names, failures


# -- recorded logs ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_hour_recorded_as_candump_log_decodes_at_100_percent(tmp_path: Path, db: Database) -> None:
    # GIVEN an hour of the default bus, no fault injected
    out = tmp_path / "bus.log"
    proc = record(tmp_path, "--duration", "1h", "--seed", "7", "--out", str(out))
    assert "real time" in proc.stdout and "frames/s" in proc.stdout, proc.stdout
    # WHEN python-can reads the log back and cantools decodes every frame with the project DBC
    frames, names, failures = decode_log(db, out)
    # THEN every frame decodes, and every message is there at its rate
    assert not failures, f"{len(failures)} of {frames} frames failed to decode, first: {failures[:5]}"
    assert frames > 0
    for message in db.messages:
        assert message.cycle_time is not None
        expected = 3_600_000 // message.cycle_time
        assert abs(names[message.name] - expected) <= 1, (message.name, names[message.name], expected)
    assert out.read_text().startswith("(1709517600.1"), "timestamps are the bus clock at the default start"


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
def test_asc_and_blf_logs_read_back_with_python_can(tmp_path: Path, db: Database, suffix: str) -> None:
    out = tmp_path / f"bus{suffix}"
    record(tmp_path, "--duration", "5m", "--out", str(out), "--start", "2024-03-04T02:25:00Z")
    frames, names, failures = decode_log(db, out)
    assert not failures, f"{len(failures)} of {frames} frames failed, first: {failures[:5]}"
    assert len(names) == len(db.messages)
    assert names["BMS_PackStatus"] == pytest.approx(3000, abs=1)


def test_record_writes_nmea_and_truth_beside_the_log(tmp_path: Path) -> None:
    record(
        tmp_path,
        "--duration",
        "2m",
        "--out",
        "bus.log",
        "--nmea",
        "gps.nmea",
        "--truth",
        "truth.csv",
        "--fault",
        "gps_loss@30s/20s",
    )
    reader = NmeaReader()
    fixes = reader.feed((tmp_path / "gps.nmea").read_bytes()) + reader.flush()
    assert len(fixes) == 120
    assert sum(not f.valid for f in fixes) == pytest.approx(20, abs=1)
    assert set(reader.counts) == {"RMC", "GGA", "VTG", "GSA"}, reader.counts
    truth = (tmp_path / "truth.csv").read_text().splitlines()
    assert truth[0].startswith("t_s,") and len(truth) == 121


def test_wire_faults_in_a_recording_show_as_lost_and_undecodable_frames(tmp_path: Path, db: Database) -> None:
    out = tmp_path / "faulty.log"
    proc = record(
        tmp_path,
        "--duration",
        "1m",
        "--out",
        str(out),
        "--fault",
        "can_frame_loss@10s/20s=0.5",
        "--fault",
        "can_frame_corruption@40s/10s=0.5",
    )
    assert "dropped" in proc.stdout, proc.stdout
    _, names, failures = decode_log(db, out)
    assert names["BMS_PackStatus"] < 600, "frames were lost"
    assert failures, "corrupted frames do not decode"


# -- live streams -------------------------------------------------------------------------------------


@contextlib.contextmanager
def live_sim(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """`voltgate-sim run ...` as a subprocess; yields it and the pty paths it printed."""
    proc = subprocess.Popen(
        [*sim_command(), "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, _read_paths(proc, expect=sum(a.endswith("-pty") for a in args))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def _read_paths(proc: subprocess.Popen[str], expect: int) -> dict[str, str]:
    assert proc.stdout is not None
    paths: dict[str, str] = {}
    deadline = time.monotonic() + WAIT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while len(paths) < expect:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
                pytest.fail(
                    f"voltgate-sim run printed {paths} of {expect} pty paths within {WAIT_S} s; {err}"
                )
            if sel.select(timeout=remaining):
                line = proc.stdout.readline()
                kind, _, path = line.strip().partition(" ")
                if kind.endswith("-pty"):
                    paths[kind] = path
    return paths


def test_slcan_over_a_pty_is_read_by_python_can_slcan(db: Database) -> None:
    # GIVEN the simulator playing an SLCAN adapter on a pty, ten times faster than real time
    with live_sim("--slcan-pty", "--speed", "10", "--duration", "10m") as (_, paths):
        # WHEN python-can's slcan interface opens it as a serial port (500 kbit/s, like the bus)
        bus = can.Bus(interface="slcan", channel=paths["slcan-pty"], bitrate=500_000, sleep_after_open=0)
        try:
            names: Counter[str] = Counter()
            failures: list[str] = []
            deadline = time.monotonic() + WAIT_S
            while sum(names.values()) < 300 and time.monotonic() < deadline:
                msg = bus.recv(timeout=1.0)
                if msg is None:
                    continue
                try:
                    message = db.get_message_by_frame_id(msg.arbitration_id)
                    message.decode(bytes(msg.data))
                    names[message.name] += 1
                except Exception as err:  # counted and reported below
                    failures.append(f"{msg}: {err!r}")
        finally:
            bus.shutdown()
    # THEN it receives frames that the project DBC decodes, 11-bit and 29-bit alike
    assert sum(names.values()) >= 300, f"received {dict(names)} within {WAIT_S} s"
    assert not failures, failures[:5]
    assert names["BMS_PackStatus"] > 0 and names["CCVS1"] > 0


def test_nmea_over_a_pty_parses_to_fixes() -> None:
    with live_sim("--nmea-pty", "--speed", "20", "--duration", "10m") as (_, paths):
        port = serial.Serial(paths["nmea-pty"], timeout=0.5)
        try:
            reader = NmeaReader()
            fixes: list[GpsFix] = []
            deadline = time.monotonic() + WAIT_S
            while len(fixes) < 5 and time.monotonic() < deadline:
                fixes += reader.feed(port.read(4096))
        finally:
            port.close()
    assert len(fixes) >= 5, f"{len(fixes)} fixes within {WAIT_S} s; reader counts {reader.counts}"
    assert all(f.valid and f.lat_deg is not None for f in fixes)
    assert all(-1.4 < (f.lat_deg or 0) < -1.1 and 36.6 < (f.lon_deg or 0) < 37.1 for f in fixes), "Nairobi"
    stamps = [f.ts for f in fixes]
    assert all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(stamps)), stamps


def test_run_streams_onto_a_python_can_virtual_bus(db: Database) -> None:
    channel = f"voltgate-test-{os.getpid()}-{time.monotonic_ns()}"
    with can.Bus(interface="virtual", channel=channel, receive_own_messages=False) as listener:
        code = main(
            ["run", "--can-interface", "virtual", "--can-channel", channel, "--fast", "--duration", "30s"]
        )
        assert code == 0
        frames = []
        while (msg := listener.recv(timeout=0.5)) is not None:
            frames.append(msg)
    assert len(frames) == pytest.approx(30 * 59, abs=13)
    for msg in frames:
        db.decode_message(msg.arbitration_id, bytes(msg.data))


def test_run_stops_cleanly_on_sigterm_and_reports_progress() -> None:
    with live_sim("--slcan-pty", "--speed", "50", "--status-every", "10") as (proc, _):
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        seen = b""
        deadline = time.monotonic() + WAIT_S
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"SOC" not in seen and time.monotonic() < deadline:
                if sel.select(timeout=1.0):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        break
                    seen += chunk
        assert b"SOC" in seen and b"km/h" in seen, f"no status line within {WAIT_S} s: {seen!r}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0


def test_run_writes_nmea_to_a_serial_port() -> None:
    # GIVEN a pty standing in for a USB-serial cable (the test holds the far end)
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        port = os.ttyname(slave)
        # WHEN the simulator writes its GPS to that port for ten simulated seconds
        assert main(["run", "--nmea-port", port, "--fast", "--duration", "10s"]) == 0
        os.set_blocking(master, False)
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(master, 65536):
                data += chunk
    finally:
        os.close(master)
        os.close(slave)
    # THEN the far end parses ten epochs of fixes
    reader = NmeaReader()
    fixes = reader.feed(data) + reader.flush()
    assert len(fixes) == 10 and all(f.valid for f in fixes), reader.counts


def test_run_streams_onto_socketcan_where_the_kernel_has_it(db: Database) -> None:
    channel = os.environ.get("VOLTGATE_TEST_SOCKETCAN", "vcan0")
    try:
        listener = can.Bus(interface="socketcan", channel=channel)
    except Exception as err:  # no SocketCAN module or no such interface: python-can raises several kinds
        pytest.skip(f"SocketCAN {channel} unavailable here ({err}); ENVIRONMENT.md: no vcan on CI")
    with listener:
        assert (
            main(
                [
                    "run",
                    "--can-interface",
                    "socketcan",
                    "--can-channel",
                    channel,
                    "--fast",
                    "--duration",
                    "5s",
                ]
            )
            == 0
        )
        frames = []
        while (msg := listener.recv(timeout=0.5)) is not None:
            frames.append(msg)
    assert len(frames) == pytest.approx(5 * 59, abs=13)
    for msg in frames:
        db.decode_message(msg.arbitration_id, bytes(msg.data))


@pytest.mark.parametrize(("departure", "drives"), [("16:01", True), (None, False)])
def test_departure_sends_the_bus_out_at_that_local_time(
    tmp_path: Path, departure: str | None, drives: bool
) -> None:
    # GIVEN a simulation that starts mid-afternoon in Nairobi (13:00 UTC = 16:00 local)
    args = ["--duration", "6m", "--start", "2024-03-04T13:00:00Z", "--out", "bus.log", "--truth", "truth.csv"]
    if departure is not None:
        args += ["--departure", departure]
    record(tmp_path, *args)
    with (tmp_path / "truth.csv").open() as truth:
        speeds = [float(row["speed_kmh"]) for row in csv.DictReader(truth)]
    # THEN with --departure at 16:01 the bus is on the road within the run; without it (the 05:30 default)
    # it stays parked at the depot all afternoon
    assert (max(speeds) > 10.0) is drives, max(speeds)


def test_a_bad_departure_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*sim_command(), "record", "--duration", "1m", "--out", "bus.log", "--departure", "25:00"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--departure '25:00' is not a local time such as 05:30" in proc.stderr
    assert "Traceback" not in proc.stderr
