"""The uplink payload format: round trips, the v1 layout, size on routine telemetry, and a decoder that
refuses every malformed payload with `WireError` (never another exception, never an unbounded allocation)."""

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
    MAX_STATUS_BYTES,
    WIRE_VERSION,
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

T0_MS = 1_760_000_000_000


def float_bits(value: float) -> bytes:
    return struct.pack("<d", value)


def payload_of(body: object, *, header: bytes = HEADER) -> bytes:
    """A payload built by hand from a body structure, the way the v1 layout says."""
    frame = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(
        msgpack.packb(body, use_bin_type=True)
    )
    return header + frame


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


def test_quantized_values_decode_to_steps() -> None:
    samples = tuple(SampleRecord(i, T0_MS + 100 * i, "Soc", 71.3 - 0.04 * i) for i in range(50))
    decoded = decode_batch(encode_batch(Batch("bus-1", samples), {"Soc": 0.1}))
    for got, want in zip(decoded.samples, samples, strict=True):
        assert abs(got.value - want.value) <= 0.05 + 1e-12
        assert abs(got.value / 0.1 - round(got.value / 0.1)) < 1e-6


def test_empty_batch_round_trips() -> None:
    assert decode_batch(encode_batch(Batch("bus-1"))) == Batch("bus-1")


# --- the v1 layout (golden) -------------------------------------------------------------------------------

GOLDEN_BATCH = Batch(
    "bus-7",
    samples=(
        SampleRecord(100, T0_MS, "Vehicle.Speed", 10.0),
        SampleRecord(101, T0_MS + 100, "Soc", 55.5),
        SampleRecord(102, T0_MS + 100, "Vehicle.Speed", 10.5),
        SampleRecord(105, T0_MS + 90, "Vehicle.Speed", 4000.0),
    ),
    predictions=(PredictionRecord(103, T0_MS + 100, "soc_drop_60min", "1.2", "soc_drop_pct", 0.25),),
    alerts=(AlertRecord(104, T0_MS + 100, "low_soc", "warning", True, 9.5, "SOC below 10 %"),),
)
GOLDEN_QUANTA = {"Vehicle.Speed": 0.5}
GOLDEN_BODY: list[Any] = [
    "bus-7",
    [
        4,  # n
        100,  # seq base
        [1, bytes([0, 0, 0, 2])],  # seq gaps: 100, 101, 102, then 105 (two beyond +1)
        T0_MS,  # ts base
        [1, bytes([0, 200, 0, 19])],  # ts deltas, zigzag: 0, +100, 0, -10
        [["Vehicle.Speed", 0.5, 20], ["Soc", None, 0]],  # dictionary: name, quantum, base steps
        [1, bytes([0, 1, 0, 0])],  # signal index per sample
        # Vehicle.Speed steps 20, 21, 8000 → deltas 0, +1, +7979 → zigzag 0, 2, 15958, as 2-byte planes
        [2, bytes([0, 2, 15958 & 0xFF, 0, 0, 15958 >> 8])],
        struct.pack("<d", 55.5),  # exact values: Soc
    ],
    [[103, T0_MS + 100, "soc_drop_60min", "1.2", "soc_drop_pct", 0.25]],
    [[104, T0_MS + 100, "low_soc", "warning", True, 9.5, "SOC below 10 %"]],
]


def test_header_is_magic_version_flags() -> None:
    payload = encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)
    assert WIRE_VERSION == 1
    assert payload[:4] == b"VG\x01\x01" == MAGIC + bytes([WIRE_VERSION, FLAG_ZSTD]) == HEADER
    params = zstandard.get_frame_parameters(payload[4:])
    assert params.has_checksum


def test_encoder_writes_the_documented_body() -> None:
    payload = encode_batch(GOLDEN_BATCH, GOLDEN_QUANTA)
    body = zstandard.ZstdDecompressor().decompress(payload[4:])
    assert msgpack.unpackb(body, raw=False) == GOLDEN_BODY


def test_decoder_reads_a_hand_built_payload() -> None:
    assert decode_batch(payload_of(GOLDEN_BODY)) == GOLDEN_BATCH


