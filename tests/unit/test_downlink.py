"""The downlink payload: commit acknowledgements round-trip; anything malformed is refused."""

from __future__ import annotations

import contextlib
import itertools

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.downlink import (
    HEADER,
    MAX_ACK_BYTES,
    MAX_ACK_RANGES,
    MAX_SEQ,
    CommitAck,
    DownlinkError,
    UnknownDownlinkTypeError,
    commit_acks,
    decode_downlink,
    encode_downlink,
    ranges_of,
)
from protocols.errors import WireError

seq_sets = st.sets(st.integers(0, MAX_SEQ), max_size=300)


@given(seq_sets, st.integers(0, 2**53 - 1))
def test_acks_round_trip_exactly_the_seqs(seqs: set[int], ts_ms: int) -> None:
    acks = commit_acks(seqs, ts_ms)
    decoded = [decode_downlink(encode_downlink(ack)) for ack in acks]
    assert decoded == acks
    assert {s for ack in decoded for first, last in ack.ranges for s in range(first, last + 1)} == seqs
    assert all(ack.ts_ms == ts_ms for ack in decoded)


@given(st.lists(st.integers(0, 10_000), max_size=500))
def test_ranges_are_sorted_merged_and_cover_the_seqs(seqs: list[int]) -> None:
    ranges = ranges_of(seqs)
    covered = [s for first, last in ranges for s in range(first, last + 1)]
    assert covered == sorted(set(seqs))
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(ranges)), "disjoint, not adjacent"
    assert ranges_of(np.array(seqs, dtype=np.int64)) == ranges


def test_consecutive_seqs_are_one_range() -> None:
    ack = commit_acks(np.arange(1000, 3000, dtype=np.int64), 1)[0]
    assert ack.ranges == ((1000, 2999),) and ack.seq_count == 2000
    assert len(encode_downlink(ack)) < 20


def test_many_ranges_split_into_several_acks() -> None:
    acks = commit_acks(range(0, 2 * (MAX_ACK_RANGES + 5), 2), 7)
    assert [len(a.ranges) for a in acks] == [MAX_ACK_RANGES, 5]
    assert all(len(encode_downlink(a)) <= MAX_ACK_BYTES for a in acks)


def _raw(body: object, header: bytes = HEADER) -> bytes:
    return header + msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "empty"),
        (b"VG\x02", "the uplink's magic"),
        (b"VD\x09" + msgpack.packb([1, 0, []]), "unknown version"),
        (_raw({"type": 1}), "not a list"),
        (_raw([1, 0]), "no fields"),
        (_raw([1, -1, []]), "negative ts"),
        (_raw([1, 0, [5]]), "odd number of bounds"),
        (_raw([1, 0, [-1, 3]]), "negative seq"),
        (_raw([1, 0, [5, 3]]), "first after last"),
        (_raw([1, 0, [1, 5, 3, 8]]), "overlapping"),
        (_raw([1, 0, [1, 5, 6, 8]]), "adjacent (not merged)"),
        (_raw([1, 0, [10, 12, 1, 5]]), "unsorted"),
        (_raw([1, 0, [1.0, 5.0]]), "floats"),
        (_raw([1, 0, [True, True]]), "booleans"),
        (_raw([1, 0, ["1", "5"]]), "strings"),
        (_raw([1, 0, [0, MAX_SEQ + 1]]), "seq beyond the wire's bound"),
        (_raw([1, 0, [s for i in range(MAX_ACK_RANGES + 1) for s in (3 * i, 3 * i + 1)]]), "too many ranges"),
        (HEADER + b"\xc1", "invalid msgpack"),
        (_raw([1, 0, []]) + b"\x00", "trailing bytes"),
        (HEADER + b"\x00" * (MAX_ACK_BYTES + 1), "oversized"),
    ],
)
def test_malformed_payloads_are_refused(payload: bytes, why: str) -> None:
    with pytest.raises(DownlinkError):
        decode_downlink(payload)


def test_a_newer_message_type_is_told_apart_from_garbage() -> None:
    with pytest.raises(UnknownDownlinkTypeError):
        decode_downlink(_raw([2, 0, {"batch_max_age_s": 30}]))
    assert issubclass(DownlinkError, WireError)


@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(payload: bytes) -> None:
    with contextlib.suppress(DownlinkError):
        decode_downlink(HEADER + payload)


@pytest.mark.parametrize(
    "ack",
    [
        CommitAck(0, ((5, 3),)),
        CommitAck(0, ((1, 5), (5, 9))),
        CommitAck(-1, ()),
        CommitAck(0, ((-2, 4),)),
        CommitAck(0, tuple((3 * i, 3 * i) for i in range(MAX_ACK_RANGES + 1))),
    ],
)
def test_the_encoder_refuses_what_the_decoder_would(ack: CommitAck) -> None:
    with pytest.raises(DownlinkError):
        encode_downlink(ack)
