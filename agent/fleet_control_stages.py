"""Fleet control, applied: a validated desired config and a checked model, into the running stages, hot.

Part of the composition root (`agent.app` builds it from the stages it runs): nothing restarts, so no frame
is missed, the feature window and the alert states are kept, and the uplink keeps its connection.

    uplink    `Uplink.set_batching`: the next batch is cut with the new batch_max_records / batch_max_age_s
    sampling  `Decoder.set_policy` on every bus that decodes the signal: its next value is judged by it
    alerts    each rule's thresholds (`AlertEngine.set_levels`: a rule whose levels change starts its
              persistence runs again, its raised level is kept) and measures, the engine's hold time
    models    `InferenceStage.swap_model`: the next tick runs it; a fault-risk model's alarm threshold goes to
              its alert rule as on a reload
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.alert_rules import build_rules, fault_risk_levels
from agent.alerts import FAULT_RISK_THRESHOLD_KEY, AlertStage
from agent.decode import Decoder
from agent.fleet_control_config import RemoteConfig
from agent.inference import InferenceStage
from agent.settings import AlertSettings
from agent.uplink import Uplink
from models.runtime import LoadedModel
from protocols.catalog import SamplingPolicy
from protocols.predictions import FAULT_RISK_MODEL


@dataclass
class RunningStages:
    uplink: Uplink
    decoders: Mapping[str, Decoder]
    alerts: AlertStage | None
    inference: InferenceStage | None

    def apply_config(self, config: RemoteConfig, sampling: Mapping[str, SamplingPolicy]) -> None:
        """Run `config`; `sampling` holds the signal policies that change (overrides and reverts)."""
        self.uplink.set_batching(config.uplink)
        for signal, policy in sampling.items():
            for decoder in self.decoders.values():
                decoder.set_policy(signal, policy)
        if self.alerts is not None:
            apply_alert_settings(self.alerts, config.alerts, self._fault_thresholds())

    def _fault_thresholds(self) -> Mapping[str, float]:
        model = self.inference.models.get(FAULT_RISK_MODEL) if self.inference is not None else None
        return model.thresholds if model is not None else {}

    def swap_model(self, model: LoadedModel) -> bool:
        """Run `model` for its name; False when this agent runs no inference."""
        if self.inference is None:
            return False
        self.inference.swap_model(model)
        if self.alerts is not None:
            self.alerts.model_loaded(model.name, dict(model.thresholds))
        return True

    def running_model_file(self, name: str) -> Path | None:
        model = self.inference.models.get(name) if self.inference is not None else None
        return model.path if model is not None else None

    def report(self, payload: bytes) -> None:
        self.uplink.report_applied(payload)


def apply_alert_settings(
    stage: AlertStage, settings: AlertSettings, fault_thresholds: Mapping[str, float]
) -> None:
    """New thresholds for the running alert engine; rules whose levels do not change keep their runs."""
    engine = stage.engine
    stage.settings = settings
    engine.min_hold_s = settings.min_hold_s
    model_threshold = fault_thresholds.get(FAULT_RISK_THRESHOLD_KEY)
    for rule in build_rules(settings):
        running = engine.rules.get(rule.name)
        if running is None:
            continue
        levels = rule.levels
        if rule.name == "fault_risk" and settings.fault_risk_probability is None and model_threshold:
            levels = fault_risk_levels(model_threshold, settings.probability_hysteresis)
        running.measure = rule.measure
        if levels != running.levels:
            engine.set_levels(rule.name, levels)
