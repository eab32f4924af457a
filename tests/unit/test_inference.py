"""agent.inference with the real shipped ONNX models: predictions every interval of source time, named and
versioned; a mismatching model refused while the previous one runs on; hot reload of a changed file."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import alerts
from agent.inference import P_FAULT, P_LARGE_DROP, SOC_DROP_KWH, SOC_DROP_PP, InferenceStage
from agent.records import Alert, Prediction, Sample
from agent.settings import SHIPPED_MODELS, InferenceSettings
from models import features as f
from models.runtime import load_model
from protocols.catalog import Priority

MODELS = Path(__file__).resolve().parents[2] / "models"
T0 = 1_699_999_990.0  # 10 s past a whole minute: the first tick is at T0 + 50
INTERVAL_S = 60.0


def _bus(
    minutes: float, *, speed_kmh: float = 30.0, fault: bool = False, start: float = T0
) -> Iterator[Sample]:
    """A 12 m bus at 1 Hz: driving at `speed_kmh` (or parked), SOC falling with the energy drawn."""
    soc, odo = 80.0, 12_345.0
    for i in range(int(minutes * 60)):
        t = start + i
        moving = speed_kmh > 0 and (i // 90) % 3 != 2  # stops at bus stops
        v = speed_kmh if moving else 0.0
        amps = 150.0 if moving else 8.0
        odo += v / 3600.0
        soc -= amps * 640.0 / 3600.0 / 1000.0 / 300.0 * 100.0
        values = {
            f.SPEED: v,
            f.ODOMETER: odo,
            f.LATITUDE: -1.28 + odo * 1e-4,
            f.LONGITUDE: 36.82,
            f.AMBIENT: 24.0,
            f.HVAC_POWER: 4.0,
            f.SOC: soc,
            f.SOH: 92.0,
            f.PACK_VOLTAGE: 640.0,
            f.PACK_CURRENT: amps,
            f.CELL_TEMP_MAX: 31.0 + i / 600.0,
            f.CELL_TEMP_MIN: 28.0,
            f.CELL_V_MAX: 3.34,
            f.CELL_V_MIN: 3.32,
            f.INSULATION: 4500.0,
            f.DERATED: 0.0,
            f.DISCHARGE_LIMIT: 300.0,
            **{flag: float(fault and flag.endswith("InsulationLow")) for flag in f.FAULT_FLAGS},
        }
        for name, value in values.items():
            yield Sample(t, name, value, Priority.NORMAL)


def _settings(models: list[Path] | None = None, **overrides: object) -> InferenceSettings:
    return InferenceSettings(
        models=models if models is not None else list(SHIPPED_MODELS),
        interval_s=INTERVAL_S,
        utc_offset_h=3.0,
        **overrides,  # type: ignore[arg-type]
    )


def _run_pure(stage: InferenceStage, samples: Iterator[Sample]) -> list[Prediction]:
    stage.check_models()
    predictions: list[Prediction] = []
    for sample in samples:
        tick = stage.add(sample)
        if tick is not None:
            predictions += stage.predict_at(tick)
    return predictions


def _rewrite(source: Path, target: Path, **props: str) -> Path:
    """A copy of a shipped model with some ONNX metadata_props changed."""
    onnx = pytest.importorskip("onnx")  # the train extra: the agent reads ONNX files itself
    model = onnx.load(str(source))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(props)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    tmp = target.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(target)  # as a deployment would: atomically
    return target


def _touch_later(path: Path) -> None:
    """Move the mtime on, so a rewrite within the file system's timestamp granularity still counts."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# --- predictions ------------------------------------------------------------------------------------------


def test_a_driving_bus_gets_every_prediction_every_interval() -> None:
    stage = InferenceStage(_settings())
    predictions = _run_pure(stage, _bus(20))
    ticks = sorted({p.ts for p in predictions})
    assert ticks[0] == T0 + 50 and all(t % INTERVAL_S == 0 for t in ticks)
    assert all(b - a == INTERVAL_S for a, b in itertools.pairwise(ticks))
    assert len(ticks) == 20  # T0+50 … T0+1190: the stream ends at T0+1199
    for t in ticks:
        at = {(p.model, p.model_version, p.output) for p in predictions if p.ts == t}
        assert at == {
            ("soc_drop", "4", SOC_DROP_PP),
            ("soc_drop", "4", SOC_DROP_KWH),
            ("large_drop", "4", P_LARGE_DROP),
            ("fault_risk", "4", P_FAULT),
        }
    by_output: dict[str, list[float]] = {}
    for p in predictions:
        by_output.setdefault(p.output, []).append(p.value)
    assert all(0.0 <= v <= 1.0 for v in by_output[P_LARGE_DROP] + by_output[P_FAULT])
    assert all(math.isfinite(v) for v in by_output[SOC_DROP_PP])
    # kWh = pp × nominal 300 kWh × SOH 92 % / 100 / 100
    for pp, kwh in zip(by_output[SOC_DROP_PP], by_output[SOC_DROP_KWH], strict=True):
        assert kwh == pytest.approx(pp * 300.0 * 0.92 / 100.0)
    assert stage.stats.run_failures == 0 and stage.stats.predictions == len(predictions)


