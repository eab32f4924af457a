"""Fleet control: the desired state the cloud sends a bus, and what the bus reports it has applied.

Cloud → bus, in the downlink envelope of `protocols.downlink` (types 2 and 3), published **retained** (QoS 1)
by the receiver only (the broker's ACL enforces it), so a bus that was offline gets the latest desired state
on its next connect:

    voltgate/v1/{fleet}/{vehicle}/downlink/config         DesiredConfig
    voltgate/v1/{fleet}/{vehicle}/downlink/model/{name}   ModelRelease, one retained message per model name

    DesiredConfig  fields = [revision, settings]
    ModelRelease   fields = [revision, rollout, name, feature_version, sha256, key_id, signature, model]

`revision` grows with every change the cloud makes (one sequence for the whole fleet database), so a bus
applies a message only when its revision is above the last one it handled for that config or model name:
a retained message seen again after a reconnect is applied once. `settings` is a map of section → map of
setting → value (`DESIRED_SECTIONS`); this module checks its shape and bounds, the agent checks its meaning
(its own settings models) and refuses the whole message if any part does not validate. What the agent
accepts (`agent.fleet_control_config`): `uplink` {batch_max_records, batch_max_age_s}; `alerts` {the
thresholds, hysteresis and hold time of its alert settings}; `sampling` {canonical signal name:
{min_interval_s, max_interval_s, deadband}}, e.g. {"sampling": {"Vehicle.Speed": {"deadband": 0.5}}}.

A model travels signed: Ed25519 (RFC 8032) over `model_signed_bytes(name, feature_version, sha256)` by the
fleet's key; `key_id` names that key (`key_id_of`). The agent checks the signature against the public keys it
was installed with, the SHA-256 against the bytes, and the name and feature version against its own code
before it swaps the model in; the previous model stays on disk for a rollback.

Bus → cloud, retained (QoS 1), JSON:

    voltgate/v1/{fleet}/{vehicle}/applied                 AppliedReport

    {"v": 1, "ts_ms": ..., "config": Outcome | null, "models": {name: Outcome}}
    Outcome = {"revision": int, "state": "applied" | "refused" | "rolled_back", "detail": str, "running": str}

An outcome is about the desired message of that `revision`: `applied`, `refused` (it did not verify or
validate; nothing changed) or `rolled_back` (it verified but failed to load or run; the previous model runs
again). `running` says what runs now: the config revision (as a decimal string, "0" for the installed file's)
or the running model's SHA-256 in hex. The decoders trust nothing and raise `DownlinkError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final

import msgpack

from protocols.downlink import (
    MAX_TS_MS,
    DownlinkError,
    DownlinkType,
    check_int,
    decode_envelope,
    encode_envelope,
)
from protocols.topics import ID_PATTERN

if TYPE_CHECKING:  # `cryptography` is imported only where a key is used (the `edge` and `cloud` extras)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_REVISION: Final = 2**53 - 1
MAX_MODEL_BYTES: Final = 4 * 1024 * 1024
MAX_SETTINGS_BYTES: Final = 64 * 1024
MAX_DETAIL_CHARS: Final = 500
DESIRED_SECTIONS: Final = frozenset({"sampling", "uplink", "alerts"})
"""What the cloud may set remotely: the sampling policy (per signal), the uplink's batching, the alert
thresholds. Anything else (broker address, identities, buffer paths) changes only on the gateway itself."""

SIGNED_PREFIX: Final = b"voltgate model release v1\n"
SHA256_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64  # Ed25519
KEY_ID_CHARS: Final = 16

Scalar = str | int | float | bool
SettingValue = Scalar | list[Scalar] | dict[str, Scalar]


class OutcomeState(StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class DesiredConfig:
    """The settings the cloud wants this bus to run, over its installed configuration file."""

    ts_ms: int
    revision: int
    settings: Mapping[str, Mapping[str, SettingValue]]


@dataclass(frozen=True, slots=True)
class ModelRelease:
    """One signed model for one model name, as part of a rollout."""

    ts_ms: int
    revision: int
    rollout: str  # the rollout's id, reported back with the outcome
    name: str  # a model name of `protocols.predictions`
    feature_version: str
    sha256: bytes
    key_id: str
    signature: bytes
    model: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    revision: int
    state: OutcomeState
    detail: str = ""  # why, when not applied: one sentence
    running: str = ""  # the config revision or the model SHA-256 (hex) running now


@dataclass(frozen=True, slots=True)
class AppliedReport:
    ts_ms: int
    config: Outcome | None
    models: Mapping[str, Outcome]


# --- signing ------------------------------------------------------------------------------------------


class SignatureError(DownlinkError):
    """A model release whose signature, key or digest does not verify."""


def model_signed_bytes(name: str, feature_version: str, sha256: bytes) -> bytes:
    """What the fleet key signs for a model: name, feature version and digest (the digest binds the bytes)."""
    return SIGNED_PREFIX + bytes(msgpack.packb([name, feature_version, bytes(sha256)], use_bin_type=True))


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first hex digits of SHA-256 over its raw 32 bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_CHARS]


def sign_model(
    private_key: Ed25519PrivateKey,
    *,
    revision: int,
    rollout: str,
    name: str,
    feature_version: str,
    model: bytes,
    ts_ms: int,
) -> ModelRelease:
    """A release of `model` signed by the fleet key."""
    digest = hashlib.sha256(model).digest()
    signature = private_key.sign(model_signed_bytes(name, feature_version, digest))
    return ModelRelease(
        ts_ms,
        revision,
        rollout,
        name,
        feature_version,
        digest,
        key_id_of(private_key.public_key()),
        signature,
        model,
    )


def verify_model(release: ModelRelease, public_keys: Mapping[str, Ed25519PublicKey]) -> None:
    """`SignatureError` unless one of `public_keys` (by key id) signed the release and its bytes match."""
    from cryptography.exceptions import InvalidSignature

    key = public_keys.get(release.key_id)
    if key is None:
        raise SignatureError(f"model {release.name!r} is signed by unknown key {release.key_id!r}")
    if hashlib.sha256(release.model).digest() != release.sha256:
        raise SignatureError(
            f"model {release.name!r}: its bytes do not match its SHA-256 (truncated or altered)"
        )
    try:
        key.verify(
            release.signature, model_signed_bytes(release.name, release.feature_version, release.sha256)
        )
    except InvalidSignature:
        raise SignatureError(f"model {release.name!r}: bad signature for key {release.key_id!r}") from None


# --- cloud → bus --------------------------------------------------------------------------------------


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise DownlinkError(f"{what} must be an id of 1-64 of A-Z a-z 0-9 _ . -, not {value!r}")
    return value


def _check_scalar(value: object, where: str) -> Scalar:
    if isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > 1024:
            raise DownlinkError(f"{where}: string longer than 1024 characters")
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise DownlinkError(f"{where}: {value!r} is not a finite number, a string or a boolean")


def _check_settings(settings: object) -> dict[str, dict[str, SettingValue]]:
    if not isinstance(settings, Mapping):
        raise DownlinkError("settings must be a map of section → map of setting → value")
    checked: dict[str, dict[str, SettingValue]] = {}
    for section, values in settings.items():
        if section not in DESIRED_SECTIONS:
            raise DownlinkError(
                f"settings section {section!r} cannot be set remotely ({sorted(DESIRED_SECTIONS)})"
            )
        if not isinstance(values, Mapping):
            raise DownlinkError(f"settings section {section!r} must be a map")
        out: dict[str, SettingValue] = {}
        for key, value in values.items():
            where = f"{section}.{key}"
            if not isinstance(key, str) or not 1 <= len(key) <= 128:
                raise DownlinkError(
                    f"settings key {key!r} in {section!r} must be a string of 1-128 characters"
                )
            if isinstance(value, list):
                out[key] = [_check_scalar(item, where) for item in value]
            elif isinstance(value, Mapping):
                out[key] = {str(k): _check_scalar(v, f"{where}.{k}") for k, v in value.items()}
            else:
                out[key] = _check_scalar(value, where)
        checked[section] = out
    return checked


def encode_desired_config(message: DesiredConfig) -> bytes:
    settings = _check_settings(message.settings)
    revision = check_int(message.revision, 1, MAX_REVISION, "revision")
    payload = encode_envelope(DownlinkType.DESIRED_CONFIG, message.ts_ms, [revision, settings])
    if len(payload) > MAX_SETTINGS_BYTES:
        raise DownlinkError(f"desired config of {len(payload)} bytes > {MAX_SETTINGS_BYTES}")
    return payload


def encode_model_release(release: ModelRelease) -> bytes:
    fields = [
        check_int(release.revision, 1, MAX_REVISION, "revision"),
        _check_id(release.rollout, "rollout"),
        _check_id(release.name, "model name"),
        _check_id(release.feature_version, "feature version"),
        bytes(release.sha256),
        release.key_id,
        bytes(release.signature),
        bytes(release.model),
    ]
    _check_release_fields(fields)
    return encode_envelope(DownlinkType.MODEL_RELEASE, release.ts_ms, fields)


def _check_release_fields(fields: list[object]) -> None:
    if len(fields) != 8:
        raise DownlinkError("a model release has 8 fields")
    sha, key_id, signature, model = fields[4:]
    if not isinstance(sha, bytes) or len(sha) != SHA256_BYTES:
        raise DownlinkError("sha256 must be 32 bytes")
    if (
        not isinstance(key_id, str)
        or len(key_id) != KEY_ID_CHARS
        or not all(c in "0123456789abcdef" for c in key_id)
    ):
        raise DownlinkError(f"key_id must be {KEY_ID_CHARS} lower-case hex digits")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise DownlinkError("signature must be 64 bytes (Ed25519)")
    if not isinstance(model, bytes) or not 0 < len(model) <= MAX_MODEL_BYTES:
        raise DownlinkError(f"model must be 1..{MAX_MODEL_BYTES} bytes")


def decode_desired(payload: bytes) -> DesiredConfig | ModelRelease:
    """A desired config or model release; `DownlinkError` (`UnknownDownlinkTypeError` for other types)."""
    kind, ts_ms, fields = decode_envelope(payload, (DownlinkType.DESIRED_CONFIG, DownlinkType.MODEL_RELEASE))
    if not isinstance(fields, list):
        raise DownlinkError("fields must be a list")
    if kind == DownlinkType.DESIRED_CONFIG:
        if len(fields) != 2:
            raise DownlinkError("a desired config has 2 fields: [revision, settings]")
        revision = check_int(fields[0], 1, MAX_REVISION, "revision")
        return DesiredConfig(ts_ms, revision, _check_settings(fields[1]))
    _check_release_fields(fields)
    return ModelRelease(
        ts_ms,
        check_int(fields[0], 1, MAX_REVISION, "revision"),
        _check_id(fields[1], "rollout"),
        _check_id(fields[2], "model name"),
        _check_id(fields[3], "feature version"),
        fields[4],  # sha256, key id, signature and model: checked above
        fields[5],
        fields[6],
        fields[7],
    )


# --- bus → cloud --------------------------------------------------------------------------------------

MAX_REPORT_BYTES: Final = 16 * 1024


def outcome_json(outcome: Outcome) -> dict[str, object]:
    """An outcome as the applied report carries it (the agent's state file and the API show it so too)."""
    return {
        "revision": outcome.revision,
        "state": outcome.state.value,
        "detail": outcome.detail[:MAX_DETAIL_CHARS],
        "running": outcome.running,
    }


def encode_applied(report: AppliedReport) -> bytes:
    body = {
        "v": 1,
        "ts_ms": check_int(report.ts_ms, 0, MAX_TS_MS, "ts_ms"),
        "config": None if report.config is None else outcome_json(report.config),
        "models": {
            _check_id(name, "model name"): outcome_json(o) for name, o in sorted(report.models.items())
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _outcome(value: object, where: str) -> Outcome:
    if not isinstance(value, dict) or set(value) != {"revision", "state", "detail", "running"}:
        raise DownlinkError(f"{where} must be an object with revision, state, detail and running")
    try:
        state = OutcomeState(value["state"])
    except ValueError:
        raise DownlinkError(
            f"{where}.state {value['state']!r} is not one of {[s.value for s in OutcomeState]}"
        ) from None
    detail, running = value["detail"], value["running"]
    if not isinstance(detail, str) or len(detail) > MAX_DETAIL_CHARS:
        raise DownlinkError(f"{where}.detail must be a string of at most {MAX_DETAIL_CHARS} characters")
    if not isinstance(running, str) or len(running) > 64:
        raise DownlinkError(f"{where}.running must be a string of at most 64 characters")
    return Outcome(check_int(value["revision"], 0, MAX_REVISION, f"{where}.revision"), state, detail, running)


def decode_applied(payload: bytes) -> AppliedReport:
    if len(payload) > MAX_REPORT_BYTES:
        raise DownlinkError(f"applied report of {len(payload)} bytes > {MAX_REPORT_BYTES}")
    try:
        body = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as err:
        raise DownlinkError(f"applied report is not JSON: {err}") from err
    if not isinstance(body, dict) or body.get("v") != 1 or set(body) != {"v", "ts_ms", "config", "models"}:
        raise DownlinkError("applied report must be {v: 1, ts_ms, config, models}")
    models = body["models"]
    if not isinstance(models, dict):
        raise DownlinkError("applied report models must be an object")
    config = None if body["config"] is None else _outcome(body["config"], "config")
    return AppliedReport(
        check_int(body["ts_ms"], 0, MAX_TS_MS, "ts_ms"),
        config,
        {_check_id(name, "model name"): _outcome(o, f"models.{name}") for name, o in models.items()},
    )
