"""The simulator's outputs: CAN frames (rates, values, multiplexing, counter, J1939 form, wire faults),
NMEA sentences (checksums, positions, no-fix), the SLCAN adapter's answers and the CLI's argument parsing.

Most tests use hand-made `BusState`s, so each checks the encoders alone; a few run the physics to check
that injected faults reach the wires.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Iterator

import cantools
import pytest
from cantools.database.can import Database

from protocols.catalog import DEFAULT_DBC
from protocols.nmea import Gga, GpsFix, NmeaReader, Rmc, parse_sentence
from simulator.__main__ import UsageError, main, parse_duration, parse_fault, parse_start
from simulator.bus import BusConfig, BusSimulator
from simulator.emit_can import CanEmitter, barometric_pressure_kpa, build_plans, encode_signals
from simulator.emit_nmea import NmeaEmitter, nmea_checksum, nmea_sentences
from simulator.emit_sinks import Pacer
from simulator.faults import Fault, FaultKind, FaultSchedule
from simulator.slcan import ERROR, OK, RawPty, SlcanAdapter, slcan_line
from simulator.state import N_MODULES, BmsFlags, BusState, ChargingState, ContactorState, DriveState

T0 = 1_709_517_600.0  # 2024-03-04T02:00:00Z


@pytest.fixture(scope="module")
def db() -> Database:
    loaded = cantools.database.load_file(str(DEFAULT_DBC))
    assert isinstance(loaded, Database)
    return loaded


def make_state(**overrides: object) -> BusState:
    """A bus driving in Nairobi mid-morning, every value inside its DBC range."""
    values: dict[str, object] = {
        "t_s": 0.1,
        "ts": T0 + 0.1,
        "lat_deg": -1.2908843,
        "lon_deg": 36.8282421,
        "alt_m": 1665.94,
        "heading_deg": 87.25,
        "gps_valid": True,
        "gps_satellites": 9,
        "gps_hdop": 0.9,
        "speed_kmh": 37.42,
        "accel_mps2": 0.4,
        "odometer_km": 84_123.456,
        "trip_km": 23.4,
        "grade_pct": 1.5,
        "passengers": 42,
        "mass_kg": 16_000.0,
        "ambient_c": 21.3,
        "cabin_c": 23.1,
        "at_stop": False,
        "in_depot": False,
        "motor_speed_rpm": -1834.0,
        "motor_torque_nm": -412.5,
        "motor_power_kw": -78.9,
        "motor_temp_c": 64.0,
        "inverter_temp_c": 48.0,
        "drive_state": DriveState.DRIVE,
        "hvac_power_kw": 7.25,
        "dcdc_power_kw": 2.1,
        "air_compressor_power_kw": 0.8,
        "pack_voltage_v": 634.7,
        "pack_current_a": -124.3,
        "pack_power_kw": -78.9,
        "soc_pct": 81.7,
        "soh_pct": 97.3,
        "cell_v_max": 3.312,
        "cell_v_min": 3.298,
        "cell_v_max_id": 17,
        "cell_v_min_id": 190,
        "cell_t_max_c": 31.5,
        "cell_t_min_c": 27.0,
        "cell_t_max_module": 4,
        "cell_t_min_module": 11,
        "coolant_in_c": 22.5,
        "coolant_out_c": 25.0,
        "module_voltage_v": tuple(52.80 + 0.01 * i for i in range(N_MODULES)),
        "module_cell_v_max": tuple(3.300 + 0.001 * i for i in range(N_MODULES)),
        "module_cell_v_min": tuple(3.290 + 0.001 * i for i in range(N_MODULES)),
        "module_temp_c": tuple(25.0 + 0.5 * i for i in range(N_MODULES)),
        "insulation_kohm": 2400.0,
        "contactor": ContactorState.CLOSED,
        "charging": ChargingState.NOT_CONNECTED,
        "charger_power_kw": 0.0,
        "discharge_power_limit_kw": 450.0,
        "charge_power_limit_kw": 210.0,
        "flags": BmsFlags(cell_imbalance=True, derate=True),
        "soc_true_pct": 81.2,
        "energy_out_kwh": 30.0,
        "energy_in_kwh": 5.0,
        "active_faults": (),
    }
    values.update(overrides)
    return BusState(**values)  # type: ignore[arg-type]


def states_over(seconds: float, dt_s: float = 0.1, **overrides: object) -> Iterator[BusState]:
    base = make_state(**overrides)
    for k in range(1, round(seconds / dt_s) + 1):
        t = round(k * dt_s, 6)
        yield dataclasses.replace(base, t_s=t, ts=T0 + t)


def decode(db: Database, frame_id: int, data: bytes) -> dict[str, float]:
    decoded = db.decode_message(frame_id, data, decode_choices=False)
    assert isinstance(decoded, dict)
    return {k: float(v) for k, v in decoded.items()}  # type: ignore[arg-type]


# -- CAN: rates, values, multiplexing, counter, J1939 --------------------------------------------------


def test_every_message_of_the_dbc_is_sent_at_its_cycle_time(db: Database) -> None:
    emitter = CanEmitter(db)
    counts: Counter[int] = Counter()
    for state in states_over(60.0):
        counts.update(f.arbitration_id for f in emitter.frames(state))
    cyclic = [m for m in db.messages if m.cycle_time]
    assert len(cyclic) == len(db.messages), "every message of the bus DBC has a cycle time"
    for message in cyclic:
        expected = 60_000 / message.cycle_time
        assert abs(counts[message.frame_id] - expected) <= 1, (message.name, counts[message.frame_id])


def test_frames_carry_the_state_time_and_the_right_id_kind(db: Database) -> None:
    state = make_state()
    for frame in CanEmitter(db).frames(state):
        message = db.get_message_by_frame_id(frame.arbitration_id)
        assert frame.timestamp == state.ts
        assert frame.is_extended_id == message.is_extended_frame
        assert frame.dlc == message.length


def _expected(s: BusState) -> dict[str, float]:
    """Each DBC signal's value for the hand-made state, written out by hand."""
    return {
        "PackVoltage": s.pack_voltage_v,
        "PackCurrent": s.pack_current_a,
        "SOC": s.soc_pct,
        "ContactorState": 2,
        "ChargingState": 0,
        "DischargePowerLimit": 450.0,
        "ChargePowerLimit": 210.0,
        "DischargeCurrentLimit": 450_000.0 / s.pack_voltage_v,
        "ChargeCurrentLimit": 210_000.0 / s.pack_voltage_v,
        "CellVoltageMax": 3.312,
        "CellVoltageMin": 3.298,
        "CellVoltageMaxId": 17,
        "CellVoltageMinId": 190,
        "CellTemperatureMax": 31.5,
        "CellTemperatureMin": 27.0,
        "CellTemperatureMaxModule": 4,
        "CellTemperatureMinModule": 11,
        "CoolantInletTemperature": 22.5,
        "CoolantOutletTemperature": 25.0,
        "SOH": 97.3,
        "InsulationResistance": 2400,
        "FaultOverTemperature": 0,
        "FaultUnderVoltage": 0,
        "FaultOverVoltage": 0,
        "FaultCellImbalance": 1,
        "FaultInsulationLow": 0,
        "FaultOverCurrent": 0,
        "Derate": 1,
        "MotorSpeed": -1834,
        "MotorTorque": -412.5,
        "MotorPower": -78.9,
        "DriveState": 2,
        "MotorTemperature": 64,
        "InverterTemperature": 48,
        "HvacPower": 7.25,
        "DcDcPower": 2.1,
        "AirCompressorPower": 0.8,
        "ChargerPower": 0.0,
        "ChargerConnected": 0,
        "ParkingBrakeSwitch": 0,
        "WheelBasedVehicleSpeed": 37.42,
        "BrakeSwitch": 0,
        "HighResolutionTotalVehicleDistance": 84_123.456,
        "HighResolutionTripDistance": 23.4,
        "BarometricPressure": barometric_pressure_kpa(s.alt_m),
        "CabInteriorTemperature": 23.1,
        "AmbientAirTemperature": 21.3,
    }


