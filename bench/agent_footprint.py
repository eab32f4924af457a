"""Peak memory and start-up of `voltgate-agent run` with the models loaded and four buses, beside the fair
baseline (bench/baseline_agent.py) in the same run.

    python bench/agent_footprint.py [--runs 5] [--duration 10m] [--python PYTHON] [--broker HOST:PORT]

Workload: one recording of `voltgate-sim record` (default 10 minutes of simulated bus) replayed as four buses
(four `[[replay]]` sources of the same log at `speed = "max"`: the sources read as fast as the bounded queues
take frames, more than live buses deliver), the shipped catalog and models, uplink to the local Mosquitto.
Three processes per run, one after the other (the order rotates between runs):

* ours, models on: the shipped models (`[inference]` defaults), four buses;
* ours, no models: `[inference] models = []`, four buses (what the agent costs without its models);
* baseline: the straightforward agent of bench/agent_throughput.py (python-can LogReader → cantools →
  the same sampling policy → SQLite executemany → JSON over MQTT), one bus (it reads one log), no models;
* ours, cold cache: models on, starting without its catalog cache (protocols.catalog_cache), as the first
  start after an install or a catalog change does: it reads the DBC with cantools and writes the cache.

The first two start as a gateway does every other time: with the catalog cached beside the buffer (a
`check-config` before the runs writes it, as the first start would).

Figures: peak RSS (VmHWM of /proc, read two seconds after every replay has reached its end and, models on,
every model has logged its load) and start-up (process start → ready for its first frame: the agent's
"running" log line, the baseline's "first frame" line), median and range over `--runs`, and ours ÷ baseline.
It also prints which optional packages the interpreter can import, and the peak RSS each heavy import adds
to a bare interpreter on its own, and the shipped models loaded by the agent's loader (models.runtime: its
own ONNX reader and tree-ensemble evaluator; and onnxruntime's sessions of them where the interpreter has
onnxruntime, which the gateway's `.[edge]` no longer installs). Where python-can
finds asammdf (this repository's `mf4` extra), `import can` loads asammdf and pandas too; a gateway's
`.[edge]` install has neither, so measure with `--python` of a venv holding only `.[edge]`
(`python3 -m venv /tmp/edge && /tmp/edge/bin/pip install -e '.[edge]'`).

bench/agent_throughput.py measures the same agent's peak RSS with the models loaded and four live SLCAN
buses at their real pace (its paced run), against issue 12's target, and its start-up beside the
baseline's; this bench adds the run without models and what each import costs.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.process_figures import importable, peak_rss_mb, spread  # noqa: E402

BUSES = 4
MODEL_LOADS = tuple(f"model {p.stem} version" for p in sorted((REPO / "models").glob("*.onnx")))
HEAVY = ("numpy", "onnxruntime", "cantools", "can", "pydantic_settings", "aiomqtt", "prometheus_client")
SESSIONS = (
    "import onnxruntime as o, pathlib; "
    "[o.InferenceSession(str(p), providers=['CPUExecutionProvider'])"
    " for p in pathlib.Path('models').glob('*.onnx')]"
)
LOADED_MODELS = (
    "import pathlib; from models.runtime import load_model; "
    "[load_model(p) for p in sorted(pathlib.Path('models').glob('*.onnx'))]"
)


@dataclass(frozen=True)
class Figures:
    rss_mb: float
    startup_s: float


def import_rss_mb(python: str, statement: str) -> float:
    """Peak RSS (MB) of `python -c statement`."""
    probe = f"{statement}\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([python, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024


def import_costs(python: str, found: dict[str, bool]) -> str:
    bare = import_rss_mb(python, "pass")
    costs = [
        f"{name} +{import_rss_mb(python, f'import {name}') - bare:.0f}"
        for name in HEAVY
        if found.get(name, True)
    ]
    costs.append(f"the shipped models, models.runtime +{import_rss_mb(python, LOADED_MODELS) - bare:.0f}")
    if found.get("onnxruntime"):
        costs.append(
            f"onnxruntime with the shipped models' sessions +{import_rss_mb(python, SESSIONS) - bare:.0f}"
        )
    return f"peak RSS of a bare interpreter {bare:.0f} MB; alone, each import adds (MB): " + ", ".join(costs)


def measure(
    command: list[str], ready: str, done: str, count: int, stdin_open: bool, needs: tuple[str, ...] = ()
) -> Figures:
    """Start `command`; start-up is the time to the first stderr line holding `ready`; peak RSS is read
    two seconds after `count` lines holding `done` and a line holding each of `needs`. The process is then
    stopped (SIGTERM, or stdin closed)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    marks: dict[str, float] = {}
    finished = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        assert process.stderr is not None
        ends = 0
        for line in process.stderr:
            lines.append(line)
            if "ready" not in marks and ready in line:
                marks["ready"] = time.perf_counter()
            ends += done in line
            if ends >= count and all(any(n in x for x in lines) for n in needs):
                finished.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not finished.wait(600):
            raise SystemExit(f"{command[1:4]} did not finish:\n" + "".join(lines[-30:]))
        time.sleep(2.0)
        rss = peak_rss_mb(process.pid)
    finally:
        if stdin_open and process.stdin is not None:
            process.stdin.close()
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return Figures(rss_mb=rss, startup_s=marks["ready"] - started)


