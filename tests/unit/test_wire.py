"""The uplink payload format: round trips, the v2 layout and its codebooks, size on a realistic minute of
telemetry, and a decoder that refuses every malformed payload with `WireError` (never another exception,
never an unbounded allocation)."""

from __future__ import annotations

import contextlib
import json
import math
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.catalog import load_catalog
from protocols.errors import WireError
from protocols.wire import (
    FLAG_ZSTD,
    HEADER,
    MAGIC,
    MAX_ABS_TS_MS,
    MAX_ALERTS,
    MAX_BODY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES,
    MAX_SEQ,
    MAX_SIGNALS,
    MAX_STATUS_BYTES,
    WIRE_VERSION,
    ZSTD_LEVEL,
    AlertRecord,
    Batch,
    PredictionRecord,
    SampleRecord,
    Status,
    decode_batch,
    decode_status,
    encode_batch,
    encode_status,
)
from protocols.wire_dict import CATALOG_1, CODEBOOKS, CURRENT

T0_MS = 1_760_000_000_000


def float_bits(value: float) -> bytes:
    return struct.pack("<d", value)


def payload_of(body: object, *, header: bytes = HEADER) -> bytes:
    """A payload built by hand from a body structure, the way the v2 layout says (compressed with the
    dictionary of the codebook the header names, or none for a codebook this decoder does not know)."""
    codebook = CODEBOOKS.get(header[4]) if len(header) == 5 else None
    compressor = zstandard.ZstdCompressor(
        dict_data=codebook.zstd_dict if codebook else None, write_checksum=True, write_content_size=True
    )
    return header + compressor.compress(msgpack.packb(body, use_bin_type=True))


def body_of(payload: bytes) -> Any:
    decompressor = zstandard.ZstdDecompressor(dict_data=CODEBOOKS[payload[4]].zstd_dict)
    return msgpack.unpackb(decompressor.decompress(payload[5:]), raw=False)


def sorted_samples(batch: Batch) -> tuple[SampleRecord, ...]:
    return tuple(sorted(batch.samples, key=lambda s: s.seq))


def assert_same_records(decoded: tuple[Any, ...], original: tuple[Any, ...]) -> None:
    """Record equality with floats compared bit for bit (so NaN equals NaN, -0.0 differs from 0.0)."""
    assert len(decoded) == len(original)
    for got, want in zip(decoded, original, strict=True):
        assert type(got) is type(want)
        for name in want.__slots__:
            a, b = getattr(got, name), getattr(want, name)
            if isinstance(b, float):
                assert float_bits(a) == float_bits(b), name
            else:
                assert a == b, name


# --- strategies -------------------------------------------------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")
POOL = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.CurrentCurrent", "Soc", "ümlaut.Ω", "x"]
signal_names = st.one_of(st.sampled_from(POOL), st.text(min_size=1, max_size=30))
quantum_values = st.one_of(
    st.sampled_from([1 / 256, 0.001, 0.03125, 0.1, 0.5, 1.0, 10.0]),
    st.floats(min_value=1e-9, max_value=1e9),
)
values = st.one_of(st.floats(min_value=-1e4, max_value=1e4), st.floats())
timestamps = st.one_of(st.integers(T0_MS, T0_MS + 600_000), st.integers(-MAX_ABS_TS_MS, MAX_ABS_TS_MS))
seq_values = st.one_of(st.integers(0, 2_000), st.integers(0, MAX_SEQ))
texts = st.text(max_size=20)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    n_samples = draw(st.integers(0, 60))
    n_predictions = draw(st.integers(0, 3))
    n_alerts = draw(st.integers(0, 3))
    total = n_samples + n_predictions + n_alerts
    seqs = draw(st.lists(seq_values, min_size=total, max_size=total, unique=True))
    samples = tuple(
        SampleRecord(seq, draw(timestamps), draw(signal_names), draw(values)) for seq in seqs[:n_samples]
    )
    predictions = tuple(
        PredictionRecord(
            seq, draw(timestamps), draw(signal_names), draw(texts), draw(signal_names), draw(values)
        )
        for seq in seqs[n_samples : n_samples + n_predictions]
    )
    alerts = tuple(
        AlertRecord(
            seq,
            draw(timestamps),
            draw(signal_names),
            draw(st.sampled_from(["info", "warning", "critical"])),
            draw(st.booleans()),
            draw(values),
            draw(st.text(max_size=200)),
        )
        for seq in seqs[n_samples + n_predictions :]
    )
    return Batch(draw(ids), samples, predictions, alerts)


quanta_maps = st.dictionaries(st.sampled_from(POOL), quantum_values)


