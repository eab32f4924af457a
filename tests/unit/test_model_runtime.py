"""models.runtime on the shipped ONNX models: they load, match scikit-learn, refuse a mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES
from models.runtime import ModelError, ModelMismatchError, load_model

MODELS = Path(__file__).parents[2] / "models"
SHIPPED = ("soc_drop", "large_drop", "fault_risk")
# The graph compares in float32; a value on a split threshold can take the other branch than scikit-learn's
# float64 comparison, which moves a regression output by a few hundredths of a pp.
TOLERANCE = {"regression": 0.1, "probability": 1e-3}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_matches_its_golden_outputs(name: str) -> None:
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 2 * 1024 * 1024
    model = load_model(path)
    golden = json.loads(path.with_suffix(".golden.json").read_text())
    assert golden["feature_names"] == list(FEATURE_NAMES)
    x = np.array([[np.nan if v is None else v for v in row] for row in golden["inputs"]], dtype=np.float64)
    assert np.isnan(x).any()  # missing features are part of the contract
    got = model.predict_batch(x)
    np.testing.assert_allclose(got, golden["outputs"], atol=TOLERANCE[model.kind])
    assert model.predict(x[0]) == pytest.approx(got[0])
    assert model.name == name and model.metadata["voltgate.feature_version"] == FEATURE_VERSION
    if model.kind == "probability":
        assert np.all((got >= 0) & (got <= 1))


def test_thresholds_and_target_travel_in_the_metadata() -> None:
    large = load_model(MODELS / "large_drop.onnx")
    assert large.thresholds["large_drop_pp"] == 10.0
    fault = load_model(MODELS / "fault_risk.onnx")
    assert 0.0 < fault.thresholds["alarm_probability"] < 1.0
    assert "30 minutes" in fault.target
    units = json.loads(large.metadata["voltgate.feature_units"])
    assert units["pack_power_mean_15min_kw"] == "kW"


def _rewrite(tmp_path: Path, **props: str) -> Path:
    onnx = pytest.importorskip("onnx")  # the train extra: the agent's loader reads ONNX files itself
    model = onnx.load(str(MODELS / "soc_drop.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(props)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_a_model_with_other_features_is_refused_clearly(tmp_path: Path) -> None:
    names = list(FEATURE_NAMES)
    names[3] = "moving_share_2min"
    path = _rewrite(tmp_path, **{"voltgate.feature_names": json.dumps(names)})
    with pytest.raises(
        ModelMismatchError, match=r"missing \['moving_share_1min'\], unknown \['moving_share_2min'\]"
    ):
        load_model(path)


def test_a_model_with_reordered_features_is_refused(tmp_path: Path) -> None:
    names = list(FEATURE_NAMES)
    names[0], names[1] = names[1], names[0]
    path = _rewrite(tmp_path, **{"voltgate.feature_names": json.dumps(names)})
    with pytest.raises(ModelMismatchError, match="another order"):
        load_model(path)


def test_a_model_of_another_feature_version_is_refused(tmp_path: Path) -> None:
    path = _rewrite(tmp_path, **{"voltgate.feature_version": "0"})
    with pytest.raises(ModelMismatchError, match="feature version '0'"):
        load_model(path)


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        load_model(path)


def test_predict_takes_one_feature_vector() -> None:
    model = load_model(MODELS / "soc_drop.onnx")
    value = model.predict(np.full(N_FEATURES, np.nan))
    assert np.isfinite(value)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"voltgate.feature_names": "44"}, "no voltgate feature metadata"),
        (
            {"voltgate.thresholds": '{"alarm_probability": "high"}'},
            "thresholds are not a JSON object of numbers",
        ),
        ({"voltgate.thresholds": "[1, 2]"}, "thresholds are not a JSON object of numbers"),
    ],
)
def test_malformed_metadata_is_a_model_error(tmp_path: Path, props: dict[str, str], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_model(_rewrite(tmp_path, **props))
