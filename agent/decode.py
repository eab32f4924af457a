"""Decode: CAN frames → catalog samples, through cantools and the per-signal sampling policy.

Three layers, each usable alone:

* `FrameDecoder.decode(frame)` is pure: one `Frame` in, a `Decoded` out (the catalog signals it
  carries as `(SignalSpec, float)` pairs, or why it was skipped). cantools' result is narrowed to
  our types here and nowhere else.
* `SignalSampler.offer(ts, value)` (in `protocols.catalog`, shared with the GPS source and training) is pure
  per-signal state: the sampling policy of the catalog, on source timestamps.
* `Decoder` composes both for one bus, counts every skip by kind in `DecodeStats`, and runs as a
  stage (`Decoder.run`) or synchronously (`Decoder.process`, used by `decode_log_to_csv`, so the
  CLI's `decode` and the agent's `run` share one code path).

J1939 messages of the DBC (cantools' `protocol == "j1939"`) match by parameter group number, whatever
the frame's priority, source address and (PDU1) destination; a catalog entry with `source_address` only
takes that sender's frames. When the DBC has several messages of one PGN, each takes its own sender's
frames. A matched identifier joins the exact-id table, so the hot path stays one dict lookup. What no
plan matches but J1939 explains (transport sessions, DM1) goes to `agent.j1939`: reassembled groups are
decoded like frames, DM1 becomes the catalog's `[[dm1]]` values and the `on_dm1` hook (driver alerts).

Skips (counted, never raised): a frame whose id the catalog does not map ("unknown_id", also when
its standard/extended flag differs from the DBC's), shorter than its DBC message ("short"), an
error frame ("error_frame"), a remote frame ("remote_frame"), a multiplexed frame with a mux value
the DBC does not define ("unknown_mux"), a frame cantools cannot unpack ("undecodable"); and, per
value, a value outside the DBC's [minimum, maximum] or not finite ("out_of_range": J1939 sends
0xFF… for "not available"). A frame longer than its message is decoded (padding is normal). J1939
adds a DM1 payload off its layout ("dm1_malformed") and the transport problems of
`agent.j1939.TransportProblem` ("tp_timeout", "tp_sequence", ...).

Most frames carry nothing the sampling policy keeps at that moment; they are not decoded at all
(`DecodeStats.frames_not_due`), which the decoder tells from the frame's id and timestamp, or from its
payload as well:

* by time: while every signal of a plan is inside its minimum interval (or heartbeat, when shorter) since
  its last kept value, the samplers refuse any value (`SignalSampler.refusal_window` of a value that
  matches nothing), so a frame of that plan stamped in that window is skipped without reading its payload;
* by payload: a frame repeating the payload its plan carried last is skipped inside the window where the
  samplers refuse all of those values again (deadbands reach to the heartbeat there).

A kept value of any signal of a plan ends both windows. The samples kept are the same
(tests/integration/test_due_skip.py compares recorded hours); the value counters (`values_decoded`,
`out_of_range`, ...) count decoded frames. `Decoder.process_chunk` runs the time test inline over a list of
frames (a replay's chunk) and calls `process` only for the frames it cannot skip.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TextIO

from agent.decode_plans import FramePlan, frame_plan, mux_plan
from agent.j1939 import Group, J1939Layer, TransportProblem
from agent.logfiles import FrameLog
from agent.records import UNKNOWN_ID_FRAME, Frame, Sample
from protocols.catalog import Catalog, FrameSpec, SamplingPolicy, SignalSampler, SignalSpec
from protocols.j1939 import PGN_DM1, Dm1, Dm1Error, parse_dm1, split_id

log = logging.getLogger(__name__)


class SkipKind(StrEnum):
    UNKNOWN_ID = "unknown_id"
    SHORT = "short"
    ERROR_FRAME = "error_frame"
    REMOTE_FRAME = "remote_frame"
    UNKNOWN_MUX = "unknown_mux"
    UNDECODABLE = "undecodable"
    OUT_OF_RANGE = "out_of_range"  # per value, not per frame
    DM1_MALFORMED = "dm1_malformed"


RUN_BATCH = 256  # frames `Decoder.run` takes from a live bus's inbox at once
MAX_MATCHED_IDS = 4096  # J1939 identifiers kept in the exact-id table; beyond, matched per frame


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one frame yields: its catalog values, or why the whole frame was skipped."""

    values: tuple[tuple[SignalSpec, float], ...] = ()
    skipped: SkipKind | None = None
    out_of_range: tuple[SignalSpec, ...] = ()  # values dropped from an otherwise decoded frame
    plan: object = None  # the decoder's plan of the frame (`FrameDecoder.remember`)


