"""Receiver settings: the shipped example loads, the environment overrides, mistakes read well."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.errors import ConfigError
from cloud.settings import load_settings

EXAMPLE = Path(__file__).parents[2] / "cloud" / "cloud.example.toml"


def test_the_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.mqtt.client_id == "voltgate-cloud-1"
    assert settings.database.schema_name == "voltgate"
    assert 0 < settings.mqtt.session_expiry_s < 0xFFFFFFFF  # finite: a dead replica's session ends


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTGATE_CLOUD_MQTT__CLIENT_ID", "replica-7")
    monkeypatch.setenv("VOLTGATE_CLOUD_DATABASE__SCHEMA", "fleet_b")
    monkeypatch.setenv("VOLTGATE_CLOUD_INGEST__BATCH_MAX_AGE_S", "0.05")
    settings = load_settings(EXAMPLE)
    assert settings.mqtt.client_id == "replica-7"
    assert settings.database.schema_name == "fleet_b"
    assert settings.ingest.batch_max_age_s == 0.05


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ('[database]\nschema = "Drop Table"\n', "database.schema"),
        ('[mqtt]\nshared_group = "a/b"\n', "mqtt.shared_group"),
        ("[mqtt]\nreceive_maximum = 10\n[ingest]\nbatch_max_messages = 20\n", "receive_maximum"),
        ('[mqtt]\nhots = "x"\n', "mqtt.hots"),
        ("[mqtt\n", "not valid TOML"),
    ],
)
def test_a_bad_config_is_one_clear_sentence(tmp_path: Path, toml: str, fragment: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