def test_output_names_are_the_ones_the_alert_rules_read() -> None:
    assert SOC_DROP_PP == alerts.SOC_DROP_OUTPUT
    assert P_LARGE_DROP == alerts.LARGE_DROP_OUTPUT
    assert P_FAULT == alerts.FAULT_RISK_OUTPUT


def test_models_predict_only_in_the_scope_they_were_trained_for() -> None:
    # GIVEN a parked bus: the SOC-drop models are for buses that moved in the last 15 minutes
    parked = _run_pure(InferenceStage(_settings()), _bus(5, speed_kmh=0.0))
    assert parked and {p.model for p in parked} == {"fault_risk"}
    # GIVEN a BMS fault already set: the fault-risk model is for windows with none active
    faulted = InferenceStage(_settings())
    assert {p.model for p in _run_pure(faulted, _bus(5, fault=True))} == {"soc_drop", "large_drop"}
    assert faulted.stats.out_of_scope > 0


def test_a_gap_in_source_time_moves_to_the_latest_tick() -> None:
    stage = InferenceStage(_settings([MODELS / "fault_risk.onnx"]))
    first = _run_pure(stage, _bus(3))
    later = _run_pure(stage, _bus(2, start=T0 + 10 * 3600))
    assert [p.ts for p in first] == [T0 + 50, T0 + 110, T0 + 170]
    assert next(p.ts for p in later) == T0 + 10 * 3600 - 10, "one tick after the gap, not 600 missed ones"


async def test_the_stage_consumes_a_queue_and_emits_into_derived_and_to_the_alerts() -> None:
    seen: list[Prediction] = []
    loaded: dict[str, dict[str, float]] = {}
    stage = InferenceStage(
        _settings(),
        on_prediction=seen.append,
        on_model_loaded=lambda name, thresholds: loaded.__setitem__(name, dict(thresholds)),
    )
    inbox: asyncio.Queue[Sample] = asyncio.Queue()
    derived: asyncio.Queue[Prediction | Alert] = asyncio.Queue()
    for sample in _bus(4):
        inbox.put_nowait(sample)
    task = asyncio.create_task(stage.run(inbox, derived))
    await _until(lambda: derived.qsize() >= 4 * 4)  # ticks at T0+50, +110, +170, +230
    stage.stop()
    await asyncio.wait_for(task, 5)
    got = [derived.get_nowait() for _ in range(derived.qsize())]
    assert len(got) == 16 and got == seen
    shipped = json.loads(load_model(MODELS / "fault_risk.onnx").metadata["voltgate.thresholds"])
    assert loaded["fault_risk"]["alarm_probability"] == pytest.approx(shipped["alarm_probability"])
    assert set(loaded) == {"soc_drop", "large_drop", "fault_risk"}


# --- refusing and reloading models ------------------------------------------------------------------------


def test_a_mismatching_model_is_refused_and_the_previous_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "soc_drop.onnx"
    shutil.copy(MODELS / "soc_drop.onnx", path)
    stage = InferenceStage(_settings([path]))
    assert [m.name for m in stage.check_models()] == ["soc_drop"]
    original = stage.models["soc_drop"]

    # WHEN the file is replaced by a model trained on other features
    names = list(f.FEATURE_NAMES)
    names[3] = "moving_share_2min"
    _rewrite(MODELS / "soc_drop.onnx", path, **{"voltgate.feature_names": json.dumps(names)})
    _touch_later(path)
    with caplog.at_level(logging.INFO, logger="agent.inference"):
        assert stage.check_models() == []
        assert stage.check_models() == [], "the same bad file is not tried (nor logged) again"
    # THEN one clear line, and the previous model still predicts
    refused = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refused) == 1
    message = refused[0].getMessage()
    assert message.startswith("model refused: ") and "moving_share_2min" in message
    assert "keeping soc_drop version 4" in message and "\n" not in message
    assert stage.models["soc_drop"] is original
    assert {p.model for p in _run_pure(stage, _bus(3))} == {"soc_drop"}

    # WHEN a valid model replaces it: reloaded
    _rewrite(MODELS / "soc_drop.onnx", path, **{"voltgate.model_version": "5"})
    _touch_later(path)
    assert [m.version for m in stage.check_models()] == ["5"]
    assert stage.models["soc_drop"].version == "5"


