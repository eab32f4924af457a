"""ONNX export: a fitted tree model → one .onnx file carrying its contract in `metadata_props`.

Metadata keys (read back by models.runtime):
    voltgate.model            model name (soc_drop, large_drop, fault_risk)
    voltgate.model_version    version of this artifact
    voltgate.kind             regression | probability
    voltgate.output_unit      pp | 1
    voltgate.target           what the output means, in words
    voltgate.feature_names    JSON list, the input column order
    voltgate.feature_units    JSON object, name → unit
    voltgate.feature_version  models.features.FEATURE_VERSION
    voltgate.thresholds       JSON object (large-drop threshold in pp, alarm threshold, ...)
    voltgate.trained_on       data description and seed
Beside the model, `<name>.golden.json` holds a few input rows and the scikit-learn model's outputs on them, so
a test can prove the exported graph computes what the fitted model does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from models.features import FEATURE_NAMES, FEATURE_UNITS, FEATURE_VERSION, N_FEATURES, FloatArray
from protocols.predictions import FEATURE_VERSION_KEY, MODEL_NAME_KEY

INPUT_NAME = "features"


def export_model(
    model: Any,
    path: Path,
    *,
    name: str,
    version: str,
    kind: str,
    target: str,
    thresholds: dict[str, float],
    trained_on: str,
    golden_rows: FloatArray,
) -> float:
    """Write `path` (.onnx) and its golden file; return the largest |onnx - sklearn| on the golden rows."""
    _thresholds_exact_in_float32(model)
    options = {id(model): {"zipmap": False}} if kind == "probability" else None
    onx = convert_sklearn(
        model,
        name=name,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    meta = {
        MODEL_NAME_KEY: name,
        "voltgate.model_version": version,
        "voltgate.kind": kind,
        "voltgate.output_unit": "pp" if kind == "regression" else "1",
        "voltgate.target": target,
        "voltgate.feature_names": json.dumps(list(FEATURE_NAMES)),
        "voltgate.feature_units": json.dumps(FEATURE_UNITS),
        FEATURE_VERSION_KEY: FEATURE_VERSION,
        "voltgate.thresholds": json.dumps(thresholds),
        "voltgate.trained_on": trained_on,
    }
    onnx.helper.set_model_props(onx, meta)
    onx.producer_name = "voltgate-train"
    onx.doc_string = target
    path.write_bytes(onx.SerializeToString())
    expected = sklearn_output(model, kind, golden_rows)
    golden = {
        "model": name,
        "kind": kind,
        "feature_names": list(FEATURE_NAMES),
        "inputs": [[None if np.isnan(v) else float(v) for v in row] for row in golden_rows],
        "outputs": [float(v) for v in expected],
    }
    path.with_suffix(".golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    from models.runtime import load_model  # the agent's loader reads back what was written

    loaded = load_model(path)
    got = loaded.predict_batch(golden_rows)
    return float(np.max(np.abs(got - expected))) if len(expected) else 0.0


def _thresholds_exact_in_float32(model: Any) -> None:
    """Round each split threshold of a HistGradientBoosting model down to a float32 value, in place.

    The ONNX graph compares float32 inputs with float32 thresholds; rounded to nearest, a threshold can land
    above scikit-learn's float64 one, and an input equal to it then takes the other branch (a regression
    output moves by a tenth of a pp). For a float32 input x, `x <= t` and `x <= (t rounded down to float32)`
    agree, so after this the model gives the same outputs on float32 inputs and the graph computes exactly
    what it does."""
    for iteration in getattr(model, "_predictors", []):
        for predictor in iteration:
            thr = predictor.nodes["num_threshold"]
            t32 = thr.astype(np.float32)
            above = t32.astype(np.float64) > thr
            t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
            predictor.nodes["num_threshold"] = t32.astype(np.float64)


def sklearn_output(model: Any, kind: str, rows: FloatArray) -> FloatArray:
    # the ONNX graph computes in float32: feed sklearn the same rounded inputs
    x32 = rows.astype(np.float32).astype(np.float64)
    if kind == "probability":
        return np.asarray(model.predict_proba(x32)[:, 1], dtype=np.float64)
    return np.asarray(model.predict(x32), dtype=np.float64)


def golden_rows(candidates: FloatArray, n: int, seed: int) -> FloatArray:
    """A few rows to pin the export: some complete, some with missing features."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    rows = candidates[np.sort(idx)].copy()
    if len(rows) > 2:
        rows[-1, rng.choice(N_FEATURES, size=N_FEATURES // 2, replace=False)] = np.nan
    return rows
