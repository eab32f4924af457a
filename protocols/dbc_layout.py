"""What a decoder needs of a DBC message, as plain data: its identifier, length, protocol and where each
signal sits (bits, byte order, sign, linear conversion, range, multiplexing).

cantools reads the DBC (`protocols.dbc`); `message_layout` copies the facts the agent's decode plans are
built from (`agent.decode_plans`) out of cantools' `Message`, so a cached catalog (`protocols.catalog_cache`)
can carry them and the running agent needs cantools only for a message no plain bit-field plan decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cantools.database.can import Message, Signal


@dataclass(frozen=True, slots=True)
class SignalLayout:
    name: str
    start: int  # the DBC's start bit (cantools' numbering)
    length: int
    big_endian: bool  # Motorola byte order
    is_signed: bool
    is_float: bool
    # `scale` and `offset` are cantools' own int or float conversion (else only cantools decodes it)
    linear: bool
    scale: int | float
    offset: int | float
    minimum: int | float | None
    maximum: int | float | None
    is_multiplexer: bool
    multiplexer_signal: str | None  # the multiplexer this signal depends on, if any
    multiplexer_ids: tuple[int, ...] | None  # the multiplexer values that carry it


@dataclass(frozen=True, slots=True)
class MessageLayout:
    name: str
    frame_id: int  # as python-can reports it: without the extended flag
    is_extended_frame: bool
    protocol: str | None  # cantools' protocol: "j1939" or None
    length: int
    signals: tuple[SignalLayout, ...]  # every signal of the message, in the DBC's order
    is_multiplexed: bool
    # The top level of cantools' signal tree: multiplexer name → the values it defines (a value may carry
    # no signal but the multiplexer itself).
    mux_values: Mapping[str, tuple[int, ...]]

    def signal(self, name: str) -> SignalLayout:
        for signal in self.signals:
            if signal.name == name:
                return signal
        raise KeyError(name)


def message_layout(message: Message) -> MessageLayout:
    """The plain layout of a cantools message (no cantools object is kept)."""
    mux_values: dict[str, tuple[int, ...]] = {}
    for node in message.signal_tree:
        if isinstance(node, dict):
            for name, by_value in node.items():
                mux_values[name] = (*mux_values.get(name, ()), *(int(value) for value in by_value))
    return MessageLayout(
        name=message.name,
        frame_id=int(message.frame_id),
        is_extended_frame=bool(message.is_extended_frame),
        protocol=message.protocol,
        length=int(message.length),
        signals=tuple(_signal_layout(signal) for signal in message.signals),
        is_multiplexed=bool(message.is_multiplexed()),
        mux_values=mux_values,
    )


def _signal_layout(signal: Signal) -> SignalLayout:
    conversion = signal.conversion
    scale, offset = getattr(conversion, "scale", None), getattr(conversion, "offset", None)
    linear = isinstance(scale, int | float) and isinstance(offset, int | float)
    if not (isinstance(scale, int | float) and isinstance(offset, int | float)):
        scale, offset = float(signal.scale), float(signal.offset)
    mux_ids = signal.multiplexer_ids
    return SignalLayout(
        name=signal.name,
        start=int(signal.start),
        length=int(signal.length),
        big_endian=signal.byte_order != "little_endian",
        is_signed=bool(signal.is_signed),
        is_float=bool(signal.is_float),
        linear=linear,
        scale=scale,
        offset=offset,
        minimum=signal.minimum,
        maximum=signal.maximum,
        is_multiplexer=bool(signal.is_multiplexer),
        multiplexer_signal=signal.multiplexer_signal,
        multiplexer_ids=tuple(int(value) for value in mux_ids) if mux_ids else None,
    )