def test_a_model_of_another_feature_version_is_refused_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _rewrite(
        MODELS / "large_drop.onnx", tmp_path / "large_drop.onnx", **{"voltgate.feature_version": "0"}
    )
    stage = InferenceStage(_settings([bad, MODELS / "fault_risk.onnx", tmp_path / "absent.onnx"]))
    with caplog.at_level(logging.ERROR, logger="agent.inference"):
        stage.check_models()
        stage.check_models()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "feature version '0'" in lines[0] and "no model from this file until it is fixed" in lines[0]
    assert "absent.onnx: model file not found" in lines[1]
    # the other model runs
    assert {p.model for p in _run_pure(stage, _bus(3))} == {"fault_risk"}


async def test_hot_reload_while_running(tmp_path: Path) -> None:
    path = tmp_path / "fault_risk.onnx"
    shutil.copy(MODELS / "fault_risk.onnx", path)
    stage = InferenceStage(_settings([path], reload_check_s=0.05))
    inbox: asyncio.Queue[Sample] = asyncio.Queue()
    derived: asyncio.Queue[Prediction | Alert] = asyncio.Queue()
    task = asyncio.create_task(stage.run(inbox, derived))
    await _until(lambda: "fault_risk" in stage.models)
    # a mismatching file: refused, the shipped version runs on
    _rewrite(MODELS / "fault_risk.onnx", path, **{"voltgate.feature_version": "9"})
    _touch_later(path)
    await _until(lambda: stage.stats.refused == 1)
    assert stage.models["fault_risk"].version == "4"
    # a valid one: reloaded
    _rewrite(MODELS / "fault_risk.onnx", path, **{"voltgate.model_version": "7"})
    _touch_later(path)
    await _until(lambda: stage.models["fault_risk"].version == "7")
    for sample in _bus(2):
        inbox.put_nowait(sample)
    await _until(lambda: derived.qsize() >= 2)
    stage.stop()
    await asyncio.wait_for(task, 5)
    prediction = derived.get_nowait()
    assert isinstance(prediction, Prediction) and prediction.model_version == "7"


class _BrokenEnsemble:
    """Stands in for a model whose run fails (an out-of-memory cannot be produced on purpose, and a model
    that passes load_model's checks computes)."""

    def predict_one(self, *args: object) -> float:
        raise MemoryError("simulated")


def test_a_failing_model_run_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    stage = InferenceStage(_settings([MODELS / "large_drop.onnx", MODELS / "fault_risk.onnx"]))
    stage.check_models()
    stage.models["large_drop"]._ensemble = _BrokenEnsemble()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="agent.inference"):
        predictions = _run_pure(stage, _bus(5))
    assert {p.model for p in predictions} == {"fault_risk"}, "the other model runs on"
    assert stage.stats.run_failures == 5
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "model large_drop failed to run (counted, logged once)"
    ]


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # the stage's counters and queues offer no event
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


# --- time: one outlier changes nothing, a stepped clock is followed ---------------------------------------


def test_a_year_ahead_sample_in_the_stream_changes_no_prediction() -> None:
    year_s = 365 * 86_400.0
    clean = _run_pure(InferenceStage(_settings([MODELS / "fault_risk.onnx"])), _bus(10))

    def with_outlier() -> Iterator[Sample]:
        for i, sample in enumerate(_bus(10)):
            if i == 3000:  # GIVEN one sample stamped a year ahead, in the middle of a normal stream
                yield Sample(sample.ts + year_s, f.SOC, 55.0, Priority.NORMAL)
            yield sample

    stage = InferenceStage(_settings([MODELS / "fault_risk.onnx"]))
    predictions = _run_pure(stage, with_outlier())
    # THEN predictions keep coming every minute, the same ones as without it
    assert [(p.ts, p.value) for p in predictions] == [(p.ts, p.value) for p in clean]
    assert len(predictions) == 10 and stage.stats.time_outliers == 1
    assert stage.window.out_of_order == 0


def test_a_clock_stepped_back_an_hour_keeps_predictions_coming() -> None:
    stage = InferenceStage(_settings([MODELS / "fault_risk.onnx"]))
    before = _run_pure(stage, _bus(10))
    # WHEN the stream's stamps step back by an hour (NTP) and stay there
    after = _run_pure(stage, _bus(10, start=T0 + 600 - 3600))
    ticks = [p.ts for p in after]
    # THEN after a few held-out seconds the window is re-based and predictions come every minute again
    assert len(before) == 10 and len(ticks) >= 9
    assert all(b - a == INTERVAL_S for a, b in itertools.pairwise(ticks))
    assert stage.clock.steps == 1 and stage.window.out_of_order == 0
