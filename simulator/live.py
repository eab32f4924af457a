"""The simulator as a live bus in another process: `voltgate-sim run --slcan-pty --nmea-pty ...` and a
watcher that reads the pty paths it prints on stdout and its status lines on stderr.

Shared by `scripts/demo.py` and the fault suite (`tests/faults`), which both start the simulator as a
process and hand its pseudo-terminals to a `voltgate-agent run`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

SIM_BIN = Path(sys.executable).parent / "voltgate-sim"


def start_live_bus(options: Sequence[str], *, program: Sequence[str] | None = None) -> subprocess.Popen[str]:
    """`voltgate-sim run --slcan-pty --nmea-pty OPTIONS...` with its stdout and stderr piped (read them
    with a `SimWatcher`). `program` replaces the `voltgate-sim` entry point (e.g. `python -m simulator`)."""
    command = [*(program or [str(SIM_BIN)]), "run", "--slcan-pty", "--nmea-pty", *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class SimWatcher(threading.Thread):
    """Reads the simulator's output: the pty paths on stdout, its status lines on stderr."""

    def __init__(self, proc: subprocess.Popen[str], log: Path | None = None) -> None:
        super().__init__(name="sim-watcher", daemon=True)
        self.proc = proc
        self.log = log  # where its stderr is kept, line by line (None: not kept)
        self.ptys: dict[str, str] = {}
        self.last_status = "starting"
        self.ready = threading.Event()

    def run(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for line in self.proc.stdout:
            kind, _, path = line.strip().partition(" ")
            self.ptys[kind] = path
            if {"slcan-pty", "nmea-pty"} <= self.ptys.keys():
                self.ready.set()
                break
        with self.log.open("w") if self.log else contextlib.nullcontext() as kept:
            for line in self.proc.stderr:
                if kept is not None:
                    kept.write(line)
                    kept.flush()
                if "simulator:" in line and "+" in line:
                    self.last_status = line.split("simulator:", 1)[1].strip()