@pytest.mark.parametrize(
    "header",
    [b"VG\x02\x01", b"VG\x00\x01", b"VG\xff\x01", b"VX\x01\x01", b"vg\x01\x01", b"VG\x01\x00", b"VG\x01\x03"],
)
def test_unknown_magic_version_or_flags_are_refused(header: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(payload_of(GOLDEN_BODY, header=header))


# --- size on routine telemetry ----------------------------------------------------------------------------

ROUTINE_QUANTA = {  # DBC resolutions of protocols/bus.dbc
    "Vehicle.Speed": 1 / 256,
    "Vehicle.Powertrain.ElectricMotor.Speed": 1.0,
    "Vehicle.Powertrain.ElectricMotor.Torque": 0.5,
    "Vehicle.Powertrain.TractionBattery.CurrentCurrent": 0.1,
    "Vehicle.Powertrain.TractionBattery.CurrentVoltage": 0.1,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 0.1,
    "Vehicle.Powertrain.TractionBattery.CellVoltage.Max": 0.001,
    "Vehicle.Powertrain.TractionBattery.CellVoltage.Min": 0.001,
    "Vehicle.Powertrain.TractionBattery.Temperature.Max": 0.5,
    "Vehicle.Cabin.HVAC.AmbientAirTemperature": 0.03125,
}


def routine_telemetry(seed: int, seconds: int = 60) -> Batch:
    """One bus stop-to-stop minute: 5 signals in two 10 Hz frames (drive, battery), 5 signals at 1 Hz, with
    sensor noise and a few ms of frame-time jitter; one seq per sample in arrival order."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * 10) / 10.0
    accel = np.select([t < 15, t < 35, t < 45], [0.75, 0.0, -1.1], 0.0)  # m/s², then a dwell at the stop
    v = np.clip(np.cumsum(accel) * 0.1, 0.0, None)
    motor_rpm = v * 216 + rng.normal(0, 2, t.size)
    torque_nm = accel * 1800 + rng.normal(0, 6, t.size)
    power_w = torque_nm * motor_rpm * 2 * np.pi / 60 + 12_000  # traction + auxiliaries
    voltage = 652 - 0.04 * power_w / 650 + rng.normal(0, 0.15, t.size)
    fast = {
        "Vehicle.Speed": v * 3.6 + rng.normal(0, 0.05, t.size),
        "Vehicle.Powertrain.ElectricMotor.Speed": motor_rpm,
        "Vehicle.Powertrain.ElectricMotor.Torque": torque_nm,
        "Vehicle.Powertrain.TractionBattery.CurrentCurrent": power_w / voltage + rng.normal(0, 0.8, t.size),
        "Vehicle.Powertrain.TractionBattery.CurrentVoltage": voltage,
    }
    s = np.arange(seconds)
    slow = {
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 71.3 - 0.002 * s,
        "Vehicle.Powertrain.TractionBattery.CellVoltage.Max": 3.912 - 3e-5 * s + rng.normal(0, 1e-3, seconds),
        "Vehicle.Powertrain.TractionBattery.CellVoltage.Min": 3.871 - 3e-5 * s + rng.normal(0, 1e-3, seconds),
        "Vehicle.Powertrain.TractionBattery.Temperature.Max": 31 + 0.01 * s + rng.normal(0, 0.2, seconds),
        "Vehicle.Cabin.HVAC.AmbientAirTemperature": 21.4
        + 0.2 * np.sin(s / 20)
        + rng.normal(0, 0.05, seconds),
    }
    frames: list[tuple[int, list[tuple[str, float]]]] = []
    drive_ms = T0_MS + (t * 1000).astype(np.int64) + rng.integers(0, 3, t.size)
    battery_ms = T0_MS + 37 + (t * 1000).astype(np.int64) + rng.integers(0, 3, t.size)
    names = list(fast)
    for i in range(t.size):
        frames.append((int(drive_ms[i]), [(name, float(fast[name][i])) for name in names[:3]]))
        frames.append((int(battery_ms[i]), [(name, float(fast[name][i])) for name in names[3:]]))
    slow_ms = T0_MS + 512 + s * 1000 + rng.integers(0, 3, seconds)
    for j in range(seconds):
        frames.append((int(slow_ms[j]), [(name, float(series[j])) for name, series in slow.items()]))
    frames.sort(key=lambda frame: frame[0])
    flat = [(ts, name, value) for ts, signals in frames for name, value in signals]
    samples = tuple(SampleRecord(1_234_567 + i, ts, name, value) for i, (ts, name, value) in enumerate(flat))
    return Batch("bus-0042", samples=samples)


@pytest.mark.parametrize("seed", range(3))
def test_routine_telemetry_costs_at_most_3_bytes_per_sample(seed: int) -> None:
    batch = routine_telemetry(seed)
    n = len(batch.samples)
    assert n == 3300

    payload = encode_batch(batch, ROUTINE_QUANTA)

    assert len(payload) / n <= 3.0
    json_bytes = sum(
        len(json.dumps({"seq": s.seq, "ts_ms": s.ts_ms, "signal": s.signal, "value": s.value}))
        for s in batch.samples
    )
    assert len(payload) * 30 < json_bytes  # far below one JSON object per sample
    for got, want in zip(decode_batch(payload).samples, batch.samples, strict=True):
        assert abs(got.value - want.value) <= ROUTINE_QUANTA[want.signal] / 2 + 1e-9


# --- malformed payloads -----------------------------------------------------------------------------------


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
    "samples too short": body_with((1,), GOLDEN_BODY[1][:8]),
    "count negative": body_with((1, 0), -1),
    "count over limit": body_with((1, 0), MAX_SAMPLES + 1),
    "count huge": body_with((1, 0), 2**64 - 1),
    "count does not fit columns": body_with((1, 0), 5),
    "count bool": body_with((1, 0), True),
    "seq base negative": body_with((1, 1), -1),
    "seq base float": body_with((1, 1), 100.0),
    "seq past MAX_SEQ": body_with((1, 1), MAX_SEQ - 3),
    "seq gap huge": body_with((1, 2), [8, bytes([0, 0, 0, 0xFF]) * 8]),  # byte planes: element 3 is 2**64-1
    "seq gaps sum past MAX_SEQ": body_with((1, 2), [8, bytes(24) + b"\x1f" * 4 + bytes(4)]),
    "column width 3": body_with((1, 2), [3, bytes(12)]),
    "column width as string": body_with((1, 2), ["1", bytes(4)]),
    "column planes short": body_with((1, 2), [1, bytes(3)]),
    "column planes long": body_with((1, 2), [1, bytes(5)]),
    "column planes as string": body_with((1, 2), [1, "\x00" * 4]),
    "column not a pair": body_with((1, 2), [1]),
    "ts base over limit": body_with((1, 3), MAX_ABS_TS_MS + 1),
    "ts deltas sum out of range": body_with((1, 4), [8, bytes(24) + b"\x3e" * 4 + bytes(4)]),
    "ts delta most negative": body_with((1, 4), [8, b"\xff" * 32]),
    "signals not an array": body_with((1, 5), "Vehicle.Speed"),
    "signal entry short": body_with((1, 5, 0), ["Vehicle.Speed", 0.5]),
    "signal name empty": body_with((1, 5, 0, 0), ""),
    "signal name too long": body_with((1, 5, 0, 0), "s" * (MAX_NAME_BYTES + 1)),
    "signal name not a string": body_with((1, 5, 0, 0), 1),
    "quantum zero": body_with((1, 5, 0, 1), 0.0),
    "quantum negative": body_with((1, 5, 0, 1), -0.5),
    "quantum nan": body_with((1, 5, 0, 1), math.nan),
    "quantum inf": body_with((1, 5, 0, 1), math.inf),
    "quantum as integer": body_with((1, 5, 0, 1), 1),
    "quantized value overflows float": body_with((1, 5, 0, 1), 1e306),  # 8000 steps
    "base float": body_with((1, 5, 0, 2), 20.0),
    "base out of range": body_with((1, 5, 0, 2), 2**60),
    "exact signal with base": body_with((1, 5, 1, 2), 3),
    "duplicate signal names": body_with((1, 5, 1, 0), "Vehicle.Speed"),
    "signal without samples": body_with((1, 5), [*GOLDEN_BODY[1][5], ["Unused", None, 0]]),
    "signal index out of range": body_with((1, 6), [1, bytes([0, 2, 0, 0])]),
    "deltas for wrong count": body_with((1, 7), [1, bytes([0, 2])]),
    "exact values short": body_with((1, 8), b"\x00" * 7),
    "exact values as float": body_with((1, 8), 55.5),
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
        decode_batch(payload_of(GOLDEN_BODY) + payload_of(GOLDEN_BODY)[4:])  # a second frame


@pytest.mark.parametrize("payload", [b"", b"V", b"VG", b"VG\x01", b"VG\x01\x01", None, "VG\x01\x01", 42])
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
    assert MAX_SAMPLES * (8 + 8 + 2 + 8) < MAX_BODY_BYTES
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
