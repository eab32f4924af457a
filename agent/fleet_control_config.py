"""Fleet control, the desired configuration: what the cloud may set on a bus, validated with the agent's own
settings models over the installed configuration file (pure; `agent.fleet_control` runs it).

A desired config (`protocols.fleet_control.DesiredConfig`) is the whole remote state of a bus, not a delta:
revision N's settings over the installed file replace revision N-1's. Its sections
(`DESIRED_SECTIONS`):

    uplink    batch_max_records, batch_max_age_s             (`UplinkSettings`)
    alerts    every threshold, hysteresis and hold time of `AlertSettings` (not the LEDs, not `enabled`)
    sampling  {canonical signal name: {min_interval_s, max_interval_s, deadband}}   (any of the three; the
              others keep the catalog's). CAN signals of this bus's catalogs only (not the GPS's).

Anything else, or a value the settings models refuse, refuses the whole message with one sentence
(`ConfigRefusedError`); nothing of it runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.settings import AgentSettings, AlertSettings, UplinkSettings
from protocols.catalog import SamplingPolicy
from protocols.fleet_control import DESIRED_SECTIONS, SettingValue

REMOTE_UPLINK_KEYS: Final = frozenset({"batch_max_records", "batch_max_age_s"})
LOCAL_ALERT_KEYS: Final = frozenset(
    {"enabled", "led_root", "led_info", "led_warning", "led_critical", "blink_on_ms", "blink_off_ms"}
    | {"prediction_max_age_s"}  # how long a prediction holds an alert: tied to the models' interval
)
REMOTE_ALERT_KEYS: Final = frozenset(AlertSettings.model_fields) - LOCAL_ALERT_KEYS
MAX_INTERVAL_S: Final = 86_400.0
_M = TypeVar("_M", bound=BaseModel)


class ConfigRefusedError(Exception):
    """A desired config that does not validate; the message is one sentence for the fleet page."""


class _PolicyOverride(BaseModel):
    """One signal's sampling policy from the cloud: the catalog's, with these fields replaced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_interval_s: float = Field(ge=0, le=MAX_INTERVAL_S)
    max_interval_s: float = Field(gt=0, le=MAX_INTERVAL_S)
    deadband: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> _PolicyOverride:
        if self.max_interval_s < self.min_interval_s:
            raise ValueError("max_interval_s must not be below min_interval_s")
        return self


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """A validated desired config: the sections as they run (installed file ⊕ desired settings)."""

    revision: int  # 0: the installed file alone
    settings: Mapping[str, Mapping[str, SettingValue]]  # as received: persisted, validated again at start
    uplink: UplinkSettings
    alerts: AlertSettings
    sampling: Mapping[str, SamplingPolicy] = field(default_factory=dict)  # signals the catalog's differ from


def installed_config(installed: AgentSettings) -> RemoteConfig:
    return RemoteConfig(0, {}, installed.uplink, installed.alerts)


def validate_desired(
    revision: int,
    settings: Mapping[str, Mapping[str, SettingValue]],
    installed: AgentSettings,
    policies: Mapping[str, SamplingPolicy],
) -> RemoteConfig:
    """`settings` over `installed` → the config to run; `ConfigRefusedError` for the first thing that does not
    validate. `policies` are the catalog policies of the signals this bus decodes (CAN, by name)."""
    unknown = sorted(set(settings) - DESIRED_SECTIONS)
    if unknown:
        raise ConfigRefusedError(f"settings section {unknown[0]!r} cannot be set remotely")
    uplink_values = dict(settings.get("uplink", {}))
    alert_values = dict(settings.get("alerts", {}))
    _only(uplink_values, REMOTE_UPLINK_KEYS, "uplink")
    _only(alert_values, REMOTE_ALERT_KEYS, "alerts")
    uplink = _over(UplinkSettings, installed.uplink, uplink_values, "uplink")
    alerts = _over(AlertSettings, installed.alerts, alert_values, "alerts")
    sampling = {
        signal: _policy(signal, value, policies)
        for signal, value in sorted(settings.get("sampling", {}).items())
    }
    return RemoteConfig(revision, settings, uplink, alerts, sampling)


def _only(values: Mapping[str, object], allowed: frozenset[str], section: str) -> None:
    for key in sorted(values):
        if key not in allowed:
            where = "is not a setting" if key not in _fields(section) else "cannot be set remotely"
            raise ConfigRefusedError(f"{section}.{key} {where}")


def _fields(section: str) -> frozenset[str]:
    model = UplinkSettings if section == "uplink" else AlertSettings
    return frozenset(model.model_fields)


def _over(model: type[_M], base: _M, values: Mapping[str, object], section: str) -> _M:
    if not values:
        return base
    try:
        # strict: "30" is not 30 here; the installed values are already of their types
        return model.model_validate({**base.model_dump(), **values}, strict=True)
    except ValidationError as err:
        raise ConfigRefusedError(_sentence(section, err)) from None


def _policy(signal: str, value: object, policies: Mapping[str, SamplingPolicy]) -> SamplingPolicy:
    base = policies.get(signal)
    if base is None:
        raise ConfigRefusedError(f"sampling: {signal!r} is not a CAN signal of this bus's catalogs")
    if not isinstance(value, Mapping):
        raise ConfigRefusedError(
            f"sampling.{signal} must be a map of min_interval_s, max_interval_s and deadband"
        )
    current = {
        "min_interval_s": base.min_interval_s,
        "max_interval_s": base.max_interval_s,
        "deadband": base.deadband,
    }
    numbers = {k: float(v) if type(v) is int else v for k, v in value.items()}  # 1 is 1.0 here
    try:
        checked = _PolicyOverride.model_validate({**current, **numbers})
    except ValidationError as err:
        raise ConfigRefusedError(_sentence(f"sampling.{signal}", err)) from None
    if not all(math.isfinite(v) for v in (checked.min_interval_s, checked.max_interval_s)):
        raise ConfigRefusedError(f"sampling.{signal}: intervals must be finite")
    return SamplingPolicy(checked.min_interval_s, checked.max_interval_s, checked.deadband)


def _sentence(section: str, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join([section, *(str(part) for part in first["loc"])])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{where} is not a setting"
    return f"{where}: {message}"


def sampling_changes(
    before: Mapping[str, SamplingPolicy],
    after: Mapping[str, SamplingPolicy],
    policies: Mapping[str, SamplingPolicy],
) -> dict[str, SamplingPolicy]:
    """The policies to set when `after` replaces `before`: new overrides, and the catalog's where one ends."""
    return {
        signal: after.get(signal, policies[signal])
        for signal in sorted(set(before) | set(after))
        if before.get(signal) != after.get(signal) and signal in policies
    }
