"""Decode: CAN frames → catalog samples, through cantools and the per-signal sampling policy.

Three layers, each usable alone:

* `FrameDecoder.decode(frame)` is pure: one `Frame` in, a `Decoded` out (the catalog signals it
  carries as `(SignalSpec, float)` pairs, or why it was skipped). cantools' result is narrowed to
  our types here and nowhere else.
* `SignalSampler.offer(ts, value)` is pure per-signal state: the sampling policy of the catalog
  (see `protocols/catalog.toml`), on source timestamps.
* `Decoder` composes both for one bus, counts every skip by kind in `DecodeStats`, and runs as a
  stage (`Decoder.run`) or synchronously (`Decoder.process`, used by `decode_log_to_csv`, so the
  CLI's `decode` and the agent's `run` share one code path).

Skips (counted, never raised): a frame whose id the catalog does not map ("unknown_id", also when
its standard/extended flag differs from the DBC's), shorter than its DBC message ("short"), an
error frame ("error_frame"), a remote frame ("remote_frame"), a multiplexed frame with a mux value
the DBC does not define ("unknown_mux"), a frame cantools cannot unpack ("undecodable"); and, per
value, a value outside the DBC's [minimum, maximum] or not finite ("out_of_range": J1939 sends
0xFF… for "not available"). A frame longer than its message is decoded (padding is normal).
"""

from __future__ import annotations

import asyncio
import csv
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TextIO

import can
from cantools.database.errors import DecodeError as CantoolsDecodeError

from agent.records import Frame, Sample
from protocols.catalog import Catalog, FrameSpec, SamplingPolicy, SignalSpec

log = logging.getLogger(__name__)


class SkipKind(StrEnum):
    UNKNOWN_ID = "unknown_id"
    SHORT = "short"
    ERROR_FRAME = "error_frame"
    REMOTE_FRAME = "remote_frame"
    UNKNOWN_MUX = "unknown_mux"
    UNDECODABLE = "undecodable"
    OUT_OF_RANGE = "out_of_range"  # per value, not per frame


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one frame yields: its catalog values, or why the whole frame was skipped."""

    values: tuple[tuple[SignalSpec, float], ...] = ()
    skipped: SkipKind | None = None
    out_of_range: tuple[SignalSpec, ...] = ()  # values dropped from an otherwise decoded frame


@dataclass(frozen=True, slots=True)
class _SignalPlan:
    dbc_signal: str
    spec: SignalSpec
    low: float  # -inf when the DBC gives no range
    high: float


@dataclass(frozen=True, slots=True)
class _FramePlan:
    spec: FrameSpec
    is_extended: bool
    length: int
    signals: tuple[_SignalPlan, ...]


def _signal_plan(spec: FrameSpec, dbc_signal: str, signal_spec: SignalSpec) -> _SignalPlan:
    signal = spec.message.get_signal_by_name(dbc_signal)
    low, high = signal.minimum, signal.maximum
    if low == 0 and high == 0:
        low = high = None  # [0|0] is how many DBC writers say "no range given"
    # Raw values are whole steps of `scale`: half a step of slack absorbs float rounding only.
    slack = abs(float(signal.scale)) / 2 if signal.scale else 1e-9
    return _SignalPlan(
        dbc_signal=dbc_signal,
        spec=signal_spec,
        low=-math.inf if low is None else float(low) - slack,
        high=math.inf if high is None else float(high) + slack,
    )


class FrameDecoder:
    """Decodes frames against a catalog's `frames()`; plans per id are built once."""

    def __init__(self, frames: Mapping[int, FrameSpec]) -> None:
        self._plans: dict[int, _FramePlan] = {}
        for frame_id, spec in frames.items():
            message = spec.message
            self._plans[frame_id] = _FramePlan(
                spec=spec,
                is_extended=bool(message.is_extended_frame),
                length=int(message.length),
                signals=tuple(_signal_plan(spec, name, s) for name, s in spec.signals),
            )

    def decode(self, frame: Frame) -> Decoded:
        if frame.is_error:
            return _SKIPPED[SkipKind.ERROR_FRAME]
        if frame.is_remote:
            return _SKIPPED[SkipKind.REMOTE_FRAME]
        plan = self._plans.get(frame.arbitration_id)
        if plan is None or plan.is_extended != frame.is_extended:
            return _SKIPPED[SkipKind.UNKNOWN_ID]
        if len(frame.data) < plan.length:
            return _SKIPPED[SkipKind.SHORT]
        try:
            # decode_simple: decode() without the container dispatch; longer data is truncated to
            # the message length (allow_excess), shorter was refused above.
            raw = plan.spec.message.decode_simple(frame.data, decode_choices=False, scaling=True)
        except CantoolsDecodeError as err:
            kind = SkipKind.UNKNOWN_MUX if "multiplexer" in str(err) else SkipKind.UNDECODABLE
            return _SKIPPED[kind]
        values: list[tuple[SignalSpec, float]] = []
        out_of_range: list[SignalSpec] = []
        for signal in plan.signals:
            found = raw.get(signal.dbc_signal)
            if found is None:
                continue  # a multiplexed signal of another mux value
            value = float(found)  # type: ignore[arg-type]  # decode_choices=False: always a number
            if signal.low <= value <= signal.high:  # False for NaN as well
                values.append((signal.spec, value))
            else:
                out_of_range.append(signal.spec)
        return Decoded(values=tuple(values), out_of_range=tuple(out_of_range))


_SKIPPED = {kind: Decoded(skipped=kind) for kind in SkipKind}


def decode_frame(frame: Frame, frames: Mapping[int, FrameSpec]) -> Decoded:
    """One-off convenience; a hot loop keeps one `FrameDecoder`."""
    return FrameDecoder(frames).decode(frame)