def test_each_frame_decodes_back_to_the_state_within_the_dbc_resolution(db: Database) -> None:
    state = make_state()
    expected = _expected(state)
    seen: set[str] = set()
    for frame in CanEmitter(db).frames(state):
        message = db.get_message_by_frame_id(frame.arbitration_id)
        if message.is_multiplexed():
            continue  # per-module data: its own test
        for name, value in decode(db, frame.arbitration_id, bytes(frame.data)).items():
            if name == "PackStatusCounter":
                continue
            scale = float(message.get_signal_by_name(name).scale)
            assert value == pytest.approx(expected[name], abs=scale / 2 + 1e-9), name
            seen.add(name)
    assert seen == set(expected), "every signal checked"


def test_values_outside_the_dbc_range_are_clamped_into_it(db: Database) -> None:
    state = make_state(
        speed_kmh=300.0, pack_current_a=-5000.0, soc_pct=104.0, cell_t_max_c=-55.0, insulation_kohm=1e6
    )
    decoded: dict[str, float] = {}
    for frame in CanEmitter(db).frames(state):
        decoded.update(decode(db, frame.arbitration_id, bytes(frame.data)))
    assert decoded["WheelBasedVehicleSpeed"] <= 250.996
    assert decoded["WheelBasedVehicleSpeed"] == pytest.approx(250.996, abs=0.004)
    assert decoded["PackCurrent"] == -3000.0
    assert decoded["SOC"] == 100.0
    assert decoded["CellTemperatureMax"] == -40.0
    assert decoded["InsulationResistance"] == 65000


