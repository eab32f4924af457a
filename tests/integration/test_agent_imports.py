"""What `voltgate-agent run` loads into its process: never onnxruntime, onnx or protobuf (the agent reads and
computes its ONNX models itself: models.onnx_reader, models.tree_ensemble), nor scikit-learn, with or without
models; nor cantools once its catalog is cached (protocols.catalog_cache). The agent runs as a subprocess (a
replayed log, the real Mosquitto) whose exit hook lists the heavy modules of its `sys.modules`."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from agent.app import STOP_TIMEOUTS
from tests.integration.conftest import Broker
from tests.integration.test_agent_run import _write_log

REPO = Path(__file__).resolve().parents[2]
WATCHED = ("onnxruntime", "onnx", "google", "sklearn", "asammdf", "pandas", "cantools")
# Runs the agent's CLI; at exit (sys.exit runs atexit hooks) one stderr line lists the watched modules loaded.
PROBE = f"""
import atexit, sys
def report():
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({WATCHED!r}))
    sys.stderr.write("LOADED " + ",".join(loaded) + "\\n")
atexit.register(report)
from agent.__main__ import main
main(["run", "--config", sys.argv[1]])
"""


def _config(broker: Broker, tmp_path: Path, inference: str) -> Path:
    """A config replaying a short log (written beside it)."""
    log_path = tmp_path / "day.log"
    _write_log(log_path, 50)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
vehicle_id = "bus-imports"
log_format = "text"
[[replay]]
name = "day"
path = "{log_path}"
speed = "max"
[buffer]
path = "{tmp_path / "buffer.sqlite3"}"
[uplink]
broker_url = "mqtt://{broker.host}:{broker.port}"
fleet_id = "{broker.namespace}"
client_id = "{broker.client_id("agent")}"
[metrics]
enabled = false
{inference}
"""
    )
    return config


def _run_agent(
    broker: Broker, tmp_path: Path, inference: str, wait_for: tuple[str, ...], config: Path | None = None
) -> set[str]:
    """Replay a short log until every line of `wait_for` is in the log, stop; the watched modules loaded."""
    config = config or _config(broker, tmp_path, inference)
    agent = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(config)], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    seen = threading.Event()

    def watch() -> None:
        assert agent.stderr is not None
        for line in agent.stderr:
            lines.append(line)
            if all(any(w in x for x in lines) for w in wait_for):
                seen.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), "".join(lines[-20:])
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(STOP_TIMEOUTS.total_s + 10) == 0, "".join(lines[-20:])
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    reader.join(10)
    reports = [line.split(" ", 1)[1].strip() for line in lines if line.startswith("LOADED ")]
    assert len(reports) == 1, "".join(lines[-20:])
    return set(filter(None, reports[0].split(",")))


def test_no_models_configured_imports_no_model_runtime(mqtt_broker: Broker, tmp_path: Path) -> None:
    loaded = _run_agent(mqtt_broker, tmp_path, "[inference]\nmodels = []", ("replay day: end of",))
    assert loaded.isdisjoint({"onnxruntime", "onnx", "google", "sklearn"})


def test_the_shipped_models_run_without_onnxruntime(mqtt_broker: Broker, tmp_path: Path) -> None:
    """The shipped models are loaded (their load is logged) and the process never imports onnxruntime, the
    onnx package, protobuf or scikit-learn."""
    waits = (
        "replay day: end of",
        "model soc_drop version",
        "model large_drop version",
        "model fault_risk version",
    )
    loaded = _run_agent(mqtt_broker, tmp_path, "", waits)
    assert loaded.isdisjoint({"onnxruntime", "onnx", "google", "sklearn"}), loaded


def test_a_cached_catalog_runs_without_cantools(mqtt_broker: Broker, tmp_path: Path) -> None:
    """GIVEN an agent that ran once with the shipped catalog (its first start caches it) WHEN it runs again
    THEN its process never imports cantools: every frame of the shipped DBC decodes through plain bit-field
    plans built from the cache. Without the cache the same run does import it (the test can fail)."""
    config = _config(mqtt_broker, tmp_path, "[inference]\nmodels = []")
    cold = _run_agent(mqtt_broker, tmp_path, "", ("replay day: end of",), config)
    assert "cantools" in cold  # the first start loads the DBC with cantools, and caches what it built
    warm = _run_agent(mqtt_broker, tmp_path, "", ("replay day: end of",), config)
    assert "cantools" not in warm, warm