# --- round trip -------------------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), quanta=quanta_maps)
def test_round_trip(batch: Batch, quanta: dict[str, float]) -> None:
    decoded = decode_batch(encode_batch(batch, quanta))

    assert decoded.vehicle_id == batch.vehicle_id
    assert_same_records(decoded.predictions, batch.predictions)
    assert_same_records(decoded.alerts, batch.alerts)
    want = sorted_samples(batch)
    assert [(s.seq, s.ts_ms, s.signal) for s in decoded.samples] == [(s.seq, s.ts_ms, s.signal) for s in want]
    for got, sample in zip(decoded.samples, want, strict=True):
        if float_bits(got.value) == float_bits(sample.value):
            continue  # exact (unquantized, or a signal that fell back to exact in this batch)
        quantum = quanta.get(sample.signal)
        assert quantum is not None, f"{sample.signal} has no quantum yet changed"
        # within quantum/2, give or take the float rounding of value/quantum and steps*quantum
        tolerance = quantum / 2 * (1 + 1e-12) + 1e-15 * abs(sample.value)
        assert abs(got.value - sample.value) <= tolerance


@given(batch=batches())
def test_unquantized_values_are_exact_and_encoding_is_deterministic(batch: Batch) -> None:
    payload = encode_batch(batch)
    assert payload == encode_batch(replace(batch, samples=tuple(reversed(batch.samples))))
    decoded = decode_batch(payload)
    assert_same_records(decoded.samples, sorted_samples(batch))


def test_nan_and_infinities_survive_everywhere() -> None:
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    samples = tuple(SampleRecord(i, T0_MS + i, "Soc", v) for i, v in enumerate(specials))
    samples += (
        SampleRecord(10, T0_MS, "Vehicle.Speed", 12.5),
        SampleRecord(11, T0_MS, "Vehicle.Speed", math.nan),
    )
    alerts = tuple(AlertRecord(20 + i, T0_MS, "r", "critical", True, v, "") for i, v in enumerate(specials))
    prediction = PredictionRecord(30, T0_MS, "m", "", "o", -math.inf)
    batch = Batch("bus-1", samples, (prediction,), alerts)

    # GIVEN quanta for both signals WHEN a signal has a non-finite value THEN it travels exactly in this batch
    decoded = decode_batch(encode_batch(batch, {"Soc": 0.1, "Vehicle.Speed": 0.5}))

    assert_same_records(decoded.samples, batch.samples)
    assert_same_records(decoded.alerts, alerts)
    assert_same_records(decoded.predictions, (prediction,))


def test_extremes_round_trip() -> None:
    # GIVEN the widest ranges in one signal: ts from -MAX to +MAX, seq from 0 to MAX_SEQ, steps ±2**53
    big = float(2**53)
    samples = (
        SampleRecord(0, MAX_ABS_TS_MS, "s", big),
        SampleRecord(1, -MAX_ABS_TS_MS, "s", -big),
        SampleRecord(MAX_SEQ, MAX_ABS_TS_MS, "s", big),
        SampleRecord(MAX_SEQ - 1, 0, "t", 1.0),
    )
    batch = Batch("bus-1", samples)
    assert decode_batch(encode_batch(batch, {"s": 1.0, "t": 1.0})) == replace(
        batch, samples=sorted_samples(batch)
    )


def test_quantized_values_decode_to_steps() -> None:
    samples = tuple(SampleRecord(i, T0_MS + 100 * i, "Soc", 71.3 - 0.04 * i) for i in range(50))
    decoded = decode_batch(encode_batch(Batch("bus-1", samples), {"Soc": 0.1}))
    for got, want in zip(decoded.samples, samples, strict=True):
        assert abs(got.value - want.value) <= 0.05 + 1e-12
        assert abs(got.value / 0.1 - round(got.value / 0.1)) < 1e-6


def test_empty_batch_round_trips() -> None:
    assert decode_batch(encode_batch(Batch("bus-1"))) == Batch("bus-1")


# --- the v2 layout (golden) -------------------------------------------------------------------------------

GOLDEN_BATCH = Batch(
    "bus-7",
    samples=(
        SampleRecord(100, T0_MS, "Vehicle.Speed", 10.0),
        SampleRecord(101, T0_MS + 100, "Soc", 55.5),
        SampleRecord(102, T0_MS + 100, "Vehicle.Speed", 10.5),
        SampleRecord(105, T0_MS + 90, "Vehicle.Speed", 4000.0),
    ),
    predictions=(PredictionRecord(103, T0_MS + 100, "soc_drop", "1.2", "soc_drop_60min_pp", 0.25),),
    alerts=(AlertRecord(104, T0_MS + 100, "low_soc", "warning", True, 9.5, "SOC below 10 %"),),
)
GOLDEN_QUANTA = {"Vehicle.Speed": 0.5}
GOLDEN_BODY: list[Any] = [
    "bus-7",
    [
        4,  # n
        100,  # seq of the first sample in canonical order
        # canonical order (ts, then table position): 100 @T0, 105 @T0+90, 102 @T0+100, 101 @T0+100 (Soc)
        # → seq steps +5, -3, -1, minus one: 4, -4, -2 → zigzag 8, 7, 3
        [1, bytes([8, 7, 3])],
        T0_MS,  # ts base
        [
            [0],  # codes: Vehicle.Speed is position 0 of codebook 1
            ["Soc"],  # not in the codebook: spelled out
            [0.5],  # distinct quanta
            [1, bytes([1, 0])],  # quantum index: Vehicle.Speed 0.5, Soc exact
            [1, bytes([40, 0])],  # bases, zigzag: Vehicle.Speed 20 steps, Soc 0
        ],
        [1, bytes([3, 1])],  # counts
        [1, bytes([0, 100])],  # first ts - ts base
        [1, bytes([200, 19])],  # ts deltas after the first, zigzag: Vehicle.Speed +100, -10
        # Vehicle.Speed steps 20, 21, 8000 → slopes +1, +7979 → changes +1, +7978 → zigzag 2, 15956 (2 bytes)
        [2, bytes([2, 15956 & 0xFF, 0, 15956 >> 8])],
        struct.pack("<d", 55.5),  # exact values: Soc
    ],
    [[103, T0_MS + 100, "soc_drop", "1.2", "soc_drop_60min_pp", 0.25]],
    [[104, T0_MS + 100, "low_soc", "warning", True, 9.5, "SOC below 10 %"]],
]


