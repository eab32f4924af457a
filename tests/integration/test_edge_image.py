"""Dockerfile.edge: its HEALTHCHECK command, run as Docker would run it, against the agent's real /healthz
(agent/metrics.py's server on loopback). No image is built here: that needs the registry."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from pathlib import Path

from agent.metrics import Health, MetricsServer

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile.edge"


def _healthcheck_command() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile.edge has no exec-form HEALTHCHECK"
    command: list[str] = json.loads(match.group(1))
    assert command[0] == "python"
    return [sys.executable, *command[1:]]  # the image's python; here this interpreter


async def _exit_code(port: int) -> int:
    env = {**os.environ, "VOLTGATE_METRICS__PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        *_healthcheck_command(), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await process.wait()


def test_dockerfile_runs_as_non_root() -> None:
    users = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert users and users[-1] == "voltgate"


async def test_healthcheck_follows_the_agents_health() -> None:
    health = Health(stale_after_s=3600.0)
    server = MetricsServer("127.0.0.1", 0, health)
    await server.start()
    serving = asyncio.create_task(server.serve(), name="metrics")
    try:
        assert await _exit_code(server.port) == 0
        # WHEN the buffer's committer stops beating, /healthz answers 503 and the check fails
        health.last_beat -= 7200.0
        assert await _exit_code(server.port) != 0
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_healthcheck_fails_when_nothing_answers() -> None:
    with socket.socket() as sock:  # a port with no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await _exit_code(port) != 0
