"""Inference latency of the shipped models as the agent runs them: onnxruntime, one thread, one row at a time.

    python bench/inference_latency.py [--n 5000]

Prints model load time and p50 / p99 per prediction (and per feature computation on a FeatureWindow holding
15 minutes of a bus's signals at 1 Hz). No assertions: the numbers go into the model cards and the report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from models.features import INPUT_SIGNALS, FeatureWindow
from models.runtime import load_model

MODELS = Path(__file__).parents[1] / "models"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    window = FeatureWindow(utc_offset_h=3.0)
    t0 = 1_709_517_600.0
    for k in range(900):
        for j, name in enumerate(INPUT_SIGNALS):
            window.add(t0 + k, name, float(rng.normal(50.0 + j, 5.0)))
    feature_s = []
    for k in range(200):
        a = time.perf_counter()
        x = window.features_at(t0 + 899 + k * 0.01)
        feature_s.append(time.perf_counter() - a)
    f = np.array(feature_s) * 1e3
    print(f"features_at: p50 {np.percentile(f, 50):.3f} ms, p99 {np.percentile(f, 99):.3f} ms")
    for path in sorted(MODELS.glob("*.onnx")):
        a = time.perf_counter()
        model = load_model(path)
        load_ms = (time.perf_counter() - a) * 1e3
        for _ in range(100):
            model.predict(x)
        lat = []
        for _ in range(args.n):
            a = time.perf_counter()
            model.predict(x)
            lat.append(time.perf_counter() - a)
        ms = np.array(lat) * 1e3
        print(
            f"{path.name:18s} load {load_ms:6.1f} ms | predict p50 {np.percentile(ms, 50):.3f} ms, "
            f"p99 {np.percentile(ms, 99):.3f} ms ({args.n} calls)"
        )


if __name__ == "__main__":
    main()