def test_header_is_magic_version_flags_codebook() -> None:
    payload = encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)
    assert WIRE_VERSION == 2
    assert CURRENT == 2
    assert payload[:5] == b"VG\x02\x01\x02" == MAGIC + bytes([WIRE_VERSION, FLAG_ZSTD, CURRENT]) == HEADER
    params = zstandard.get_frame_parameters(payload[5:])
    assert params.has_checksum
    assert params.dict_id == 0  # a raw-content dictionary: the header byte says which one


def test_encoder_writes_the_documented_body() -> None:
    assert body_of(encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)) == GOLDEN_BODY


def test_decoder_reads_a_hand_built_payload() -> None:
    assert decode_batch(payload_of(GOLDEN_BODY)) == GOLDEN_BATCH


@pytest.mark.parametrize(
    "header",
    [
        b"VG\x01\x01\x01",  # version 1 was never deployed
        b"VG\x03\x01\x01",
        b"VG\x00\x01\x01",
        b"VG\xff\x01\x01",
        b"VX\x02\x01\x01",
        b"vg\x02\x01\x01",
        b"VG\x02\x00\x01",
        b"VG\x02\x03\x01",
        b"VG\x02\x01\x03",  # a codebook this decoder does not know
        b"VG\x02\x01\xff",
        b"VG\x02\x01",  # a version 1 header
    ],
)
def test_unknown_magic_version_flags_or_codebook_are_refused(header: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(payload_of(GOLDEN_BODY, header=header))


# --- codebooks --------------------------------------------------------------------------------------------


def test_shipped_codebooks_never_change() -> None:
    # Append-only: a receiver must decode what any agent sent. Changing the catalog means a new codebook
    # (next id) in protocols/wire_dict.py and a new line here, never an edit of an old one.
    assert {i: c.sha256 for i, c in CODEBOOKS.items()} == {
        0: "771657aa023f2b032eaa18f493adeab50fa8135edb5ec55aee4b1c644ef6aa71",
        1: "017bfca465e01780cc1af5c421d9a3a7ee3dcf86a64e7bb82ae664cfc413f5a5",
        2: "cbe979485e449af2868a4fa722c4367698a83370fb163ff65ca01ffd3d208326",
    }
    assert all(c.id == i for i, c in CODEBOOKS.items())
    assert max(CODEBOOKS) == CURRENT


def test_the_current_codebook_covers_the_shipped_catalog() -> None:
    # not needed for correctness (other names travel spelled out), but every catalog name outside the
    # codebook costs its spelling in every batch: a catalog change wants a new codebook
    catalog = load_catalog()
    assert [s.name for s in catalog] == list(CODEBOOKS[CURRENT].names)
    assert set(catalog.quanta().values()) <= set(CODEBOOKS[CURRENT].quanta)


def test_the_dictionary_spells_names_and_quanta_as_a_body_does() -> None:
    assert CATALOG_1.dictionary_bytes.startswith(msgpack.packb(CATALOG_1.names[0]))
    assert CATALOG_1.dictionary_bytes.endswith(msgpack.packb(sorted(CATALOG_1.quanta)))
    assert b"".join(msgpack.packb(name) for name in CATALOG_1.names) in CATALOG_1.dictionary_bytes
    assert CODEBOOKS[0].dictionary_bytes == b""
    assert CODEBOOKS[0].zstd_dict is None


def test_codebook_0_payloads_decode() -> None:
    # GIVEN a body that spells every name, compressed without a dictionary, under codebook 0
    body = body_with((1, 4), [[], ["Vehicle.Speed", "Soc"], *GOLDEN_BODY[1][4][2:]])

    assert decode_batch(payload_of(body, header=MAGIC + bytes([2, FLAG_ZSTD, 0]))) == GOLDEN_BATCH


def test_a_payload_read_with_the_wrong_dictionary_is_refused() -> None:
    payload = encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)
    with pytest.raises(WireError):
        decode_batch(payload[:4] + b"\x00" + payload[5:])


