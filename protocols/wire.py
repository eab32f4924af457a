"""The uplink payload: a versioned, compact binary batch of samples, predictions and alerts.

CONTRACT (fixed; the implementation below is being written): every record carries the per-vehicle
sequence number that makes storage idempotent on (vehicle, seq).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WIRE_VERSION = 1


@dataclass(frozen=True, slots=True)
class SampleRecord:
    seq: int  # per-vehicle sequence number, >= 0, unique across samples, predictions and alerts
    ts_ms: int  # source timestamp (bus frame / GPS fix), Unix epoch milliseconds, UTC
    signal: str  # canonical catalog name, e.g. "Vehicle.Speed"
    value: float


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    seq: int
    ts_ms: int
    model: str  # e.g. "soc_drop_60min"
    model_version: str
    output: str  # e.g. "soc_drop_pct", "p_large_drop", "p_fault_30min"
    value: float


@dataclass(frozen=True, slots=True)
class AlertRecord:
    seq: int
    ts_ms: int
    rule: str  # e.g. "low_soc"
    severity: str  # "info" | "warning" | "critical"
    active: bool  # True when raised, False when cleared
    value: float  # the value that triggered or cleared the rule (NaN when none)
    message: str


@dataclass(frozen=True, slots=True)
class Batch:
    vehicle_id: str
    samples: tuple[SampleRecord, ...] = ()
    predictions: tuple[PredictionRecord, ...] = ()
    alerts: tuple[AlertRecord, ...] = ()


def encode_batch(batch: Batch, quanta: Mapping[str, float] | None = None) -> bytes:
    """Encode a batch. `quanta` maps a signal name to its resolution (e.g. 0.1 for SOC in 0.1 %):
    such values travel as integers of that step (decoded within quantum/2); others travel exactly."""
    raise NotImplementedError


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate a payload; raises `WireError` on anything malformed, never anything else."""
    raise NotImplementedError
