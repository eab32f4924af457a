"""The records a batch carries (`protocols.wire` describes the payload): samples, predictions and alerts,
and samples as columns for a consumer that works on columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


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
    output: str  # e.g. "soc_drop_60min_pp", "p_large_drop_60min", "p_fault_30min" (protocols.predictions)
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


@dataclass(frozen=True, slots=True)
class SampleColumns:
    """Samples as columns (numpy arrays in seq order): what the decoder builds before any record object,
    for a consumer (the cloud receiver) that works on columns and would only take the records apart again."""

    seq: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    signal_index: npt.NDArray[np.int32]  # into `signals`
    value: npt.NDArray[np.float64]
    signals: tuple[str, ...]

    @classmethod
    def of(cls, samples: Sequence[SampleRecord]) -> SampleColumns:
        index: dict[str, int] = {}
        return cls(
            seq=np.array([s.seq for s in samples], dtype=np.int64),
            ts_ms=np.array([s.ts_ms for s in samples], dtype=np.int64),
            signal_index=np.array([index.setdefault(s.signal, len(index)) for s in samples], dtype=np.int32),
            value=np.array([s.value for s in samples], dtype=np.float64),
            signals=tuple(index),
        )

    def __len__(self) -> int:
        return len(self.seq)

    def where(self, keep: npt.NDArray[np.bool_]) -> SampleColumns:
        """The samples where `keep` is true (signal names unchanged)."""
        return SampleColumns(
            self.seq[keep], self.ts_ms[keep], self.signal_index[keep], self.value[keep], self.signals
        )

    def records(self) -> tuple[SampleRecord, ...]:
        names = self.signals
        return tuple(
            SampleRecord(seq, ts, names[k], v)
            for seq, ts, k, v in zip(
                self.seq.tolist(), self.ts_ms.tolist(), self.signal_index.tolist(), self.value.tolist(),
                strict=True,
            )
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ColumnarBatch:
    """A `Batch` whose samples are columns (`decode_columnar_batch`)."""

    vehicle_id: str
    samples: SampleColumns
    predictions: tuple[PredictionRecord, ...] = ()
    alerts: tuple[AlertRecord, ...] = ()

    @classmethod
    def of(cls, batch: Batch) -> ColumnarBatch:
        return cls(batch.vehicle_id, SampleColumns.of(batch.samples), batch.predictions, batch.alerts)
