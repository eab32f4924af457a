"""The group decoder (`decode_columnar_batches`) gives, payload by payload, exactly what
`decode_columnar_batch` gives for that payload alone: the same columns bit for bit, the same records,
or the same refusal — whatever else is in the group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import wire_group
from protocols.errors import WireError
from protocols.wire import (
    HEADER,
    MAX_ABS_TS_MS,
    AlertRecord,
    Batch,
    ColumnarBatch,
    PredictionRecord,
    SampleRecord,
    decode_columnar_batch,
    decode_columnar_batches,
    encode_batch,
)
from protocols.wire_dict import CODEBOOKS, CURRENT
from tests.unit import test_wire as cases  # the generators and hand-built payloads of the wire tests

T0_MS = cases.T0_MS


def alone(payload: Any) -> ColumnarBatch | WireError:
    try:
        return decode_columnar_batch(payload)
    except WireError as err:
        return err


def assert_same(got: ColumnarBatch | WireError, want: ColumnarBatch | WireError) -> None:
    """Equal results: the same refusal, or batches equal bit for bit (arrays, their dtypes, floats)."""
    if isinstance(want, WireError):
        assert type(got) is WireError, got
        assert str(got) == str(want)
        return
    assert isinstance(got, ColumnarBatch), got
    assert got.vehicle_id == want.vehicle_id
    cases.assert_same_records(got.predictions, want.predictions)
    cases.assert_same_records(got.alerts, want.alerts)
    assert got.samples.signals == want.samples.signals
    for column in ("seq", "ts_ms", "signal_index", "value"):
        a, b = getattr(got.samples, column), getattr(want.samples, column)
        assert a.dtype == b.dtype, column
        assert a.shape == b.shape, column
        assert a.tobytes() == b.tobytes(), column


def assert_decodes_as_alone(payloads: Sequence[Any]) -> list[ColumnarBatch | WireError]:
    decoded = decode_columnar_batches(payloads)
    assert len(decoded) == len(payloads)
    for got, payload in zip(decoded, payloads, strict=True):
        assert_same(got, alone(payload))
    return decoded


def minute(seed: int, vehicle: str, first_seq: int) -> bytes:
    """A minute of telemetry as the agent uplinks it (`test_wire.agent_minute`), for `vehicle`."""
    batch, quanta = cases.agent_minute(seed)
    samples = tuple(SampleRecord(first_seq + s.seq, s.ts_ms, s.signal, s.value) for s in batch.samples)
    return encode_batch(Batch(vehicle, samples), quanta)


GOOD = [
    encode_batch(cases.GOLDEN_BATCH, cases.GOLDEN_QUANTA),
    minute(0, "bus-1", 0),
    encode_batch(Batch("bus-2")),  # nothing at all
    minute(1, "bus-3", 10**12),
]


# --- good payloads ----------------------------------------------------------------------------------------


def test_agent_minutes_decode_as_alone() -> None:
    # GIVEN minutes of several buses, seq following time or not (agent_minute numbers by bus order)
    payloads = [minute(seed % 3, f"bus-{seed}", 1000 * seed) for seed in range(8)]
    decoded = assert_decodes_as_alone(payloads)
    assert all(isinstance(batch, ColumnarBatch) and len(batch.samples) > 500 for batch in decoded)


def test_an_empty_group_and_a_group_of_one() -> None:
    assert decode_columnar_batches([]) == []
    for payload in GOOD:
        assert_decodes_as_alone([payload])


def test_batches_without_samples_with_predictions_and_alerts() -> None:
    prediction = PredictionRecord(7, T0_MS, "m", "1", "o", 0.5)
    alert = AlertRecord(8, T0_MS, "low_soc", "critical", False, math.nan, "")
    payloads = [
        encode_batch(Batch("bus-1", predictions=(prediction,))),
        encode_batch(Batch("bus-1", alerts=(alert,))),
        *GOOD,
        encode_batch(Batch("bus-1")),
    ]
    decoded = assert_decodes_as_alone(payloads)
    assert [len(batch.samples) for batch in decoded if isinstance(batch, ColumnarBatch)][:2] == [0, 0]


def test_exact_values_nan_and_infinities() -> None:
    # GIVEN quantized signals that travel exactly in a batch because of a non-finite or huge value
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
    samples = tuple(SampleRecord(i, T0_MS + i, "Soc", v) for i, v in enumerate(specials))
    samples += (SampleRecord(20, T0_MS, "Vehicle.Speed", 12.5), SampleRecord(21, T0_MS, "x", math.nan))
    exact = encode_batch(Batch("bus-1", samples), {"Soc": 0.1, "Vehicle.Speed": 0.5})
    decoded = assert_decodes_as_alone([GOOD[1], exact, exact, GOOD[0]])
    assert isinstance(decoded[1], ColumnarBatch)
    assert np.isnan(decoded[1].samples.value).sum() == 2


def test_extremes_of_every_range() -> None:
    big = float(2**53)
    samples = (
        SampleRecord(0, MAX_ABS_TS_MS, "s", big),
        SampleRecord(1, -MAX_ABS_TS_MS, "s", -big),
        SampleRecord(2**53 - 1, MAX_ABS_TS_MS, "s", big),
        SampleRecord(2**53 - 2, 0, "t", 1.0),
    )
    extreme = encode_batch(Batch("bus-1", samples), {"s": 1.0, "t": 1.0})
    assert_decodes_as_alone([extreme, *GOOD, extreme])


def test_a_group_too_wide_for_one_sort_key() -> None:
    # GIVEN 520 batches each with samples at -MAX and +MAX ms: their 2**54 ms each do not fit one int64
    # key side by side, so the group sorts by message and timestamp as two keys
    payloads = [
        encode_batch(
            Batch(
                "bus-1",
                (
                    SampleRecord(2 * i, MAX_ABS_TS_MS, "a", 1.0),
                    SampleRecord(2 * i + 1, -MAX_ABS_TS_MS, "a", 2.0),
                ),
            )
        )
        for i in range(520)
    ]
    group = [GOOD[1], *payloads, GOOD[3]]
    with mock.patch.object(np, "lexsort", wraps=np.lexsort) as lexsort:
        decoded = decode_columnar_batches(group)
    assert lexsort.call_count == 1  # the per-message decoder, which always uses it, did not run
    for got, payload in zip(decoded, group, strict=True):
        assert_same(got, alone(payload))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    group=st.lists(st.tuples(cases.batches(), cases.quanta_maps), max_size=6),
    pass_samples=st.sampled_from([1, 50, wire_group.PASS_SAMPLES]),
)
def test_random_groups_decode_as_alone(
    group: list[tuple[Batch, dict[str, float]]], pass_samples: int
) -> None:
    # GIVEN random batches, cut into numeric passes of any size
    payloads = [encode_batch(batch, quanta) for batch, quanta in group]
    with mock.patch.object(wire_group, "PASS_SAMPLES", pass_samples):
        assert_decodes_as_alone(payloads)


def test_a_group_longer_than_one_pass() -> None:
    payloads = [minute(seed % 3, f"bus-{seed}", 0) for seed in range(40)]
    assert sum(len(decode_columnar_batch(p).samples) for p in payloads) > wire_group.PASS_SAMPLES
    assert_decodes_as_alone(payloads)


# --- bad payloads among good ones -------------------------------------------------------------------------


def interleaved(bad: Sequence[Any]) -> list[Any]:
    """Each bad payload between good ones, and the good ones at both ends."""
    group: list[Any] = list(GOOD)
    for k, payload in enumerate(bad):
        group += [payload, GOOD[k % len(GOOD)]]
    return group


def test_every_malformed_body_is_refused_as_alone() -> None:
    # GIVEN every structural fault the wire tests provoke, all in one group with good payloads
    bad = [cases.payload_of(body) for body in cases.MALFORMED_BODIES.values()]
    decoded = assert_decodes_as_alone(interleaved(bad))
    assert sum(isinstance(result, WireError) for result in decoded) == len(bad)


@pytest.mark.parametrize("name", list(cases.MALFORMED_BODIES))
def test_each_malformed_body_alone_in_a_group(name: str) -> None:
    decoded = assert_decodes_as_alone([GOOD[1], cases.payload_of(cases.MALFORMED_BODIES[name]), GOOD[3]])
    assert isinstance(decoded[1], WireError)


@settings(max_examples=500)
@given(path=st.sampled_from(cases.GOLDEN_PATHS), value=cases.msgpack_values)
def test_any_part_of_a_body_replaced_decodes_as_alone(path: tuple[int, ...], value: object) -> None:
    # GIVEN the golden body with any part replaced by any msgpack value, between good payloads
    assert_decodes_as_alone([GOOD[1], cases.payload_of(cases.body_with(path, value)), GOOD[0]])


def with_table(payload: bytes, part: int, value: object) -> bytes:
    """`payload` rebuilt with part `part` of its signal table replaced."""
    body = cases.body_of(payload)
    body[1][4][part] = value
    return cases.payload_of(body)


def test_tables_of_codes_alone_and_their_quanta() -> None:
    # GIVEN signals of the codebook only (no name spelled out: the group reader's quick path), two
    # quanta, and their code steps or quanta made wrong in every way the per-message checks refuse
    names = CODEBOOKS[CURRENT].names
    samples = (SampleRecord(1, T0_MS, names[3], 1.0), SampleRecord(2, T0_MS, names[5], 2.0))
    payload = encode_batch(Batch("bus-1", samples), {names[3]: 0.5, names[5]: 0.25})
    assert cases.body_of(payload)[1][4][:3] == [[3, 1], [], [0.25, 0.5]]
    wrong_steps = (
        [-1, 1],
        [3, -1],
        [True, 1],
        [3, len(names)],
        [3.0, 1],
        [3, 2**64 - 1],
        [len(names) - 1, 0],
    )
    bad = [with_table(payload, 0, steps) for steps in wrong_steps]
    bad += [with_table(payload, 2, quanta) for quanta in ([0.5, 0.25], [0.25, 0.25], [-0.25, 0.5], [0.25, 1])]
    bad += [with_table(payload, 2, [0.25, math.nan]), with_table(payload, 2, [0.25, math.inf])]
    good = [payload, with_table(payload, 0, [3, 2]), with_table(payload, 2, [0.125, 0.5])]
    decoded = assert_decodes_as_alone(interleaved(bad + good))
    assert [isinstance(decoded[len(GOOD) + 2 * k], WireError) for k in range(len(bad) + len(good))] == [
        True
    ] * len(bad) + [False] * len(good)
    # a table read once is not taken for one that only compares equal to it (True == 1)
    decoded = assert_decodes_as_alone([with_table(payload, 0, [1, 1]), with_table(payload, 0, [True, 1])])
    assert [type(result) for result in decoded] == [ColumnarBatch, WireError]


def test_truncations_bit_flips_and_non_bytes_among_good_payloads() -> None:
    golden = encode_batch(cases.GOLDEN_BATCH, cases.GOLDEN_QUANTA)
    truncated = [golden[:size] for size in range(0, len(golden), 3)]
    flipped = []
    for bit in range(0, 8 * len(golden), 5):
        damaged = bytearray(golden)
        damaged[bit // 8] ^= 1 << (bit % 8)
        flipped.append(bytes(damaged))
    others: list[Any] = [None, "VG\x02\x01\x01", 42, HEADER, HEADER + bytes(8), golden + b"\x00"]
    assert_decodes_as_alone(interleaved(truncated + flipped + others))


def test_a_wrong_vehicle_id_is_data_here() -> None:
    # the receiver compares the payload's vehicle with its topic's (cloud.ingest); here it only decodes
    spoofed = encode_batch(Batch("bus-2", (SampleRecord(1, T0_MS, "x", 1.0),)))
    decoded = assert_decodes_as_alone([GOOD[1], spoofed])
    assert isinstance(decoded[1], ColumnarBatch)
    assert decoded[1].vehicle_id == "bus-2"


def samples_only(path: tuple[int, ...], value: object) -> bytes:
    """The golden payload with one part changed, and without its prediction and alert (so that no
    later check across all records sees what the samples' own checks must)."""
    body = cases.body_with(path, value)
    body[2:] = [[], []]
    return cases.payload_of(body)


def test_bodies_that_fail_only_once_laid_end_to_end() -> None:
    # GIVEN the golden body with one column changed so that only its numbers are wrong: counts that do
    # not add up, deltas that run out of range, a seq used twice, an exact signal with a base, ...
    changes: list[tuple[tuple[int, ...], object]] = [
        ((1, 5), cases.column(1, [2, 2])),  # counts add up to 4 but not per signal as the deltas say
        ((1, 7), cases.column(8, [cases.zigzag(2**54), 0])),  # a ts step over the bound
        ((1, 8), cases.column(8, [cases.zigzag(2**53), 0])),  # a value change over the bound
        ((1, 2), cases.column(1, [1, 0, 0])),  # seq steps that meet an earlier seq
        ((1, 2), cases.column(1, [cases.zigzag(-102), 7, 3])),  # a seq below 0
        ((1, 4, 4), cases.column(1, [40, 2])),  # a base for the exact signal
        ((1, 4, 3), cases.column(1, [0, 0])),  # the listed quantum unused
        ((1, 6), cases.column(8, [0, 2**55])),  # a first ts past the bound
        ((1, 6), cases.column(8, [0, 2**63 + 5])),  # a first ts offset past int64
        ((1, 4, 2, 0), 1e306),  # a quantized value past float64
    ]
    bad = [samples_only(path, value) for path, value in changes]
    bad.append(cases.payload_of(cases.body_with((3, 0, 0), 100)))  # an alert with a sample's seq
    decoded = assert_decodes_as_alone(interleaved(bad))
    assert all(isinstance(decoded[len(GOOD) + 2 * k], WireError) for k in range(len(bad)))