class _Repeat:
    """A plan's last decoded bits (the payload's bits of its signals, read little-endian, under `mask`) and
    values, and (once a repeat asks) the window `[start, end)` in which the samplers refuse all of those
    values."""

    __slots__ = ("bits", "end", "mask", "start", "values")

    def __init__(self, bits: int, mask: int, values: tuple[tuple[SignalSpec, float], ...]) -> None:
        self.bits, self.mask, self.values = bits, mask, values
        self.start: float = math.inf
        self.end: float | None = None


def payload_mask(plan: FramePlan) -> int:
    """The bits of a payload (read little-endian) that hold `plan`'s signals: frames equal under it decode
    to the same values. Every bit of the message for a plan cantools decodes."""
    if not plan.fast:
        return (1 << 8 * plan.length) - 1
    mask = 0
    for signal in plan.signals:
        field = signal.field
        assert field is not None  # plan.fast
        bits = field.mask << field.shift
        if field.big_endian:  # the same bytes, read the other way round
            bits = int.from_bytes(bits.to_bytes(plan.length, "big"), "little")
        mask |= bits
    return mask


_Due = tuple[float, float, FramePlan | None]


class FrameDecoder:
    """Decodes frames against a catalog's `frames()`; plans per id are built once.

    Integer signals (all of `protocols/bus.dbc`, most DBCs) are read as bit fields of the payload,
    without a cantools call per frame; a frame with a float signal or nested multiplexing goes through
    cantools' `decode_simple`. Both give the same numbers (the round-trip and Kona tests compare them)."""

    def __init__(
        self, frames: Mapping[int, FrameSpec], samplers: Mapping[str, SignalSampler] | None = None
    ) -> None:
        """With `samplers` (canonical name → the sampler its values go to), `decode` returns `NOT_DUE` for a
        frame that repeats the payload `remember`ed for its plan inside the window where those samplers
        refuse all of its values; the caller reports each kept value through `kept`."""
        self._plans: dict[int, FramePlan] = {}  # exact ids, and J1939 ids once matched
        self._samplers = samplers
        self._repeats: dict[FramePlan, _Repeat] = {}
        self._masks: dict[FramePlan, int] = {}  # `payload_mask` of each plan remembered
        # per signal: [start, end) in which its sampler refuses any value (None: no kept value yet)
        self._refusing: dict[str, tuple[float, float] | None] = {}
        # per plan: (start, end, what is due): in [start, end) the samplers refuse every value of the
        # plan's signals left out of "what is due" (a plan of its other signals; None: no signal is due)
        self._due: dict[FramePlan, _Due] = {}
        self._subplans: dict[tuple[FramePlan, int], FramePlan] = {}  # (plan, signals left out) → plan
        self._plans_of_signal: dict[str, list[FramePlan]] = {}
        self._registered: set[FramePlan] = set()
        self._by_pgn: dict[int, list[FrameSpec]] = {}
        self._pgn_plans: dict[tuple[int, int], FramePlan | None] = {}  # (PGN, sender) → plan
        for frame_id, spec in frames.items():
            if spec.message.protocol == "j1939" and spec.message.is_extended_frame:
                self._by_pgn.setdefault(split_id(frame_id).pgn, []).append(spec)
                # its plans are built per sender at their first frame (`_pgn_plan`); built once here only
                # so that cantools, if a plan that is not `fast` needs it, loads now and not mid-stream
                frame_plan(spec)
            else:
                self._plans[frame_id] = frame_plan(spec)  # loads cantools for a plan that is not `fast`

    @property
    def has_j1939(self) -> bool:
        return bool(self._by_pgn)

    def knows(self, frame_id: int) -> bool:
        """Whether a plan is kept for this exact identifier (a J1939 one once it has matched)."""
        return frame_id in self._plans

    def decode(self, frame: Frame) -> Decoded:
        if frame.is_error:
            return _SKIPPED[SkipKind.ERROR_FRAME]
        if frame.is_remote:
            return _SKIPPED[SkipKind.REMOTE_FRAME]
        plan = self._plans.get(frame.arbitration_id)
        if plan is None or plan.is_extended != frame.is_extended:
            if not frame.is_extended or not self._by_pgn:
                return _SKIPPED[SkipKind.UNKNOWN_ID]
            j1939 = split_id(frame.arbitration_id)
            plan = self._pgn_plan(j1939.pgn, j1939.source)
            if plan is None:
                return _SKIPPED[SkipKind.UNKNOWN_ID]
            if len(self._plans) < MAX_MATCHED_IDS and frame.arbitration_id not in self._plans:
                self._plans[frame.arbitration_id] = plan
        data = frame.data
        if len(data) < plan.length:
            return _SKIPPED[SkipKind.SHORT]
        if plan.by_mux is not None:
            selected = mux_plan(plan, data)
            if selected is None:
                return _SKIPPED[SkipKind.UNKNOWN_MUX]
            plan = selected
        if self._samplers is not None:
            ts = frame.ts
            due = self._due.get(plan)
            if due is None or not due[0] <= ts < due[1]:
                due = self.due_at(plan, ts)
            if due[2] is None:  # every value refused, whatever the payload
                return NOT_DUE
            plan = due[2]
        if (repeat := self._repeats.get(plan)) is not None and repeat.bits == int.from_bytes(
            data, "little"
        ) & repeat.mask:
            if repeat.end is None:
                self.settle(repeat)
            if repeat.start <= frame.ts < repeat.end:  # type: ignore[operator]  # every value refused again
                return NOT_DUE
        if plan.fast:  # the hot path: no further call
            return _decode_fields(plan, data)
        return self._decode_data(plan, data)

    def kept(self, name: str) -> None:
        """Signal `name`'s sampler kept a value: the windows of the frames carrying it end."""
        self._refusing.pop(name, None)
        for plan in self._plans_of_signal.get(name, ()):
            self._repeats.pop(plan, None)
            self._due.pop(plan, None)

    def due_tables(
        self,
    ) -> tuple[Mapping[int, FramePlan], Mapping[FramePlan, _Due], Mapping[FramePlan, _Repeat]]:
        """The exact-id plans, the time windows and the repeats of `decode`'s skip, for a caller's inline
        test (`Decoder.process_chunk`): a frame of a known id, neither error nor remote, of its plan's id
        width and at least its length, stamped inside a window of its plan, is not due when nothing of it is
        due, or when the plan of what is due has a repeat whose window (once computed) holds the stamp and
        whose bits the frame repeats. All are live."""
        return self._plans, self._due, self._repeats

    def due_at(self, plan: FramePlan, ts: float) -> _Due:
        """What of `plan` is due at `ts`: its signals whose samplers would not refuse any value then (a
        signal is refused whatever its value while its minimum interval, or heartbeat when shorter, runs
        since its last kept value), and the span around `ts` in which the others stay refused. Noted
        until a kept value of one of its signals (`kept`). Decoding more signals than due is harmless."""
        assert self._samplers is not None
        self._register(plan)
        start, end, left_out = -math.inf, math.inf, 0
        refusing = self._refusing
        for bit, signal in enumerate(plan.signals):
            name = signal.spec.name
            if name in refusing:
                window = refusing[name]
            else:  # NaN: a value no deadband holds
                refusing[name] = window = self._samplers[name].refusal_window(math.nan)
            if window is not None and window[0] <= ts < window[1]:
                left_out |= 1 << bit
                start, end = max(start, window[0]), min(end, window[1])
        due: FramePlan | None = plan
        if left_out == (1 << len(plan.signals)) - 1:
            due = None
        elif left_out:
            key = (plan, left_out)
            due = self._subplans.get(key)
            if due is None:
                kept = tuple(s for bit, s in enumerate(plan.signals) if not left_out >> bit & 1)
                self._subplans[key] = due = replace(plan, signals=kept)
        self._due[plan] = noted = (start, end, due)
        return noted

    def _register(self, plan: FramePlan) -> None:
        if plan not in self._registered:
            self._registered.add(plan)
            for signal in plan.signals:
                self._plans_of_signal.setdefault(signal.spec.name, []).append(plan)

    def remember(self, decoded: Decoded, data: bytes) -> None:
        """After `decoded` (of a frame with payload `data`) went through the samplers: until when they
        refuse all of its values again, so that a repeat of `data` in that window need not be decoded."""
        plan = decoded.plan
        if self._samplers is None or not isinstance(plan, FramePlan):
            return
        self.remember_values(plan, decoded.values, int.from_bytes(data[: plan.length], "little"))

    def remember_values(
        self, plan: FramePlan, values: tuple[tuple[SignalSpec, float], ...], payload: int
    ) -> None:
        """`remember` of `plan`'s `values`, decoded from the payload `payload` (read little-endian, at most
        the message's length)."""
        mask = self._masks.get(plan)
        if mask is None:
            self._masks[plan] = mask = payload_mask(plan)
        self._repeats[plan] = _Repeat(payload & mask, mask, values)  # its window: when a repeat comes
        self._register(plan)

    def settle(self, repeat: _Repeat) -> None:
        """Compute `repeat`'s window (once a repeat of its bits comes)."""
        assert self._samplers is not None
        start, end = -math.inf, math.inf
        for spec, value in repeat.values:
            window = self._samplers[spec.name].refusal_window(value)
            if window is None:  # not offered (cannot be after `remember`): decode it
                start, end = math.inf, -math.inf
                break
            start, end = max(start, window[0]), min(end, window[1])
        repeat.start, repeat.end = start, end

    def decode_group(self, pgn: int, source: int, data: bytes) -> Decoded:
        """A J1939 parameter group reassembled from a transport session, as a frame of that PGN."""
        plan = self._pgn_plan(pgn, source)
        return _SKIPPED[SkipKind.UNKNOWN_ID] if plan is None else self._decode_data(plan, data)

    def _pgn_plan(self, pgn: int, source: int) -> FramePlan | None:
        """The plan of the DBC message of `pgn` for frames from `source`, with the catalog signals that
        take that sender's frames; None when none does."""
        specs = self._by_pgn.get(pgn)
        if specs is None:
            return None
        key = (pgn, source)
        if key in self._pgn_plans:
            return self._pgn_plans[key]
        if len(specs) > 1:  # the DBC tells the senders of this PGN apart: each message its own
            specs = [spec for spec in specs if spec.message.frame_id & 0xFF == source]
        plan: FramePlan | None = None
        if len(specs) == 1:
            signals = tuple(s for s in specs[0].signals if s[1].source_address in (None, source))
            if signals:
                plan = frame_plan(replace(specs[0], signals=signals))
        self._pgn_plans[key] = plan
        return plan

    def _decode_data(self, plan: FramePlan, data: bytes) -> Decoded:
        if len(data) < plan.length:
            return _SKIPPED[SkipKind.SHORT]
        if plan.fast:
            selected = plan if plan.by_mux is None else mux_plan(plan, data)
            return _SKIPPED[SkipKind.UNKNOWN_MUX] if selected is None else _decode_fields(selected, data)
        from cantools.database.errors import DecodeError as CantoolsDecodeError  # loaded with `plan.message`

        assert plan.message is not None  # not fast
        try:  # decode() without the container dispatch; longer data truncated (allow_excess), shorter refused
            raw = plan.message.decode_simple(data, decode_choices=False, scaling=True)
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
        return Decoded(values=tuple(values), out_of_range=tuple(out_of_range), plan=plan)