def test_names_outside_the_codebook_and_codes_mix() -> None:
    names = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.CurrentCurrent", "Soc", "Zz", "ümlaut.Ω"]
    samples = tuple(SampleRecord(i, T0_MS + 10 * i, names[i % 5], float(i)) for i in range(50))
    payload = encode_batch(Batch("bus-1", samples), {"Soc": 1.0, "Vehicle.Speed": 1 / 256})

    signals = body_of(payload)[1][4]
    assert signals[0] == [0, CATALOG_1.index["Vehicle.Powertrain.TractionBattery.CurrentCurrent"] - 1]
    assert signals[1] == ["Soc", "Zz", "ümlaut.Ω"]
    assert decode_batch(payload).samples == samples


def test_seq_numbers_out_of_time_order_survive() -> None:
    # GIVEN samples whose seq order is not their time order (a late GPS fix, a clock step)
    samples = tuple(
        SampleRecord(seq, T0_MS + ts, name, 1.0)
        for seq, ts, name in [(7, 500, "a"), (8, 100, "b"), (9, 100, "a"), (20, -3, "b"), (21, 100, "c")]
    )
    decoded = decode_batch(encode_batch(Batch("bus-1", samples)))
    assert decoded.samples == samples


# --- size on a realistic minute -------------------------------------------------------------------------


def agent_minute(seed: int) -> tuple[Batch, dict[str, float]]:
    """A minute of telemetry as the agent uplinks it, and the catalog's quanta.

    Every signal of the shipped catalog is read every 100 ms from its CAN frame (the signals of a frame
    share its timestamp, with 0-2 ms of jitter; frames due in the same millisecond arrive in a fixed bus
    order) or every second from the GPS fix, and kept by its catalog sampling policy, as
    `agent/decode.py` does. Values drift smoothly (a rate that swings over 20-120 s) with sensor noise of
    a fifth of a deadband, at the DBC resolution, at a pace that differs per signal: some move fast (kept
    about every `min_interval_s`), some slowly, some not at all (kept only by the heartbeat). Two minutes
    run; the second, past the start-up samples, is the batch."""
    catalog = load_catalog()
    rng = np.random.default_rng(seed)
    messages = sorted({spec.message for spec in catalog})
    phase = dict(zip(messages, rng.integers(0, 100, len(messages)).tolist(), strict=True))
    bus_order = dict(zip(messages, rng.permutation(len(messages)).tolist(), strict=True))
    jitter = {message: rng.integers(0, 3, 1200) for message in messages}
    kept: list[tuple[int, int, int, str, float]] = []
    for position, spec in enumerate(catalog):
        if spec.source == "gps":
            stamps = np.arange(0, 120_000, 1000)
        else:
            stamps = np.arange(phase[spec.message], 120_000, 100) + jitter[spec.message][:1200]
        scale = max(spec.policy.deadband, spec.resolution)
        moving = spec.policy.min_interval_s > 0  # states and flags (min_interval_s = 0) hold still here
        top_rate = rng.choice([0.0, 0.1, 0.5, 2.0], p=[0.3, 0.3, 0.25, 0.15])  # deadbands per tick
        pace = moving * top_rate * scale
        period_s = rng.uniform(20, 120)  # physical quantities drift smoothly, with a little sensor noise
        rate = pace * np.sin(2 * np.pi * stamps / 1000 / period_s + rng.uniform(0, 2 * np.pi))
        noise = rng.normal(0, 0.2 * moving * scale, stamps.size)
        walk = rng.uniform(10, 20_000) * scale + np.cumsum(rate) + noise
        series = np.round(walk / spec.resolution) * spec.resolution
        last_ms, last_value = -(10**9), math.nan
        for ts, value in zip(stamps.tolist(), series.tolist(), strict=True):
            since = ts - last_ms
            moved = not abs(value - last_value) < spec.policy.deadband
            if since >= spec.policy.max_interval_s * 1000 or (
                since >= spec.policy.min_interval_s * 1000 and moved
            ):
                last_ms, last_value = ts, value
                if ts >= 60_000:
                    kept.append((ts, bus_order[spec.message], position, spec.name, value))
    kept.sort()
    samples = tuple(
        SampleRecord(1_234_567 + i, T0_MS + ts, name, value) for i, (ts, _, _, name, value) in enumerate(kept)
    )
    return Batch("bus-0042", samples=samples), catalog.quanta()


@pytest.mark.parametrize("seed", range(3))
def test_a_minute_of_telemetry_costs_under_2_6_bytes_per_sample(seed: int) -> None:
    # GIVEN a minute as the agent batches it with batch_max_age_s = 60 (the bench, bench/wire_size.py, puts
    # a simulated hour through the agent itself: 2.4 B/sample with 60 s batches)
    batch, quanta = agent_minute(seed)
    n = len(batch.samples)
    assert 500 < n < 1500

    payload = encode_batch(batch, quanta)

    assert len(payload) / n <= 2.6
    json_bytes = sum(
        len(json.dumps({"seq": s.seq, "ts_ms": s.ts_ms, "signal": s.signal, "value": s.value}))
        for s in batch.samples
    )
    assert len(payload) * 40 < json_bytes  # far below one JSON object per sample
    decoded = decode_batch(payload)
    assert [(s.seq, s.ts_ms, s.signal) for s in decoded.samples] == [
        (s.seq, s.ts_ms, s.signal) for s in batch.samples
    ]
    for got, want in zip(decoded.samples, batch.samples, strict=True):
        assert abs(got.value - want.value) <= quanta[want.signal] / 2 * (1 + 1e-9)


