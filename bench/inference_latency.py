"""Inference latency of the shipped models as the agent runs them (models.runtime: its own ONNX reader and
tree-ensemble evaluator, one row at a time), and the feature computation before each prediction, at the
agent's pace over a recorded hour.

    python bench/inference_latency.py [--n 5000] [--log LOG] [--interval 60] [--repeats 4]

Features: a recorded bus hour (default: one hour of `voltgate-sim record`, into a temporary directory) goes
through the agent's decoder and sampling policy into a `FeatureWindow`, sample by sample; every `--interval`
seconds of source time (one prediction a minute, the agent's default) the features are computed and timed.
Between two computations the process adds samples, as the agent does, so caches are as cold as there.
Printed: median and p99 over the ticks, of thread CPU time and of wall time, beside the same figures in the
same run for the plain formulation of the step-function primitives (numpy's functions, `np.unique` grids:
`PLAIN` below), and the ratio. On a shared machine wall p99 counts time the scheduler gave other processes.
Then where the agent computes them: on the event loop's thread (as it does) against a worker thread while
the loop's thread decodes frames (as it did): the worker waits for the GIL, up to the 5 ms switch interval.

Models: load time and p50 / p99 per prediction and for a batch of rows; where the interpreter has onnxruntime
(the train and dev extras; the gateway's `.[edge]` does not), the same for an onnxruntime session (one thread)
in the same run, and the ratio. No assertions: the numbers go into the model cards and the report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import itertools
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.decode import Decoder  # noqa: E402
from agent.logfiles import FrameLog  # noqa: E402
from agent.records import Frame  # noqa: E402
from models import features  # noqa: E402
from models.features import Series  # noqa: E402
from models.runtime import load_model  # noqa: E402
from protocols.catalog import DEFAULT_CATALOG, load_catalog  # noqa: E402

MODELS = REPO / "models"


def recorded_samples(log: Path) -> list[tuple[float, str, float]]:
    """The samples the agent keeps from `log`: its decoder and the shipped catalog's sampling policy."""
    decoder = Decoder(load_catalog(DEFAULT_CATALOG), bus="bench")
    out: list[tuple[float, str, float]] = []
    with FrameLog(log, "bench") as frames:
        for frame in frames:
            out.extend((s.ts, s.signal, s.value) for s in decoder.process(frame))
    return out


# The baseline: the plain formulation of the step-function primitives, with numpy's functions.
def _plain_held_at(s: Series, t: float) -> float:
    i = int(np.searchsorted(s.ts, t, side="right")) - 1
    return float(s.values[i]) if i >= 0 else math.nan