def agent_config(work: Path, log: Path, broker: str, models: bool, cold: bool = False) -> Path:
    """A config of ours; its buffer (and so its catalog cache) in `work`, or `cold`: in a directory of its
    own."""
    name = f"fp{uuid.uuid4().hex[:8]}"
    state = work / name if cold else work
    replays = "".join(f'[[replay]]\nname = "bus{k}"\npath = "{log}"\nspeed = "max"\n' for k in range(BUSES))
    config = work / f"{name}.toml"
    config.write_text(
        f'vehicle_id = "footprint-bus"\nlog_format = "text"\n{replays}'
        f'[buffer]\npath = "{state / name}.sqlite3"\n'
        f'[uplink]\nbroker_url = "mqtt://{broker}"\nfleet_id = "{name}"\n'
        "[metrics]\nenabled = false\n" + ("" if models else "[inference]\nmodels = []\n")
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", default="10m", help="simulated bus time to record and replay")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run both agents with")
    parser.add_argument("--broker", default="127.0.0.1:1883")
    args = parser.parse_args()
    found = importable(args.python)
    print(f"interpreter: {args.python}")
    print("importable: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in found.items()))
    print(import_costs(args.python, found))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "bus.log"
        record = [sys.executable, "-m", "simulator", "record", "--duration", args.duration, "--out", str(log)]
        subprocess.run(record, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        warm_up = [args.python, "-m", "agent", "check-config", "--config"]
        warm_up.append(str(agent_config(work, log, args.broker, models=True)))
        subprocess.run(
            warm_up, cwd=REPO, env={"PYTHONPATH": str(REPO)}, check=True, stdout=subprocess.DEVNULL
        )
        kinds = ("models on", "no models", "baseline", "cold cache")
        results: dict[str, list[Figures]] = {kind: [] for kind in kinds}
        orders = itertools.cycle(itertools.permutations(kinds))
        for _ in range(args.runs):
            for kind in next(orders):
                if kind == "baseline":
                    command = [
                        args.python, str(REPO / "bench" / "baseline_agent.py"), str(log),
                        "--broker", args.broker, "--topic", f"bench/footprint/{uuid.uuid4().hex[:8]}",
                        "--db", str(work / f"baseline-{uuid.uuid4().hex[:8]}.sqlite3"),
                    ]  # fmt: skip
                    figures = measure(command, "baseline: first frame", "baseline: end of log", 1, True)
                else:
                    models = kind != "no models"
                    config = agent_config(work, log, args.broker, models, cold=kind == "cold cache")
                    command = [args.python, "-m", "agent", "run", "--config", str(config)]
                    loads = MODEL_LOADS if models else ()
                    figures = measure(command, " running: ", ": end of ", BUSES, False, loads)
                results[kind].append(figures)
    print(f"log: {args.duration} of simulated bus, replayed as {BUSES} buses by ours, 1 by the baseline")
    base = results["baseline"]
    for kind in kinds:
        rows = results[kind]
        rss = [f.rss_mb for f in rows]
        startup = [f.startup_s for f in rows]
        line = f"{kind:10s} peak RSS {spread(rss, '.1f')} MB | start-up {spread(startup, '.3f')} s"
        if kind != "baseline":
            rss_ratio = [f.rss_mb / b.rss_mb for f, b in zip(rows, base, strict=True)]
            startup_ratio = [f.startup_s / b.startup_s for f, b in zip(rows, base, strict=True)]
            line += (
                f" | ÷ baseline: RSS {spread(rss_ratio, '.2f')}×, start-up {spread(startup_ratio, '.2f')}×"
            )
        print(line)
    print(f"(median and range over {args.runs} runs; ratios per run)")


if __name__ == "__main__":
    main()
