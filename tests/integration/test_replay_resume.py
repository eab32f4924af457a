"""A replay killed with SIGKILL again and again resumes where it was: the union of what its runs committed
is exactly what one uninterrupted run commits — every sample once, none twice, none missing.

The real agent (`python -m agent run`) replays a simulated bus's candump log as fast as it can, with the
shipped catalog and its sampling policy on (so most frames yield no sample, and the policy's state matters
at a resume). No broker is reachable, so nothing leaves the buffer: its `records` table is the union of
every run's commits. The replay's position is read from outside, read-only, in the buffer's `meta` table
(`replay:<name>`), to kill each run as soon as it has committed past where the run before stopped: on an
idle machine a replay commits the whole log in well under a second, so kill points fixed as fractions of
the log were overrun to its end (positions move in steps of thousands of frames). Commits come every
10 ms so that a run resumed mid-log commits at least once before its end, as fast as the replay plays.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.logfiles import FrameLog
from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC
from tests.integration.test_agent_faults import AgentProcess

REPO = Path(__file__).resolve().parents[2]
REPLAY = "bus"
MARK = f"replay:{REPLAY}"
WAIT_S = 60.0
KILLS = 6  # runs killed with SIGKILL, each once it has committed past where the one before stopped
SAMPLE_KIND = 0  # agent.buffer.Kind.SAMPLE

Row = tuple[int, str, float | None]  # ts_ms, signal, value


@pytest.fixture(scope="module")
def bus_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated minutes of the 12 m bus as a candump log, made by the simulator's CLI."""
    path = tmp_path_factory.mktemp("sim") / "bus.log"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "record",
            "--duration",
            "30m",
            "--seed",
            "11",
            "--out",
            str(path),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, log_path: Path) -> Path:
    config = directory / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "bus-resume"
log_format = "text"
[[replay]]
name = "{REPLAY}"
path = "{log_path}"
catalog = "{DEFAULT_CATALOG}"
dbc = "{DEFAULT_DBC}"
speed = "max"
[buffer]
path = "{directory / "buffer.sqlite3"}"
commit_interval_s = 0.01
[uplink]
broker_url = "mqtt://127.0.0.1:{refused_port()}"
fleet_id = "resume"
backoff_initial_s = 5.0
backoff_max_s = 5.0
[inference]
enabled = false
[alerts]
enabled = false
[metrics]
enabled = false
"""
    )
    return config


def read_position(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    conn = sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=10)
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (MARK,)).fetchone()
        return 0 if row is None else int(row[0])
    finally:
        conn.close()


def read_samples(buffer: Path) -> Counter[Row]:
    conn = sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT ts_ms, name, value FROM records WHERE kind = ?", (SAMPLE_KIND,)
        ).fetchall()
    finally:
        conn.close()
    return Counter((int(ts), str(name), value) for ts, name, value in rows)


def wait_for_resume(agent: AgentProcess, runs_before: int) -> None:
    """Until this run has said it resumes: every run after the first writes "resuming after frame"."""
    deadline = time.monotonic() + WAIT_S
    while agent.log_text().count("resuming after frame") < runs_before:
        agent.alive()
        if time.monotonic() > deadline:
            pytest.fail(f"the agent did not resume:\n{agent.log_text()[-3000:]}")
        time.sleep(0.002)


def wait_for_position(agent: AgentProcess, buffer: Path, at_least: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while (position := read_position(buffer)) < at_least:
        agent.alive()
        if time.monotonic() > deadline:
            pytest.fail(f"replay position stayed at {position} < {at_least}:\n{agent.log_text()[-3000:]}")
        time.sleep(0.002)
    return position


def log_ends(agent_log: Path) -> int:
    """How many runs logged the end of the replayed log."""
    return agent_log.read_text().count("replay bus: end of") if agent_log.exists() else 0


def run_to_end(directory: Path, log_path: Path, frames: int) -> None:
    ends_before = log_ends(directory / "agent.log")
    agent = AgentProcess(write_config(directory, log_path), directory / "agent.log")
    try:
        wait_for_position(agent, directory / "buffer.sqlite3", frames)
        # The position may have reached the end in the run before: wait until this run has played
        # to the end too (and so has its signal handlers), then stop it as systemd would.
        deadline = time.monotonic() + WAIT_S
        while log_ends(directory / "agent.log") <= ends_before:
            agent.alive()
            assert time.monotonic() < deadline, agent.log_text()[-3000:]
            time.sleep(0.01)
        agent.process.terminate()
        assert agent.process.wait(timeout=WAIT_S) == 0, agent.log_text()[-3000:]
    finally:
        agent.ensure_dead()


def test_a_replay_killed_mid_log_resumes_without_duplicates_or_gaps(bus_log: Path, tmp_path: Path) -> None:
    with FrameLog(bus_log, REPLAY) as log_frames:
        frames = sum(1 for _ in log_frames)
    # GIVEN what one uninterrupted run commits
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    run_to_end(reference_dir, bus_log, frames)
    reference = read_samples(reference_dir / "buffer.sqlite3")
    assert sum(reference.values()) > 1000 and max(reference.values()) == 1

    # WHEN another agent is killed with SIGKILL at points spread over the log, then runs to the end
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    buffer = killed_dir / "buffer.sqlite3"
    positions: list[int] = []
    for _ in range(KILLS):
        agent = AgentProcess(write_config(killed_dir, bus_log), killed_dir / "agent.log")
        try:
            if positions and positions[-1] >= frames:  # the last run outran its kill to the end
                wait_for_resume(agent, len(positions))
            else:
                wait_for_position(agent, buffer, positions[-1] + 1 if positions else 1)
            agent.kill()
        finally:
            agent.ensure_dead()
        positions.append(read_position(buffer))
    run_to_end(killed_dir, bus_log, frames)

    # THEN kills landed mid-log (at least two: a run's first commit past its resume point may reach the end
    # of the log, a replay at full speed being that fast), and each run went on from where the last stopped
    mid_log = sum(0 < p < frames for p in positions)
    assert mid_log >= 2 and all(p > 0 for p in positions), positions
    assert positions == sorted(positions), positions
    log_text = (killed_dir / "agent.log").read_text()
    assert log_text.count("resuming after frame") == KILLS, log_text[-3000:]
    # AND the union of their commits is exactly the uninterrupted run's: nothing twice, nothing missing
    resumed = read_samples(buffer)
    duplicated = {row: n for row, n in resumed.items() if n > 1}
    missing = reference - resumed
    extra = resumed - reference
    assert not duplicated, f"{len(duplicated)} samples stored more than once, e.g. {list(duplicated)[:5]}"
    assert not missing, f"{sum(missing.values())} samples missing, e.g. {list(missing)[:5]}"
    assert not extra, f"{sum(extra.values())} samples not in the uninterrupted run, e.g. {list(extra)[:5]}"
