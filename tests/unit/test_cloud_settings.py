"""Receiver settings: the shipped example loads, the environment overrides, mistakes read well."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud.errors import ConfigError
from cloud.mqtt import Inbox, MqttReceiver
from cloud.settings import MqttSettings, load_settings

EXAMPLE = Path(__file__).parents[2] / "cloud" / "cloud.example.toml"


def test_the_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.mqtt.client_id == "voltgate-cloud-1"
    assert settings.database.schema_name == "voltgate"
    assert 0 < settings.mqtt.session_expiry_s < 0xFFFFFFFF  # finite: a dead replica's session ends
    assert settings.web is not None
    assert settings.web.api_tokens == ()  # open, as before tokens existed
    assert settings.web.trip_gap_s == 300.0


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTGATE_CLOUD_MQTT__CLIENT_ID", "replica-7")
    monkeypatch.setenv("VOLTGATE_CLOUD_DATABASE__SCHEMA", "fleet_b")
    monkeypatch.setenv("VOLTGATE_CLOUD_INGEST__BATCH_MAX_AGE_S", "0.05")
    settings = load_settings(EXAMPLE)
    assert settings.mqtt.client_id == "replica-7"
    assert settings.database.schema_name == "fleet_b"
    assert settings.ingest.batch_max_age_s == 0.05


def test_api_tokens_from_the_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text('[web]\napi_tokens = ["k7Qm2x9PzR4vW8tY1uLs", "second-token_for.ops+/=="]\n')
    from_file = load_settings(path)
    monkeypatch.setenv("VOLTGATE_CLOUD_WEB__API_TOKENS", '["from-the-environment-0123"]')
    from_env = load_settings(path)

    assert from_file.web is not None and from_env.web is not None
    assert [t.get_secret_value() for t in from_file.web.api_tokens] == [
        "k7Qm2x9PzR4vW8tY1uLs",
        "second-token_for.ops+/==",
    ]
    assert [t.get_secret_value() for t in from_env.web.api_tokens] == ["from-the-environment-0123"]
    assert "k7Qm2x9PzR4vW8tY1uLs" not in repr(from_file)


@pytest.mark.parametrize(
    "token", ["short-token", "has a space in it 0123", 'quote"in-it-0123456789', "tail==x-0123456789"]
)
def test_a_bad_api_token_is_refused_without_repeating_it(tmp_path: Path, token: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(f"[web]\napi_tokens = ['{token}']\n")  # a TOML literal string: taken as written
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "web.api_tokens" in message
    assert token not in message


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ('[database]\nschema = "Drop Table"\n', "database.schema"),
        ('[mqtt]\nshared_group = "a/b"\n', "mqtt.shared_group"),
        ("[mqtt]\nreceive_maximum = 10\n[ingest]\nbatch_max_messages = 20\n", "receive_maximum"),
        ('[mqtt]\nhots = "x"\n', "mqtt.hots"),
        ("[web]\ntrip_gap_s = 0\n", "web.trip_gap_s"),
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


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "fleet.example.org"])
def test_an_api_open_to_the_network_without_tokens_is_refused(tmp_path: Path, host: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(f'[web]\nhost = "{host}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "web.api_tokens is empty" in message and "open_without_tokens" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "toml",
    [
        '[web]\nhost = "127.0.0.1"\n',
        '[web]\nhost = "localhost"\n',
        '[web]\nhost = "0.0.0.0"\napi_tokens = ["k7Qm2x9PzR4vW8tY1uLs"]\n',
        '[web]\nhost = "0.0.0.0"\nopen_without_tokens = true\n',
    ],
)
def test_an_api_on_loopback_with_tokens_or_open_on_purpose_starts(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(toml)
    assert load_settings(path).web is not None


def test_the_open_api_guard_reads_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTGATE_CLOUD_WEB__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="open_without_tokens"):
        load_settings(EXAMPLE)
    monkeypatch.setenv("VOLTGATE_CLOUD_WEB__OPEN_WITHOUT_TOKENS", "true")
    settings = load_settings(EXAMPLE)
    assert settings.web is not None and settings.web.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[mqtt]\ntls = true\ncert_file = "/pki/r.crt"\n', "go together"),
        ('[mqtt]\ncert_file = "/pki/r.crt"\nkey_file = "/pki/r.key"\n', "needs mqtt.tls = true"),
    ],
)
def test_a_receiver_certificate_needs_its_key_and_tls(tmp_path: Path, toml: str, fragment: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=fragment):
        load_settings(path)


def test_a_receiver_certificate_that_cannot_be_read_fails_at_start(tmp_path: Path) -> None:
    # The adapter reads the files when it is built (no connection yet): a missing key is one clear sentence.
    settings = MqttSettings(tls=True, cert_file=tmp_path / "r.crt", key_file=tmp_path / "r.key")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ConfigError, match="cannot load the MQTT TLS files"):
            MqttReceiver(settings, loop, Inbox(1))
    finally:
        loop.close()
