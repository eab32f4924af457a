"""The agent's model loader: an ONNX file → a checked predictor.

`load_model` refuses a model whose metadata does not match this code's features (names, order, version) with
a `ModelMismatchError` that says what differs, so the agent can keep running the previous model; a file that
is not ONNX, or whose graph needs more than `models.tree_ensemble` implements (another operator, attribute or
transform), with a `ModelError` that names it. Needs only numpy: the file is read by `models.onnx_reader` and
computed by `models.tree_ensemble` as onnxruntime computes it (tests/unit/test_tree_ensemble.py compares the
two); onnxruntime, about 33 MB of the agent's peak RSS with the shipped models (bench/agent_footprint.py),
stays off the gateway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES, FloatArray
from models.onnx_reader import OnnxFormatError, read_model
from models.tree_ensemble import CLASSIFIER, TreeEnsemble, UnsupportedModelError, compile_model
from protocols.predictions import FEATURE_VERSION_KEY, MODEL_NAME_KEY


class ModelError(Exception):
    """A model file that cannot be used."""


class ModelMismatchError(ModelError):
    """The model was trained on other features than this code computes."""


@dataclass
class LoadedModel:
    path: Path
    name: str
    version: str
    kind: str  # "regression" (output in `output_unit`) or "probability"
    output_unit: str
    target: str
    thresholds: dict[str, float]
    metadata: dict[str, str]
    _ensemble: TreeEnsemble = field(repr=False)

    def predict(self, features: FloatArray) -> float:
        """One prediction from one feature vector (FEATURE_NAMES order, NaN for missing)."""
        return self._ensemble.predict_one(features)

    def predict_batch(self, rows: FloatArray) -> FloatArray:
        """One prediction per row."""
        return self._ensemble.predict_rows(np.asarray(rows).reshape(-1, N_FEATURES))


def load_model(
    path: Path,
    feature_names: tuple[str, ...] = FEATURE_NAMES,
    feature_version: str = FEATURE_VERSION,
) -> LoadedModel:
    try:
        onnx = read_model(path.read_bytes())
    except (OSError, OnnxFormatError) as err:
        raise ModelError(f"{path}: not a loadable ONNX model ({err})") from err
    meta = onnx.metadata
    try:
        names = tuple(json.loads(meta["voltgate.feature_names"]))
        version = meta[FEATURE_VERSION_KEY]
        kind = meta["voltgate.kind"]
    except (KeyError, ValueError, TypeError) as err:
        raise ModelMismatchError(
            f"{path}: no voltgate feature metadata ({err}); not a voltgate model"
        ) from err
    if version != feature_version:
        raise ModelMismatchError(
            f"{path}: model was trained on feature version {version!r}, "
            f"this code computes {feature_version!r}"
        )
    if names != tuple(feature_names):
        missing = [n for n in feature_names if n not in names]
        extra = [n for n in names if n not in feature_names]
        what = f"missing {missing}, unknown {extra}" if missing or extra else "same names in another order"
        raise ModelMismatchError(f"{path}: model features differ from this code's: {what}")
    inputs = onnx.graph.inputs
    if (
        len(inputs) != 1
        or inputs[0].name != "features"
        or not inputs[0].shape
        or inputs[0].shape[-1] != N_FEATURES
    ):
        raise ModelMismatchError(f"{path}: expects input {[(i.name, i.shape) for i in inputs]}")
    try:
        ensemble = compile_model(onnx, N_FEATURES)
    except UnsupportedModelError as err:
        raise ModelError(f"{path}: a graph this agent cannot compute: {err}") from err
    if (ensemble.op_type == CLASSIFIER) != (kind == "probability"):
        raise ModelError(f"{path}: a model of kind {kind!r} whose graph is a {ensemble.op_type}")
    try:
        thresholds = {k: float(v) for k, v in json.loads(meta.get("voltgate.thresholds", "{}")).items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise ModelError(f"{path}: its thresholds are not a JSON object of numbers ({err})") from err
    return LoadedModel(
        path=path,
        name=meta.get(MODEL_NAME_KEY, path.stem),
        version=meta.get("voltgate.model_version", ""),
        kind=kind,
        output_unit=meta.get("voltgate.output_unit", ""),
        target=meta.get("voltgate.target", ""),
        thresholds=thresholds,
        metadata=meta,
        _ensemble=ensemble,
    )