def _plain_held_many(s: Series, taus: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(s.ts, taus, side="right") - 1
    out = np.full(taus.shape, math.nan)
    ok = idx >= 0
    out[ok] = s.values[idx[ok]]
    return out


def _plain_grid(t0: float, t1: float, *series: Series) -> np.ndarray:
    parts = [np.array([t0])]
    for s in series:
        lo = int(np.searchsorted(s.ts, t0, side="right"))
        hi = int(np.searchsorted(s.ts, t1, side="right"))
        parts.append(s.ts[lo:hi])
    return np.unique(np.concatenate(parts))


def _plain_durations(grid: np.ndarray, t1: float) -> np.ndarray:
    return np.diff(np.append(grid, t1))


PLAIN = {"held_at": _plain_held_at, "_held_many": _plain_held_many, "_grid": _plain_grid}
PLAIN["_durations"] = _plain_durations


@contextlib.contextmanager
def plain_primitives() -> Iterator[None]:
    """`compute_features` on the plain primitives (it looks them up in its module at each call)."""
    kept = {name: getattr(features, name) for name in PLAIN}
    for name, function in PLAIN.items():
        setattr(features, name, function)
    try:
        yield
    finally:
        for name, function in kept.items():
            setattr(features, name, function)


def paced_feature_ms(
    samples: list[tuple[float, str, float]], interval_s: float
) -> tuple[list[float], list[float], int]:
    """Feature computation wall and thread-CPU times (ms) at each tick of `interval_s` source seconds."""
    window = features.FeatureWindow(utc_offset_h=3.0)
    wall: list[float] = []
    cpu: list[float] = []
    next_tick = None
    for ts, signal, value in samples:
        window.add(ts, signal, value)
        if next_tick is None:
            next_tick = (ts // interval_s + 1) * interval_s
        if ts >= next_tick:
            tick = (ts // interval_s) * interval_s
            next_tick = tick + interval_s
            a, c = time.perf_counter(), time.thread_time()
            window.features_at(tick)
            cpu.append((time.thread_time() - c) * 1e3)
            wall.append((time.perf_counter() - a) * 1e3)
    return wall, cpu, window.sample_count()


def decode_busy(frames: list[Frame], stop: threading.Event) -> None:
    """The event loop's work while a worker computes features: decoding frames, until `stop`."""
    decoder = Decoder(load_catalog(DEFAULT_CATALOG), bus="busy")
    while not stop.is_set():
        for frame in frames:
            decoder.process(frame)


def threaded_feature_ms(window: features.FeatureWindow, t: float, frames: list[Frame], n: int) -> list[float]:
    """Wall ms of `features_at` run in a worker thread (as `asyncio.to_thread` would) while this process's
    other thread decodes frames."""
    stop = threading.Event()
    busy = threading.Thread(target=decode_busy, args=(frames, stop), daemon=True)
    busy.start()
    out: list[float] = []
    try:
        for _ in range(n):
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                a = time.perf_counter()
                pool.submit(window.features_at, t).result()
                out.append((time.perf_counter() - a) * 1e3)
            time.sleep(0.01)
    finally:
        stop.set()
        busy.join()
    return out


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000, help="predictions timed per model")
    parser.add_argument("--log", type=Path, default=None, help="recorded log (default: record a sim hour)")
    parser.add_argument("--interval", type=float, default=60.0, help="source seconds between predictions")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the hour per computation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = args.log
        if log is None:
            log = Path(tmp) / "hour.log"
            command = [sys.executable, "-m", "simulator", "record", "--duration", "1h", "--out", str(log)]
            subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        samples = recorded_samples(log)
        with FrameLog(log, "busy") as reader:
            frames = list(itertools.islice(reader, 2000))
    span_min = (samples[-1][0] - samples[0][0]) / 60.0 if samples else 0.0
    print(
        f"log: {log.name}, {len(samples)} kept samples over {span_min:.0f} min; "
        f"a tick every {args.interval:g} s"
    )
    runs: dict[str, tuple[list[float], list[float]]] = {"ours": ([], []), "plain": ([], [])}
    for k in range(args.repeats):  # alternating, so both see the same machine load
        for which in ("ours", "plain") if k % 2 == 0 else ("plain", "ours"):
            with plain_primitives() if which == "plain" else contextlib.nullcontext():
                wall, cpu, held = paced_feature_ms(samples, args.interval)
            runs[which][0].extend(wall)
            runs[which][1].extend(cpu)
    labels = {"ours": "features_at (voltgate)", "plain": "features_at, plain numpy primitives"}
    for which, (wall, cpu) in runs.items():
        print(
            f"{labels[which]:36s} CPU median {statistics.median(cpu):.3f} ms, p99 {p99(cpu):.3f} ms | "
            f"wall median {statistics.median(wall):.3f} ms, p99 {p99(wall):.3f} ms ({len(wall)} ticks)"
        )
    oc, pc = runs["ours"][1], runs["plain"][1]
    print(
        f"ratio voltgate/plain: CPU median {statistics.median(oc) / statistics.median(pc):.2f}×, "
        f"p99 {p99(oc) / p99(pc):.2f}× (window: {held} samples at the end; wall p99 counts the time the "
        "scheduler gave other processes)"
    )
    x = features.FeatureWindow(utc_offset_h=3.0)
    x.add_many(samples)
    t_end = samples[-1][0]
    inline = []
    for _ in range(200):
        a = time.perf_counter()
        x.features_at(t_end)
        inline.append((time.perf_counter() - a) * 1e3)
    threaded = threaded_feature_ms(x, t_end, frames, 200)
    print(
        f"on the loop's thread: wall median {statistics.median(inline):.3f} ms, p99 {p99(inline):.3f} ms | "
        f"worker thread, loop decoding: median {statistics.median(threaded):.3f} ms, "
        f"p99 {p99(threaded):.3f} ms"
    )
    row = x.features_at(t_end)
    rows = np.random.default_rng(1).normal(0.0, 30.0, size=(20_000, len(row)))
    rows[rows < -30.0] = np.nan  # a sixth of the features missing
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    for path in sorted(MODELS.glob("*.onnx")):
        a = time.perf_counter()
        model = load_model(path)
        load_ms = (time.perf_counter() - a) * 1e3
        ours = timed(functools.partial(model.predict, row), args.n)
        batch_s = best_s(functools.partial(model.predict_batch, rows))
        print(
            f"{path.name:18s} ours: load {load_ms:6.1f} ms | predict p50 {ours[0]:.3f} ms, "
            f"p99 {ours[1]:.3f} ms ({args.n} calls) | {len(rows)} rows {batch_s:.2f} s"
        )
        if onnxruntime is None:
            continue
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        a = time.perf_counter()
        session = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        ort_load_ms = (time.perf_counter() - a) * 1e3
        one = row.astype(np.float32).reshape(1, -1)
        theirs = timed(functools.partial(session.run, None, {"features": one}), args.n)
        ort_batch_s = best_s(functools.partial(session.run, None, {"features": rows.astype(np.float32)}))
        print(
            f"{'':18s} onnxruntime: load {ort_load_ms:6.1f} ms | predict p50 {theirs[0]:.3f} ms, "
            f"p99 {theirs[1]:.3f} ms | {len(rows)} rows {ort_batch_s:.2f} s | ours/onnxruntime: "
            f"p50 {ours[0] / theirs[0]:.1f}×, batch {batch_s / ort_batch_s:.1f}×"
        )


def best_s(call: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` calls, in seconds."""
    best = math.inf
    for _ in range(repeats):
        a = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - a)
    return best


def timed(call: Callable[[], object], n: int) -> tuple[float, float]:
    """p50 and p99 (ms) of `n` calls, after a few untimed ones."""
    for _ in range(min(n, 20)):
        call()
    lat = []
    for _ in range(n):
        a = time.perf_counter()
        call()
        lat.append(time.perf_counter() - a)
    ms = np.array(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


if __name__ == "__main__":
    main()
