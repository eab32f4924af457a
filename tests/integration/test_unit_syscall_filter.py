"""The agent runs under the unit's system call filter: SystemCallFilter=@system-service minus
~@privileged @resources, refused calls failing with EPERM (systemd/voltgate-agent.service).

The filter is built as systemd builds it (the sets as this machine's `systemd-analyze syscall-filter` lists
them) and applied with libseccomp by tests/seccomp_exec.py: a running systemd is not available in CI. The
agent replays a simulated bus at full speed, decodes, buffers and runs its ONNX models (a numeric library may
ask for NUMA memory policy, mbind, which the filter refuses), then stops on SIGTERM with exit 0.
"""

from __future__ import annotations

import ctypes.util
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "voltgate-agent.service"
AGENT_RUN = ("-m", "agent", "run", "--config")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"),
    pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="libseccomp not installed"),
]


def _expand(entry: str, seen: set[str] | None = None) -> set[str]:
    """A filter entry (`@group` or a call name) → system call names, groups expanded recursively."""
    if not entry.startswith("@"):
        return {entry}
    seen = seen if seen is not None else set()
    if entry in seen:
        return set()
    seen.add(entry)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", entry], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in listing.splitlines():
        item = line.strip()
        if line[:1].isspace() and item and not item.startswith("#"):
            names |= _expand(item, seen)
    return names


def _unit_filter() -> set[str]:
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            target = denied if value.startswith("~") else allowed
            for entry in value.lstrip("~").split():
                target |= _expand(entry)
    assert allowed and {"mbind", "setuid", "chown"} <= denied, "the unit's filter changed shape"
    return allowed - denied


def _predictions(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM records WHERE kind = 1").fetchone()[0])
    except sqlite3.OperationalError:  # the agent has not created the table yet
        return 0


def test_agent_runs_under_the_units_syscall_filter(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("\n".join(sorted(_unit_filter())) + "\n")
    log = tmp_path / "bus.log"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", "6m", "--out", str(log)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    buffer = tmp_path / "buffer.sqlite3"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""vehicle_id = "bus-seccomp"
[[replay]]
path = "{log}"
speed = "max"
[buffer]
path = "{buffer}"
[uplink]
broker_url = "mqtt://127.0.0.1:9"
[metrics]
port = 0
[alerts]
enabled = false
"""
    )
    agent = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "seccomp_exec.py"),
            str(allowed),
            sys.executable,
            *AGENT_RUN,
            str(config),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # WHEN the replay has gone through inference a few times (every minute of bus time)
        deadline = time.monotonic() + 240
        while _predictions(buffer) < 3 and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
        assert _predictions(buffer) >= 3, "no predictions within 240 s under the filter"
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
        stderr = agent.stderr.read() if agent.stderr else ""
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
