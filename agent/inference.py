"""On-device inference: the sample stream → features → each configured ONNX model, every `interval_s`.

    samples (a tap of the committer) ─► FeatureWindow ─► every interval_s of source time:
        features_at(t) ─► soc_drop, large_drop, fault_risk (models.runtime, on the loop) ─► Prediction

Ticks fall on whole multiples of `interval_s` of source time (as training's windows do, `models.dataset`) and
fire when a sample at or after the tick arrives; a gap in the stream (a replay jump, a parked bus coming back)
moves to the latest tick instead of computing the missed ones.

"Now" is the stream's own (`agent.clock.StreamClock`): a sample stamped far from it (beyond `MAX_JUMP_S`, e.g.
a year ahead) is left out and counted (`stats.time_outliers`) — it moves neither the ticks nor the feature
window — unless the stamps stay there (`STEP_CONFIRM_SAMPLES` consecutive ones over `STEP_CONFIRM_S`): then
it is a step. A step forward is a gap (above); a step back (a clock stepped back by NTP) re-bases the window
onto the new stamps (`FeatureWindow.shift`) and the ticks restart on them. The clock gate of `agent.app`
keeps implausible stamps out before they get here; this is the stage's own guard.

Models are loaded with `models.runtime.load_model`, which checks the model's feature names and version
against `models.features`. A model that does not match is refused with one log line; the previous one runs on.
Model files are polled (mtime and size, on the monotonic clock) every `reload_check_s`; a changed file is
loaded again, the same way. A model run that fails is counted and logged once per loaded model.

A model predicts only in the scope it was trained for (its card): the SOC-drop models while the bus has moved
in the last 15 minutes, the fault-risk model while no BMS fault or derate is active; outside, nothing is
emitted (counted in `stats.out_of_scope`), and alert rules on a prediction clear when it goes stale.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.clock import StreamClock
from agent.records import Alert, Prediction, Sample
from agent.settings import InferenceSettings
from models.features import FeatureWindow, FloatArray, feature_index
from models.runtime import LoadedModel, ModelError, load_model
from protocols.predictions import (
    FAULT_RISK_MODEL,
    LARGE_DROP_MODEL,
    P_FAULT,
    P_LARGE_DROP,
    SOC_DROP_KWH,
    SOC_DROP_MODEL,
    SOC_DROP_PP,
)

log = logging.getLogger(__name__)

CONSUME_BATCH: Final = 5_000  # samples added between two yields to the event loop

_MOVING = feature_index("moving_share_15min")
_SOC = feature_index("soc_pct")
_SOH = feature_index("soh_pct")
_DERATE = feature_index("derate_active")
_FAULT = feature_index("bms_fault_active")

OnPrediction = Callable[[Prediction], None]
OnModelLoaded = Callable[[str, Mapping[str, float]], None]


def _moving(x: FloatArray) -> bool:
    return bool(x[_MOVING] > 0.0)  # NaN compares False: no speed seen, no forecast


def _no_fault(x: FloatArray) -> bool:
    return not (x[_DERATE] > 0.5 or x[_FAULT] > 0.5)


def _always(x: FloatArray) -> bool:
    return True


SCOPES: Final[Mapping[str, Callable[[FloatArray], bool]]] = {
    SOC_DROP_MODEL: _moving,
    LARGE_DROP_MODEL: _moving,
    FAULT_RISK_MODEL: _no_fault,
}


def model_outputs(
    model: LoadedModel, value: float, x: FloatArray, pack_nominal_kwh: float
) -> list[tuple[str, float]]:
    """A model's raw output → the named outputs that travel (pure)."""
    if model.name == SOC_DROP_MODEL:
        soh = float(x[_SOH]) if not math.isnan(x[_SOH]) else 100.0
        return [(SOC_DROP_PP, value), (SOC_DROP_KWH, value * pack_nominal_kwh * soh / 100.0 / 100.0)]
    if model.name == LARGE_DROP_MODEL:
        return [(P_LARGE_DROP, value)]
    if model.name == FAULT_RISK_MODEL:
        return [(P_FAULT, value)]
    suffix = f"_{model.output_unit}" if model.kind == "regression" and model.output_unit else ""
    return [((f"p_{model.name}" if model.kind == "probability" else model.name) + suffix, value)]


@dataclass(frozen=True, slots=True)
class _Signature:
    mtime_ns: int
    size: int


_MISSING: Final = _Signature(-1, -1)


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _Signature(st.st_mtime_ns, st.st_size)


@dataclass
class _Slot:
    """One configured model file: what runs now and what the file looked like when last tried."""

    path: Path
    model: LoadedModel | None = None
    tried: _Signature | None = None
    run_failed_logged: bool = False


@dataclass
class InferenceStats:
    samples: int = 0
    ticks: int = 0
    predictions: int = 0
    out_of_scope: int = 0
    run_failures: int = 0
    loads: int = 0
    refused: int = 0
    time_outliers: int = 0  # samples stamped far from the stream's now, left out
    by_model: dict[str, int] = field(default_factory=dict)


