"""Fleet control, on disk: the desired state this bus has applied, and the models it received.

    {state_dir}/fleet_control.json           what runs (config revision and settings, model per name), the
                                             last revision handled per config/model name, the outcomes
    {state_dir}/models/{name}/{sha256}.onnx  received models: the running one and the one before it

Every write is atomic (a temporary file in the same directory, fsync, rename, fsync of the directory), so
a power cut leaves the old state or the new one. All methods block: callers run them in a worker thread.
A state file that cannot be read is logged and treated as empty: the installed configuration runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from protocols.downlink import DownlinkError
from protocols.fleet_control import (
    MAX_REVISION,
    DesiredConfig,
    Outcome,
    OutcomeState,
    SettingValue,
    decode_desired,
    encode_desired_config,
    outcome_json,
)
from protocols.topics import is_valid_id

log = logging.getLogger(__name__)

STATE_FILE: Final = "fleet_control.json"
STATE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A received model that runs for its name; `previous` is the received one before it (None: the
    installed file)."""

    revision: int
    sha256: str  # hex
    previous: str | None = None


@dataclass
class FleetState:
    config_revision: int = 0  # the desired config that runs; 0: the installed file
    config_settings: dict[str, dict[str, SettingValue]] = field(default_factory=dict)
    handled_config: int = 0  # the last revision handled (applied or refused): not handled again
    handled_models: dict[str, int] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    config_outcome: Outcome | None = None
    model_outcomes: dict[str, Outcome] = field(default_factory=dict)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def model_path(self, name: str, sha256_hex: str) -> Path:
        return self.directory / "models" / name / f"{sha256_hex}.onnx"

    def load(self) -> FleetState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return FleetState()
        except (OSError, UnicodeDecodeError) as err:
            log.error("fleet control state %s unreadable (%s); running the installed config", self.path, err)
            return FleetState()
        try:
            return _decode_state(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError, DownlinkError) as err:
            log.error(
                "fleet control state %s is malformed (%s); running the installed config", self.path, err
            )
            return FleetState()

    def save(self, state: FleetState) -> None:
        _atomic_write(self.path, json.dumps(_encode_state(state), indent=1, sort_keys=True).encode())

    def write_model(self, name: str, sha256_hex: str, model: bytes) -> Path:
        path = self.model_path(name, sha256_hex)
        _atomic_write(path, model)
        return path

    def model_file_ok(self, name: str, sha256_hex: str) -> Path | None:
        """The stored model file when its bytes still have their SHA-256; None otherwise."""
        path = self.model_path(name, sha256_hex)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return path if hashlib.sha256(data).hexdigest() == sha256_hex else None

    def prune(self, name: str, keep: set[str]) -> None:
        """Delete the stored models of `name` other than `keep` (SHA-256 hex)."""
        folder = self.directory / "models" / name
        with contextlib.suppress(FileNotFoundError):
            for path in folder.iterdir():
                if path.suffix == ".onnx" and path.stem not in keep:
                    with contextlib.suppress(OSError):
                        path.unlink()

    def discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --- JSON -----------------------------------------------------------------------------------------------


def _outcome(value: object) -> Outcome | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("an outcome must be an object")
    return Outcome(
        _revision(value["revision"]),
        OutcomeState(value["state"]),
        str(value["detail"]),
        str(value["running"]),
    )


def _revision(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_REVISION:
        raise ValueError(f"revision {value!r}")
    return value


def _encode_state(state: FleetState) -> dict[str, object]:
    return {
        "v": STATE_VERSION,
        "config": {"revision": state.config_revision, "settings": state.config_settings},
        "handled": {"config": state.handled_config, "models": state.handled_models},
        "models": {
            name: {"revision": e.revision, "sha256": e.sha256, "previous": e.previous}
            for name, e in state.models.items()
        },
        "outcomes": {
            "config": None if state.config_outcome is None else outcome_json(state.config_outcome),
            "models": {name: outcome_json(o) for name, o in state.model_outcomes.items()},
        },
    }


def _sha(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 {value!r}")
    return value


def _decode_state(body: object) -> FleetState:
    if not isinstance(body, dict) or body.get("v") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} state")
    config = body["config"]
    revision = _revision(config["revision"])
    # the settings go through the downlink's own checks again (shape and bounds)
    checked = decode_desired(encode_desired_config(DesiredConfig(0, max(revision, 1), config["settings"])))
    assert isinstance(checked, DesiredConfig)
    models: dict[str, ModelEntry] = {}
    for name, entry in body["models"].items():
        if not is_valid_id(name):
            raise ValueError(f"model name {name!r}")
        previous = entry["previous"]
        models[name] = ModelEntry(
            _revision(entry["revision"]), _sha(entry["sha256"]), None if previous is None else _sha(previous)
        )
    outcomes = body["outcomes"]
    return FleetState(
        config_revision=revision,
        config_settings={k: dict(v) for k, v in checked.settings.items()},
        handled_config=_revision(body["handled"]["config"]),
        handled_models={str(k): _revision(v) for k, v in body["handled"]["models"].items()},
        models=models,
        config_outcome=_outcome(outcomes["config"]),
        model_outcomes={str(k): o for k, v in outcomes["models"].items() if (o := _outcome(v)) is not None},
    )