def test_the_default_level_pays_for_itself() -> None:
    batch, quanta = agent_minute(0)
    assert ZSTD_LEVEL == 19
    assert len(encode_batch(batch, quanta)) < len(encode_batch(batch, quanta, level=9))


# --- malformed payloads -----------------------------------------------------------------------------------


def zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def column(width: int, values: list[int]) -> list[object]:
    """An integer column as the layout says: `[width, planes]`."""
    raw = np.array(values, dtype=np.uint64).astype(f"<u{width}").view(np.uint8)
    return [width, raw.reshape(-1, width).T.tobytes()]


def body_with(path: tuple[int, ...], value: object) -> list[Any]:
    body: list[Any] = msgpack.unpackb(msgpack.packb(GOLDEN_BODY), raw=False)  # deep copy
    target = body
    for index in path[:-1]:
        target = target[index]
    target[path[-1]] = value
    return body


MALFORMED_BODIES: dict[str, object] = {
    "body not an array": {"v": 1},
    "body too short": GOLDEN_BODY[:3],
    "body too long": [*GOLDEN_BODY, []],
    "vehicle empty": body_with((0,), ""),
    "vehicle with slash": body_with((0,), "bus/7"),
    "vehicle with wildcard": body_with((0,), "bus+"),
    "vehicle with newline": body_with((0,), "bus-7\n"),
    "vehicle too long": body_with((0,), "b" * 65),
    "vehicle not a string": body_with((0,), 7),
    "samples not an array": body_with((1,), b"x"),
    "samples too short": body_with((1,), GOLDEN_BODY[1][:9]),
    "count negative": body_with((1, 0), -1),
    "count over limit": body_with((1, 0), MAX_SAMPLES + 1),
    "count huge": body_with((1, 0), 2**64 - 1),
    "count does not fit columns": body_with((1, 0), 5),
    "count zero with signals": body_with((1, 0), 0),
    "count bool": body_with((1, 0), True),
    "first seq negative": body_with((1, 1), -1),
    "first seq float": body_with((1, 1), 100.0),
    "seq past MAX_SEQ": body_with((1, 1), MAX_SEQ - 3),
    "seq below zero": body_with((1, 2), [1, bytes([zigzag(-102), 7, 3])]),
    "seq used twice": body_with((1, 2), [1, bytes([zigzag(-1), 7, 3])]),
    "seq step most negative": body_with((1, 2), [8, b"\xff" * 24]),
    "seq steps sum past MAX_SEQ": body_with((1, 2), column(8, [zigzag(MAX_SEQ - 1)] * 3)),
    "column width 3": body_with((1, 2), [3, bytes(9)]),
    "column width as string": body_with((1, 2), ["1", bytes(3)]),
    "column planes short": body_with((1, 2), [1, bytes(2)]),
    "column planes long": body_with((1, 2), [1, bytes(4)]),
    "column planes as string": body_with((1, 2), [1, "\x00" * 3]),
    "column not a pair": body_with((1, 2), [1]),
    "ts base over limit": body_with((1, 3), MAX_ABS_TS_MS + 1),
    "ts base float": body_with((1, 3), float(T0_MS)),
    "first ts offset huge": body_with((1, 6), column(8, [0, 2**62])),
    "first ts past MAX_ABS_TS_MS": body_with((1, 6), column(8, [0, MAX_ABS_TS_MS])),
    "ts deltas sum out of range": body_with((1, 7), column(8, [zigzag(2**53)] * 2)),
    "ts delta most negative": body_with((1, 7), [8, b"\xff" * 16]),
    "ts deltas for wrong count": body_with((1, 7), [1, bytes(3)]),
    "signal table not an array": body_with((1, 4), "Vehicle.Speed"),
    "signal table short": body_with((1, 4), GOLDEN_BODY[1][4][:4]),
    "codes not an array": body_with((1, 4, 0), 0),
    "code past the codebook": body_with((1, 4, 0), [len(CODEBOOKS[CURRENT].names)]),
    "codes run past the codebook": body_with((1, 4, 0), [0, len(CODEBOOKS[CURRENT].names) - 1]),
    "code step negative": body_with((1, 4, 0), [-1]),
    "code step float": body_with((1, 4, 0), [0.0]),
    "names not an array": body_with((1, 4, 1), "Soc"),
    "signal name empty": body_with((1, 4, 1, 0), ""),
    "signal name too long": body_with((1, 4, 1, 0), "s" * (MAX_NAME_BYTES + 1)),
    "signal name not a string": body_with((1, 4, 1, 0), 1),
    "signal listed twice": body_with((1, 4, 1, 0), "Vehicle.Speed"),
    "quanta not an array": body_with((1, 4, 2), 0.5),
    "quantum zero": body_with((1, 4, 2, 0), 0.0),
    "quantum negative": body_with((1, 4, 2, 0), -0.5),
    "quantum nan": body_with((1, 4, 2, 0), math.nan),
    "quantum inf": body_with((1, 4, 2, 0), math.inf),
    "quantum as integer": body_with((1, 4, 2, 0), 1),
    "quanta descending": body_with((1, 4, 2), [0.5, 0.25]),
    "quantum listed twice": body_with((1, 4, 2), [0.5, 0.5]),
    "quantum listed unused": body_with((1, 4, 2), [0.5, 1.0]),
    "quantized value overflows float": body_with((1, 4, 2, 0), 1e306),  # 8000 steps
    "quantum index out of range": body_with((1, 4, 3), [1, bytes([2, 0])]),
    "quantum index past int64": body_with((1, 4, 3), column(8, [1, 2**63])),
    "base out of range": body_with((1, 4, 4), column(8, [zigzag(2**60), 0])),
    "base most negative": body_with((1, 4, 4), [8, b"\xff" * 16]),
    "exact signal with base": body_with((1, 4, 4), [1, bytes([40, 6])]),
    "counts with a zero": body_with((1, 5), [1, bytes([4, 0])]),
    "counts short of the sample count": body_with((1, 5), [1, bytes([2, 1])]),
    "counts huge": body_with((1, 5), column(8, [2**64 - 1, 5])),
    "value deltas for wrong count": body_with((1, 8), [1, bytes([2])]),
    "value slope out of range": body_with((1, 8), column(8, [zigzag(2**55), 0])),
    "quantized value out of range": body_with((1, 8), column(8, [zigzag(2**54), 0])),
    "exact values short": body_with((1, 9), b"\x00" * 7),
    "exact values as float": body_with((1, 9), 55.5),
    "prediction row short": body_with((2, 0), [103, T0_MS, "m", "1", "o"]),
    "prediction seq negative": body_with((2, 0, 0), -103),
    "prediction value integer": body_with((2, 0, 5), 1),
    "prediction model empty": body_with((2, 0, 2), ""),
    "predictions not an array": body_with((2,), {"a": 1}),
    "alert severity unknown": body_with((3, 0, 3), "fatal"),
    "alert severity not a string": body_with((3, 0, 3), ["warning"]),
    "alert active integer": body_with((3, 0, 4), 1),
    "alert value none": body_with((3, 0, 5), None),
    "alert message too long": body_with((3, 0, 6), "m" * (MAX_MESSAGE_BYTES + 1)),
    "alert seq reused by a sample": body_with((3, 0, 0), 101),
    "prediction seq reused by an alert": body_with((2, 0, 0), 104),
    "timestamp ext type": body_with((2, 0, 1), msgpack.Timestamp(1, 0)),
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_bodies_are_refused(body: object) -> None:
    with pytest.raises(WireError):
        decode_batch(payload_of(body))


def test_uncompressed_and_checksumless_bodies_are_refused() -> None:
    with pytest.raises(WireError):
        decode_batch(HEADER + msgpack.packb(GOLDEN_BODY))
    frame = zstandard.ZstdCompressor(write_checksum=False).compress(msgpack.packb(GOLDEN_BODY))
    with pytest.raises(WireError):
        decode_batch(HEADER + frame)
    with pytest.raises(WireError):
        decode_batch(payload_of(GOLDEN_BODY) + b"\x00")  # trailing data
    with pytest.raises(WireError):
        decode_batch(payload_of(GOLDEN_BODY) + payload_of(GOLDEN_BODY)[5:])  # a second frame


@pytest.mark.parametrize(
    "payload",
    [b"", b"V", b"VG", b"VG\x02", b"VG\x02\x01", HEADER, HEADER + b"\x28\xb5", None, "VG\x02\x01\x01", 42],
)
def test_short_or_non_bytes_payloads_are_refused(payload: Any) -> None:
    with pytest.raises(WireError):
        decode_batch(payload)


def test_every_truncation_is_refused() -> None:
    payload = encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)
    for size in range(len(payload)):
        with pytest.raises(WireError):
            decode_batch(payload[:size])