def test_a_dropped_out_sensor_is_sent_as_not_available(db: Database) -> None:
    payload = encode_signals(
        db,
        "BMS_PackStatus",
        {
            "PackVoltage": math.nan,
            "PackCurrent": math.nan,
            "SOC": math.nan,
            "ContactorState": 2,
            "ChargingState": 0,
            "PackStatusCounter": 0,
        },
    )
    decoded = decode(db, 256, payload)
    assert decoded["PackVoltage"] == pytest.approx(6553.5)  # all ones: outside [0, 1000]
    assert decoded["PackCurrent"] == pytest.approx(-3276.8)  # most negative: outside [-3000, 3000]
    assert decoded["SOC"] == pytest.approx(102.3)  # outside [0, 100]


def test_all_twelve_modules_appear_with_their_own_values(db: Database) -> None:
    emitter = CanEmitter(db)
    state = make_state()
    by_module: dict[int, dict[str, float]] = {}
    for s in states_over(2.4):
        for frame in emitter.frames(s):
            if frame.arbitration_id == 0x110:
                values = decode(db, 0x110, bytes(frame.data))
                by_module.setdefault(int(values["ModuleIndex"]), values)
    assert sorted(by_module) == list(range(N_MODULES))
    for i, values in by_module.items():
        p = f"Module{i + 1:02d}"
        assert values[f"{p}Voltage"] == pytest.approx(state.module_voltage_v[i], abs=0.005 + 1e-9)
        assert values[f"{p}CellVoltageMax"] == pytest.approx(state.module_cell_v_max[i], abs=0.0005 + 1e-9)
        assert values[f"{p}CellVoltageMin"] == pytest.approx(state.module_cell_v_min[i], abs=0.0005 + 1e-9)
        assert values[f"{p}Temperature"] == pytest.approx(state.module_temp_c[i], abs=0.25 + 1e-9)


def test_pack_status_counter_rolls_over_0_to_15(db: Database) -> None:
    emitter = CanEmitter(db)
    counters = [
        int(decode(db, 256, bytes(f.data))["PackStatusCounter"])
        for s in states_over(4.0)
        for f in emitter.frames(s)
        if f.arbitration_id == 256
    ]
    assert counters == [k % 16 for k in range(40)]


def _used_bits(db: Database, name: str) -> int:
    message = db.get_message_by_name(name)
    mask = 0
    for sig in message.signals:
        raw = {s.name: 0 for s in message.signals}
        raw[sig.name] = -1 if sig.is_signed else (1 << sig.length) - 1
        data = message.encode(raw, scaling=False, padding=False, strict=False)
        mask |= int.from_bytes(data, "big")
    return mask


