"""The SLCAN live path (`SlcanLineReader.read`, `IdFilter`): the same frames, bad lines and counts as the
tolerant per-line path followed by python-can's filter, whatever the chunking; unwanted ids counted."""

from __future__ import annotations

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.can import catalog_filters
from agent.sources.slcan import (
    BadLine,
    BadLineReason,
    IdFilter,
    SlcanChunk,
    SlcanFrame,
    SlcanLineReader,
)
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from tests.unit.test_slcan import can20_frames, encode

FILTERS = catalog_filters(load_catalog(DEFAULT_CATALOG))
CATALOG_IDS = IdFilter(FILTERS)
KNOWN = SlcanFrame(0x100, False, b"\x01\x02", dlc=2)  # a catalog id
KNOWN_J1939 = SlcanFrame(0x18FEF1FE, True, bytes(8), dlc=8)  # CCVS1 (PGN FEF1) from another sender
OTHER = SlcanFrame(0x7AB, False, b"\x03", dlc=1)  # no catalog id
OTHER_EXT = SlcanFrame(0x0CF00400, True, bytes(8), dlc=8)


def read_in_chunks(reader: SlcanLineReader, stream: bytes, sizes: list[int]) -> SlcanChunk:
    total = SlcanChunk([], [], 0)
    pos = turn = 0
    while pos < len(stream):
        size = sizes[turn % len(sizes)]
        chunk = reader.read(stream[pos : pos + size])
        total.frames += chunk.frames
        total.bad += chunk.bad
        total.unwanted += chunk.unwanted
        pos, turn = pos + size, turn + 1
    return total


def feed_in_chunks(stream: bytes, sizes: list[int]) -> list[SlcanFrame | BadLine]:
    reader = SlcanLineReader()
    items: list[SlcanFrame | BadLine] = []
    pos = turn = 0
    while pos < len(stream):
        size = sizes[turn % len(sizes)]
        items += reader.feed(stream[pos : pos + size])
        pos, turn = pos + size, turn + 1
    return items


def python_can_matches(bus: can.BusABC, frame: SlcanFrame) -> bool:
    message = can.Message(arbitration_id=frame.arbitration_id, is_extended_id=frame.is_extended)
    return bus._matches_filters(message)


def line(frame: SlcanFrame, *, timestamp: bytes = b"", lower: bool = False) -> bytes:
    text = encode(frame)[:-1] + timestamp
    return (text[:1] + text[1:].lower() if lower else text) + b"\r"


def test_a_bad_line_in_a_chunk_costs_only_itself() -> None:
    # GIVEN one read holding good frames, of catalog ids and others, around a bad line
    chunk = line(KNOWN) + line(OTHER) + b"t1232ZZ11\r" + line(KNOWN_J1939) + line(OTHER_EXT) + line(KNOWN)
    # WHEN it is read
    got = SlcanLineReader(CATALOG_IDS).read(chunk)
    # THEN the catalog frames on both sides of it survive, the bad line is counted, the others are counted
    assert got.frames == [KNOWN, KNOWN_J1939, KNOWN]
    assert [bad.reason for bad in got.bad] == [BadLineReason.BAD_HEX]
    assert got.unwanted == 2


def test_a_well_formed_chunk_is_not_parsed_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = SlcanLineReader(CATALOG_IDS)

    def per_line(self: SlcanLineReader, data: bytes) -> list[SlcanFrame | BadLine]:
        raise AssertionError("the per-line path was taken")

    monkeypatch.setattr(SlcanLineReader, "feed", per_line)
    # a frame split across reads, the adapter's OK, a timestamped frame, lower-case hex, a remote frame
    first = reader.read(line(OTHER) + line(KNOWN)[:4])
    rest = reader.read(
        line(KNOWN)[4:]
        + b"\r"
        + line(KNOWN_J1939, timestamp=b"1A2B")
        + line(KNOWN, lower=True)
        + b"r1003\r"
        + line(OTHER_EXT)
    )
    assert first.frames == [] and first.unwanted == 1
    assert rest.frames == [KNOWN, KNOWN_J1939, KNOWN, SlcanFrame(0x100, False, b"", is_remote=True, dlc=3)]
    assert rest.unwanted == 1 and rest.bad == []


garbage = st.sampled_from(
    [
        *(b"t12\r", b"t1232ZZ11\r", b"tXYZ2AABB\r", b"T1234", b"\xff\xfe\r", b"\x07", b"x" * 200, b"\r"),
        *(b"t1002AABBCC\r", b"t1002AAB\r", b"t1009\r", b"t8001AA\r", b"T200000000\r", b"d1001AA\r"),
        *(b"t1001AA12\r", b"t1001AA1234\r", b"t1001AA123456\r", b"r1001AA\r", b"r1001234\r", b""),
    ]
)


@given(
    st.lists(st.tuples(can20_frames(), garbage, st.booleans()), max_size=30),
    st.lists(st.integers(1, 300), min_size=1, max_size=6),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_read_is_feed_then_python_cans_filter_in_any_chunking(
    pieces: list[tuple[SlcanFrame, bytes, bool]], sizes: list[int], catalog_only: bool
) -> None:
    # GIVEN frames (about half of the catalog's ids) with garbage between some, in reads of any size
    stream = b"".join(
        (g if dirty else b"") + encode(KNOWN if frame.arbitration_id % 2 and not frame.is_remote else frame)
        for frame, g, dirty in pieces
    )
    filters = FILTERS if catalog_only else None
    bus = can.Bus(interface="virtual", channel="test_slcan_fast", can_filters=filters)
    try:
        # WHEN the live path reads it through the filters
        got = read_in_chunks(SlcanLineReader(IdFilter(filters)), stream, sizes)
        # THEN it yields what the per-line path yields, filtered as python-can filters, every frame counted
        items = feed_in_chunks(stream, sizes)
        frames = [item for item in items if isinstance(item, SlcanFrame)]
        assert got.frames == [frame for frame in frames if python_can_matches(bus, frame)]
        assert got.unwanted == sum(1 for frame in frames if not python_can_matches(bus, frame))
        assert got.bad == [item for item in items if isinstance(item, BadLine)]
    finally:
        bus.shutdown()


@given(st.integers(0, 0x1FFFFFFF), st.booleans())
@settings(max_examples=500, deadline=None)
def test_id_filter_agrees_with_python_can(arbitration_id: int, extended: bool) -> None:
    if not extended:
        arbitration_id &= 0x7FF
    frame = SlcanFrame(arbitration_id, extended, b"")
    bus = can.Bus(interface="virtual", channel="test_id_filter", can_filters=FILTERS)
    try:
        assert CATALOG_IDS.accepts(arbitration_id, extended) == python_can_matches(bus, frame)
    finally:
        bus.shutdown()
