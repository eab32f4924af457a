"""Fleet control: the desired configuration and signed models the cloud sends over the downlink, applied on
the bus, and reported back.

    uplink (downlink reader) ─offer(topic, payload)─► FleetControl ─► validate / verify ─► RunningStages
                                                         │ (its own task)                  (hot, no restart)
                                                         ├─► state dir (atomic): what runs, what was handled
                                                         └─► AppliedReport ─► uplink ─► `applied` (retained)

The uplink hands every message on `downlink/config` and `downlink/model/{name}` to `offer`, which only
stores it (the latest per topic, a bounded number of topics) and wakes this component's task: the uplink's
commit-ack handling never waits for a model to be verified or loaded.

Each message is handled once per revision (`protocols.fleet_control`): a revision at or below the last one
handled for the config or that model name (applied, refused or rolled back; persisted) is skipped, so a
retained message seen again after a reconnect or a restart is not applied again, and a bus that was
offline while several revisions were published applies the latest (the one the broker retained), once.

Config (`agent.fleet_control_config`): validated with the agent's settings models over the installed file;
anything that does not validate refuses the whole message; the running config is unchanged. Applied hot
(`agent.fleet_control_stages`) after the state is persisted; a restart runs it from the state dir.

Model: refused unless its name is a model name of `protocols.predictions`, its feature version is this
code's `FEATURE_VERSION`, and one of the configured fleet public keys signed it over its SHA-256
(`verify_model`); nothing is written before that. Then it is written to the state dir, loaded with
`models.runtime.load_model` (which checks the feature names and version in its ONNX metadata), its
metadata name checked and one trial prediction run; if any of that fails the running model stays
(`rolled_back`) and the new file is deleted; otherwise it swaps in and the previous file is kept for a
rollback. Hostile input is counted (`voltgate_fleet_control_refused{reason}`), logged once per reason,
reported; the agent goes on.

Every outcome is reported as an `AppliedReport` on `applied` (retained, QoS 1), which the uplink also
publishes on every connect (once this bus has handled a desired message; before, it has nothing to say).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from agent import metrics
from agent.fleet_control_config import (
    ConfigRefusedError,
    RemoteConfig,
    installed_config,
    sampling_changes,
    validate_desired,
)
from agent.fleet_control_state import FleetState, ModelEntry, StateStore
from agent.settings import AgentSettings, ConfigError, FleetControlSettings
from models.features import FEATURE_VERSION, N_FEATURES
from models.runtime import LoadedModel, ModelError, load_model
from protocols.catalog import SamplingPolicy
from protocols.downlink import DownlinkError
from protocols.errors import TopicError
from protocols.fleet_control import (
    AppliedReport,
    DesiredConfig,
    ModelRelease,
    Outcome,
    OutcomeState,
    SettingValue,
    SignatureError,
    decode_desired,
    encode_applied,
    key_id_of,
    verify_model,
)
from protocols.predictions import FAULT_RISK_MODEL, LARGE_DROP_MODEL, SOC_DROP_MODEL
from protocols.topics import TopicKind, parse_topic

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

MODEL_NAMES: Final = frozenset({SOC_DROP_MODEL, LARGE_DROP_MODEL, FAULT_RISK_MODEL})
MAX_PENDING_TOPICS: Final = 8  # the config and one per model name, with room
MAX_REPORTED_MODELS: Final = 16  # outcomes of unknown model names are reported up to this many names


class Stages(Protocol):
    """What fleet control changes in the running agent (`agent.fleet_control_stages.RunningStages`)."""

    def apply_config(self, config: RemoteConfig, sampling: Mapping[str, SamplingPolicy]) -> None: ...
    def swap_model(self, model: LoadedModel) -> bool: ...
    def running_model_file(self, name: str) -> Path | None: ...
    def report(self, payload: bytes) -> None: ...


class _RefusedError(Exception):
    """Refused: `reason` labels the metric, the message is the one sentence reported."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """The fleet's Ed25519 public keys (PEM) by key id; `ConfigError` with one sentence otherwise."""
    if not paths:
        return {}  # and `cryptography` stays unloaded
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = load_pem_public_key(path.read_bytes())
        except OSError as err:
            raise ConfigError(
                f"fleet_control.public_keys: cannot read {path}: {err.strerror or err}"
            ) from err
        except (ValueError, TypeError) as err:
            raise ConfigError(f"fleet_control.public_keys: {path} is not a PEM public key") from err
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"fleet_control.public_keys: {path} is not an Ed25519 public key")
        keys[key_id_of(key)] = key
    return keys