@pytest.mark.parametrize(("name", "pgn"), [("CCVS1", 65265), ("VDHR", 65217), ("AMB", 65269)])
def test_j1939_messages_have_their_29_bit_ids_and_pad_with_ones(db: Database, name: str, pgn: int) -> None:
    message = db.get_message_by_name(name)
    frame = next(f for f in CanEmitter(db).frames(make_state()) if f.arbitration_id == message.frame_id)
    assert frame.is_extended_id
    assert (frame.arbitration_id >> 26) & 0x7 == 6, "priority 6"
    assert (frame.arbitration_id >> 8) & 0x3FFFF == pgn
    assert frame.arbitration_id & 0xFF == 0x00, "source address 0x00 (VCU)"
    unused = ~_used_bits(db, name) & ((1 << 64) - 1)
    assert int.from_bytes(frame.data, "big") & unused == unused, "unused bits are 1"


def test_proprietary_messages_are_11_bit(db: Database) -> None:
    for frame in CanEmitter(db).frames(make_state()):
        if frame.arbitration_id < 0x800:
            assert not frame.is_extended_id


def test_parking_brake_and_brake_switch_follow_the_bus(db: Database) -> None:
    parked = make_state(speed_kmh=0.0, accel_mps2=0.0, in_depot=True, drive_state=DriveState.OFF)
    braking = make_state(accel_mps2=-1.2)
    for state, parking, brake in ((parked, 1, 0), (braking, 0, 1)):
        frame = next(f for f in CanEmitter(db).frames(state) if f.arbitration_id == 0x18FEF100)
        values = decode(db, frame.arbitration_id, bytes(frame.data))
        assert (values["ParkingBrakeSwitch"], values["BrakeSwitch"]) == (parking, brake)


def test_a_dbc_message_without_an_encoder_is_refused() -> None:
    text = DEFAULT_DBC.read_text().replace("BO_ 513 MCU_Temperature", "BO_ 513 MCU_Temperatures")
    other = cantools.database.load_string(text, database_format="dbc")
    assert isinstance(other, Database)
    with pytest.raises(ValueError, match="MCU_Temperatures"):
        build_plans(other)


# -- CAN wire faults ----------------------------------------------------------------------------------


def test_lost_frames_are_dropped_and_the_counter_shows_the_gap(db: Database) -> None:
    emitter = CanEmitter(db, seed=1)
    frames = [f for s in states_over(60.0, can_frame_drop_prob=0.3) for f in emitter.frames(s)]
    produced = emitter.stats.sent + emitter.stats.dropped
    assert emitter.stats.sent == len(frames)
    assert 0.2 < emitter.stats.dropped / produced < 0.4
    counters = [
        int(decode(db, 256, bytes(f.data))["PackStatusCounter"]) for f in frames if f.arbitration_id == 256
    ]
    gaps = sum((b - a) % 16 != 1 for a, b in itertools.pairwise(counters))
    assert gaps > 0


def test_everything_is_lost_at_drop_probability_one(db: Database) -> None:
    emitter = CanEmitter(db)
    assert not [f for s in states_over(5.0, can_frame_drop_prob=1.0) for f in emitter.frames(s)]


def test_corrupted_frames_are_cut_short_and_do_not_decode(db: Database) -> None:
    emitter = CanEmitter(db, seed=2)
    frames = [f for s in states_over(5.0, can_frame_corrupt_prob=1.0) for f in emitter.frames(s)]
    assert frames
    for frame in frames:
        assert 1 <= frame.dlc < db.get_message_by_frame_id(frame.arbitration_id).length
        with pytest.raises(cantools.database.errors.DecodeError):
            db.decode_message(frame.arbitration_id, bytes(frame.data))


def test_without_wire_faults_the_seed_does_not_change_the_frames(db: Database) -> None:
    a, b = CanEmitter(db, seed=1), CanEmitter(db, seed=99)
    for s in states_over(3.0):
        assert [bytes(f.data) for f in a.frames(s)] == [bytes(f.data) for f in b.frames(s)]


