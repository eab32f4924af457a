"""The SavvyCAN/GVRET and candump line parsers: what SavvyCAN's variants write is read, a malformed row
says why, and a frame written the SavvyCAN way reads back as itself (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.logformats import MalformedLines
from agent.logformats.candump import FORMAT_NAME, candump_frame, candump_frames
from agent.logformats.savvycan import HEADER, savvycan_columns, savvycan_frame
from agent.records import UNKNOWN_ID_FRAME, Frame

V2 = savvycan_columns(HEADER)
V1 = savvycan_columns("Time Stamp,ID,Extended,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8")


def test_headers_are_recognised_by_their_names() -> None:
    assert V2 is not None and V2.first_data == 6
    assert V1 is not None and V1.first_data == 5
    assert savvycan_columns("time stamp, id, extended, dir, bus, len, d1") is not None
    assert savvycan_columns("timestamp,arbitration_id,extended,remote,error,dlc,data") is None
    assert savvycan_columns("Date,Time,Soc,Speed") is None


def test_savvycans_own_row_and_its_variants() -> None:
    assert V2 is not None and V1 is not None
    # as SavvyCAN's saveNativeCSVFile writes it: 8 data columns, zero-padded past LEN, trailing comma
    row = "39747828,000005EB,false,Rx,0,3,E8,45,85,00,00,00,00,00,"
    assert savvycan_frame("b", V2, row) == Frame("b", 39.747828, 0x5EB, False, bytes.fromhex("E84585"))
    assert savvycan_frame("b", V1, "39747828,18FEF100,true,0,2,01,02,00,00,00,00,00,00,") == Frame(
        "b", 39.747828, 0x18FEF100, True, b"\x01\x02"
    )
    assert savvycan_frame("b", V2, "1,0x123,1,Tx,1,0,") == Frame("b", 1e-6, 0x123, True, b"")
    assert savvycan_frame("b", V2, "\n") is None


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ("abc,000005EB,false,Rx,0,1,E8,", "invalid literal"),
        ("1,5EB", "fewer than the header"),
        ("1,5EB,yes,Rx,0,1,E8,", "not true/false"),
        ("1,5EB,false,Rx,0,8,E8,45,", "LEN 8 but 2 data columns"),
        ("1,5EB,false,Rx,0,65,E8,", "out of 0..64"),
        ("1,3FFFFFFF,true,Rx,0,1,E8,", "out of range"),
        ("1,5EB,false,Rx,0,1,1FF,", "bytes must be in range"),
        ("-5,5EB,false,Rx,0,1,E8,", "negative time stamp"),
    ],
)
def test_malformed_rows_say_why(row: str, why: str) -> None:
    assert V2 is not None
    with pytest.raises(ValueError, match=why):
        savvycan_frame("b", V2, row)


@given(
    time_us=st.integers(0, 2**53 // 1000),
    arbitration_id=st.integers(0, 0x7FF),
    data=st.binary(max_size=8),
)
def test_a_frame_written_both_ways_reads_back_the_same(
    time_us: int, arbitration_id: int, data: bytes
) -> None:
    # GIVEN one instant written as SavvyCAN (integer µs) and as candump (seconds with 6 decimals)
    assert V2 is not None
    padded = data.ljust(8, b"\x00")
    row = f"{time_us},{arbitration_id:08X},false,Rx,0,{len(data)}," + "".join(f"{b:02X}," for b in padded)
    seconds, micros = divmod(time_us, 1_000_000)
    line = f"({seconds}.{micros:06d}) can0 {arbitration_id:03X}#{data.hex()}"
    # THEN both read to the same frame, the time to the same float
    assert savvycan_frame("b", V2, row) == candump_frame("b", line)


_CANDUMP_ODD_LINES = [
    "(1700000000.000100) can0 20000080#0000000000000000",  # an error frame
    "(1700000000.000100) can0 7FFFFFFFF#01",  # bits above the 29-bit id
    "(1700000000.000100) can0 123#R",  # remote
    "(1700000000.000100) can0 123##1AABB",  # CAN FD
    "(1700000000.000100) can0 123#ABC",  # odd hex digits
    "(1700000000.000100) can0 123#ZZ",  # not hex
    "1700000000.000100 can0 123#AA",  # no parentheses
    "(1700000000.000100) can0 123AA",  # no '#'
    "(1700000000.000100) can0 12G#AA",  # bad id
    "(abc) can0 123#AA",  # bad timestamp
    "(1700000000.000100) can0 123#AA X",  # a fourth field that is no direction
    "(1700000000.000100) can0 123#",  # no data
    "",
]


@given(
    st.lists(
        st.one_of(
            st.sampled_from(_CANDUMP_ODD_LINES),
            st.builds(
                lambda ts, frame_id, width, data, direction: (
                    f"({ts:.6f}) can0 {frame_id:0{width}X}#{data.hex().upper()}{direction}"
                ),
                st.floats(0, 2e9),
                st.integers(0, 0x1FFFFFFF),
                st.sampled_from([3, 8]),
                st.binary(max_size=8),
                st.sampled_from(["", " R", " T"]),
            ),
        ),
        max_size=30,
    )
)
def test_candump_lines_read_in_bulk_as_one_by_one(lines: list[str]) -> None:
    # GIVEN good lines among odd ones; THEN the log's reader (fast path) yields what the line parser does
    expected: list[Frame] = []
    bad = 0
    for line in lines:
        try:
            frame = candump_frame("b", line)
        except ValueError:
            bad += 1
            continue
        if frame is not None:
            expected.append(frame)
    malformed = MalformedLines(Path("x.log"), FORMAT_NAME)
    assert list(candump_frames("b", lines, malformed)) == expected
    assert malformed.count == bad


def test_frames_of_an_ignored_id_after_its_first_are_read_no_further_than_the_id() -> None:
    # GIVEN a log of a known id (100) and an ignored one (7A0), and an `ignores` that is asked once per id
    lines = [f"({t}.000000) can0 {i}#0011" for t in range(3) for i in ("100", "7A0")]
    asked: list[str] = []

    def ignores(id_text: str) -> bool:
        asked.append(id_text)
        return id_text == "7A0"

    frames = list(candump_frames("b", lines, MalformedLines(Path("x.log"), FORMAT_NAME), ignores))

    # THEN the known id's frames and the ignored id's first come whole, the rest as UNKNOWN_ID_FRAME
    assert [f.arbitration_id for f in frames] == [0x100, 0x7A0, 0x100, -1, 0x100, -1]
    assert frames[3] is UNKNOWN_ID_FRAME and frames[1].ts == 0.0 and frames[1].data == b"\x00\x11"
    assert asked == ["100", "7A0"]
