"""The SLCAN line parser and reader (agent.sources.slcan): pure, never raising, and every valid frame
around garbage survives."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.sources.slcan import (
    MAX_LINE_BYTES,
    BadLine,
    BadLineReason,
    SlcanFrame,
    SlcanLineReader,
    parse_slcan_line,
)


def encode(frame: SlcanFrame) -> bytes:
    """A CAN 2.0 frame as an adapter sends it (python-can's `slcanBus.send` format)."""
    if frame.is_extended:
        head = f"{'R' if frame.is_remote else 'T'}{frame.arbitration_id:08X}"
    else:
        head = f"{'r' if frame.is_remote else 't'}{frame.arbitration_id:03X}"
    payload = "" if frame.is_remote else frame.data.hex().upper()
    return f"{head}{frame.dlc}{payload}\r".encode("ascii")


@st.composite
def can20_frames(draw: st.DrawFn) -> SlcanFrame:
    extended = draw(st.booleans())
    remote = draw(st.booleans())
    dlc = draw(st.integers(0, 8))
    ident = draw(st.integers(0, 0x1FFFFFFF if extended else 0x7FF))
    data = b"" if remote else draw(st.binary(min_size=dlc, max_size=dlc))
    return SlcanFrame(ident, extended, data, is_remote=remote, dlc=dlc)


def frames_of(items: list[SlcanFrame | BadLine]) -> list[SlcanFrame]:
    return [item for item in items if isinstance(item, SlcanFrame)]


@pytest.mark.parametrize(
    ("line", "frame"),
    [
        (b"t1232AABB", SlcanFrame(0x123, False, b"\xaa\xbb", dlc=2)),
        (b"T1ABCDEF08" + b"00" * 8, SlcanFrame(0x1ABCDEF0, True, bytes(8), dlc=8)),
        (b"r7FF3", SlcanFrame(0x7FF, False, b"", is_remote=True, dlc=3)),
        (b"R000000010", SlcanFrame(1, True, b"", is_remote=True, dlc=0)),
        (b"t1001ff1234", SlcanFrame(0x100, False, b"\xff", dlc=1)),  # with a Z1 timestamp
        (b"d123A" + b"11" * 16, SlcanFrame(0x123, False, b"\x11" * 16, is_fd=True, dlc=16)),
    ],
)
def test_valid_lines_parse(line: bytes, frame: SlcanFrame) -> None:
    assert parse_slcan_line(line) == frame


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe", BadLineReason.NOT_ASCII),
        (b"t12\x003AA", BadLineReason.NOT_ASCII),
        (b"hello", BadLineReason.UNKNOWN_TYPE),
        (b"t12", BadLineReason.BAD_LENGTH),
        (b"tXYZ2AABB", BadLineReason.BAD_ID),
        (b"t8002AABB", BadLineReason.BAD_ID),  # 0x800 is no 11-bit id
        (b"t1239" + b"00" * 9, BadLineReason.BAD_DLC),
        (b"t1232ZZ11", BadLineReason.BAD_HEX),
        (b"t1232AABBC", BadLineReason.BAD_LENGTH),
        (b"t1232AA", BadLineReason.BAD_LENGTH),
    ],
)
def test_bad_lines_say_why(line: bytes, reason: BadLineReason) -> None:
    assert parse_slcan_line(line) == BadLine(reason, line)


def test_reader_counts_each_bad_line_once_and_keeps_the_frames() -> None:
    good = SlcanFrame(0x123, False, b"\x01\x02", dlc=2)
    stream = (
        encode(good)
        + b"t12\r"  # truncated
        + b"T1234"  # no CR: glues onto the next frame
        + encode(good)
        + b"\x07"  # the adapter's error reply
        + b"x" * (3 * MAX_LINE_BYTES)  # overlong, no CR
        + encode(good)
        + b"\r"  # the adapter's OK: not a bad line
    )
    items = SlcanLineReader().feed(stream)
    assert frames_of(items) == [good, good, good]
    reasons = [item.reason for item in items if isinstance(item, BadLine)]
    assert reasons == [
        BadLineReason.BAD_LENGTH,
        BadLineReason.BAD_ID,
        BadLineReason.ADAPTER_ERROR,
        BadLineReason.OVERLONG,
    ]


@given(
    st.lists(st.tuples(can20_frames(), st.binary(max_size=300), st.booleans()), max_size=12),
    st.lists(st.integers(1, 64), min_size=1, max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_every_valid_frame_survives_garbage_in_any_chunking(
    pieces: list[tuple[SlcanFrame, bytes, bool]], chunk_sizes: list[int]
) -> None:
    # GIVEN frames, each preceded by garbage that alone holds no frame, with or without a CR after it
    for _, garbage, _ in pieces:
        assume(not frames_of(SlcanLineReader().feed(garbage + b"\r")))
    stream = b"".join(
        garbage + (b"\r" if terminated else b"") + encode(frame) for frame, garbage, terminated in pieces
    )
    # WHEN the stream arrives in chunks of any size
    reader = SlcanLineReader()
    items: list[SlcanFrame | BadLine] = []
    pos, turn = 0, 0
    while pos < len(stream):
        size = chunk_sizes[turn % len(chunk_sizes)]
        items += reader.feed(stream[pos : pos + size])
        pos, turn = pos + size, turn + 1
    # THEN every frame comes out, in order, and nothing else does
    assert frames_of(items) == [frame for frame, _, _ in pieces]
    # AND each piece of garbage with a byte other than CR (an empty line is the adapter's OK) is counted
    garbage_pieces = sum(1 for _, garbage, _ in pieces if garbage.replace(b"\r", b""))
    assert sum(1 for item in items if isinstance(item, BadLine)) >= garbage_pieces


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_the_reader_never_raises_and_stays_bounded(data: bytes) -> None:
    reader = SlcanLineReader()
    reader.feed(data)
    assert len(reader._line) <= MAX_LINE_BYTES
