"""The retained status payload: a small JSON object, "online" on connect or "offline" as the last will."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from protocols.errors import WireError
from protocols.wire_fields import int_field, wire_int
from protocols.wire_layout import MAX_ABS_TS_MS

STATUS_STATES: Final = frozenset({"online", "offline"})
MAX_STATUS_BYTES: Final = 4_096

StatusInfo = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Status:
    """What the retained status topic says: "online" (published on connect) or "offline" (the last will)."""

    state: str
    ts_ms: int
    info: Mapping[str, StatusInfo] = field(default_factory=dict)


def encode_status(state: str, ts_ms: int, **info: StatusInfo) -> bytes:
    """A small JSON object, e.g. `{"state":"online","ts_ms":…,"agent_version":"0.1.0"}`; info values are
    JSON scalars (finite numbers)."""
    if state not in STATUS_STATES:
        raise WireError(f"status state {state!r} not one of {sorted(STATUS_STATES)}")
    document: dict[str, StatusInfo] = {
        "state": state,
        "ts_ms": int_field(ts_ms, 0, MAX_ABS_TS_MS, "status ts_ms"),
    }
    for key, value in info.items():
        if not isinstance(value, StatusInfo):
            raise WireError(f"status info {key!r} must be a JSON scalar")
        document[key] = value
    try:
        encoded = json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, UnicodeEncodeError) as err:
        raise WireError(f"status not encodable: {err}") from err
    if len(encoded) > MAX_STATUS_BYTES:
        raise WireError(f"status of {len(encoded)} bytes exceeds MAX_STATUS_BYTES={MAX_STATUS_BYTES}")
    return encoded


def _reject_constant(name: str) -> object:
    raise WireError(f"status contains {name}")


def decode_status(payload: bytes) -> Status:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"status payload must be bytes, not {type(payload).__name__}")
    if len(payload) > MAX_STATUS_BYTES:
        raise WireError("status payload too large")
    try:
        document = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WireError(f"status is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise WireError("status must be a JSON object")
    state = document.pop("state", None)
    ts_ms = document.pop("ts_ms", None)
    if not isinstance(state, str) or state not in STATUS_STATES:
        raise WireError("status state must be 'online' or 'offline'")
    if not all(isinstance(value, StatusInfo) for value in document.values()):
        raise WireError("status info values must be JSON scalars")
    return Status(state, wire_int(ts_ms, 0, MAX_ABS_TS_MS, "status ts_ms"), document)