class InferenceStage:
    """Samples in, `Prediction`s out (to `derived`, and to `on_prediction`, e.g. the alert stage's inbox)."""

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        on_prediction: OnPrediction | None = None,
        on_model_loaded: OnModelLoaded | None = None,
    ) -> None:
        self.settings = settings
        self.window = FeatureWindow(settings.utc_offset_h)
        self.clock = StreamClock()
        self.slots = [_Slot(Path(path)) for path in settings.models]
        self.stats = InferenceStats()
        self._on_prediction = on_prediction
        self._on_model_loaded = on_model_loaded
        self._next_tick: float | None = None
        self._next_check = -math.inf
        self._stop = asyncio.Event()

    @property
    def models(self) -> dict[str, LoadedModel]:
        return {slot.model.name: slot.model for slot in self.slots if slot.model is not None}

    def stop(self) -> None:
        self._stop.set()

    # --- models ------------------------------------------------------------------------------------------

    def check_models(self) -> list[LoadedModel]:
        """Load every model file that is new or changed since it was last tried; returns those loaded
        (blocking: a worker thread)."""
        loaded: list[LoadedModel] = []
        for slot in self.slots:
            signature = _signature(slot.path) or _MISSING
            if signature == slot.tried:
                continue
            slot.tried = signature
            if signature == _MISSING:
                self._refuse(slot, f"{slot.path}: model file not found")
                continue
            try:
                model = load_model(slot.path)
            except ModelError as err:
                self._refuse(slot, str(err))
                continue
            previous, slot.model, slot.run_failed_logged = slot.model, model, False
            self.stats.loads += 1
            log.info(
                "model %s version %s %s from %s",
                model.name,
                model.version,
                "reloaded" if previous is not None else "loaded",
                slot.path,
            )
            loaded.append(model)
        return loaded

    def swap_model(self, model: LoadedModel) -> LoadedModel | None:
        """Run `model` (loaded and checked by the caller, e.g. a model update over the downlink) in place
        of the one of its name, from its own file on; returns the model it replaces."""
        slot = next((s for s in self.slots if s.model is not None and s.model.name == model.name), None)
        slot = slot or next((s for s in self.slots if s.model is None and s.path.stem == model.name), None)
        if slot is None:
            slot = _Slot(model.path)
            self.slots.append(slot)
        previous, slot.model, slot.run_failed_logged = slot.model, model, False
        slot.path, slot.tried = model.path, _signature(model.path)
        self.stats.loads += 1
        return previous

    def _refuse(self, slot: _Slot, reason: str) -> None:
        self.stats.refused += 1
        kept = (
            f"; keeping {slot.model.name} version {slot.model.version}"
            if slot.model is not None
            else "; no model from this file until it is fixed"
        )
        log.error("model refused: %s%s", reason, kept)

    # --- the pure step -----------------------------------------------------------------------------------

    def add(self, sample: Sample) -> float | None:
        """Feed one sample; returns the tick time when a prediction is due."""
        self.stats.samples += 1
        seen = self.clock.judge(sample.ts)
        if not seen.plausible:
            self.stats.time_outliers += 1
            return None
        if seen.stepped_s is not None and seen.stepped_s < 0:
            self.window.shift(seen.stepped_s)
            self._next_tick = None
        self.window.add(sample.ts, sample.signal, sample.value)
        interval = self.settings.interval_s
        if self._next_tick is None:
            self._next_tick = math.ceil(sample.ts / interval) * interval
        if sample.ts < self._next_tick:
            return None
        tick = math.floor(sample.ts / interval) * interval  # the latest due tick; missed ones are skipped
        self._next_tick = tick + interval
        return tick

    def predict_at(self, t: float) -> list[Prediction]:
        """Features at `t` and every model in scope (blocking, well under a millisecond: `run` calls it on the
        loop)."""
        self.stats.ticks += 1
        x = self.window.features_at(t)
        if math.isnan(x[_SOC]):
            return []  # nothing of the battery seen yet
        predictions: list[Prediction] = []
        for slot in self.slots:
            model = slot.model
            if model is None:
                continue
            if not SCOPES.get(model.name, _always)(x):
                self.stats.out_of_scope += 1
                continue
            try:
                value = model.predict(x)
            except Exception as err:  # whatever a model's run raises: one model, not the agent
                self.stats.run_failures += 1
                if not slot.run_failed_logged:
                    slot.run_failed_logged = True
                    log.error("model %s failed to run (counted, logged once): %s", model.name, err)
                continue
            if not math.isfinite(value):
                self.stats.run_failures += 1
                continue
            for output, number in model_outputs(model, value, x, self.settings.pack_nominal_kwh):
                predictions.append(Prediction(t, model.name, model.version, output, number))
            self.stats.by_model[model.name] = self.stats.by_model.get(model.name, 0) + 1
        self.stats.predictions += len(predictions)
        return predictions

    # --- the async shell ---------------------------------------------------------------------------------

    async def run(self, inbox: asyncio.Queue[Sample], derived: asyncio.Queue[Prediction | Alert]) -> None:
        """Until `stop()`: consume the sample tap, predict on ticks, reload changed models."""
        await self._maybe_check_models()
        while True:
            if self._stop.is_set():
                return
            await self._maybe_check_models()
            try:
                first = await asyncio.wait_for(inbox.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < CONSUME_BATCH and not inbox.empty():
                batch.append(inbox.get_nowait())
            for sample in batch:
                tick = self.add(sample)
                if tick is not None:
                    # On the loop, not in a worker thread: features and model runs take well under a
                    # millisecond once a minute, while a worker thread waits for the GIL behind the decoders
                    # (up to the 5 ms switch interval, again and again: p99 of several ms at a moment's load).
                    for prediction in self.predict_at(tick):
                        await derived.put(prediction)
                        if self._on_prediction is not None:
                            self._on_prediction(prediction)

    async def _maybe_check_models(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.settings.reload_check_s
            for model in await asyncio.to_thread(self.check_models):
                if self._on_model_loaded is not None:
                    self._on_model_loaded(model.name, dict(model.thresholds))