def test_no_bit_flip_decodes_to_a_different_batch() -> None:
    # GIVEN a payload WHEN any single bit flips
    # THEN decoding fails, or (a bit zstd ignores) yields the same batch
    payload = encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)
    for bit in range(8 * len(payload)):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            decoded = decode_batch(bytes(flipped))
        except WireError:
            continue
        assert decoded == GOLDEN_BATCH, f"bit {bit}"


@settings(max_examples=500)
@given(st.binary(max_size=2_000))
def test_random_bytes_are_refused(data: bytes) -> None:
    for candidate in (data, HEADER + data):
        with pytest.raises(WireError):
            decode_batch(candidate)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=10),
    max_leaves=60,
)


def decodes_or_refuses(payload: bytes) -> None:
    try:
        batch = decode_batch(payload)
    except WireError:
        return
    assert isinstance(batch, Batch)


@settings(max_examples=500)
@given(msgpack_values)
def test_wrongly_shaped_msgpack_is_refused(body: object) -> None:
    decodes_or_refuses(payload_of(body))


def leaf_paths(node: object, path: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    if isinstance(node, list):
        for index, child in enumerate(node):
            yield from leaf_paths(child, (*path, index))
    if path:
        yield path


GOLDEN_PATHS = list(leaf_paths(GOLDEN_BODY))


@settings(max_examples=1_000)
@given(path=st.sampled_from(GOLDEN_PATHS), value=msgpack_values)
def test_any_part_of_a_valid_body_replaced_is_checked(path: tuple[int, ...], value: object) -> None:
    decodes_or_refuses(payload_of(body_with(path, value)))


def zstd_rle_frame(total_bytes: int, *, declared_size: int | None) -> bytes:
    """A hand-made zstd frame of 128 KiB RLE blocks: 4 bytes of payload per 128 KiB of output."""
    block = 128 * 1024
    # without a size: checksum flag, window descriptor 2**17 bytes; with: 8-byte content size, single segment
    unsized = bytes([0x04, 0x38])
    header = unsized if declared_size is None else bytes([0xE4]) + declared_size.to_bytes(8, "little")
    blocks = total_bytes // block
    rle = (block << 3) | (1 << 1)  # block size, block type 1 (RLE)
    body = b"".join((rle | (i == blocks - 1)).to_bytes(3, "little") + b"\x00" for i in range(blocks))
    return b"\x28\xb5\x2f\xfd" + header + body + bytes(4)


@pytest.fixture
def bounded_memory() -> Iterator[Callable[[], int]]:
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decompression_bombs_are_refused_quickly_and_in_little_memory(
    bounded_memory: Callable[[], int],
) -> None:
    gib = 1 << 30
    streamed = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    real_bomb = b"".join(streamed.compress(bytes(1 << 20)) for _ in range(1024)) + streamed.flush()
    sized = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj(size=gib)
    sized_bomb = b"".join(sized.compress(bytes(1 << 20)) for _ in range(1024)) + sized.flush()
    crafted_unsized = zstd_rle_frame(4 * gib, declared_size=None)
    crafted_sized = zstd_rle_frame(4 * gib, declared_size=4 * gib)
    # the crafted frame is valid zstd: its first megabytes do decompress (to zeros)
    reader = zstandard.ZstdDecompressor().stream_reader(crafted_unsized)
    assert reader.read(1 << 20) == bytes(1 << 20)
    tracemalloc.reset_peak()

    for frame in (real_bomb, sized_bomb, crafted_unsized, crafted_sized):
        assert len(frame) < 200_000  # a tiny payload that would decompress to gigabytes
        started = time.perf_counter()
        with pytest.raises(WireError):
            decode_batch(HEADER + frame)
        assert time.perf_counter() - started < 1.0
    assert bounded_memory() - len(real_bomb) < 8 << 20


def test_a_body_just_over_the_cap_is_refused() -> None:
    padded = [*GOLDEN_BODY[:3], [[104, T0_MS, "low_soc", "warning", True, 9.5, "m"]], bytes(MAX_BODY_BYTES)]
    with pytest.raises(WireError):
        decode_batch(payload_of(padded))


@pytest.mark.parametrize(
    "body",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 4 G elements
        b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xdf\xff\xff\xff\xff",  # map32 of 4 G pairs
        b"\x91" * 100_000,  # arrays nested 100 000 deep
        b"\x94\xa5bus-7\x99\xce\xff\xff\xff\xff",  # sample count 4 G
    ],
    ids=["array32", "bin32", "str32", "map32", "deep", "count"],
)
def test_huge_declared_sizes_are_refused(body: bytes, bounded_memory: Callable[[], int]) -> None:
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(body)
    started = time.perf_counter()
    with pytest.raises(WireError):
        decode_batch(HEADER + frame)
    assert time.perf_counter() - started < 1.0
    assert bounded_memory() < 16 << 20


