"""Agent settings: the example config, environment overrides, and `check-config`'s one-sentence errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import AgentSettings, ConfigError, broker_address, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "agent" / "agent.example.toml"


def _check_config(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOLTGATE_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture(autouse=True)
def _no_voltgate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VOLTGATE_"):
            monkeypatch.delenv(key)


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert isinstance(settings, AgentSettings)
    assert settings.vehicle_id == "bus-0042"
    assert [bus.name for bus in settings.can] == ["traction"]
    assert settings.uplink.address == ("mqtt.fleet.example.com", 8883, True)
    assert settings.buffer.commit_interval_s <= 1.0


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOLTGATE_UPLINK__BROKER_URL", "mqtt://127.0.0.1")
    monkeypatch.setenv("VOLTGATE_BUFFER__PATH", str(tmp_path / "b.sqlite3"))
    monkeypatch.setenv("VOLTGATE_VEHICLE_ID", "bus-7")
    settings = load_settings(EXAMPLE)
    assert settings.vehicle_id == "bus-7"
    assert settings.uplink.address == ("127.0.0.1", 1883, False)
    assert settings.uplink.fleet_id == "depot-3", "the rest of the section still comes from the file"
    assert settings.buffer.path == tmp_path / "b.sqlite3"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", ("broker", 1883, False)),
        ("mqtts://broker", ("broker", 8883, True)),
        ("mqtts://10.0.0.1:9000", ("10.0.0.1", 9000, True)),
    ],
)
def test_broker_urls(url: str, expected: tuple[str, int, bool]) -> None:
    assert broker_address(url) == expected


@pytest.mark.parametrize("url", ["http://broker", "broker:1883", "mqtt://", "mqtt://h:99999", "mqtt://h/x"])
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="broker URL"):
        broker_address(url)


def test_each_problem_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'vehicle_id = "bus 1"\n[buffer]\ncommit_interval_s = 5\n[uplink]\nbrokr_url = "mqtt://x"\n'
        + "".join(f'[[can]]\nname = "b{i}"\ninterface = "virtual"\nchannel = "c"\n' for i in range(5))
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: ")
    assert "\n" not in message
    for part in ("vehicle_id", "buffer.commit_interval_s", "uplink.brokr_url is not a known setting", "can:"):
        assert part in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("vehicle_id = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_settings(broken)


# --- check-config as a subprocess ------------------------------------------------------------------------


def _config(tmp_path: Path, *, can: str = "", extra: str = "", buffer: Path | None = None) -> Path:
    config = tmp_path / "agent.toml"
    buffer_path = buffer or tmp_path / "state" / "buffer.sqlite3"
    config.write_text(
        f'vehicle_id = "bus-1"\n{extra}\n'
        f'[buffer]\npath = "{buffer_path}"\n'
        f'[uplink]\nbroker_url = "mqtt://127.0.0.1:1883"\nfleet_id = "f"\n'
        + (can or '[[can]]\nname = "traction"\ninterface = "virtual"\nchannel = "vc"\n')
    )
    return config


def test_check_config_passes_on_the_example_with_a_writable_buffer(tmp_path: Path) -> None:
    result = _check_config(EXAMPLE, VOLTGATE_BUFFER__PATH=str(tmp_path / "b.sqlite3"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def _one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_check_config_missing_dbc(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[catalog]\nname = "x"\nversion = "1"\ndbc = "absent.dbc"\n'
        '[[can]]\nmessage = "M"\nsignal = "S"\nname = "Vehicle.Speed"\n'
    )
    can = f'[[can]]\nname = "traction"\ninterface = "virtual"\nchannel = "vc"\ncatalog = "{catalog}"\n'
    line = _one_sentence(_check_config(_config(tmp_path, can=can)))
    assert "traction" in line and "absent.dbc" in line and "cannot read the CAN database" in line


def test_check_config_missing_catalog(tmp_path: Path) -> None:
    can = '[[can]]\nname = "traction"\ninterface = "virtual"\nchannel = "vc"\n'
    can += f'catalog = "{tmp_path}/no.toml"\n'
    line = _one_sentence(_check_config(_config(tmp_path, can=can)))
    assert "no.toml" in line and "cannot read the signal catalog" in line


def test_check_config_unknown_interface(tmp_path: Path) -> None:
    can = '[[can]]\nname = "traction"\ninterface = "vcan"\nchannel = "vc"\n'
    line = _one_sentence(_check_config(_config(tmp_path, can=can)))
    assert "unknown python-can interface 'vcan'" in line and "socketcan" in line


def test_check_config_bad_broker_url(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("mqtt://127.0.0.1:1883", "tcp://broker"))
    line = _one_sentence(_check_config(config))
    assert "uplink.broker_url" in line and "'tcp://broker' is not an MQTT URL" in line


def test_check_config_unwritable_buffer_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    # A path below a regular file cannot be created, even by root (tests may run as root).
    line = _one_sentence(_check_config(_config(tmp_path, buffer=not_a_dir / "buffer.sqlite3")))
    assert "buffer path" in line and "cannot be created" in line


def test_check_config_env_override_is_checked_too(tmp_path: Path) -> None:
    line = _one_sentence(_check_config(_config(tmp_path), VOLTGATE_UPLINK__BROKER_URL="mqtt://h:0x"))
    assert "uplink.broker_url" in line


def test_check_config_env_value_that_cannot_be_read_is_one_sentence(tmp_path: Path) -> None:
    # a list from the environment is JSON; a bare path is not, and pydantic-settings cannot even parse it
    line = _one_sentence(_check_config(_config(tmp_path), VOLTGATE_INFERENCE__MODELS="models/a.onnx"))
    assert '"inference"' in line and "JSON" in line