# --------------------------------------------------------------------------- sampling policy


class SignalSampler:
    """The sampling policy of one signal, on source timestamps.

    A value is kept when it is the first, when `max_interval_s` has passed since the last kept
    value (heartbeat), or when `min_interval_s` has passed AND it moved at least `deadband` from
    the last kept value. A timestamp earlier than the last kept one (a source clock reset, a
    second log replayed) restarts the signal: that value is kept.
    """

    __slots__ = ("_last_ts", "_last_value", "policy")

    def __init__(self, policy: SamplingPolicy) -> None:
        self.policy = policy
        self._last_ts: float | None = None
        self._last_value = 0.0

    def offer(self, ts: float, value: float) -> bool:
        last_ts = self._last_ts
        if last_ts is not None and ts >= last_ts:
            elapsed = ts - last_ts
            policy = self.policy
            if elapsed < policy.max_interval_s and (
                elapsed < policy.min_interval_s or abs(value - self._last_value) < policy.deadband
            ):
                return False
        self._last_ts = ts
        self._last_value = value
        return True


# --------------------------------------------------------------------------- the stage


@dataclass(slots=True)
class DecodeStats:
    """Counters of one bus's decoder, for the app to export."""

    frames_in: int = 0
    frames_decoded: int = 0  # frames that yielded at least one in-range catalog value
    skipped: dict[str, int] = field(default_factory=lambda: {kind.value: 0 for kind in SkipKind})
    values_decoded: int = 0
    samples_kept: int = 0
    samples_suppressed: int = 0  # by the sampling policy


class Decoder:
    """The decode stage of one bus: frames → samples, through the catalog and its policies."""

    def __init__(self, catalog: Catalog, *, bus: str = "", apply_policy: bool = True) -> None:
        self.bus = bus
        self.stats = DecodeStats()
        self._decoder = FrameDecoder(catalog.frames())
        self._apply_policy = apply_policy
        self._samplers: dict[str, SignalSampler] = {
            spec.name: SignalSampler(spec.policy) for spec in catalog if spec.source == "can"
        }
        self._logged: set[str] = set()

    def process(self, frame: Frame) -> list[Sample]:
        """Decode one frame and apply the sampling policy; never raises on bad input."""
        stats = self.stats
        stats.frames_in += 1
        decoded = self._decoder.decode(frame)
        if decoded.skipped is not None:
            self._skip(decoded.skipped, frame, 1)
            return []
        if decoded.out_of_range:
            self._skip(SkipKind.OUT_OF_RANGE, frame, len(decoded.out_of_range))
        if not decoded.values:
            return []
        stats.frames_decoded += 1
        stats.values_decoded += len(decoded.values)
        ts = frame.ts
        samples: list[Sample] = []
        for spec, value in decoded.values:
            if self._apply_policy and not self._samplers[spec.name].offer(ts, value):
                stats.samples_suppressed += 1
                continue
            samples.append(Sample(ts, spec.name, value, spec.priority))
        stats.samples_kept += len(samples)
        return samples

    async def run(self, inbox: asyncio.Queue[Frame], outbox: asyncio.Queue[Sample]) -> None:
        """Until cancelled: frames from `inbox` → samples to `outbox` (waits when it is full, so a
        slow consumer slows the decoder, and the sources' bounded queues count the drops).
        `inbox.task_done()` follows each frame, so `await inbox.join()` drains the stage."""
        while True:
            frame = await inbox.get()
            try:
                samples = self._process_guarded(frame)
                for sample in samples:
                    if outbox.full():
                        await outbox.put(sample)
                    else:
                        outbox.put_nowait(sample)
            finally:
                inbox.task_done()

    def _process_guarded(self, frame: Frame) -> list[Sample]:
        try:
            return self.process(frame)
        except Exception:  # a bug must cost one frame, not the stage
            self._skip(SkipKind.UNDECODABLE, frame, 1)
            log.exception("bus %s: decoding frame 0x%X failed", self.bus, frame.arbitration_id)
            return []

    def _skip(self, kind: SkipKind, frame: Frame, count: int) -> None:
        self.stats.skipped[kind] += count
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "bus %s: skipping %s (first: id 0x%X, %d bytes); further ones are only counted",
                self.bus or frame.bus,
                kind.value,
                frame.arbitration_id,
                len(frame.data),
            )


# --------------------------------------------------------------------------- logs → CSV

CSV_HEADER = ("ts", "signal", "value", "message", "dbc_signal")


def decode_log_to_csv(
    log_path: Path, catalog: Catalog, out: TextIO, *, apply_policy: bool = True
) -> DecodeStats:
    """Decode a recorded log (any format python-can's `LogReader` reads: .log, .asc, .blf, .csv,
    .trc, ...) through the same `Decoder.process` as the agent, and write one CSV row per kept
    sample: `ts,signal,value,message,dbc_signal` (floats in their shortest exact form)."""
    decoder = Decoder(catalog, bus=log_path.stem, apply_policy=apply_policy)
    by_name = {spec.name: spec for spec in catalog}
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    bus = log_path.stem
    # relative_timestamp=False: an .asc keeps the absolute times of its "date" header (others ignore it)
    with can.LogReader(log_path, relative_timestamp=False) as reader:
        for message in reader:
            frame = Frame(
                bus=bus,
                ts=float(message.timestamp),
                arbitration_id=int(message.arbitration_id),
                is_extended=bool(message.is_extended_id),
                data=bytes(message.data),
                is_error=bool(message.is_error_frame),
                is_remote=bool(message.is_remote_frame),
            )
            for sample in decoder.process(frame):
                spec = by_name[sample.signal]
                writer.writerow(
                    (repr(sample.ts), sample.signal, repr(sample.value), spec.message, spec.dbc_signal)
                )
    return decoder.stats
