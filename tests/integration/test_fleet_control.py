"""Remote configuration and model updates end to end: the real agent (`agent.app.Agent`, in this process so
that the test can look at its stages) on a live virtual CAN bus, connected with its bus certificate to a
private Mosquitto running the shipped config and ACL (the `fleet_broker` fixture of
`test_fleet_isolation`); the receiver identity publishes desired configs and signed models retained on the
bus's downlink and reads the bus's retained `applied` reports.

Waits are bounded and say what they waited for; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import can
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import metrics
from agent.app import Agent, StopTimeouts
from agent.settings import (
    AgentSettings,
    AlertSettings,
    BufferSettings,
    CanBusSettings,
    FleetControlSettings,
    InferenceSettings,
    MetricsSettings,
    UplinkSettings,
)
from protocols.fleet_control import (
    AppliedReport,
    DesiredConfig,
    ModelRelease,
    OutcomeState,
    decode_applied,
    encode_desired_config,
    encode_model_release,
)
from protocols.predictions import FAULT_RISK_MODEL
from protocols.topics import applied_topic, downlink_config_topic, downlink_model_topic
from tests.integration.conftest import unique_id
from tests.integration.test_agent_clock import _bms_frames
from tests.integration.test_fleet_isolation import (
    ACCEPTED,
    Client,
    FleetBroker,
    _receiver,
    connected,
    fleet_broker,  # noqa: F401  # a broker for this module
)
from tests.unit.test_agent_fleet_control import FAULT_RISK, MODELS, release, variant, write_public_key

WAIT_S = 30.0
FLEET_KEY = Ed25519PrivateKey.generate()
QUICK_STOP = StopTimeouts(sources_s=1.0, drain_s=1.0, commit_s=1.0, publish_s=0.5, disconnect_s=0.5)


def _settings(broker: FleetBroker, tmp_path: Path, fleet: str, vehicle: str, channel: str) -> AgentSettings:
    issued = broker.pki.issue_bus(fleet, vehicle)
    return AgentSettings(
        vehicle_id=vehicle,
        can=[CanBusSettings(name="traction", interface="virtual", channel=channel, bitrate=None)],
        buffer=BufferSettings(path=tmp_path / "buffer.sqlite3", commit_interval_s=0.1),
        uplink=UplinkSettings(
            broker_url=f"mqtts://127.0.0.1:{broker.bus_port}",
            fleet_id=fleet,
            ca_file=broker.pki.ca_cert_path,
            cert_file=issued.cert_path,
            key_file=issued.key_path,
            batch_max_age_s=0.2,
            backoff_initial_s=0.2,
            backoff_max_s=1.0,
        ),
        metrics=MetricsSettings(enabled=False),
        inference=InferenceSettings(models=[MODELS / "fault_risk.onnx"], interval_s=1.0),
        alerts=AlertSettings(led_root=tmp_path / "leds", led_warning=None, led_critical=None),
        fleet_control=FleetControlSettings(
            public_keys=[write_public_key(tmp_path / "fleet.pub", FLEET_KEY)], state_dir=tmp_path / "fleet"
        ),
    )


@contextlib.asynccontextmanager
async def running(settings: AgentSettings) -> AsyncIterator[Agent]:
    agent = Agent(settings, stop_timeouts=QUICK_STOP)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, WAIT_S)


@contextlib.asynccontextmanager
async def bms_traffic(channel: str) -> AsyncIterator[None]:
    """BMS frames every 50 ms, stamped now, moving past the deadbands: the fault-risk model predicts."""
    bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)

    async def send() -> None:
        wobble = 0.0
        while True:
            wobble = 1.0 - wobble
            for frame in _bms_frames(time.time(), 30.0 + wobble, 60.0 + wobble):
                bus.send(frame)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bus.shutdown()


async def next_report(receiver: Client, what: str, wanted: Callable[[AppliedReport], bool]) -> AppliedReport:
    deadline = time.monotonic() + WAIT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"gave up after {WAIT_S:g} s waiting for a report: {what}", pytrace=False)
        try:
            message = await asyncio.to_thread(receiver.messages.get, True, min(remaining, 1.0))
        except queue.Empty:
            continue
        report = decode_applied(message.payload)
        if wanted(report):
            return report


async def until(what: str, condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # the agent's counters offer no event to wait on
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"gave up after {WAIT_S:g} s waiting for {what}", pytrace=False)


def _model_state(report: AppliedReport, revision: int) -> OutcomeState | None:
    outcome = report.models.get(FAULT_RISK_MODEL)
    return outcome.state if outcome is not None and outcome.revision == revision else None


async def test_a_running_agent_applies_a_config_and_a_model_refuses_hostile_ones_and_reports(
    fleet_broker: FleetBroker,  # noqa: F811  # the fixture imported above
    tmp_path: Path,
) -> None:
    fleet, vehicle, channel = unique_id("f"), "bus-1", f"fc-{uuid.uuid4().hex[:8]}"
    receiver = _receiver(fleet_broker)
    config_topic = downlink_config_topic(fleet, vehicle)
    model_topic = downlink_model_topic(fleet, vehicle, FAULT_RISK_MODEL)
    with connected(receiver):
        receiver.subscribe(applied_topic(fleet, vehicle))
        settings = _settings(fleet_broker, tmp_path, fleet, vehicle, channel)
        async with running(settings) as agent, bms_traffic(channel):
            await until(
                "the uplink's connection", lambda: agent.uplink is not None and agent.uplink.connected
            )
            inference, alerts = agent.inference_stage, agent.alert_stage
            assert inference is not None and alerts is not None

            # WHEN the receiver publishes a desired config, retained
            desired = {"uplink": {"batch_max_age_s": 0.5}, "alerts": {"soc_low_warning_pct": 30.0}}
            payload = encode_desired_config(DesiredConfig(1, 11, desired))
            assert receiver.publish(config_topic, payload, retain=True) in ACCEPTED
            # THEN the agent applies it hot and reports it
            report = await next_report(receiver, "config 11", lambda r: r.config is not None)
            assert report.config is not None and report.config.state == OutcomeState.APPLIED
            assert report.config.revision == 11
            assert alerts.engine.rules["low_soc"].levels[0].raise_at == 30.0

            # WHEN it publishes a signed model
            pushed = variant(FAULT_RISK, b"rollout r-1")
            sha = hashlib.sha256(pushed).hexdigest()
            payload = encode_model_release(release(12, pushed, key=FLEET_KEY))
            assert receiver.publish(model_topic, payload, retain=True) in ACCEPTED
            # THEN the agent swaps it in, reports it, and predicts with it
            report = await next_report(
                receiver, "model 12", lambda r: _model_state(r, 12) == OutcomeState.APPLIED
            )
            assert report.models[FAULT_RISK_MODEL].running == sha
            assert inference.models[FAULT_RISK_MODEL].path.stem == sha
            runs = inference.stats.by_model.get(FAULT_RISK_MODEL, 0)
            await until(
                "predictions of the new model",
                lambda: inference.stats.by_model.get(FAULT_RISK_MODEL, 0) > runs,
            )

            # WHEN hostile releases follow: a bad signature, a truncated model, other features
            good = release(13, variant(FAULT_RISK, b"x"), key=FLEET_KEY)
            fields = {name: getattr(good, name) for name in good.__slots__}
            hostile = [
                ModelRelease(**{**fields, "signature": bytes(64)}),
                ModelRelease(**{**fields, "revision": 14, "model": good.model[:-100]}),
                release(15, variant(FAULT_RISK, b"y"), key=FLEET_KEY, feature_version="2"),
            ]
            for bad in hostile:
                assert receiver.publish(model_topic, encode_model_release(bad), retain=True) in ACCEPTED
                # THEN each is refused and reported; the model of revision 12 keeps running
                report = await next_report(
                    receiver,
                    f"model {bad.revision} refused",
                    lambda r, n=bad.revision: _model_state(r, n) == OutcomeState.REFUSED,  # type: ignore[misc]
                )
                assert report.models[FAULT_RISK_MODEL].running == sha
                assert report.config is not None and report.config.revision == 11
            assert inference.models[FAULT_RISK_MODEL].path.stem == sha
            runs = inference.stats.by_model.get(FAULT_RISK_MODEL, 0)
            await until(
                "predictions going on", lambda: inference.stats.by_model.get(FAULT_RISK_MODEL, 0) > runs
            )


def _applied_configs() -> float:
    return metrics.FLEET_OUTCOMES.labels("config", "applied")._value.get()  # type: ignore[no-any-return]


async def test_an_agent_offline_during_two_revisions_applies_the_latest_once(
    fleet_broker: FleetBroker,  # noqa: F811  # the fixture imported above
    tmp_path: Path,
) -> None:
    fleet, vehicle = unique_id("f"), "bus-2"
    settings = _settings(fleet_broker, tmp_path, fleet, vehicle, f"fc-{uuid.uuid4().hex[:8]}")
    settings = settings.model_copy(update={"can": []})
    receiver = _receiver(fleet_broker)
    config_topic = downlink_config_topic(fleet, vehicle)
    with connected(receiver):
        receiver.subscribe(applied_topic(fleet, vehicle))
        # GIVEN the agent ran revision 20, and was stopped
        async with running(settings):
            payload = encode_desired_config(DesiredConfig(1, 20, {"alerts": {"soc_low_warning_pct": 30.0}}))
            assert receiver.publish(config_topic, payload, retain=True) in ACCEPTED
            await next_report(
                receiver, "config 20", lambda r: r.config is not None and r.config.revision == 20
            )
        # WHEN two revisions are published while it is away
        for revision, pct in ((21, 31.0), (22, 32.0)):
            payload = encode_desired_config(
                DesiredConfig(1, revision, {"alerts": {"soc_low_warning_pct": pct}})
            )
            assert receiver.publish(config_topic, payload, retain=True) in ACCEPTED
        applied = _applied_configs()
        # THEN on its return it applies the latest, once
        async with running(settings) as agent:
            report = await next_report(
                receiver, "config 22", lambda r: r.config is not None and r.config.revision == 22
            )
            assert report.config is not None and report.config.state == OutcomeState.APPLIED
            assert agent.alert_stage is not None
            assert agent.alert_stage.engine.rules["low_soc"].levels[0].raise_at == 32.0
        assert _applied_configs() == applied + 1
        # AND a restart runs it from the start, sees the retained message again and does not apply it again
        handled = metrics.FLEET_SKIPPED.labels("handled")._value.get()
        async with running(settings) as agent:
            await next_report(
                receiver, "config 22, on connect", lambda r: r.config is not None and r.config.revision == 22
            )
            assert agent.alert_stage is not None
            assert agent.alert_stage.engine.rules["low_soc"].levels[0].raise_at == 32.0
            await until(
                "the retained revision 22 seen again",
                lambda: metrics.FLEET_SKIPPED.labels("handled")._value.get() > handled,
            )
        assert _applied_configs() == applied + 1
