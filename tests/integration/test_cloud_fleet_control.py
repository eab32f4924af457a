"""Fleet control on the cloud side: `voltgate-cloud fleet` → database → the receiver's fleet-control task →
the real Mosquitto under the shipped ACL with TLS identities → a bus, and its applied reports back.

A bus here is an MQTT client with the bus's certificate: it reads its own downlink, checks a model's
signature with the fleet's public key as an agent would, and publishes its applied report (retained), the
way `protocols.fleet_control` says. The broker is the isolation tests' (one per module); each test has its
own fleet id and database schema (on both flavours). The last test runs it all with a real
`voltgate-agent run` process and the receiver's `run`: CLI → database → receiver → broker → agent →
report → database → API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import queue
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud import app, fleet_cli, fleet_store
from cloud.__main__ import main as cloud_main
from cloud.api import FleetViews
from cloud.fleet_control import REPORTS, FleetControl, FleetLink
from cloud.rollouts import RolloutState
from cloud.settings import (
    CloudSettings,
    DatabaseSettings,
    FleetControlSettings,
    MetricsSettings,
    MqttSettings,
    WebSettings,
)
from cloud.store import Store
from protocols.fleet_control import (
    AppliedReport,
    DesiredConfig,
    ModelRelease,
    Outcome,
    OutcomeState,
    decode_desired,
    encode_applied,
    key_id_of,
    verify_model,
)
from protocols.topics import applied_topic, downlink_filter
from tests.faults.harness import AgentProcess, free_port
from tests.integration.conftest import Database, migrated_store, unique_id
from tests.integration.test_cloud_web import chromium, run_chromium
from tests.integration.test_fleet_isolation import (  # the broker under the shipped ACL, and its clients
    ACCEPTED,
    WAIT_S,
    Client,
    FleetBroker,
    _bus,
    fleet_broker,  # noqa: F401  (a module-scoped fixture: one broker for this module)
)

MODEL = Path(__file__).parents[2] / "models" / "soc_drop.onnx"
POLL_S = 0.05


class Bus:
    """A bus's MQTT identity reading its downlink and reporting what it applied (the agent's part)."""

    def __init__(self, broker: FleetBroker, fleet: str, vehicle: str, public_key: Ed25519PublicKey) -> None:
        self.fleet, self.vehicle = fleet, vehicle
        self.client: Client = _bus(broker, fleet, vehicle)
        self.keys = {key_id_of(public_key): public_key}
        self.seen: list[DesiredConfig | ModelRelease] = []

    def connect(self) -> Bus:
        self.client.connect()
        self.client.subscribe(downlink_filter(self.fleet, self.vehicle))
        return self

    def close(self) -> None:
        self.client.close()

    def next_desired(self) -> DesiredConfig | ModelRelease:
        """The next config or model message on its downlink (commit acknowledgements are not sent here)."""
        message = self.client.messages.get(timeout=WAIT_S)
        desired = decode_desired(bytes(message.payload))
        if isinstance(desired, ModelRelease):
            verify_model(desired, self.keys)  # what an agent does before it swaps a model in
        self.seen.append(desired)
        return desired

    def drain(self) -> list[DesiredConfig | ModelRelease]:
        got = []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(decode_desired(bytes(self.client.messages.get_nowait().payload)))
        self.seen += got
        return got

    def report(self, config: Outcome | None, models: dict[str, Outcome]) -> None:
        payload = encode_applied(AppliedReport(int(time.time() * 1000), config, models))
        assert self.client.publish(applied_topic(self.fleet, self.vehicle), payload, retain=True) in ACCEPTED


@dataclass
class Harness:
    db: Database
    store: Store
    fleet: str
    key: Path
    public_key: Ed25519PublicKey
    env: dict[str, str]
    settings: CloudSettings

    def cli(self, *argv: str) -> int:
        """`voltgate-cloud ARGV` against the test's schema (in a thread: it runs its own event loop)."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            return cloud_main(list(argv))

    async def run_cli(self, *argv: str) -> int:
        return await asyncio.to_thread(self.cli, *argv)

    async def rollout_state(self) -> tuple[RolloutState, str | None]:
        [*_, newest] = await fleet_store.rollouts(self.store.connection, self.fleet)
        return newest.state, newest.reason

    async def until(self, condition: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not await _call(condition):
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {WAIT_S} s", pytrace=False)
            await asyncio.sleep(POLL_S)


async def _call(condition: Callable[[], object]) -> object:
    result = condition()
    return await result if asyncio.iscoroutine(result) else result


@pytest.fixture
async def harness(
    pg_schema: Database,
    fleet_broker: FleetBroker,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    """A migrated schema with a fleet of four known buses, the fleet's key pair, and the fleet-control task
    running against the broker with the receiver's identity."""
    store = await migrated_store(pg_schema)
    fleet = unique_id("f")
    await store.connection.execute(
        b"INSERT INTO vehicles (vehicle_id, fleet) SELECT v, %s FROM unnest(%s::text[]) v",
        (fleet, ["bus-a", "bus-b", "bus-c", "bus-d"]),
    )
    env = {
        "VOLTGATE_CLOUD_DATABASE__DSN": pg_schema.dsn,
        "VOLTGATE_CLOUD_DATABASE__SCHEMA": pg_schema.schema,
    }
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    assert fleet_cli.keygen(fleet, tmp_path) != []
    public = serialization.load_pem_public_key((tmp_path / f"{fleet}.ed25519.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    harness_ = Harness(
        pg_schema,
        store,
        fleet,
        tmp_path / f"{fleet}.ed25519.key",
        public,
        env,
        CloudSettings(database=database),
    )
    mqtt = MqttSettings(
        host="127.0.0.1", port=fleet_broker.receiver_port, tls=True, ca_file=fleet_broker.pki.ca_cert_path,
        cert_file=fleet_broker.receiver.cert_path, key_file=fleet_broker.receiver.key_path,
        client_id=unique_id("voltgate-cloud-"),
    )  # fmt: skip
    control_store = await Store.open(database)  # its own connection, as in the receiver
    control = FleetControl(
        control_store, FleetLink(mqtt, asyncio.get_running_loop()), FleetControlSettings(poll_s=POLL_S)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop), name="fleet-control")
    try:
        yield harness_
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        await control_store.close()
        await store.close()


def _applied(revision: int, running: str = "") -> Outcome:
    return Outcome(revision, OutcomeState.APPLIED, "", running)


async def test_config_reaches_each_bus_with_its_own_settings_over_the_fleets(
    harness: Harness,
    fleet_broker: FleetBroker,  # noqa: F811
) -> None:
    h = harness
    bus_a = Bus(fleet_broker, h.fleet, "bus-a", h.public_key).connect()
    bus_b = Bus(fleet_broker, h.fleet, "bus-b", h.public_key).connect()
    try:
        # WHEN the fleet gets a setting and bus B one of its own over it
        assert await h.run_cli("fleet", "config", "set", "--fleet", h.fleet, "uplink.batch_max_age_s=5",
                               'sampling.soc_pct={"min_interval_s": 10}') == 0  # fmt: skip
        assert (
            await h.run_cli(
                "fleet",
                "config",
                "set",
                "--fleet",
                h.fleet,
                "--vehicle",
                "bus-b",
                "uplink.batch_max_age_s=1.5",
            )
            == 0
        )
        # THEN each gets the merged settings, retained; the revision of B's is the newer one
        got_a = await asyncio.to_thread(bus_a.next_desired)
        got_b = await asyncio.to_thread(bus_b.next_desired)
        if got_b.settings["uplink"]["batch_max_age_s"] == 5:  # type: ignore[union-attr]
            got_b = await asyncio.to_thread(bus_b.next_desired)  # published before B's own setting landed
        assert isinstance(got_a, DesiredConfig) and isinstance(got_b, DesiredConfig)
        assert got_a.settings == {
            "uplink": {"batch_max_age_s": 5},
            "sampling": {"soc_pct": {"min_interval_s": 10}},
        }
        assert got_b.settings == {
            "uplink": {"batch_max_age_s": 1.5},
            "sampling": {"soc_pct": {"min_interval_s": 10}},
        }
        assert got_b.revision > got_a.revision
        # WHEN B sends a malformed report, then reports it applied, THEN the bad one is counted and skipped,
        # and the database keeps the good one
        bad_before = REPORTS.labels("bad")._value.get()
        topic = applied_topic(h.fleet, "bus-b")
        assert bus_b.client.publish(topic, b'{"v": 1, "config": "applied"}') in ACCEPTED
        bus_b.report(_applied(got_b.revision, str(got_b.revision)), {})

        async def b_reported() -> bool:
            view = await fleet_store.fleet_view(h.store.connection, h.fleet)
            bus = next(b for b in view.buses if b.vehicle == "bus-b")
            return bus.applied_config is not None and bus.applied_config.revision == got_b.revision

        await h.until(b_reported, "bus B's applied report stored")
        assert REPORTS.labels("bad")._value.get() == bad_before + 1
    finally:
        bus_a.close()
        bus_b.close()


async def test_config_that_does_not_validate_is_refused_with_a_reason(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    h = harness
    for argv, reason in (
        (["broker.host=evil"], "'broker' cannot be set remotely"),
        (["uplink"], "is not section.key=value"),
        (["uplink.batch_max_age_s=NaN"], "not a finite number"),
        (["--vehicle", "bus-zz", "uplink.batch_max_age_s=1"], "knows no bus 'bus-zz'"),
        ([], "nothing to set"),
    ):
        assert await h.run_cli("fleet", "config", "set", "--fleet", h.fleet, *argv) == 2
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err, err
    # nothing was stored
    assert await fleet_store.desired_configs(h.store.connection, h.fleet, ["bus-a"]) == {}


async def test_canaries_first_then_the_fleet_and_an_offline_bus_catches_up(
    harness: Harness,
    fleet_broker: FleetBroker,  # noqa: F811
) -> None:
    h = harness
    buses = {v: Bus(fleet_broker, h.fleet, v, h.public_key) for v in ("bus-a", "bus-b", "bus-c")}
    for bus in buses.values():
        bus.connect()  # bus-d stays offline throughout the rollout
    try:
        # WHEN a model is pushed with bus A as the canary
        assert await h.run_cli("fleet", "model", "push", str(MODEL), "--name", "soc_drop", "--fleet", h.fleet,
                               "--key", str(h.key), "--canary", "bus-a") == 0  # fmt: skip
        # THEN only bus A gets it, signed by the fleet key, with the feature version of its metadata
        release = await asyncio.to_thread(buses["bus-a"].next_desired)
        assert isinstance(release, ModelRelease) and release.name == "soc_drop"
        assert release.model == MODEL.read_bytes() and release.feature_version
        assert await h.rollout_state() == (RolloutState.CANARY, None)
        # a marker config for B: published after the model would have been, so B's queue is complete
        assert await h.run_cli("fleet", "config", "set", "--fleet", h.fleet, "--vehicle", "bus-b",
                               "alerts.low_soc_pct=15") == 0  # fmt: skip
        assert isinstance(await asyncio.to_thread(buses["bus-b"].next_desired), DesiredConfig)
        assert buses["bus-b"].drain() == []
        # WHEN the canary applies it, THEN the rollout rolls to the whole fleet ...
        buses["bus-a"].report(None, {"soc_drop": _applied(release.revision, release.sha256.hex())})
        for vehicle in ("bus-b", "bus-c"):
            got = await asyncio.to_thread(buses[vehicle].next_desired)
            assert isinstance(got, ModelRelease) and got.revision == release.revision
        assert (await h.rollout_state())[0] is RolloutState.ROLLING
        # ... and it is done once every bus has applied it, the offline bus D included when it returns
        for vehicle in ("bus-b", "bus-c"):
            buses[vehicle].report(None, {"soc_drop": _applied(release.revision)})

        async def three_reported() -> bool:
            return len(await fleet_store.applied_reports(h.store.connection, h.fleet)) == 3

        await h.until(three_reported, "the reports of buses A, B and C stored")
        assert (await h.rollout_state())[0] is RolloutState.ROLLING  # bus D has not applied it
        # (and the fleet's config changes twice while bus D is away)
        for value in ("20", "25"):
            assert (
                await h.run_cli("fleet", "config", "set", "--fleet", h.fleet, f"alerts.low_soc_pct={value}")
                == 0
            )
        wanted = (await fleet_store.desired_configs(h.store.connection, h.fleet, ["bus-d"]))["bus-d"]
        bus_d = Bus(fleet_broker, h.fleet, "bus-d", h.public_key).connect()
        try:
            # on connect: the retained release and the latest config (or the one before it, then the latest
            # live, should the receiver not have published it yet)
            arrived: list[DesiredConfig | ModelRelease] = []
            while wanted not in arrived or not any(isinstance(m, ModelRelease) for m in arrived):
                arrived.append(await asyncio.to_thread(bus_d.next_desired))
            assert [m.revision for m in arrived if isinstance(m, ModelRelease)] == [release.revision]
            assert wanted.settings == {"alerts": {"low_soc_pct": 25}}
            bus_d.report(None, {"soc_drop": _applied(release.revision)})

            async def done() -> bool:
                return (await h.rollout_state())[0] is RolloutState.DONE

            await h.until(done, "the rollout done")
        finally:
            bus_d.close()
    finally:
        for bus in buses.values():
            bus.close()


async def test_a_canary_rolling_back_halts_the_rollout_and_the_rest_never_get_it(
    harness: Harness,
    fleet_broker: FleetBroker,  # noqa: F811
) -> None:
    h = harness
    canary = Bus(fleet_broker, h.fleet, "bus-a", h.public_key).connect()
    other = Bus(fleet_broker, h.fleet, "bus-b", h.public_key).connect()
    try:
        assert await h.run_cli("fleet", "model", "push", str(MODEL), "--name", "soc_drop", "--fleet", h.fleet,
                               "--key", str(h.key), "--canary", "bus-a") == 0  # fmt: skip
        release = await asyncio.to_thread(canary.next_desired)
        assert isinstance(release, ModelRelease)
        # WHEN the canary reports it rolled back
        failed = Outcome(release.revision, OutcomeState.ROLLED_BACK, "model failed to load", "00" * 32)
        canary.report(None, {"soc_drop": failed})

        async def halted() -> bool:
            return (await h.rollout_state())[0] is RolloutState.HALTED

        await h.until(halted, "the rollout halted")
        # THEN it halted by itself with the canary's reason ...
        assert await h.rollout_state() == (
            RolloutState.HALTED,
            "canary bus-a reported rolled_back: model failed to load",
        )
        # ... and bus B never got the model: only the marker config published after it
        assert await h.run_cli("fleet", "config", "set", "--fleet", h.fleet, "alerts.low_soc_pct=15") == 0
        marker = await asyncio.to_thread(other.next_desired)
        assert isinstance(marker, DesiredConfig)
        assert other.drain() == []
        # status says so, per bus and for the rollout
        lines = await fleet_cli.status(h.settings, h.fleet)
        assert any("halted" in line and "rolled_back: model failed to load" in line for line in lines), lines
    finally:
        canary.close()
        other.close()


async def test_a_push_that_cannot_be_signed_or_rolled_out_is_refused_with_a_reason(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = harness
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(MODEL.read_bytes()[:1000])
    common = ["--fleet", h.fleet, "--key", str(h.key)]
    for argv, reason in (
        ([str(truncated), "--name", "soc_drop", *common, "--canary", "bus-a"], "not a readable ONNX model"),
        ([str(MODEL.with_name("large_drop.onnx")), "--name", "soc_drop", *common, "--canary", "bus-a"],
         "is model 'large_drop' by its metadata"),
        ([str(MODEL), "--name", "soc_drop", *common, "--canary", "bus-zz"], "does not have: ['bus-zz']"),
        ([str(MODEL), "--name", "soc_drop", *common, "--percent", "0"], "not in (0, 100]"),
        ([str(MODEL), "--name", "soc_drop", "--fleet", h.fleet, "--key", str(MODEL), "--percent", "50"],
         "cannot load the fleet key"),
    ):  # fmt: skip
        assert await h.run_cli("fleet", "model", "push", *argv) == 2
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err, err
    # a release larger than the broker's packet limit (here set to 64 KiB) would never reach a bus
    h.env["VOLTGATE_CLOUD_FLEET_CONTROL__MAX_PACKET_BYTES"] = str(64 * 1024)
    assert (
        await h.run_cli(
            "fleet", "model", "push", str(MODEL), "--name", "soc_drop", *common, "--percent", "50"
        )
        == 2
    )
    assert "above the broker's limit of 65536" in capsys.readouterr().err
    del h.env["VOLTGATE_CLOUD_FLEET_CONTROL__MAX_PACKET_BYTES"]
    assert await fleet_store.rollouts(h.store.connection, h.fleet) == []
    # a percentage picks that share of the fleet's buses as canaries
    assert (
        await h.run_cli(
            "fleet", "model", "push", str(MODEL), "--name", "soc_drop", *common, "--percent", "50"
        )
        == 0
    )
    [rollout] = await fleet_store.rollouts(h.store.connection, h.fleet)
    assert len(rollout.canaries) == 2 and rollout.percent == 50
    # a newer push of the same model halts the unfinished rollout: superseded
    assert (
        await h.run_cli(
            "fleet", "model", "push", str(MODEL), "--name", "soc_drop", *common, "--canary", "bus-c"
        )
        == 0
    )
    first, second = await fleet_store.rollouts(h.store.connection, h.fleet)
    assert (first.state, first.reason) == (RolloutState.HALTED, f"superseded by rollout {second.rollout_id}")
    assert second.state is RolloutState.CANARY and second.revision > first.revision


async def test_the_api_and_the_bus_view_show_desired_against_applied(
    harness: Harness,
    fleet_broker: FleetBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    h = harness
    binary = chromium()  # skips (or fails under CI=true) without Chromium
    bus = Bus(fleet_broker, h.fleet, "bus-a", h.public_key).connect()
    try:
        # GIVEN bus A applied its config and refused a model release
        assert await h.run_cli("fleet", "config", "set", "--fleet", h.fleet, "uplink.batch_max_age_s=2") == 0
        assert await h.run_cli("fleet", "model", "push", str(MODEL), "--name", "soc_drop", "--fleet", h.fleet,
                               "--key", str(h.key), "--canary", "bus-a") == 0  # fmt: skip
        got = {type(m): m for m in [await asyncio.to_thread(bus.next_desired) for _ in range(2)]}
        config, release = got[DesiredConfig], got[ModelRelease]
        refused = Outcome(release.revision, OutcomeState.REFUSED, "feature version mismatch", "ab" * 32)
        bus.report(_applied(config.revision, str(config.revision)), {"soc_drop": refused})
        await h.until(halted_by(h), "the rollout halted")
    finally:
        bus.close()
    database = DatabaseSettings.model_validate({"dsn": h.db.dsn, "schema": h.db.schema})
    views = await FleetViews.start(WebSettings(port=0), database)
    try:
        # WHEN the API is asked about bus A, THEN it answers desired against applied
        body = await asyncio.to_thread(_get_json, f"{views.url}/api/buses/bus-a/control")
        assert body["config"] == {
            "desired_revision": config.revision,
            "applied": {
                "revision": config.revision,
                "state": "applied",
                "detail": "",
                "running": str(config.revision),
            },
        }
        assert body["models"] == [
            {
                "name": "soc_drop",
                "desired_revision": None,  # halted: no release is wanted for it any more
                "rollout": None,
                "rollout_state": None,
                "applied": {"revision": release.revision, "state": "refused",
                            "detail": "feature version mismatch", "running": "ab" * 32},
            }
        ]  # fmt: skip
        # AND the fleet page's bus view says it on one line
        dom = await run_chromium(binary, tmp_path / "profile", "--dump-dom", f"{views.url}/#/bus/bus-a")
        line = dom.split('id="bus-control"', 1)[1].split("</div>", 1)[0]
        assert f"config r{config.revision} applied" in line
        assert f"soc_drop r{release.revision} refused" in line
    finally:
        await views.stop()


def halted_by(h: Harness) -> Callable[[], object]:
    async def halted() -> bool:
        return (await h.rollout_state())[0] is RolloutState.HALTED

    return halted


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


@pytest.mark.flavour("native")  # the storage runs on both flavours above; this is about the processes
async def test_end_to_end_a_real_agent_applies_what_the_cli_set_and_the_api_shows_it(
    pg_schema: Database,
    fleet_broker: FleetBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    # GIVEN the receiver (`run`: ingest, fleet control, API) on the receivers' port with its identity, and a
    # real `voltgate-agent run` process with its bus certificate and the fleet's public key
    store = await migrated_store(pg_schema)
    fleet, vehicle = unique_id("f"), "bus-e2e"
    fleet_cli.keygen(fleet, tmp_path)
    database = DatabaseSettings.model_validate({"dsn": pg_schema.dsn, "schema": pg_schema.schema})
    web_port = free_port()
    settings = CloudSettings(
        mqtt=MqttSettings(
            host="127.0.0.1", port=fleet_broker.receiver_port, tls=True,
            ca_file=fleet_broker.pki.ca_cert_path, cert_file=fleet_broker.receiver.cert_path,
            key_file=fleet_broker.receiver.key_path,
            client_id=unique_id("voltgate-cloud-"), shared_group=unique_id("g"), session_expiry_s=60,
        ),
        database=database,
        metrics=MetricsSettings(port=0),
        web=WebSettings(port=web_port),
        fleet_control=FleetControlSettings(poll_s=0.1),
    )  # fmt: skip
    env = {"VOLTGATE_CLOUD_DATABASE__DSN": pg_schema.dsn, "VOLTGATE_CLOUD_DATABASE__SCHEMA": pg_schema.schema}
    issued = fleet_broker.pki.issue_bus(fleet, vehicle)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "{vehicle}"
log_format = "json"
[[can]]
name = "traction"
interface = "virtual"
channel = "{unique_id("vcan-")}"
[buffer]
path = "{tmp_path / "buffer.sqlite3"}"
commit_interval_s = 0.2
[uplink]
broker_url = "mqtts://127.0.0.1:{fleet_broker.bus_port}"
fleet_id = "{fleet}"
ca_file = "{fleet_broker.pki.ca_cert_path}"
cert_file = "{issued.cert_path}"
key_file = "{issued.key_path}"
batch_max_age_s = 0.2
[metrics]
enabled = false
[fleet_control]
public_keys = ["{tmp_path / f"{fleet}.ed25519.pub"}"]
state_dir = "{tmp_path / "fleet"}"
"""
    )
    model = _variant_of(MODEL, tmp_path / "soc_drop-2.onnx")
    stop = asyncio.Event()
    receiver = asyncio.create_task(app.run(settings, stop), name="receiver")
    agent = AgentProcess(config, tmp_path / "agent.log")
    conn = store.connection
    try:

        async def known() -> bool:
            return vehicle in await fleet_store.fleet_vehicles(conn, fleet)

        await _until(known, "the receiver stored the agent's status (the database knows the bus)", agent)

        # WHEN the operator sets the bus's config and pushes a model with it as the canary
        def cli(*argv: str) -> int:
            with pytest.MonkeyPatch.context() as patch:
                for name, value in env.items():
                    patch.setenv(name, value)
                return cloud_main(list(argv))

        assert await asyncio.to_thread(cli, "fleet", "config", "set", "--fleet", fleet, "--vehicle", vehicle,
                                       "uplink.batch_max_age_s=0.5", "alerts.min_hold_s=3") == 0  # fmt: skip
        assert await asyncio.to_thread(cli, "fleet", "model", "push", str(model), "--name", "soc_drop",
                                       "--fleet", fleet, "--key", str(tmp_path / f"{fleet}.ed25519.key"),
                                       "--canary", vehicle) == 0  # fmt: skip

        # THEN the agent applies both and reports it; the receiver stores it, and the rollout is done
        async def done() -> bool:
            [rollout] = await fleet_store.rollouts(conn, fleet)
            return rollout.state is RolloutState.DONE

        await _until(done, "the rollout done (the agent applied the model and reported it)", agent)
        view = await fleet_store.fleet_view(conn, fleet)
        [bus] = view.buses
        assert bus.desired_config is not None and bus.applied_config is not None
        assert bus.applied_config.state is OutcomeState.APPLIED, bus.applied_config
        assert bus.applied_config.revision == bus.desired_config.revision
        # AND the API shows what runs: the config's revision, the model's SHA-256
        body = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{web_port}/api/buses/{vehicle}/control")
        assert body["config"]["applied"]["state"] == "applied"
        assert body["config"]["applied"]["revision"] == body["config"]["desired_revision"]
        [soc_drop] = body["models"]
        assert soc_drop["rollout_state"] == "done" and soc_drop["applied"]["state"] == "applied"
        assert soc_drop["applied"]["running"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert soc_drop["applied"]["revision"] == soc_drop["desired_revision"]

        # WHEN a setting has the right shape but means nothing to the agent (no such signal)
        assert await asyncio.to_thread(cli, "fleet", "config", "set", "--fleet", fleet, "--vehicle", vehicle,
                                       'sampling.No.Such.Signal={"deadband": 1.0}') == 0  # fmt: skip
        applied_before = bus.applied_config.revision

        async def config_answered() -> bool:
            [bus] = (await fleet_store.fleet_view(conn, fleet)).buses
            return bus.applied_config is not None and bus.applied_config.revision > applied_before

        await _until(config_answered, "the agent's answer to the second config", agent)
        # THEN the agent refuses it, keeps running the config before it, and the API says so
        body = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{web_port}/api/buses/{vehicle}/control")
        refused = body["config"]["applied"]
        assert refused["state"] == "refused" and refused["revision"] == body["config"]["desired_revision"]
        assert "No.Such.Signal" in refused["detail"] and refused["running"] == str(applied_before)
        assert await agent.terminate_async() == 0
        assert "Traceback" not in agent.log_text()
    finally:
        agent.ensure_dead()
        stop.set()
        await asyncio.wait_for(receiver, 30)
        await store.close()


def _variant_of(model: Path, out: Path) -> Path:
    """The shipped model with another `voltgate.model_version`: the same graph, other bytes and SHA-256."""
    import onnx

    proto = onnx.load_model_from_string(model.read_bytes())
    for prop in proto.metadata_props:
        if prop.key == "voltgate.model_version":
            prop.value = f"{prop.value}+e2e"
    out.write_bytes(proto.SerializeToString())
    return out


async def _until(condition: Callable[[], object], what: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + 30
    while not await _call(condition):
        agent.alive()
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within 30 s\n{agent.log_text()[-3000:]}", pytrace=False)
        await asyncio.sleep(0.1)
