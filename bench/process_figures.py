"""What the agent benches read about a process and its interpreter, and how they print a spread.

Shared by bench/agent_throughput.py, bench/paced_buses.py and bench/agent_footprint.py.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
OPTIONAL = ("onnxruntime", "numpy", "cantools", "can", "asammdf", "pandas", "sklearn")
EDGE_VENV = (
    "an edge-only interpreter: python3 -m venv /tmp/edge && /tmp/edge/bin/pip install -e '.[edge]' "
    "(it holds cantools, python-can, zstandard and, through aiomqtt, paho-mqtt: the baseline's too)"
)


def cpu_seconds(pid: int) -> float:
    """utime + stime of all the process's threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def importable(python: str) -> dict[str, bool]:
    """Which of OPTIONAL the interpreter `python` can import."""
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {list(OPTIONAL)!r}}}))"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    found: dict[str, bool] = json.loads(out)
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it soon after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spread(values: Sequence[float], fmt: str) -> str:
    """Median (min–max)."""
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"
