"""The demo's child processes: each started with its output in a log file, and, when it stops, one
sentence with its exit status, its last log line and the log's path."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0  # for a program to answer on its port after it was started


@dataclass
class Program:
    """A child process whose output goes to a log file."""

    name: str
    proc: subprocess.Popen[str]
    log: Path

    @classmethod
    def start(cls, name: str, command: list[str | Path], log: Path) -> Program:
        with log.open("w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        return cls(name, proc, log)

    def stopped(self) -> str | None:
        """None while it runs; else one sentence: its exit status, its last log line and the log's path."""
        if self.proc.poll() is None:
            return None
        try:
            lines = [
                line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()
            ]
        except OSError:
            lines = []
        last = f": {lines[-1][:300]}" if lines else ""
        return f"the {self.name} stopped (exit {self.proc.returncode}){last} — log {self.log}"

    def wait_until_answering(self, url: str, timeout_s: float = START_TIMEOUT_S) -> str | None:
        """None once `url` answers 200 while the program runs; else why not, in one sentence."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (reason := self.stopped()) is not None:
                return reason
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    if reply.status == 200 and self.proc.poll() is None:
                        return None
            except OSError:
                pass
            time.sleep(0.5)
        return f"the {self.name} did not answer on {url} within {timeout_s:.0f} s — log {self.log}"


def stop(proc: subprocess.Popen[str], name: str, timeout_s: float = 35.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop within {timeout_s:.0f} s; killing it", flush=True)
        proc.kill()