class FleetControl:
    """See the module docstring. `open` reads the state dir; `run` handles what `offer` receives."""

    def __init__(
        self,
        settings: FleetControlSettings,
        installed: AgentSettings,
        policies: Mapping[str, SamplingPolicy],
    ) -> None:
        """`policies`: the catalog sampling policy of every CAN signal this agent decodes."""
        self.settings = settings
        self.installed = installed
        self.policies = dict(policies)
        self.keys = load_public_keys(settings.public_keys)
        self.store = StateStore(settings.state_dir or installed.buffer.path.parent / "fleet")
        self.state = FleetState()
        self.config = installed_config(installed)
        self._stages: Stages | None = None
        self._pending: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._logged: set[str] = set()

    # --- start ---------------------------------------------------------------------------------------

    def open(self) -> AgentSettings:
        """Read the persisted state (blocking) → the settings to run: the installed ones with the applied
        desired config and the received models (each checked again; what fails is logged, not run)."""
        if not self.settings.enabled:
            return self.installed
        self.state = self.store.load()
        if self.state.config_revision:
            try:
                self.config = validate_desired(
                    self.state.config_revision, self.state.config_settings, self.installed, self.policies
                )
            except ConfigRefusedError as err:  # the installed file changed under it
                revision = self.state.config_revision
                log.error(
                    "desired config revision %d no longer validates (%s); running the installed config",
                    revision,
                    err,
                )
                detail = f"it no longer validates over the installed config, which runs instead: {err}"
                self.state.config_outcome = Outcome(revision, OutcomeState.ROLLED_BACK, detail, "0")
        metrics.FLEET_CONFIG_REVISION.set(self.config.revision)
        models = list(self.installed.inference.models)
        for name, entry in sorted(self.state.models.items()):
            path = self._stored_model(name, entry)
            if path is not None:
                models = [p for p in models if Path(p).stem != name] + [path]
            if path is None or path.stem != entry.sha256:
                installed = next((Path(p) for p in models if Path(p).stem == name), None)
                running = path.stem if path is not None else _file_sha(installed)
                detail = "its stored file is missing or damaged; the model before it runs again"
                self.state.model_outcomes[name] = Outcome(
                    entry.revision, OutcomeState.ROLLED_BACK, detail, running
                )
                if path is None:  # the installed file runs
                    del self.state.models[name]
                else:
                    self.state.models[name] = ModelEntry(entry.revision, path.stem)
        return self.installed.model_copy(
            update={
                "uplink": self.config.uplink,
                "alerts": self.config.alerts,
                "inference": self.installed.inference.model_copy(update={"models": models}),
            }
        )

    def _stored_model(self, name: str, entry: ModelEntry) -> Path | None:
        for sha in (entry.sha256, entry.previous):
            if sha is None:
                break
            path = self.store.model_file_ok(name, sha)
            if path is not None:
                return path
            log.error(
                "received model %s %s is missing or damaged in %s", name, sha[:12], self.store.directory
            )
        return None

    def attach(self, stages: Stages) -> None:
        """The running stages: the applied sampling policies go to the decoders, the report to the uplink."""
        self._stages = stages
        if self.config.sampling:
            stages.apply_config(self.config, self.config.sampling)
        if self.state.config_outcome is not None or self.state.model_outcomes:
            stages.report(self._report())  # an agent that never got a desired message reports nothing

    # --- intake (from the uplink's downlink reader: never blocks) -----------------------------------

    def offer(self, topic: str, payload: bytes) -> None:
        if not self.settings.enabled:
            return
        if topic in self._pending:
            metrics.FLEET_SKIPPED.labels("superseded").inc()
        elif len(self._pending) >= MAX_PENDING_TOPICS:
            metrics.FLEET_SKIPPED.labels("dropped").inc()
            self._log_once("dropped", "too many downlink topics waiting; %s dropped", topic)
            return
        self._pending[topic] = payload
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: handle what `offer` received, oldest topic first."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                topic = next(iter(self._pending))
                payload = self._pending.pop(topic)
                try:
                    await self.handle(topic, payload)
                except Exception:  # a bug here must not end fleet control for the rest of the run
                    metrics.FLEET_REFUSED.labels("internal").inc()
                    log.exception("fleet control failed on a message of %s (skipped)", topic)

    async def handle(self, topic: str, payload: bytes) -> None:
        try:
            kind = parse_topic(topic).kind
        except TopicError as err:  # e.g. a model topic whose last level is not an id
            metrics.FLEET_REFUSED.labels("malformed").inc()
            self._log_once("topic", "downlink message on an unusable topic skipped: %s", err)
            return
        if not payload:  # the cloud cleared its retained message: nothing to apply
            metrics.FLEET_SKIPPED.labels("cleared").inc()
            return
        if kind == TopicKind.DOWNLINK_CONFIG:
            await self._handle_config(payload)
        elif kind == TopicKind.DOWNLINK_MODEL:
            await self._handle_model(topic.rsplit("/", 1)[1], payload)

    # --- config --------------------------------------------------------------------------------------

    async def _handle_config(self, payload: bytes) -> None:
        revision = 0
        try:
            message = _decode(payload)
            if not isinstance(message, DesiredConfig):
                raise _RefusedError("malformed", "a model release on the config topic")
            revision = message.revision
            if revision <= self.state.handled_config:
                metrics.FLEET_SKIPPED.labels("handled").inc()
                return
            try:
                config = validate_desired(revision, message.settings, self.installed, self.policies)
            except ConfigRefusedError as err:
                raise _RefusedError("invalid_config", str(err)) from None
            await self._persist_config(revision, {k: dict(v) for k, v in message.settings.items()})
        except _RefusedError as err:
            await self._refuse("config", None, revision, err, running=str(self.config.revision))
            return
        before, self.config = self.config, config
        stages = self._stages
        if stages is not None:
            stages.apply_config(config, sampling_changes(before.sampling, config.sampling, self.policies))
        metrics.FLEET_CONFIG_REVISION.set(revision)
        log.info("desired config revision %d applied", revision)
        self._outcome("config", Outcome(revision, OutcomeState.APPLIED, "", str(revision)))

    # --- models --------------------------------------------------------------------------------------

    async def _handle_model(self, topic_name: str, payload: bytes) -> None:
        revision = 0
        name = topic_name
        try:
            release = _decode(payload)
            if not isinstance(release, ModelRelease):
                raise _RefusedError("malformed", f"a desired config on the model topic of {topic_name!r}")
            revision = release.revision
            if release.name != topic_name:
                raise _RefusedError(
                    "malformed", f"release of {release.name!r} on the topic of {topic_name!r}"
                )
            if revision <= self.state.handled_models.get(name, 0):
                metrics.FLEET_SKIPPED.labels("handled").inc()
                return
            self._check_release(release)
        except _RefusedError as err:
            await self._refuse_model(name, revision, err)
            return
        running = await self._running_sha(name)
        if release.sha256.hex() == running:
            await self._model_applied(release, running, note="already running")
            return
        await self._install(release, running)

    def _check_release(self, release: ModelRelease) -> None:
        if release.name not in MODEL_NAMES:
            raise _RefusedError("unknown_model", f"{release.name!r} is not a model this agent runs")
        if release.feature_version != FEATURE_VERSION:
            raise _RefusedError(
                "features",
                f"model {release.name!r} was trained on feature version {release.feature_version!r}, "
                f"this agent computes {FEATURE_VERSION!r}",
            )
        if not self.installed.inference.enabled:
            raise _RefusedError("no_inference", "inference is disabled on this gateway")
        try:
            verify_model(release, self.keys)
        except SignatureError as err:
            raise _RefusedError("signature", str(err)) from None

    async def _install(self, release: ModelRelease, running: str) -> None:
        name, sha = release.name, release.sha256.hex()
        try:
            path = await asyncio.to_thread(self.store.write_model, name, sha, release.model)
        except OSError as err:
            await self._refuse_model(
                name, release.revision, _RefusedError("storage", f"cannot store it: {err}")
            )
            return
        try:
            model = await asyncio.to_thread(_load_checked, path, name)
        except ModelError as err:
            await asyncio.to_thread(self.store.discard, path)
            metrics.FLEET_REFUSED.labels("load").inc()
            self._log_once(f"load:{name}", "model %s rolled back: %s", name, err)
            self.state.handled_models[name] = release.revision
            detail = f"it failed to load or run, the previous model runs again: {err}"
            outcome = Outcome(release.revision, OutcomeState.ROLLED_BACK, detail, running)
            await self._conclude("model", name, outcome)
            return
        stages = self._stages
        if stages is None or not stages.swap_model(model):
            await asyncio.to_thread(self.store.discard, path)
            await self._refuse_model(
                name, release.revision, _RefusedError("no_inference", "inference is disabled on this gateway")
            )
            return
        entry = self.state.models.get(name)
        previous = entry.sha256 if entry is not None else None
        self.state.models[name] = ModelEntry(release.revision, sha, previous)
        await self._model_applied(release, sha)
        await asyncio.to_thread(self.store.prune, name, {sha} | ({previous} if previous else set()))

    async def _model_applied(self, release: ModelRelease, sha: str, note: str = "") -> None:
        self.state.handled_models[release.name] = release.revision
        log.info(
            "model %s revision %d (%s) %s", release.name, release.revision, sha[:12], note or "swapped in"
        )
        outcome = Outcome(release.revision, OutcomeState.APPLIED, note, sha)
        await self._conclude("model", release.name, outcome)

    async def _refuse_model(self, name: str, revision: int, err: _RefusedError) -> None:
        await self._refuse("model", name, revision, err, running=await self._running_sha(name))

    async def _running_sha(self, name: str) -> str:
        entry = self.state.models.get(name)
        stages = self._stages
        path = stages.running_model_file(name) if stages is not None else None
        if path is None:
            return ""
        if entry is not None and path == self.store.model_path(name, entry.sha256):
            return entry.sha256
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return ""
        return hashlib.sha256(data).hexdigest()

    # --- outcomes ------------------------------------------------------------------------------------

    async def _refuse(
        self, kind: str, name: str | None, revision: int, err: _RefusedError, *, running: str
    ) -> None:
        metrics.FLEET_REFUSED.labels(err.reason).inc()
        what = "desired config" if name is None else f"model {name}"
        self._log_once(f"{kind}:{err.reason}", "%s revision %d refused: %s", what, revision, err)
        if revision:  # a message without a readable revision can be refused again; its revision is unknown
            if name is None:
                self.state.handled_config = max(self.state.handled_config, revision)
            elif name in MODEL_NAMES or len(self.state.handled_models) < MAX_REPORTED_MODELS:
                self.state.handled_models[name] = max(self.state.handled_models.get(name, 0), revision)
        await self._conclude(kind, name, Outcome(revision, OutcomeState.REFUSED, str(err), running))

    async def _conclude(self, kind: str, name: str | None, outcome: Outcome) -> None:
        """Record `outcome` (persisted: a restart reports it again) and report it."""
        self._set_outcome(name, outcome)
        await self._save_quietly()
        self._outcome(kind, outcome)

    def _set_outcome(self, name: str | None, outcome: Outcome) -> None:
        if name is None:
            self.state.config_outcome = outcome
        elif name in self.state.model_outcomes or len(self.state.model_outcomes) < MAX_REPORTED_MODELS:
            self.state.model_outcomes[name] = outcome

    def _outcome(self, kind: str, outcome: Outcome) -> None:
        metrics.FLEET_OUTCOMES.labels(kind, outcome.state.value).inc()
        if self._stages is not None:
            self._stages.report(self._report())

    def _report(self) -> bytes:
        report = AppliedReport(
            time.time_ns() // 1_000_000, self.state.config_outcome, self.state.model_outcomes
        )
        return encode_applied(report)

    async def _persist_config(self, revision: int, settings: dict[str, dict[str, SettingValue]]) -> None:
        """The config to run and its revision, on disk before it runs; `_RefusedError` when that fails."""
        state = self.state
        before = (state.config_revision, state.config_settings, state.handled_config, state.config_outcome)
        state.config_revision, state.config_settings, state.handled_config = revision, settings, revision
        state.config_outcome = Outcome(revision, OutcomeState.APPLIED, "", str(revision))
        try:
            await asyncio.to_thread(self.store.save, state)
        except OSError as err:
            state.config_revision, state.config_settings, state.handled_config, state.config_outcome = before
            raise _RefusedError("storage", f"cannot persist it: {err}") from err

    async def _save_quietly(self) -> None:
        try:
            await asyncio.to_thread(self.store.save, self.state)
        except OSError as err:
            self._log_once("save", "fleet control state not saved (%s); a restart may apply it again", err)

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(message, *args)


def _decode(payload: bytes) -> DesiredConfig | ModelRelease:
    try:
        return decode_desired(payload)
    except DownlinkError as err:
        raise _RefusedError("malformed", f"malformed downlink message: {err}") from None


def _file_sha(path: Path | None) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""
    except OSError:
        return ""


def _load_checked(path: Path, name: str) -> LoadedModel:
    """Load (features checked by `load_model`), check the name, run once: `ModelError` if any fails."""
    model = load_model(path)
    if model.name != name:
        raise ModelError(f"its metadata names model {model.name!r}, not {name!r}")
    try:
        value = model.predict(np.zeros(N_FEATURES, dtype=np.float64))
    except Exception as err:  # onnxruntime's own exception types
        raise ModelError(f"a trial prediction failed: {err}") from err
    if not math.isfinite(value):
        raise ModelError(f"a trial prediction gave {value}")
    return model