def _decode_fields(plan: FramePlan, data: bytes) -> Decoded:
    """The bit-field path of `FrameDecoder.decode` (the hot loop of the agent: kept flat on purpose). A
    multiplexed frame comes here as the plan of its multiplexer value (`_mux_plan`)."""
    if len(data) > plan.length:
        data = data[: plan.length]
    little = int.from_bytes(data, "little")
    big = int.from_bytes(data, "big")
    values: list[tuple[SignalSpec, float]] = []
    out_of_range: list[SignalSpec] = []
    for signal in plan.signals:
        field = signal.field
        assert field is not None  # plan.fast
        raw = ((big if field.big_endian else little) >> field.shift) & field.mask
        if raw & field.sign_bit:
            raw -= field.sign_bit << 1
        value = float(raw * field.scale + field.offset)
        if signal.low <= value <= signal.high:
            values.append((signal.spec, value))
        else:
            out_of_range.append(signal.spec)
    return Decoded(values=tuple(values), out_of_range=tuple(out_of_range), plan=plan)


_SKIPPED = {kind: Decoded(skipped=kind) for kind in SkipKind}
NOT_DUE = Decoded()
"""What `FrameDecoder.decode` returns (this object) for a repeated frame whose values would all be refused."""


def decode_frame(frame: Frame, frames: Mapping[int, FrameSpec]) -> Decoded:
    """One-off convenience; a hot loop keeps one `FrameDecoder`."""
    return FrameDecoder(frames).decode(frame)


