"""Simulated buses as candump logs (`voltgate-sim record`), for the tests that decode the same recording
two ways and compare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.logfiles import FrameLog
from agent.records import Frame

REPO = Path(__file__).resolve().parents[2]


def record_log(out: Path, *options: str) -> Path:
    """`voltgate-sim record --out out *options`; returns `out`."""
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--out", str(out), *options],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def recorded_frames(out: Path, *options: str) -> list[Frame]:
    """The frames of `record_log(out, *options)`, read back as the agent reads a log."""
    with FrameLog(record_log(out, *options), "test") as frames:
        return list(frames)
