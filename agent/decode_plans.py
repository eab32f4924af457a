"""Decode plans: where each catalog signal of a CAN frame sits in its payload, built once per frame id from
the DBC message's plain layout (`protocols.dbc_layout`; `agent.decode` runs them). Building them needs no
cantools.

Integer signals are bit fields of the payload read as one integer; a frame with a float signal, an odd
layout or nested multiplexing is marked not `fast` and goes through cantools (`agent.decode` loads it for
such a frame only). A fast multiplexed frame
has one plan per multiplexer value the DBC defines (`FramePlan.by_mux`, chosen by `mux_plan`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from protocols.catalog import FrameSpec, SignalSpec
from protocols.dbc_layout import SignalLayout

if TYPE_CHECKING:
    from cantools.database.can import Message


@dataclass(frozen=True, slots=True)
class BitField:
    """Where an integer signal sits in a payload read as one integer, and its linear conversion.

    Little-endian (Intel) signals are contiguous bits of the payload read little-endian, big-endian
    (Motorola) ones of the payload read big-endian; `shift` is the position of the signal's least
    significant bit in that integer. The value is cantools' own arithmetic, `raw * scale + offset`,
    with cantools' own `scale` and `offset` numbers (int or float, as it read them), so the result is the
    same number."""

    big_endian: bool
    shift: int
    mask: int
    sign_bit: int  # 0 for an unsigned signal
    scale: int | float
    offset: int | float


@dataclass(frozen=True, slots=True)
class SignalPlan:
    dbc_signal: str
    spec: SignalSpec
    low: float  # -inf when the DBC gives no range
    high: float
    field: BitField | None  # None: this frame goes through cantools
    mux_ids: frozenset[int] | None  # the multiplexer values that carry it; None: every frame


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: the key of its `DueSignals`
class FramePlan:
    spec: FrameSpec
    is_extended: bool
    length: int
    signals: tuple[SignalPlan, ...]
    fast: bool  # every catalog signal has a bit field: no cantools call per frame
    mux: BitField | None = None
    # A fast multiplexed frame: per multiplexer value the DBC defines, the plan of the signals it carries.
    by_mux: Mapping[int, FramePlan] | None = None
    message: Message | None = None  # cantools' message, which decodes a plan that is not `fast`


def bit_field(signal: SignalLayout, length: int) -> BitField | None:
    """The signal as a bit field, or None when only cantools should decode it (floats, odd layouts)."""
    if signal.is_float or not signal.linear:
        return None
    if not signal.big_endian:
        shift = signal.start
    else:  # sawtooth start bit of the most significant bit → its position in the big-endian integer
        msb = (length - 1 - signal.start // 8) * 8 + signal.start % 8
        shift = msb - (signal.length - 1)
    if shift < 0 or shift + signal.length > 8 * length:
        return None
    return BitField(
        big_endian=signal.big_endian,
        shift=shift,
        mask=(1 << signal.length) - 1,
        sign_bit=1 << (signal.length - 1) if signal.is_signed else 0,
        scale=signal.scale,
        offset=signal.offset,
    )


def signal_plan(spec: FrameSpec, dbc_signal: str, signal_spec: SignalSpec) -> SignalPlan:
    signal = spec.message.signal(dbc_signal)
    low, high = signal.minimum, signal.maximum
    if low == 0 and high == 0:
        low = high = None  # [0|0] is how many DBC writers say "no range given"
    # Raw values are whole steps of `scale`: half a step of slack absorbs float rounding only.
    slack = abs(float(signal.scale)) / 2 if signal.scale else 1e-9
    mux_ids = signal.multiplexer_ids
    return SignalPlan(
        dbc_signal=dbc_signal,
        spec=signal_spec,
        low=-math.inf if low is None else float(low) - slack,
        high=math.inf if high is None else float(high) + slack,
        field=bit_field(signal, spec.message.length),
        mux_ids=frozenset(mux_ids) if signal.multiplexer_signal is not None and mux_ids else None,
    )


def frame_plan(spec: FrameSpec) -> FramePlan:
    """The plan of a frame's catalog signals; one that is not `fast` carries cantools' message (which loads
    cantools and the DBC, once per catalog)."""
    plan = _layout_plan(spec)
    return plan if plan.fast else replace(plan, message=spec.cantools_message())


def _layout_plan(spec: FrameSpec) -> FramePlan:
    message = spec.message
    length = message.length
    signals = tuple(signal_plan(spec, name, s) for name, s in spec.signals)
    fast = all(signal.field is not None for signal in signals)
    plan = FramePlan(spec, message.is_extended_frame, length, signals, fast)
    if not message.is_multiplexed:
        return plan
    # One level of multiplexing, one multiplexer: decoded here; anything else goes through cantools.
    multiplexers = {s.name for s in message.signals if s.is_multiplexer}
    nested = any(s.multiplexer_signal is not None for s in message.signals if s.is_multiplexer)
    if len(multiplexers) != 1 or nested:
        return replace(plan, fast=False)
    mux_signal = message.signal(next(iter(multiplexers)))
    mux = bit_field(mux_signal, length)
    # cantools' tree: a mux value may carry no signal but itself (is not unknown)
    values = frozenset(message.mux_values.get(mux_signal.name, ()))
    if mux is None or not values:
        return replace(plan, fast=False)
    if not fast:
        return replace(plan, mux=mux)  # cantools decodes it, mux and all
    by_mux = {
        value: replace(plan, signals=tuple(s for s in signals if s.mux_ids is None or value in s.mux_ids))
        for value in values
    }
    return replace(plan, mux=mux, by_mux=by_mux)


def mux_plan(plan: FramePlan, data: bytes) -> FramePlan | None:
    """The plan of a fast multiplexed frame's multiplexer value; None for a value the DBC does not define."""
    mux, by_mux = plan.mux, plan.by_mux
    assert mux is not None and by_mux is not None
    whole = int.from_bytes(data[: plan.length], "big" if mux.big_endian else "little")
    raw = (whole >> mux.shift) & mux.mask
    if raw & mux.sign_bit:
        raw -= mux.sign_bit << 1
    return by_mux.get(int(raw * mux.scale + mux.offset))