def test_physics_can_frame_loss_fault_reaches_the_wire(db: Database) -> None:
    # GIVEN a bus with half its frames lost between 10 s and 20 s
    fault = Fault(FaultKind.CAN_FRAME_LOSS, onset_s=10.0, duration_s=10.0, severity=0.5)
    sim = BusSimulator(BusConfig(faults=FaultSchedule((fault,))))
    emitter = CanEmitter(db, seed=3)
    per_second: Counter[int] = Counter()
    for state in sim.run(30.0, 0.1):
        per_second[math.ceil(state.t_s) - 1] += len(emitter.frames(state))
    # THEN frames are missing only while the fault is active
    assert emitter.stats.dropped > 0
    normal = per_second[5]
    assert all(per_second[k] == normal for k in (1, 2, 5, 8, 22, 25, 28))
    assert sum(per_second[k] for k in range(11, 19)) < 0.75 * 8 * normal


# -- NMEA ---------------------------------------------------------------------------------------------


def test_nmea_sentences_have_valid_checksums() -> None:
    for line in nmea_sentences(make_state()):
        assert line.endswith("\r\n")
        body, given = line[1:-2].split("*")
        computed = 0
        for char in body:
            computed ^= ord(char)
        assert given == f"{computed:02X}" == nmea_checksum(body)


@pytest.mark.parametrize(
    ("lat", "lon"), [(-1.2908843, 36.8282421), (48.1372951, -11.5754993), (-33.9, -70.6), (0.0, 0.0)]
)
@pytest.mark.parametrize("talker", ["GN", "GP"])
def test_nmea_parses_back_to_the_state_position(lat: float, lon: float, talker: str) -> None:
    state = make_state(lat_deg=lat, lon_deg=lon, ts=T0 + 3723.0)
    parsed = [parse_sentence(line) for line in nmea_sentences(state, talker)]
    assert [type(p).__name__ for p in parsed] == ["Rmc", "Gga", "Vtg", "Gsa"]
    rmc, gga = parsed[0], parsed[1]
    assert isinstance(rmc, Rmc) and isinstance(gga, Gga)
    for sentence in (rmc, gga):
        assert sentence.talker == talker
        assert sentence.lat_deg == pytest.approx(lat, abs=1e-5)
        assert sentence.lon_deg == pytest.approx(lon, abs=1e-5)
    assert rmc.status == "A" and rmc.utc_time_ms == (2 * 3600 + 3723) * 1000
    assert rmc.speed_kmh == pytest.approx(state.speed_kmh, abs=0.01)
    assert gga.quality == 1 and gga.satellites == 9 and gga.alt_m == pytest.approx(1665.9)


def test_nmea_reader_assembles_a_valid_fix_at_the_state_time() -> None:
    state = make_state(ts=T0 + 10.0)
    reader = NmeaReader()
    fixes: list[GpsFix] = reader.feed("".join(nmea_sentences(state)).encode()) + reader.flush()
    assert len(fixes) == 1
    fix = fixes[0]
    assert fix.valid and fix.ts == pytest.approx(state.ts)
    assert fix.lat_deg == pytest.approx(state.lat_deg, abs=1e-5)
    assert fix.lon_deg == pytest.approx(state.lon_deg, abs=1e-5)
    assert fix.fix_mode == 3 and fix.hdop == pytest.approx(0.9)
    assert set(reader.counts) == {"RMC", "GGA", "VTG", "GSA"}


def test_without_a_fix_the_receiver_says_void_and_gives_no_position() -> None:
    state = make_state(gps_valid=False, gps_satellites=0, gps_hdop=99.9, ts=T0 + 10.0)
    reader = NmeaReader()
    fixes = reader.feed("".join(nmea_sentences(state)).encode()) + reader.flush()
    lines = nmea_sentences(state)
    rmc = parse_sentence(lines[0])
    assert isinstance(rmc, Rmc) and rmc.status == "V" and rmc.lat_deg is None
    assert len(fixes) == 1 and not fixes[0].valid and fixes[0].lat_deg is None


def test_nmea_is_sent_once_a_second_on_whole_seconds() -> None:
    emitter = NmeaEmitter()
    times = [s.ts for s in states_over(60.0) if emitter.sentences(s)]
    assert len(times) == 60
    assert all(t == pytest.approx(round(t)) for t in times)


