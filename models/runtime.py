"""The agent's model loader: an ONNX file → a checked, single-threaded predictor.

`load_model` refuses a model whose metadata does not match this code's features (names, order, version) with
a `ModelMismatchError` that says what differs, so the agent can keep running the previous model. Needs only
numpy and onnxruntime (the `edge` extra); onnxruntime (~20 MB resident) is imported by the first `load_model`,
so an agent with no models configured never loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES, FloatArray
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
    _session: Any = field(repr=False)
    _output: str = field(repr=False)
    _column: int = field(repr=False)

    def predict(self, features: FloatArray) -> float:
        """One prediction from one feature vector (FEATURE_NAMES order, NaN for missing)."""
        x = np.asarray(features, dtype=np.float32).reshape(1, N_FEATURES)
        out = self._session.run([self._output], {"features": x})[0]
        return float(np.asarray(out).reshape(1, -1)[0, self._column])

    def predict_batch(self, rows: FloatArray) -> FloatArray:
        x = np.asarray(rows, dtype=np.float32).reshape(-1, N_FEATURES)
        out = np.asarray(self._session.run([self._output], {"features": x})[0])
        return np.asarray(out.reshape(len(x), -1)[:, self._column], dtype=np.float64)


def load_model(
    path: Path,
    feature_names: tuple[str, ...] = FEATURE_NAMES,
    feature_version: str = FEATURE_VERSION,
) -> LoadedModel:
    import onnxruntime as ort  # here, not at the top: only an agent with models pays for it

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own unrelated exception types
        raise ModelError(f"{path}: not a loadable ONNX model ({err})") from err
    meta = dict(session.get_modelmeta().custom_metadata_map)
    try:
        names = tuple(json.loads(meta["voltgate.feature_names"]))
        version = meta[FEATURE_VERSION_KEY]
        kind = meta["voltgate.kind"]
    except (KeyError, ValueError) as err:
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
    outputs = [o.name for o in session.get_outputs()]
    if kind == "probability":
        output, column = ("probabilities", 1) if "probabilities" in outputs else (outputs[-1], 1)
    else:
        output, column = outputs[0], 0
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "features" or inputs[0].shape[-1] != N_FEATURES:
        raise ModelMismatchError(f"{path}: expects input {[(i.name, i.shape) for i in inputs]}")
    return LoadedModel(
        path=path,
        name=meta.get(MODEL_NAME_KEY, path.stem),
        version=meta.get("voltgate.model_version", ""),
        kind=kind,
        output_unit=meta.get("voltgate.output_unit", ""),
        target=meta.get("voltgate.target", ""),
        thresholds={k: float(v) for k, v in json.loads(meta.get("voltgate.thresholds", "{}")).items()},
        metadata=meta,
        _session=session,
        _output=output,
        _column=column,
    )
