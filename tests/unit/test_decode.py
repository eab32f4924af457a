"""Decode: golden values with the project DBC, every skip kind counted, the sampling policy's
properties, and the DBC's own round trip (every message, every mux value of BMS_ModuleData).

Frames are encoded with cantools from the real `protocols/bus.dbc` and decoded with ours.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
from cantools.database.can import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.decode import Decoder, FrameDecoder, decode_frame, decode_log_to_csv
from agent.records import Frame
from protocols.catalog import (
    DEFAULT_CATALOG,
    DEFAULT_DBC,
    Catalog,
    Priority,
    SamplingPolicy,
    SignalSampler,
    load_catalog,
)

CATALOG = load_catalog(DEFAULT_CATALOG)
DB = CATALOG.database
T0 = 1_750_000_000.0


def _frame(message_name: str, values: dict[str, float], ts: float = T0, **overrides: object) -> Frame:
    message = DB.get_message_by_name(message_name)
    data = message.encode(values, scaling=True, strict=True)
    fields: dict[str, object] = {
        "bus": "traction",
        "ts": ts,
        "arbitration_id": message.frame_id,
        "is_extended": message.is_extended_frame,
        "data": bytes(data),
    }
    fields.update(overrides)
    return Frame(**fields)  # type: ignore[arg-type]


def _values(frame: Frame) -> dict[str, float]:
    decoded = FrameDecoder(CATALOG.frames()).decode(frame)
    assert decoded.skipped is None, decoded
    return {spec.name: value for spec, value in decoded.values}


# --------------------------------------------------------------------------- golden decodes


def test_pack_status_golden() -> None:
    frame = _frame(
        "BMS_PackStatus",
        {
            "PackVoltage": 652.3,
            "PackCurrent": -123.4,
            "SOC": 81.7,
            "ContactorState": 2,
            "ChargingState": 3,
            "PackStatusCounter": 9,
        },
    )
    values = _values(frame)
    spec_names = {s.dbc_signal: s.name for s in CATALOG if s.message == "BMS_PackStatus"}
    assert values[spec_names["PackVoltage"]] == pytest.approx(652.3)
    assert values[spec_names["PackCurrent"]] == pytest.approx(-123.4)
    assert values[spec_names["SOC"]] == pytest.approx(81.7)
    # Enums come out as their numbers, not as cantools' NamedSignalValue.
    assert values[spec_names["ContactorState"]] == 2.0
    assert type(values[spec_names["ContactorState"]]) is float
    assert values[spec_names["ChargingState"]] == 3.0
    assert "PackStatusCounter" not in spec_names  # not in the catalog: not decoded into a sample


def test_j1939_speed_golden_and_extended_id() -> None:
    frame = _frame("CCVS1", {"ParkingBrakeSwitch": 1, "WheelBasedVehicleSpeed": 42.5, "BrakeSwitch": 0})
    assert frame.is_extended and frame.arbitration_id == 0x18FEF100
    values = _values(frame)
    assert values["Vehicle.Speed"] == 42.5
    assert values["Vehicle.Chassis.ParkingBrake.IsEngaged"] == 1.0


def test_decode_frame_matches_cantools_for_a_module_frame() -> None:
    message = DB.get_message_by_name("BMS_ModuleData")
    data = message.encode(
        {
            "ModuleIndex": 7,
            "Module08Voltage": 53.21,
            "Module08CellVoltageMax": 3.345,
            "Module08CellVoltageMin": 3.301,
            "Module08Temperature": 31.5,
        }
    )
    frame = Frame("traction", T0, message.frame_id, False, bytes(data))
    decoded = decode_frame(frame, CATALOG.frames())
    expected = message.decode(data, decode_choices=False)
    got = {spec.dbc_signal: value for spec, value in decoded.values}
    assert set(got) == {
        "Module08Voltage",
        "Module08CellVoltageMax",
        "Module08CellVoltageMin",
        "Module08Temperature",
    }
    for name, value in got.items():
        assert value == expected[name]


def test_longer_frame_than_message_is_decoded() -> None:
    # GIVEN a 6-byte message sent with DLC 8 (padding): THEN it decodes like the 6 bytes.
    frame = _frame(
        "BMS_CellVoltage",
        {"CellVoltageMax": 3.4, "CellVoltageMin": 3.3, "CellVoltageMaxId": 5, "CellVoltageMinId": 6},
    )
    padded = Frame(frame.bus, frame.ts, frame.arbitration_id, False, frame.data + b"\xff\xff")
    assert _values(padded) == _values(frame)


# --------------------------------------------------------------------------- skips, counted per kind


def test_every_skip_kind_is_counted_and_nothing_raises() -> None:
    decoder = Decoder(CATALOG, bus="traction", apply_policy=False)
    good = _frame("MCU_Status", {"MotorSpeed": 1500, "MotorTorque": 200, "MotorPower": 31.4, "DriveState": 2})
    module = DB.get_message_by_name("BMS_ModuleData")
    bad_mux = bytearray(
        module.encode(
            {
                "ModuleIndex": 0,
                "Module01Voltage": 50,
                "Module01CellVoltageMax": 3.3,
                "Module01CellVoltageMin": 3.2,
                "Module01Temperature": 25,
            }
        )
    )
    bad_mux[0] = 12  # modules are 0..11
    ccvs = DB.get_message_by_name("CCVS1")
    speed_not_available = bytearray(
        ccvs.encode({"ParkingBrakeSwitch": 0, "WheelBasedVehicleSpeed": 10, "BrakeSwitch": 0})
    )
    speed_not_available[1:3] = b"\xff\xff"  # J1939 "not available": 255.996 km/h > 250.996
    frames = [
        good,
        Frame("traction", T0, 0x7AB, False, b"\x00" * 8),  # unknown id
        Frame("traction", T0, good.arbitration_id, True, good.data),  # right number, extended flag wrong
        Frame("traction", T0, good.arbitration_id, False, good.data[:5]),  # short
        Frame("traction", T0, 0, False, b"", is_error=True),
        Frame("traction", T0, good.arbitration_id, False, b"", is_remote=True),
        Frame("traction", T0, module.frame_id, False, bytes(bad_mux)),
        Frame("traction", T0, ccvs.frame_id, True, bytes(speed_not_available)),
        Frame("traction", T0, good.arbitration_id, False, b""),  # empty: short
    ]
    samples = [s for f in frames for s in decoder.process(f)]
    stats = decoder.stats
    assert stats.frames_in == len(frames)
    assert stats.skipped == {
        "unknown_id": 2,
        "short": 2,
        "error_frame": 1,
        "remote_frame": 1,
        "unknown_mux": 1,
        "undecodable": 0,
        "out_of_range": 1,  # the speed only; the parking brake of that frame is kept
        # J1939 kinds (tests/unit/test_j1939.py exercises them)
        "dm1_malformed": 0,
        "tp_timeout": 0,
        "tp_sequence": 0,
        "tp_bad_announce": 0,
        "tp_aborted": 0,
        "tp_orphan": 0,
        "tp_overflow": 0,
    }
    assert stats.frames_decoded == 2
    names = [s.signal for s in samples]
    assert "Vehicle.Speed" not in names
    assert "Vehicle.Chassis.ParkingBrake.IsEngaged" in names
    motor = {s.signal: s.value for s in samples if s.signal.startswith("Vehicle.Powertrain.ElectricMotor.")}
    assert motor == {
        "Vehicle.Powertrain.ElectricMotor.Speed": 1500.0,
        "Vehicle.Powertrain.ElectricMotor.Torque": 200.0,
        "Vehicle.Powertrain.ElectricMotor.Power": pytest.approx(31.4),
        "Vehicle.Powertrain.ElectricMotor.DriveState": 2.0,
    }


def test_not_available_two_bit_state_is_out_of_range() -> None:
    # J1939 2-bit state 3 = "not available": outside the DBC's [0|1], so not a value (strict=False
    # lets cantools encode it, as a real ECU would send it).
    message = DB.get_message_by_name("CCVS1")
    data = message.encode(
        {"ParkingBrakeSwitch": 3, "WheelBasedVehicleSpeed": 0, "BrakeSwitch": 0}, strict=False
    )
    decoded = FrameDecoder(CATALOG.frames()).decode(Frame("x", T0, message.frame_id, True, bytes(data)))
    assert [s.dbc_signal for s in decoded.out_of_range] == ["ParkingBrakeSwitch"]
    assert [s.dbc_signal for s, _ in decoded.values] == ["WheelBasedVehicleSpeed"]


@settings(deadline=None)  # no per-example time limit: CI machines are shared
@given(
    data=st.binary(max_size=64),
    frame_id=st.sampled_from(sorted(CATALOG.frames())),
    extended=st.booleans(),
    error=st.booleans(),
    remote=st.booleans(),
)
def test_any_bytes_under_any_catalog_id_never_raise(
    data: bytes, frame_id: int, extended: bool, error: bool, remote: bool
) -> None:
    decoder = Decoder(CATALOG, apply_policy=False)
    decoder.process(Frame("fuzz", T0, frame_id, extended, data, error, remote))
    stats = decoder.stats
    frame_skips = sum(count for kind, count in stats.skipped.items() if kind != "out_of_range")
    only_out_of_range = stats.frames_decoded == 0 and frame_skips == 0 and stats.skipped["out_of_range"] > 0
    # exactly one outcome per frame: decoded, skipped as a whole, or every value out of range
    assert stats.frames_decoded + frame_skips + only_out_of_range == 1
    assert stats.skipped["undecodable"] == 0


# --------------------------------------------------------------------------- sampling policy

POLICIES = st.builds(
    lambda lo, extra, deadband: SamplingPolicy(lo, lo + extra, deadband),
    st.floats(0, 5),
    st.floats(0, 30),
    st.floats(0, 3),
)
OFFERS = st.lists(st.tuples(st.floats(0, 2), st.floats(-10, 10)), min_size=1, max_size=200)


def _run_sampler(policy: SamplingPolicy, steps: list[tuple[float, float]]) -> list[tuple[float, float, bool]]:
    sampler = SignalSampler(policy)
    ts = T0
    out = []
    for dt, value in steps:
        ts += dt
        out.append((ts, value, sampler.offer(ts, value)))
    return out


@settings(deadline=None)  # no per-example time limit: CI machines are shared
@given(policy=POLICIES, steps=OFFERS)
def test_sampler_properties(policy: SamplingPolicy, steps: list[tuple[float, float]]) -> None:
    offers = _run_sampler(policy, steps)
    assert offers[0][2], "the first value is always kept"
    last_ts, last_value = offers[0][0], offers[0][1]
    for ts, value, kept in offers[1:]:
        elapsed = ts - last_ts
        if kept:
            # never two kept values closer than min_interval (max_interval >= min_interval) ...
            assert elapsed >= policy.min_interval_s
            # ... and before the heartbeat only when the value moved at least the deadband
            assert elapsed >= policy.max_interval_s or abs(value - last_value) >= policy.deadband
            last_ts, last_value = ts, value
        else:
            # a dropped value: the heartbeat was not due, and it was too early or moved too little
            assert elapsed < policy.max_interval_s
            assert elapsed < policy.min_interval_s or abs(value - last_value) < policy.deadband


@settings(deadline=None)  # no per-example time limit: CI machines are shared
@given(policy=POLICIES, count=st.integers(2, 300), step=st.floats(0.01, 1.0))
def test_constant_signal_still_heartbeats(policy: SamplingPolicy, count: int, step: float) -> None:
    offers = _run_sampler(policy, [(step, 1.0)] * count)
    kept = [ts for ts, _, k in offers if k]
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    assert all(gap < policy.max_interval_s + step + 1e-6 for gap in gaps)
    span_after_last = offers[-1][0] - kept[-1]
    assert span_after_last < policy.max_interval_s + 1e-9 or policy.max_interval_s == 0


def test_policy_off_keeps_everything_and_backwards_time_restarts() -> None:
    off = SignalSampler(SamplingPolicy(0.0, 0.0, 0.0))
    assert all(off.offer(T0, 1.0) for _ in range(5))  # same ts, same value: all kept
    sampler = SignalSampler(SamplingPolicy(1.0, 10.0, 0.5))
    assert sampler.offer(T0 + 100, 1.0)
    assert not sampler.offer(T0 + 100.5, 5.0)  # too early
    assert not sampler.offer(T0 + 102, 1.2)  # moved too little
    assert sampler.offer(T0 + 102, 1.6)
    assert sampler.offer(T0, 1.6), "a source clock that went back restarts the signal"


def test_decoder_applies_policy_per_signal_with_frame_timestamps() -> None:
    decoder = Decoder(CATALOG)
    speed = CATALOG.by_name("Vehicle.Speed").policy  # min 1 s, deadband 0.5 km/h
    kept: list[tuple[float, float]] = []
    for i in range(50):  # 100 ms frames, speed ramps by 0.1 km/h per frame
        frame = _frame(
            "CCVS1",
            {"ParkingBrakeSwitch": 0, "WheelBasedVehicleSpeed": 20 + i * 0.1, "BrakeSwitch": 0},
            ts=T0 + i * 0.1,
        )
        kept += [(s.ts, s.value) for s in decoder.process(frame) if s.signal == "Vehicle.Speed"]
    assert kept[0] == (T0, 20.0)
    assert all(b[0] - a[0] >= speed.min_interval_s - 1e-9 for a, b in itertools.pairwise(kept))
    assert len(kept) == 5  # t = 0, 1.0, 2.0, 3.0, 4.0 (each moved 1 km/h >= 0.5)
    assert decoder.stats.samples_suppressed > 0
    brake = [
        s
        for s in decoder.process(
            _frame(
                "CCVS1",
                {"ParkingBrakeSwitch": 1, "WheelBasedVehicleSpeed": 25, "BrakeSwitch": 0},
                ts=T0 + 5.0,
            )
        )
    ]
    assert [s.priority for s in brake if s.signal == "Vehicle.Chassis.ParkingBrake.IsEngaged"] == [
        Priority.ROUTINE
    ]


# --------------------------------------------------------------------------- the DBC's round trip


def _full_catalog(tmp: Path) -> Catalog:
    """A catalog mapping every signal of bus.dbc, policy off, so our decoder sees them all."""
    lines = ['[catalog]\nname = "everything"\nversion = "1"\n', f'dbc = "{DEFAULT_DBC}"\n']
    for message in DB.messages:
        for signal in message.signals:
            lines.append(
                f'\n[[can]]\nmessage = "{message.name}"\nsignal = "{signal.name}"\n'
                f'name = "All.{message.name}.{signal.name}"\nmin_interval_s = 0\nmax_interval_s = 0\n'
            )
    path = tmp / "everything.toml"
    path.write_text("".join(lines), encoding="utf-8")
    return load_catalog(path)


def _raw_bounds(message: Message, name: str) -> tuple[int, int]:
    signal = message.get_signal_by_name(name)
    lo_bits = -(2 ** (signal.length - 1)) if signal.is_signed else 0
    hi_bits = 2 ** (signal.length - 1) - 1 if signal.is_signed else 2**signal.length - 1
    scale, offset = float(signal.scale), float(signal.offset)
    lo = math.ceil((float(signal.minimum) - offset) / scale - 1e-9)
    hi = math.floor((float(signal.maximum) - offset) / scale + 1e-9)
    return max(lo, lo_bits), min(hi, hi_bits)


def _message_values(message: Message, mux: int | None) -> st.SearchStrategy[dict[str, float]]:
    fields: dict[str, st.SearchStrategy[float]] = {}
    for signal in message.signals:
        if signal.is_multiplexer:
            fields[signal.name] = st.just(float(mux if mux is not None else 0))
            continue
        if signal.multiplexer_ids is not None and mux not in signal.multiplexer_ids:
            continue
        lo, hi = _raw_bounds(message, signal.name)
        scale, offset = float(signal.scale), float(signal.offset)
        fields[signal.name] = st.integers(lo, hi).map(lambda raw, s=scale, o=offset: raw * s + o)
    return st.fixed_dictionaries(fields)


def _cases() -> Iterator[tuple[str, int | None]]:
    for message in DB.messages:
        if message.is_multiplexed():
            mux_signal = next(s for s in message.signals if s.is_multiplexer)
            ids = sorted({i for s in message.signals for i in (s.multiplexer_ids or [])})
            assert ids == list(range(12)), f"{message.name}: expected 12 modules on {mux_signal.name}"
            for mux in ids:
                yield message.name, mux
        else:
            yield message.name, None


@pytest.fixture(scope="module")
def full_decoder(tmp_path_factory: pytest.TempPathFactory) -> FrameDecoder:
    return FrameDecoder(_full_catalog(tmp_path_factory.mktemp("catalog")).frames())


def test_round_trip_covers_every_message_and_all_twelve_modules() -> None:
    cases = list(_cases())
    assert {name for name, _ in cases} == {m.name for m in DB.messages}
    assert len([mux for name, mux in cases if name == "BMS_ModuleData"]) == 12


@pytest.mark.parametrize(("message_name", "mux"), list(_cases()))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_dbc_round_trip(
    full_decoder: FrameDecoder, message_name: str, mux: int | None, data: st.DataObject
) -> None:
    message = DB.get_message_by_name(message_name)
    values = data.draw(_message_values(message, mux))
    encoded = bytes(message.encode(values, scaling=True, strict=True))
    assert len(encoded) == message.length
    # cantools itself round-trips ...
    again = message.decode(encoded, decode_choices=False)
    # ... and ours gives the same numbers for every signal of this message (and mux value)
    decoded = full_decoder.decode(Frame("rt", T0, message.frame_id, message.is_extended_frame, encoded))
    assert decoded.skipped is None and not decoded.out_of_range
    ours = {spec.dbc_signal: value for spec, value in decoded.values}
    assert set(ours) == set(values)
    for name, value in values.items():
        step = abs(float(message.get_signal_by_name(name).scale))
        assert ours[name] == pytest.approx(value, abs=step / 2), name
        assert ours[name] == again[name], name


# --------------------------------------------------------------------------- logs to CSV


def test_decode_log_to_csv_same_path_as_run(tmp_path: Path) -> None:
    # GIVEN a candump log with catalog frames, an unknown id and an error frame
    log_path = tmp_path / "day.log"
    frames = [
        _frame(
            "BMS_PackStatus",
            {
                "PackVoltage": 640.0,
                "PackCurrent": 10.0,
                "SOC": 80.0,
                "ContactorState": 2,
                "ChargingState": 0,
                "PackStatusCounter": 0,
            },
            ts=T0 + 0.1 * i,
        )
        for i in range(30)
    ]
    with can.Logger(log_path) as writer:
        for f in frames:
            writer.on_message_received(
                can.Message(
                    timestamp=f.ts,
                    arbitration_id=f.arbitration_id,
                    is_extended_id=f.is_extended,
                    data=f.data,
                    channel="can0",
                )
            )
        writer.on_message_received(
            can.Message(timestamp=T0 + 5, arbitration_id=0x7FF, data=b"\x01", channel="can0")
        )
    out = io.StringIO()
    stats = decode_log_to_csv(log_path, CATALOG, out, apply_policy=True)
    rows = [line.split(",") for line in out.getvalue().splitlines()]
    assert rows[0] == ["ts", "signal", "value", "message", "dbc_signal"]
    # THEN the CSV holds what Decoder.process keeps for the same frames
    reference = Decoder(CATALOG)
    expected = [s for f in frames for s in reference.process(f)]
    assert [(float(r[0]), r[1], float(r[2])) for r in rows[1:]] == [
        (s.ts, s.signal, s.value) for s in expected
    ]
    assert stats.frames_in == 31 and stats.skipped["unknown_id"] == 1
    assert stats.samples_kept == len(expected) and stats.samples_suppressed + stats.frames_not_due > 0