def test_physics_gps_loss_fault_makes_the_receiver_lose_its_fix() -> None:
    fault = Fault(FaultKind.GPS_LOSS, onset_s=5.0, duration_s=5.0)
    sim = BusSimulator(BusConfig(faults=FaultSchedule((fault,))))
    emitter = NmeaEmitter()
    status: dict[int, str] = {}
    for state in sim.run(15.0, 0.1):
        lines = emitter.sentences(state)
        if lines:
            rmc = parse_sentence(lines[0])
            assert isinstance(rmc, Rmc)
            status[round(state.t_s)] = rmc.status
    # the boundary seconds (5, 10) may fall either side: the physics evaluates faults at a step's start
    seconds = (*range(1, 5), *range(6, 10), *range(11, 16))
    assert "".join(status[k] for k in seconds) == "AAAA" + "VVVV" + "AAAAA"


def test_a_bad_talker_is_refused() -> None:
    with pytest.raises(ValueError, match="talker"):
        nmea_sentences(make_state(), "gps")


# -- SLCAN adapter ------------------------------------------------------------------------------------


def test_slcan_lines_for_standard_and_extended_frames() -> None:
    import can

    std = can.Message(arbitration_id=0x110, is_extended_id=False, data=bytes([1, 0xAB, 0xFF]))
    ext = can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=bytes(8))
    assert slcan_line(std) == b"t1103" + b"01ABFF" + b"\r"
    assert slcan_line(ext) == b"T18FEF1008" + b"00" * 8 + b"\r"
    assert slcan_line(std, timestamp_ms=61_000) == b"t110301ABFF03E8\r"


def test_slcan_adapter_answers_commands_like_a_lawicel_adapter() -> None:
    adapter = SlcanAdapter(RawPty())
    try:
        assert adapter.handle_command("V").startswith(b"V")
        assert adapter.handle_command("S6") == OK
        assert adapter.handle_command("S9") == ERROR
        assert adapter.handle_command("t1000") == ERROR, "transmit needs an open channel"
        assert adapter.handle_command("O") == OK and adapter.is_open
        assert adapter.handle_command("S4") == ERROR, "no bitrate change while open"
        assert adapter.handle_command("t1000") == b"z\r"
        assert adapter.handle_command("C") == OK and not adapter.is_open
        assert adapter.handle_command("?") == ERROR
    finally:
        adapter.close()


# -- pacing and the command line ----------------------------------------------------------------------


def test_pacer_as_fast_as_possible_never_sleeps() -> None:
    sleeps: list[float] = []
    pacer = Pacer(None, sleeps.append)
    for k in range(100):
        pacer.wait(k * 0.1)
    assert sleeps == []


def test_pacer_holds_states_back_to_their_scaled_time() -> None:
    sleeps: list[float] = []
    pacer = Pacer(10.0, sleeps.append)
    pacer.wait(0.0)
    pacer.wait(5.0)  # five simulated seconds at x10: at most half a second from the first state
    assert len(sleeps) == 1 and 0.0 < sleeps[0] <= 0.5


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("1h30m", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "1h30", "-5m"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_fault_specs() -> None:
    assert parse_fault("can_frame_loss@10m/5m=0.2") == Fault(FaultKind.CAN_FRAME_LOSS, 600.0, 300.0, 0.2)
    assert parse_fault("sensor_stuck:soc_pct@1h") == Fault(
        FaultKind.SENSOR_STUCK, 3600.0, math.inf, 1.0, "soc_pct"
    )
    for bad in ("gps_loss", "warp_drive@1m", "sensor_stuck:nonsense@1m"):
        with pytest.raises(UsageError):
            parse_fault(bad)


def test_start_times_are_utc() -> None:
    assert parse_start("2024-03-04T05:00:00+03:00").timestamp() == T0
    assert parse_start("2024-03-04T02:00:00").timestamp() == T0
    with pytest.raises(UsageError):
        parse_start("yesterday")


@pytest.mark.parametrize(
    "argv",
    [
        ["record", "--out", "bus.txt"],
        ["record", "--out", "bus.log", "--duration", "soon"],
        ["record", "--out", "/nonexistent-dir/bus.log"],
        ["record", "--out", "bus.log", "--random-faults", "-1"],
        ["run", "--slcan-pty", "--random-faults", "2"],
        ["run"],
        ["run", "--can-interface", "virtual"],
        ["run", "--slcan-pty", "--speed", "0"],
        ["run", "--slcan-pty", "--talker", "XX"],
    ],
)
def test_bad_arguments_exit_2_with_one_sentence(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err
