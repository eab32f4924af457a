"""The gateway's systemd unit is valid and hardened (checked offline: no running systemd needed)."""

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "voltgate-agent.service"
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _unit_with_real_executable(tmp_path: Path) -> Path:
    # GIVEN the unit as shipped, with its install-time ExecStart path pointed at an executable that
    # exists on this machine (the unit is installed under /opt/voltgate on a gateway)
    fake = tmp_path / "voltgate-agent"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/voltgate/venv/bin/voltgate-agent", str(fake)))
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_with_real_executable(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(unit.name) in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    unit = _unit_with_real_executable(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_is_a_notify_service_with_watchdog() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert int(service["TimeoutStopSec"]) >= 10