# --------------------------------------------------------------------------- the stage


@dataclass(slots=True)
class DecodeStats:
    """Counters of one bus's decoder, for the app to export."""

    frames_in: int = 0
    frames_decoded: int = 0  # frames that yielded at least one in-range catalog value
    frames_not_due: int = 0  # frames not decoded: the sampling policy would refuse all their values
    skipped: dict[str, int] = field(
        default_factory=lambda: {kind.value: 0 for kind in (*SkipKind, *TransportProblem)}
    )
    values_decoded: int = 0
    samples_kept: int = 0
    samples_suppressed: int = 0  # by the sampling policy


Dm1Hook = Callable[[float, int, Dm1], object]
"""Called with (frame time, sender address, its DM1) for every DM1 a bus carries."""


class Decoder:
    """The decode stage of one bus: frames → samples, through the catalog and its policies."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        bus: str = "",
        apply_policy: bool = True,
        on_dm1: Dm1Hook | None = None,
        skip_not_due: bool = True,
    ) -> None:
        """`skip_not_due=False` decodes every frame (the same samples; for tests and benches)."""
        self.bus = bus
        self.stats = DecodeStats()
        self.on_dm1 = on_dm1
        self._apply_policy = apply_policy
        self._samplers: dict[str, SignalSampler] = {
            spec.name: SignalSampler(spec.policy) for spec in catalog if spec.source != "gps"
        }
        self._narrow = apply_policy and skip_not_due
        self._decoder = FrameDecoder(catalog.frames(), self._samplers if self._narrow else None)
        dm1_specs = catalog.dm1_signals()
        self._j1939 = J1939Layer(dm1_specs) if self._decoder.has_j1939 or dm1_specs else None
        self._logged: set[str] = set()

    def set_policy(self, signal: str, policy: SamplingPolicy) -> bool:
        """Run `signal` with `policy` from now on (a remote config); False: this bus has no such signal."""
        sampler = self._samplers.get(signal)
        if sampler is None:
            return False
        sampler.policy = policy
        self._decoder.kept(signal)  # frames skipped as not due under the old policy are decoded again
        return True

    def ignores(self, id_text: str) -> bool:
        """Whether every frame of this identifier (hex, as candump writes it: 3 digits standard, 8 extended)
        is skipped as an unknown id whatever it carries: no plan has the id, and it is a standard one or
        the bus has no J1939 (which matches extended ids by PGN, transport sessions and DM1)."""
        try:
            frame_id = int(id_text, 16)
        except ValueError:
            return False
        if frame_id >> 29 or self._decoder.knows(frame_id):  # flags (error frames), or a plan
            return False
        return len(id_text) <= 3 or (not self._decoder.has_j1939 and self._j1939 is None)

    def process(self, frame: Frame) -> list[Sample]:
        """Decode one frame and apply the sampling policy; never raises on bad input."""
        self.stats.frames_in += 1
        if frame is UNKNOWN_ID_FRAME:
            self.stats.skipped[SkipKind.UNKNOWN_ID] += 1
            return []
        decoded = self._decoder.decode(frame)
        if decoded is NOT_DUE:
            self.stats.frames_not_due += 1
            return []
        if decoded.skipped is not None:
            if decoded.skipped is SkipKind.UNKNOWN_ID and self._j1939 is not None and frame.is_extended:
                offered = self._j1939.offer(frame)
                if offered is not None:
                    return self._j1939_groups(frame, offered.groups, offered.problems)
            self._skip(decoded.skipped, frame, 1)
            return []
        samples = self._keep(frame, decoded)
        if decoded.values and self._narrow:
            self._decoder.remember(decoded, frame.data)
        return samples

    def _j1939_groups(
        self, frame: Frame, groups: list[Group], problems: list[TransportProblem]
    ) -> list[Sample]:
        """Complete parameter groups (single DM1 frames, reassembled sessions) → samples; problems counted."""
        for problem in problems:
            self._skip(problem, frame, 1)
        samples: list[Sample] = []
        for group in groups:
            if group.pgn == PGN_DM1:
                decoded = self._dm1(frame, group)
            else:
                decoded = self._decoder.decode_group(group.pgn, group.source, group.data)
            if decoded.skipped is not None:
                self._skip(decoded.skipped, frame, 1)
            else:
                samples += self._keep(frame, decoded)
        return samples

    def _dm1(self, frame: Frame, group: Group) -> Decoded:
        assert self._j1939 is not None
        try:
            dm1 = parse_dm1(group.data)
        except Dm1Error:
            return _SKIPPED[SkipKind.DM1_MALFORMED]
        if self.on_dm1 is not None:
            self.on_dm1(group.ts, group.source, dm1)
        values = self._j1939.dm1_values(group.source, dm1)
        kept = tuple((spec, value) for spec, value in values if not math.isnan(value))
        return Decoded(values=kept, out_of_range=tuple(spec for spec, v in values if math.isnan(v)))

    def _keep(self, frame: Frame, decoded: Decoded) -> list[Sample]:
        """A decoded frame's values through the sampling policy."""
        stats = self.stats
        if decoded.out_of_range:
            self._skip(SkipKind.OUT_OF_RANGE, frame, len(decoded.out_of_range))
        if not decoded.values:
            return []
        stats.frames_decoded += 1
        stats.values_decoded += len(decoded.values)
        ts = frame.ts
        samples: list[Sample] = []
        for spec, value in decoded.values:
            if self._apply_policy:
                if not self._samplers[spec.name].offer(ts, value):
                    stats.samples_suppressed += 1
                    continue
                self._decoder.kept(spec.name)
            samples.append(Sample(ts, spec.name, value, spec.priority))
        stats.samples_kept += len(samples)
        return samples

    def process_chunk(self, frames: Sequence[Frame]) -> tuple[list[Sample], list[tuple[int, int]]]:
        """`process` over `frames` in order: their samples, and after each frame that yielded some, (frames
        through so far, samples so far). The not-due tests of `FrameDecoder.decode` run inline here, so a
        frame that is not due costs no call; never raises."""
        decoder = self._decoder
        plans, due, repeats = decoder.due_tables()
        narrow = self._narrow
        samples: list[Sample] = []
        ends: list[tuple[int, int]] = []
        not_due = unknown = 0
        index = 0
        for frame in frames:
            index += 1
            if frame is UNKNOWN_ID_FRAME:
                unknown += 1
                continue
            _, ts, frame_id, extended, data, error, remote = frame
            plan = plans.get(frame_id)
            if (
                narrow
                and plan is not None
                and plan.is_extended == extended
                and not (error or remote)
                and len(data) >= plan.length
            ):
                if plan.by_mux is not None:
                    plan = mux_plan(plan, data)  # the plan of its multiplexer value (None: unknown)
                if plan is not None:
                    window = due.get(plan)
                    if window is None or not window[0] <= ts < window[1]:
                        window = decoder.due_at(plan, ts)
                    left = window[2]  # the plan of the signals due: none, or not if they repeat
                    if left is None:
                        not_due += 1
                        continue
                    repeat = repeats.get(left)
                    if repeat is not None and repeat.bits == int.from_bytes(data, "little") & repeat.mask:
                        if repeat.end is None:
                            decoder.settle(repeat)
                        if repeat.start <= ts < repeat.end:  # type: ignore[operator]  # settled
                            not_due += 1
                            continue
                    if left.fast:  # what `process` would do from here, without looking the plan up again
                        got = self._process_due(frame, left)
                        if got:
                            samples += got
                            ends.append((index, len(samples)))
                        continue
            got = self._process_guarded(frame)
            if got:
                samples += got
                ends.append((index, len(samples)))
        self.stats.frames_in += not_due + unknown
        self.stats.frames_not_due += not_due
        self.stats.skipped[SkipKind.UNKNOWN_ID] += unknown
        return samples, ends

    async def run(
        self, inbox: asyncio.Queue[Frame] | asyncio.Queue[list[Frame]], outbox: asyncio.Queue[Sample]
    ) -> None:
        """Until cancelled: frames from `inbox` → samples to `outbox` (waits when it is full, so a
        slow consumer slows the decoder, and the sources' bounded queues count the drops). The inbox holds
        frames (a live bus) or chunks of frames (`list[Frame]`, a replay). `inbox.task_done()` follows each
        item once all its samples are put, so `await inbox.join()` drains the stage; an inbox with a
        `halt()` method (`ReplayFrameQueue`) hears of an item cut short before its samples were all put:
        of a chunk, how many of its frames had all their samples put (`halt(frames, samples_beyond)`)."""
        halt: Callable[[int, int], object] | None = getattr(inbox, "halt", None)
        while True:
            item = await inbox.get()
            if isinstance(item, list):
                try:
                    await self._put_chunk(item, outbox, halt)
                finally:
                    inbox.task_done()
                continue
            batch = [item]  # then what is already there: one await per batch, not per frame
            while len(batch) < RUN_BATCH and not inbox.empty():
                batch.append(inbox.get_nowait())  # type: ignore[arg-type]  # a live bus: frames only
            done = 0
            try:
                for frame in batch:
                    try:
                        for sample in self._process_guarded(frame):
                            if outbox.full():
                                await outbox.put(sample)
                            else:
                                outbox.put_nowait(sample)
                    except BaseException:  # cancelled while waiting to put: the frame is cut short
                        if halt is not None:
                            halt(0, 0)
                        raise
                    finally:
                        done += 1
                        inbox.task_done()
            finally:  # cut short mid-batch: the frames not processed are done too (a replay has halted)
                for _ in range(len(batch) - done):
                    inbox.task_done()

    async def _put_chunk(
        self, chunk: list[Frame], outbox: asyncio.Queue[Sample], halt: Callable[[int, int], object] | None
    ) -> None:
        samples, ends = self.process_chunk(chunk)
        room = outbox.maxsize - outbox.qsize() if outbox.maxsize > 0 else len(samples)
        if len(samples) <= room:  # the usual case: no await, nothing to cut short
            for sample in samples:
                outbox.put_nowait(sample)
            return
        put = 0
        try:
            for sample in samples:
                if outbox.full():
                    await outbox.put(sample)
                else:
                    outbox.put_nowait(sample)
                put += 1
        except BaseException:  # cancelled while waiting to put: the chunk is cut short
            if halt is not None:  # the frames before the first one with a sample not put are through
                frames_through, samples_through = len(chunk), len(samples)
                before = 0
                for frames_done, samples_done in ends:
                    if samples_done > put:
                        frames_through, samples_through = frames_done - 1, before
                        break
                    before = samples_done
                halt(frames_through, put - samples_through)
            raise

    def _process_due(self, frame: Frame, plan: FramePlan) -> list[Sample]:
        """`process` of a frame whose plan of the signals due is `plan` (fast), not skipped: `_decode_fields`,
        `_keep` and `FrameDecoder.remember` in one pass (the agent's costliest frames)."""
        try:
            stats = self.stats
            stats.frames_in += 1
            data = frame.data
            length = plan.length
            whole = data if len(data) <= length else data[:length]
            little = int.from_bytes(whole, "little")
            big = int.from_bytes(whole, "big")
            values: list[tuple[SignalSpec, float]] = []
            out_of_range = 0
            for signal in plan.signals:
                field = signal.field
                assert field is not None  # plan.fast
                raw = ((big if field.big_endian else little) >> field.shift) & field.mask
                if raw & field.sign_bit:
                    raw -= field.sign_bit << 1
                value = float(raw * field.scale + field.offset)
                if signal.low <= value <= signal.high:
                    values.append((signal.spec, value))
                else:
                    out_of_range += 1
            if out_of_range:
                self._skip(SkipKind.OUT_OF_RANGE, frame, out_of_range)
            if not values:
                return []
            stats.frames_decoded += 1
            stats.values_decoded += len(values)
            ts = frame.ts
            samplers = self._samplers
            samples: list[Sample] = []
            for spec, value in values:
                if samplers[spec.name].offer(ts, value):
                    self._decoder.kept(spec.name)
                    samples.append(Sample(ts, spec.name, value, spec.priority))
            stats.samples_suppressed += len(values) - len(samples)
            stats.samples_kept += len(samples)
            self._decoder.remember_values(plan, tuple(values), little)
            return samples
        except Exception:  # a bug must cost one frame, not the stage
            self._skip(SkipKind.UNDECODABLE, frame, 1)
            log.exception("bus %s: decoding frame 0x%X failed", self.bus, frame.arbitration_id)
            return []

    def _process_guarded(self, frame: Frame) -> list[Sample]:
        try:
            return self.process(frame)
        except Exception:  # a bug must cost one frame, not the stage
            self._skip(SkipKind.UNDECODABLE, frame, 1)
            log.exception("bus %s: decoding frame 0x%X failed", self.bus, frame.arbitration_id)
            return []

    def _skip(self, kind: SkipKind | TransportProblem, frame: Frame, count: int) -> None:
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
    sample: `ts,signal,value,message,dbc_signal` (floats in their shortest exact form; a DM1 value's
    message is "DM1" and its dbc_signal the catalog's DM1 field)."""
    decoder = Decoder(catalog, bus=log_path.stem, apply_policy=apply_policy)
    by_name = {
        spec.name: (spec.message or spec.source.upper(), spec.dbc_signal or spec.dm1_field)
        for spec in catalog
    }
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    bus = log_path.stem
    with FrameLog(log_path, bus) as frames:
        for frame in frames:
            for sample in decoder.process(frame):
                message, dbc_signal = by_name[sample.signal]
                writer.writerow((repr(sample.ts), sample.signal, repr(sample.value), message, dbc_signal))
    return decoder.stats