def test_oversized_payloads_are_refused_before_decompression() -> None:
    with pytest.raises(WireError):
        decode_batch(HEADER + bytes(MAX_PAYLOAD_BYTES))


# --- the encoder refuses what the decoder would ---------------------------------------------------------


def sample(seq: Any = 1, **changes: Any) -> SampleRecord:
    return replace(SampleRecord(seq, T0_MS, "Soc", 50.0), **changes)


@pytest.mark.parametrize(
    "batch",
    [
        Batch("bus/1", (sample(),)),
        Batch("", (sample(),)),
        Batch("bus-1", (sample(1), sample(1))),
        Batch("bus-1", (sample(seq=-1),)),
        Batch("bus-1", (sample(seq=MAX_SEQ + 1),)),
        Batch("bus-1", (sample(seq=1.0),)),
        Batch("bus-1", (sample(seq=True),)),
        Batch("bus-1", (sample(ts_ms=MAX_ABS_TS_MS + 1),)),
        Batch("bus-1", (sample(signal=""),)),
        Batch("bus-1", (sample(signal="s" * (MAX_NAME_BYTES + 1)),)),
        Batch("bus-1", (sample(signal="\ud800"),)),
        Batch("bus-1", (sample(value="50"),)),
        Batch("bus-1", (sample(value=None),)),
        Batch("bus-1", (sample(1),), alerts=(AlertRecord(1, T0_MS, "r", "info", True, 1.0, ""),)),
        Batch("bus-1", alerts=(AlertRecord(1, T0_MS, "r", "fatal", True, 1.0, ""),)),
        Batch("bus-1", alerts=(AlertRecord(1, T0_MS, "r", "info", 1, 1.0, ""),)),  # type: ignore[arg-type]
        Batch("bus-1", alerts=(AlertRecord(1, T0_MS, "r", "info", True, 1.0, "m" * 1025),)),
        Batch("bus-1", predictions=(PredictionRecord(1, T0_MS, "", "1", "o", 1.0),)),
        Batch("bus-1", predictions=(PredictionRecord(1, T0_MS, "m", "1", "o", 1.0),) * 2),
    ],
)
def test_invalid_batches_are_refused_by_the_encoder(batch: Batch) -> None:
    with pytest.raises(WireError):
        encode_batch(batch)


