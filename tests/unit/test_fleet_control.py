"""Fleet control: desired config and signed models (cloud → bus), applied reports (bus → cloud)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.downlink import DownlinkError, UnknownDownlinkTypeError, decode_downlink
from protocols.fleet_control import (
    AppliedReport,
    DesiredConfig,
    Outcome,
    OutcomeState,
    SignatureError,
    decode_applied,
    decode_desired,
    encode_applied,
    encode_desired_config,
    encode_model_release,
    key_id_of,
    sign_model,
    verify_model,
)
from protocols.predictions import SOC_DROP_MODEL

MODEL = b"\x08\x07" + bytes(range(256)) * 40  # any bytes: the contract does not parse ONNX
KEY = Ed25519PrivateKey.generate()
KEYS = {key_id_of(KEY.public_key()): KEY.public_key()}


def release(model: bytes = MODEL, key: Ed25519PrivateKey = KEY):  # type: ignore[no-untyped-def]
    return sign_model(
        key,
        revision=7,
        rollout="r-1",
        name=SOC_DROP_MODEL,
        feature_version="3",
        model=model,
        ts_ms=1_700_000_000_000,
    )


def test_desired_config_round_trips() -> None:
    config = DesiredConfig(
        1, 42, {"uplink": {"batch_max_age_s": 30.0}, "alerts": {"soc_low_warning_pct": 25}}
    )
    assert decode_desired(encode_desired_config(config)) == config


@pytest.mark.parametrize(
    "settings",
    [
        {"buffer": {"path": "/tmp/x"}},
        {"uplink": {"batch_max_age_s": float("nan")}},
        {"uplink": 3},
        {"alerts": {"": 1}},
    ],
)
def test_desired_config_out_of_bounds_is_refused(settings: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(DownlinkError):
        encode_desired_config(DesiredConfig(1, 1, settings))


def test_model_release_round_trips_and_verifies() -> None:
    signed = release()
    decoded = decode_desired(encode_model_release(signed))
    assert decoded == signed
    verify_model(decoded, KEYS)  # type: ignore[arg-type]
    assert decoded.sha256 == hashlib.sha256(MODEL).digest()  # type: ignore[union-attr]


def test_truncated_altered_or_foreign_models_do_not_verify() -> None:
    signed = release()
    truncated = type(signed)(**{**_fields(signed), "model": MODEL[:-10]})
    with pytest.raises(SignatureError, match="do not match"):
        verify_model(truncated, KEYS)
    renamed = type(signed)(**{**_fields(signed), "name": "fault_risk"})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_model(renamed, KEYS)
    with pytest.raises(SignatureError, match="unknown key"):
        verify_model(release(key=Ed25519PrivateKey.generate()), KEYS)


def _fields(signed: object) -> dict[str, object]:
    return {name: getattr(signed, name) for name in signed.__slots__}  # type: ignore[attr-defined]


def test_ack_decoder_and_desired_decoder_tell_each_other_apart() -> None:
    with pytest.raises(UnknownDownlinkTypeError):
        decode_downlink(encode_desired_config(DesiredConfig(1, 1, {})))
    with pytest.raises(DownlinkError):
        decode_desired(encode_model_release(release())[:-5])


def test_applied_report_round_trips_and_refuses_garbage() -> None:
    report = AppliedReport(
        5,
        Outcome(42, OutcomeState.APPLIED, running="42"),
        {SOC_DROP_MODEL: Outcome(7, OutcomeState.ROLLED_BACK, "the new model failed to load", "ab" * 32)},
    )
    assert decode_applied(encode_applied(report)) == report
    for bad in (
        b"{",
        b"[]",
        b'{"v":2,"ts_ms":1,"config":null,"models":{}}',
        b'{"v":1,"ts_ms":1,"config":{},"models":{}}',
    ):
        with pytest.raises(DownlinkError):
            decode_applied(bad)
