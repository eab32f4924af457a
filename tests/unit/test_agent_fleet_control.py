"""Fleet control on the agent: desired configs and signed models applied to real stages (decoder, alert
engine, inference with the shipped ONNX model, uplink object), or refused one kind at a time, with the
state persisted in `tmp_path`. The only stand-in: the uplink's `report_applied` is recorded instead of
published (the integration test publishes it through a real broker)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import metrics
from agent.alerts import AlertStage
from agent.buffer import BufferWorker
from agent.decode import Decoder
from agent.fleet_control import FleetControl
from agent.fleet_control_stages import RunningStages
from agent.inference import InferenceStage
from agent.settings import (
    AgentSettings,
    AlertSettings,
    BufferSettings,
    ConfigError,
    FleetControlSettings,
    InferenceSettings,
    UplinkSettings,
)
from agent.uplink import Uplink
from models.features import FEATURE_VERSION
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from protocols.fleet_control import (
    AppliedReport,
    DesiredConfig,
    ModelRelease,
    OutcomeState,
    decode_applied,
    encode_desired_config,
    encode_model_release,
    sign_model,
)
from protocols.predictions import FAULT_RISK_MODEL, SOC_DROP_MODEL
from protocols.topics import downlink_config_topic, downlink_model_topic

MODELS = Path(__file__).resolve().parents[2] / "models"
FAULT_RISK = (MODELS / "fault_risk.onnx").read_bytes()
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
CATALOG = load_catalog(DEFAULT_CATALOG)
POLICIES = {spec.name: spec.policy for spec in CATALOG if spec.source != "gps"}
FLEET_KEY = Ed25519PrivateKey.generate()
CONFIG_TOPIC = downlink_config_topic("f", "bus-1")


def variant(model: bytes, note: bytes) -> bytes:
    """The same ONNX model with another doc_string (ModelProto field 6, appended: the last one wins), so
    other bytes and another SHA-256 that load and predict the same."""
    return model + bytes((0x32, len(note))) + note


def write_public_key(path: Path, key: Ed25519PrivateKey) -> Path:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)
    return path


def release(
    revision: int,
    model: bytes,
    *,
    name: str = FAULT_RISK_MODEL,
    key: Ed25519PrivateKey = FLEET_KEY,
    feature_version: str = FEATURE_VERSION,
) -> ModelRelease:
    return sign_model(
        key,
        revision=revision,
        rollout="r-1",
        name=name,
        feature_version=feature_version,
        model=model,
        ts_ms=1_700_000_000_000,
    )


@dataclass
class Recorded(RunningStages):
    reports: list[AppliedReport] = field(default_factory=list)

    def report(self, payload: bytes) -> None:
        self.reports.append(decode_applied(payload))


@dataclass
class Bus:
    fleet: FleetControl
    stages: Recorded
    settings: AgentSettings

    def handle(self, topic: str, payload: bytes) -> None:
        asyncio.run(self.fleet.handle(topic, payload))

    @property
    def last(self) -> AppliedReport:
        return self.stages.reports[-1]

    def running_fault_risk(self) -> Path:
        assert self.stages.inference is not None
        return self.stages.inference.models[FAULT_RISK_MODEL].path


def start(tmp_path: Path, **alerts: float) -> Bus:
    """A fresh agent's stages over the state in `tmp_path` (a restart when it is there already); `alerts`
    in its installed file."""
    settings = AgentSettings(
        vehicle_id="bus-1",
        buffer=BufferSettings(path=tmp_path / "buffer.sqlite3"),
        inference=InferenceSettings(models=[MODELS / "fault_risk.onnx"]),
        alerts=AlertSettings(led_root=tmp_path / "leds", led_warning=None, led_critical=None, **alerts),
        fleet_control=FleetControlSettings(
            public_keys=[write_public_key(tmp_path / "fleet.pub", FLEET_KEY)], state_dir=tmp_path / "fleet"
        ),
    )  # type: ignore[call-arg]
    fleet = FleetControl(settings.fleet_control, settings, POLICIES)
    running = fleet.open()
    inference = InferenceStage(running.inference)
    inference.check_models()
    uplink = Uplink(running.uplink, "bus-1", BufferWorker(running.buffer.path, running.buffer.max_bytes), {})
    decoders = {"traction": Decoder(CATALOG, bus="traction")}
    stages = Recorded(uplink, decoders, AlertStage(running.alerts), inference)
    fleet.attach(stages)
    return Bus(fleet, stages, running)


def config(revision: int, settings: dict) -> bytes:  # type: ignore[type-arg]
    return encode_desired_config(DesiredConfig(1, revision, settings))


def refusals(reason: str) -> float:
    return metrics.FLEET_REFUSED.labels(reason)._value.get()  # type: ignore[no-any-return]


def test_a_desired_config_runs_hot_and_after_a_restart(tmp_path: Path) -> None:
    bus = start(tmp_path)
    assert bus.stages.reports == []  # nothing desired yet, nothing to report
    settings = {
        "uplink": {"batch_max_age_s": 5.0},
        "alerts": {"soc_low_warning_pct": 30.0},
        "sampling": {SOC: {"deadband": 0.5}},
    }
    bus.handle(CONFIG_TOPIC, config(3, settings))
    outcome = bus.last.config
    assert outcome is not None and (outcome.state, outcome.revision, outcome.running) == ("applied", 3, "3")
    alerts = bus.stages.alerts
    assert alerts is not None and alerts.engine.rules["low_soc"].levels[0].raise_at == 30.0
    assert bus.stages.uplink._settings.batch_max_age_s == 5.0
    sampler = bus.stages.decoders["traction"]._samplers[SOC]
    assert sampler.policy.deadband == 0.5 and sampler.policy.min_interval_s == POLICIES[SOC].min_interval_s

    # WHEN the agent restarts, THEN it runs revision 3 from the start and reports it
    again = start(tmp_path)
    assert again.settings.uplink.batch_max_age_s == 5.0 and again.settings.alerts.soc_low_warning_pct == 30.0
    assert again.stages.decoders["traction"]._samplers[SOC].policy.deadband == 0.5
    assert again.last.config == outcome

    # WHEN revision 4 drops the sampling override, THEN the catalog's policy runs again
    again.handle(CONFIG_TOPIC, config(4, {"alerts": {"soc_low_warning_pct": 25.0}}))
    assert again.stages.decoders["traction"]._samplers[SOC].policy == POLICIES[SOC]
    assert again.stages.uplink._settings.batch_max_age_s == UplinkSettings().batch_max_age_s  # installed


def test_a_revision_seen_again_is_not_applied_again(tmp_path: Path) -> None:
    bus = start(tmp_path)
    bus.handle(CONFIG_TOPIC, config(3, {"alerts": {"soc_low_warning_pct": 30.0}}))
    reports = len(bus.stages.reports)
    before = metrics.FLEET_SKIPPED.labels("handled")._value.get()
    bus.handle(CONFIG_TOPIC, config(3, {"alerts": {"soc_low_warning_pct": 30.0}}))
    bus.handle(CONFIG_TOPIC, config(2, {"alerts": {"soc_low_warning_pct": 40.0}}))  # older
    assert metrics.FLEET_SKIPPED.labels("handled")._value.get() == before + 2
    assert len(bus.stages.reports) == reports
    restarted = start(tmp_path)
    restarted.handle(CONFIG_TOPIC, config(3, {"alerts": {"soc_low_warning_pct": 30.0}}))
    assert metrics.FLEET_SKIPPED.labels("handled")._value.get() == before + 3


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"uplink": {"broker_url": "mqtt://evil:1883"}}, "uplink.broker_url cannot be set remotely"),
        ({"uplink": {"batch_max_age": 1.0}}, "uplink.batch_max_age is not a setting"),
        ({"uplink": {"batch_max_records": 0}}, "uplink.batch_max_records"),
        ({"uplink": {"batch_max_age_s": "30"}}, "uplink.batch_max_age_s"),
        ({"alerts": {"led_critical": "x"}}, "alerts.led_critical cannot be set remotely"),
        ({"alerts": {"soc_low_critical_pct": 50.0}}, "soc_low_critical_pct must not be above"),
        ({"sampling": {"Vehicle.Nope": {"deadband": 1.0}}}, "not a CAN signal"),
        ({"sampling": {SOC: {"min_interval_s": 9.0, "max_interval_s": 1.0}}}, "max_interval_s must not"),
        ({"sampling": {SOC: {"deadband": -1.0}}}, "deadband"),
        ({"sampling": {SOC: 3}}, "must be a map"),
    ],
)
def test_a_config_that_does_not_validate_is_refused_whole(
    tmp_path: Path,
    settings: dict,  # type: ignore[type-arg]
    sentence: str,
) -> None:
    bus = start(tmp_path)
    # GIVEN a valid part next to the bad one: nothing of the message runs
    bus.handle(CONFIG_TOPIC, config(5, {"alerts": {"soc_low_warning_pct": 33.0}, **settings}))
    outcome = bus.last.config
    assert outcome is not None and outcome.state == OutcomeState.REFUSED and outcome.revision == 5
    assert sentence in outcome.detail and outcome.running == "0"
    alerts = bus.stages.alerts
    assert alerts is not None and alerts.engine.rules["low_soc"].levels[0].raise_at == 20.0
    assert bus.stages.decoders["traction"]._samplers[SOC].policy == POLICIES[SOC]
    assert start(tmp_path).settings.alerts.soc_low_warning_pct == 20.0  # not persisted as running


def test_a_signed_model_swaps_in_and_runs_after_a_restart(tmp_path: Path) -> None:
    bus = start(tmp_path)
    pushed = variant(FAULT_RISK, b"release 7")
    sha = hashlib.sha256(pushed).hexdigest()
    bus.handle(downlink_model_topic("f", "bus-1", FAULT_RISK_MODEL), encode_model_release(release(7, pushed)))
    outcome = bus.last.models[FAULT_RISK_MODEL]
    assert (outcome.state, outcome.revision, outcome.running) == ("applied", 7, sha)
    assert bus.running_fault_risk() == tmp_path / "fleet" / "models" / FAULT_RISK_MODEL / f"{sha}.onnx"
    # the stage predicts with it
    inference = bus.stages.inference
    assert inference is not None and len(inference.slots) == 1
    # WHEN another one follows, THEN the first stays on disk (a rollback target), the installed file too
    second = variant(FAULT_RISK, b"release 8")
    bus.handle(downlink_model_topic("f", "bus-1", FAULT_RISK_MODEL), encode_model_release(release(8, second)))
    assert bus.last.models[FAULT_RISK_MODEL].running == hashlib.sha256(second).hexdigest()
    stored = {p.stem for p in (tmp_path / "fleet" / "models" / FAULT_RISK_MODEL).iterdir()}
    assert stored == {sha, hashlib.sha256(second).hexdigest()}
    # AND a restarted agent runs the latest
    assert start(tmp_path).running_fault_risk().stem == hashlib.sha256(second).hexdigest()


def _bad_signature() -> ModelRelease:
    good = release(9, variant(FAULT_RISK, b"x"))
    return ModelRelease(**{**_fields(good), "signature": bytes(64)})


def _truncated() -> ModelRelease:
    good = release(9, variant(FAULT_RISK, b"x"))
    return ModelRelease(**{**_fields(good), "model": good.model[:-100]})


def _fields(release: ModelRelease) -> dict[str, object]:
    return {name: getattr(release, name) for name in release.__slots__}


@pytest.mark.parametrize(
    ("payload", "reason", "sentence"),
    [
        (lambda: encode_model_release(_bad_signature()), "signature", "bad signature"),
        (
            lambda: encode_model_release(release(9, FAULT_RISK, key=Ed25519PrivateKey.generate())),
            "signature",
            "unknown key",
        ),
        (lambda: encode_model_release(_truncated()), "signature", "truncated or altered"),
        (
            lambda: encode_model_release(release(9, FAULT_RISK, feature_version="2")),
            "features",
            "feature version '2'",
        ),
        (lambda: b"VD\x01\x93\x03garbage", "malformed", "malformed"),
        (lambda: encode_desired_config(DesiredConfig(1, 9, {})), "malformed", "desired config on the model"),
        (
            lambda: encode_model_release(release(9, FAULT_RISK, name=SOC_DROP_MODEL)),
            "malformed",
            "on the topic of 'fault_risk'",
        ),
    ],
    ids=["bad-signature", "unknown-key", "truncated", "features", "garbage", "wrong-type", "wrong-topic"],
)
def test_hostile_model_releases_are_refused_and_the_model_keeps_running(
    tmp_path: Path, payload, reason: str, sentence: str
) -> None:  # type: ignore[no-untyped-def]
    bus = start(tmp_path)
    running = bus.running_fault_risk()
    before = refusals(reason)
    bus.handle(downlink_model_topic("f", "bus-1", FAULT_RISK_MODEL), payload())
    outcome = bus.last.models[FAULT_RISK_MODEL]
    assert outcome.state == OutcomeState.REFUSED and sentence in outcome.detail, outcome
    assert outcome.running == hashlib.sha256(FAULT_RISK).hexdigest()
    assert bus.running_fault_risk() == running
    assert refusals(reason) == before + 1
    assert not (tmp_path / "fleet" / "models").exists()  # nothing written before it verified


def test_an_unknown_model_name_is_refused(tmp_path: Path) -> None:
    bus = start(tmp_path)
    bus.handle(
        downlink_model_topic("f", "bus-1", "mystery"),
        encode_model_release(release(3, FAULT_RISK, name="mystery")),
    )
    assert bus.last.models["mystery"].state == OutcomeState.REFUSED
    assert "not a model this agent runs" in bus.last.models["mystery"].detail


@pytest.mark.parametrize(
    ("name", "model", "sentence"),
    [
        (FAULT_RISK_MODEL, FAULT_RISK[: len(FAULT_RISK) // 2], "not a loadable ONNX model"),
        (SOC_DROP_MODEL, FAULT_RISK, "names model 'fault_risk'"),
    ],
    ids=["corrupt-but-signed", "metadata-mismatch"],
)
def test_a_signed_model_that_fails_to_load_is_rolled_back(
    tmp_path: Path, name: str, model: bytes, sentence: str
) -> None:
    bus = start(tmp_path)
    running = bus.running_fault_risk()
    bus.handle(downlink_model_topic("f", "bus-1", name), encode_model_release(release(4, model, name=name)))
    outcome = bus.last.models[name]
    assert outcome.state == OutcomeState.ROLLED_BACK and sentence in outcome.detail, outcome
    assert bus.running_fault_risk() == running
    assert not list((tmp_path / "fleet" / "models" / name).iterdir())  # the failed file is gone


def test_an_unreadable_public_key_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "fleet.pub").write_text("not a key")
    settings = AgentSettings(
        vehicle_id="bus-1", fleet_control=FleetControlSettings(public_keys=[tmp_path / "fleet.pub"])
    )  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        FleetControl(settings.fleet_control, settings, POLICIES)


def test_a_model_topic_that_is_not_an_id_is_counted_and_skipped(tmp_path: Path) -> None:
    bus = start(tmp_path)
    before = refusals("malformed")
    bus.handle("voltgate/v1/f/bus-1/downlink/model/no such", encode_model_release(release(3, FAULT_RISK)))
    assert refusals("malformed") == before + 1 and bus.stages.reports == []


def test_a_disabled_fleet_control_ignores_the_downlink_and_its_state(tmp_path: Path) -> None:
    bus = start(tmp_path)
    bus.handle(CONFIG_TOPIC, config(3, {"alerts": {"soc_low_warning_pct": 30.0}}))
    settings = bus.settings.model_copy(
        update={"fleet_control": bus.settings.fleet_control.model_copy(update={"enabled": False})}
    )
    off = FleetControl(settings.fleet_control, settings, POLICIES)
    assert off.open().alerts.soc_low_warning_pct == 20.0  # the installed file alone
    off.offer(CONFIG_TOPIC, config(4, {"alerts": {"soc_low_warning_pct": 35.0}}))
    assert not off._pending


def test_an_applied_config_the_installed_file_no_longer_allows_gives_way_to_the_file(tmp_path: Path) -> None:
    start(tmp_path).handle(CONFIG_TOPIC, config(3, {"alerts": {"soc_low_warning_pct": 12.0}}))
    # WHEN the gateway's own file raises the critical level above that warning level and the agent restarts
    restarted = start(tmp_path, soc_low_critical_pct=15.0)
    # THEN the installed file runs, and the report says so
    assert restarted.settings.alerts.soc_low_warning_pct == 20.0
    outcome = restarted.last.config
    assert outcome is not None and (outcome.revision, outcome.state, outcome.running) == (
        3,
        "rolled_back",
        "0",
    )


def test_a_damaged_stored_model_falls_back_to_the_one_before(tmp_path: Path) -> None:
    bus = start(tmp_path)
    topic = downlink_model_topic("f", "bus-1", FAULT_RISK_MODEL)
    first, second = variant(FAULT_RISK, b"one"), variant(FAULT_RISK, b"two")
    bus.handle(topic, encode_model_release(release(5, first)))
    bus.handle(topic, encode_model_release(release(6, second)))
    # WHEN the running model's file is damaged on disk while the agent is stopped
    damaged = bus.running_fault_risk()
    damaged.write_bytes(second[:1000])
    # THEN the restarted agent runs the model before it; with that gone too, the installed file
    restarted = start(tmp_path)
    assert restarted.running_fault_risk().stem == hashlib.sha256(first).hexdigest()
    outcome = restarted.last.models[FAULT_RISK_MODEL]
    assert (outcome.state, outcome.running) == ("rolled_back", hashlib.sha256(first).hexdigest())
    (damaged.parent / f"{hashlib.sha256(first).hexdigest()}.onnx").unlink()
    restarted = start(tmp_path)
    assert restarted.running_fault_risk() == MODELS / "fault_risk.onnx"
    assert restarted.last.models[FAULT_RISK_MODEL].running == hashlib.sha256(FAULT_RISK).hexdigest()