@pytest.mark.parametrize("quantum", [0.0, -0.1, math.nan, math.inf, "0.1", True])
def test_invalid_quanta_are_refused(quantum: Any) -> None:
    with pytest.raises(WireError):
        encode_batch(Batch("bus-1", (sample(),)), {"Soc": quantum})


def test_numpy_numbers_are_accepted() -> None:
    record = SampleRecord(np.int64(7), np.int64(T0_MS), "Soc", np.float64(1.5))  # type: ignore[arg-type]
    assert decode_batch(encode_batch(Batch("bus-1", (record,)))).samples == (
        SampleRecord(7, T0_MS, "Soc", 1.5),
    )


def test_too_many_records_are_refused_by_the_encoder() -> None:
    with pytest.raises(WireError):
        encode_batch(Batch("bus-1", tuple(sample(i) for i in range(MAX_SAMPLES + 1))))
    with pytest.raises(WireError):
        encode_batch(
            Batch("bus-1", alerts=(AlertRecord(1, T0_MS, "r", "info", True, 1.0, ""),) * (MAX_ALERTS + 1))
        )


def test_limits_hold_together() -> None:
    # the largest sample batch fits the body cap even with every value exact and every column 8 bytes wide
    assert MAX_SAMPLES * (8 + 8 + 8) + MAX_SIGNALS * (3 + MAX_NAME_BYTES + 9 + 8 + 8 + 8 + 8) < MAX_BODY_BYTES
    assert MAX_PAYLOAD_BYTES < MAX_BODY_BYTES
    assert MAX_SEQ < 2**53


# --- status -----------------------------------------------------------------------------------------------


def test_status_round_trip() -> None:
    payload = encode_status("online", T0_MS, agent_version="0.1.0", buffered=12, uptime_s=3.5, ok=True)
    assert json.loads(payload) == {
        "state": "online",
        "ts_ms": T0_MS,
        "agent_version": "0.1.0",
        "buffered": 12,
        "uptime_s": 3.5,
        "ok": True,
    }
    status = decode_status(payload)
    assert status == Status(
        "online", T0_MS, {"agent_version": "0.1.0", "buffered": 12, "uptime_s": 3.5, "ok": True}
    )
    assert decode_status(encode_status("offline", T0_MS)) == Status("offline", T0_MS, {})


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_status("rebooting", T0_MS),
        lambda: encode_status("online", -1),
        lambda: encode_status("online", T0_MS, x=math.nan),
        lambda: encode_status("online", T0_MS, x=[1]),  # type: ignore[arg-type]
        lambda: encode_status("online", T0_MS, x="y" * MAX_STATUS_BYTES),
    ],
)
def test_invalid_statuses_are_refused_by_the_encoder(call: Callable[[], bytes]) -> None:
    with pytest.raises(WireError):
        call()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"online",
        b"[]",
        b'{"state":"online"}',
        b'{"state":"gone","ts_ms":1}',
        b'{"state":"online","ts_ms":"1"}',
        b'{"state":"online","ts_ms":1.5}',
        b'{"state":"online","ts_ms":true}',
        b'{"state":"online","ts_ms":1,"x":NaN}',
        b'{"state":"online","ts_ms":1,"x":{"nested":1}}',
        b'{"state":"online","ts_ms":1,"x":"\xff"}',
        b"[" * 4000,
        b'{"state":"online","ts_ms":1,"pad":"' + b"x" * MAX_STATUS_BYTES + b'"}',
    ],
)
def test_malformed_statuses_are_refused(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_status(payload)


@given(st.binary(max_size=300))
def test_status_decoder_raises_only_wire_error(payload: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_status(payload)
