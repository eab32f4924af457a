"""J1939: parameter groups matched by PGN whatever the priority, sender and (PDU1) destination, the transport
protocol reassembled as a listener (BAM and RTS/CTS) with its malformed sessions counted, and DM1 turned
into catalog samples and DTC alerts.

Frames are built from the published layouts: identifiers per SAE J1939-21 §5.2 (priority, EDP, DP, PF, PS,
SA), CCVS1/VDHR/AMB payloads encoded by cantools from `protocols/bus.dbc` (their SAE J1939-71 layouts),
TSC1 (PGN 0, PDU1) per J1939-71 §5.3.1, TP.CM/TP.DT per J1939-21 §5.10, DM1 per J1939-73 §5.7.1.
Addresses are J1939-81's preferred ones: 0x00 engine #1, 0x03 transmission #1, 0x17 instrument cluster,
0x21 body controller, 0xF9 off-board diagnostic tool #1.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.app import _policy_warm_up
from agent.decode import Decoder, FrameDecoder
from agent.diagnostics import DM1_TIMEOUT_S, DtcAlerts, dm1_severity
from agent.j1939 import MAX_SESSIONS, T1_S, Offered, TransportProblem, TransportReassembler
from agent.records import Alert, Frame
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from protocols.errors import CatalogError
from protocols.j1939 import (
    GLOBAL_ADDRESS,
    PGN_DM1,
    PGN_TP_CM,
    PGN_TP_DT,
    Dm1,
    Dm1Error,
    Dtc,
    parse_dm1,
    pgn_id,
    split_id,
)

CATALOG = load_catalog(DEFAULT_CATALOG)
DB = CATALOG.database
T0 = 1_750_000_000.0
DM1 = "Vehicle.Diagnostics.DM1."

# --------------------------------------------------------------------------- frame builders (also used by
# tests/integration/test_j1939_agent.py)


def frame(frame_id: int, data: bytes, ts: float = T0) -> Frame:
    return Frame("chassis", ts, frame_id, True, bytes(data))


def pg_frame(message: str, values: dict[str, float], *, priority: int, source: int, ts: float = T0) -> Frame:
    """A frame of one of the DBC's J1939 messages, sent at `priority` by `source`."""
    spec = DB.get_message_by_name(message)
    pgn = split_id(spec.frame_id).pgn
    values = {signal.name: 0.0 for signal in spec.signals} | values
    return frame(pgn_id(pgn, priority, source), spec.encode(values, scaling=True, strict=False), ts)


def dtc_bytes(spn: int, fmi: int, occurrences: int, conversion_method: int = 0) -> bytes:
    """One DTC, J1939-73 §5.7.1 (version 4 layout): SPN low 16 bits little-endian, SPN bits 17-19 in the top
    3 bits of byte 3 above the 5-bit FMI, then CM (bit 8) and the 7-bit occurrence count."""
    return bytes(
        [spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) << 5) | fmi, (conversion_method << 7) | occurrences]
    )


def dm1_payload(*, mil: int = 0, red: int = 0, amber: int = 0, protect: int = 0, dtcs: list[bytes]) -> bytes:
    lamps = (mil << 6) | (red << 4) | (amber << 2) | protect
    body = bytes([lamps, 0xFF]) + b"".join(dtcs or [dtc_bytes(0, 0, 0)])  # no DTC: one all-zero DTC
    return body + b"\xff" * (8 - len(body)) if len(body) < 8 else body


def bam_frames(pgn: int, payload: bytes, *, source: int, ts: float = T0, gap_s: float = 0.05) -> list[Frame]:
    """A BAM: TP.CM control byte 32 to the global address, then TP.DT packets 1..N (J1939-21 §5.10.3.5)."""
    packets = -(-len(payload) // 7)
    cm = bytes([32, len(payload) & 0xFF, len(payload) >> 8, packets, 0xFF]) + pgn.to_bytes(3, "little")
    out = [frame(pgn_id(PGN_TP_CM, 7, source, GLOBAL_ADDRESS), cm, ts)]
    for seq in range(1, packets + 1):
        chunk = payload[(seq - 1) * 7 : seq * 7].ljust(7, b"\xff")
        out.append(
            frame(pgn_id(PGN_TP_DT, 7, source, GLOBAL_ADDRESS), bytes([seq]) + chunk, ts + seq * gap_s)
        )
    return out


def cm(control: bytes, pgn: int, *, source: int, destination: int, ts: float) -> Frame:
    return frame(pgn_id(PGN_TP_CM, 7, source, destination), control + pgn.to_bytes(3, "little"), ts)


def dt(seq: int, payload: bytes, *, source: int, destination: int, ts: float) -> Frame:
    chunk = payload[(seq - 1) * 7 : seq * 7].ljust(7, b"\xff")
    return frame(pgn_id(PGN_TP_DT, 7, source, destination), bytes([seq]) + chunk, ts)


def rts_cts_frames(pgn: int, payload: bytes, *, source: int, destination: int, ts: float = T0) -> list[Frame]:
    """A connection-mode transfer (J1939-21 §5.10.3): RTS, CTS for 2 packets, the packets, CTS for the rest,
    the rest, End of Message Acknowledgment."""
    size, packets = len(payload), -(-len(payload) // 7)
    out = [
        cm(
            bytes([16, size & 0xFF, size >> 8, packets, 0xFF]),
            pgn,
            source=source,
            destination=destination,
            ts=ts,
        )
    ]
    t, seq = ts, 1
    while seq <= packets:
        window = min(2, packets - seq + 1)
        t += 0.05
        out.append(
            cm(bytes([17, window, seq, 0xFF, 0xFF]), pgn, source=destination, destination=source, ts=t)
        )
        for _ in range(window):
            t += 0.05
            out.append(dt(seq, payload, source=source, destination=destination, ts=t))
            seq += 1
    out.append(
        cm(
            bytes([19, size & 0xFF, size >> 8, packets, 0xFF]),
            pgn,
            source=destination,
            destination=source,
            ts=t,
        )
    )
    return out


# Three active faults of an e-bus ECU: SPN 168 battery potential (J1939-71) FMI 1 "below normal, most
# severe", SPN 100 engine oil pressure FMI 1 (the J1939-73 example DTC 64 00 01 01 with one occurrence),
# and a proprietary SPN (520192..524287, J1939-71) with all three high SPN bits set, FMI 31.
THREE_DTCS = [dtc_bytes(168, 1, 3), dtc_bytes(100, 1, 1), dtc_bytes(524_000, 31, 126)]


# --------------------------------------------------------------------------- identifiers and PGN matching


def test_split_id_masks_priority_sender_and_the_pdu1_destination() -> None:
    ccvs = split_id(0x18FEF117)  # PDU2: PS is part of the PGN
    assert (ccvs.priority, ccvs.pgn, ccvs.source, ccvs.destination) == (6, 0xFEF1, 0x17, GLOBAL_ADDRESS)
    tsc1 = split_id(0x0C000F03)  # PDU1 (PF 0 < 240): PS 0x0F is the destination, not the PGN
    assert (tsc1.priority, tsc1.pgn, tsc1.source, tsc1.destination) == (3, 0, 0x03, 0x0F)
    assert split_id(pgn_id(PGN_TP_CM, 7, 0x00, 0xF9)) == split_id(0x1CECF900)


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=0x1FFFFFFF))
def test_split_id_agrees_with_cantools_j1939(frame_id: int) -> None:
    # Our J1939-21 id arithmetic (kept so that the running agent need not import cantools) against cantools'.
    from cantools import j1939 as cantools_j1939

    fields = cantools_j1939.frame_id_unpack(frame_id)  # type: ignore[no-untyped-call]
    pdu1 = cantools_j1939.is_pdu_format_1(fields.pdu_format)  # type: ignore[no-untyped-call]
    expected = (
        fields.priority,
        cantools_j1939.pgn_from_frame_id(frame_id),  # type: ignore[no-untyped-call]
        fields.source_address,
        fields.pdu_specific if pdu1 else GLOBAL_ADDRESS,
    )
    got = split_id(frame_id)
    assert (got.priority, got.pgn, got.source, got.destination) == expected
    assert split_id(frame_id | 0xE0000000) == got  # bits above the 29 are masked off


@pytest.mark.parametrize("priority", [3, 6, 7])
@pytest.mark.parametrize("source", [0x00, 0x17, 0x21])
def test_ccvs1_vdhr_amb_decode_from_any_sender_at_any_priority(priority: int, source: int) -> None:
    decoder = FrameDecoder(CATALOG.frames())
    speed = pg_frame(
        "CCVS1", {"WheelBasedVehicleSpeed": 42.5, "ParkingBrakeSwitch": 1}, priority=priority, source=source
    )
    distance = pg_frame(
        "VDHR",
        {"HighResolutionTotalVehicleDistance": 123_456.785, "HighResolutionTripDistance": 12.5},
        priority=priority,
        source=source,
    )
    ambient = pg_frame(
        "AMB",
        {"AmbientAirTemperature": 21.5, "CabInteriorTemperature": 23.0, "BarometricPressure": 101},
        priority=priority,
        source=source,
    )
    got = {}
    for f in (speed, distance, ambient):
        decoded = decoder.decode(f)
        assert decoded.skipped is None, (hex(f.arbitration_id), decoded)
        got.update({spec.name: value for spec, value in decoded.values})
        assert decoder.decode(f) == decoded  # the second time from the exact-id table: same result
    assert got == {
        "Vehicle.Speed": 42.5,
        "Vehicle.Chassis.ParkingBrake.IsEngaged": 1.0,
        "Vehicle.TraveledDistance": pytest.approx(123_456.785),
        "Vehicle.TripMeterReading": 12.5,
        "Vehicle.Exterior.AirTemperature": 21.5,
        "Vehicle.Cabin.HVAC.AmbientAirTemperature": 23.0,
    }


def test_a_j1939_pgn_the_catalog_does_not_map_and_non_j1939_ids_stay_exact() -> None:
    decoder = FrameDecoder(CATALOG.frames())
    assert decoder.decode(frame(0x18FEF200, b"\x00" * 8)).skipped == "unknown_id"  # PGN 0xFEF2: not mapped
    # BMS_PackStatus is an 11-bit message: the same number as an extended id is not it
    assert decoder.decode(frame(0x100, b"\x00" * 8)).skipped == "unknown_id"
    # a standard frame whose number equals a matched J1939 id is not J1939
    decoder.decode(frame(0x18FEF117, b"\x00" * 8))
    assert decoder.decode(Frame("x", T0, 0x18FEF117 & 0x7FF, False, b"\x00" * 8)).skipped == "unknown_id"


def _catalog(tmp_path: Path, dbc: str, entries: str) -> Path:
    (tmp_path / "bus.dbc").write_text(dbc)
    path = tmp_path / "catalog.toml"
    path.write_text(f'[catalog]\nname = "t"\nversion = "1"\ndbc = "bus.dbc"\n{entries}')
    return path


SPEED_TWICE = """
[[can]]
message = "CCVS1"
signal = "WheelBasedVehicleSpeed"
name = "Vehicle.Speed"

[[can]]
message = "CCVS1"
signal = "WheelBasedVehicleSpeed"
name = "Vehicle.Cluster.Speed"
source_address = 0x17
"""


def test_a_pinned_source_address_takes_only_that_senders_frames(tmp_path: Path) -> None:
    # GIVEN the instrument cluster (0x17) and the engine (0x00) both send CCVS1, and the catalog keeps
    # the cluster's speed apart
    catalog = load_catalog(_catalog(tmp_path, DEFAULT_CATALOG.with_name("bus.dbc").read_text(), SPEED_TWICE))
    decoder = FrameDecoder(catalog.frames())

    def names(source: int) -> dict[str, float]:
        f = pg_frame("CCVS1", {"WheelBasedVehicleSpeed": 30.0}, priority=6, source=source)
        return {spec.name: value for spec, value in decoder.decode(f).values}

    # THEN the cluster's frames feed both entries, any other sender's only the unpinned one
    assert names(0x17) == {"Vehicle.Speed": 30.0, "Vehicle.Cluster.Speed": 30.0}
    assert names(0x00) == {"Vehicle.Speed": 30.0}
    assert names(0x21) == {"Vehicle.Speed": 30.0}


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (
            'message = "BMS_PackStatus"\nsignal = "SOC"\nname = "A.B"\nsource_address = 3',
            "needs a J1939 message",
        ),
        (
            'message = "CCVS1"\nsignal = "WheelBasedVehicleSpeed"\nname = "A.B"\nsource_address = 254',
            "0..253",
        ),
        (
            'message = "CCVS1"\nsignal = "WheelBasedVehicleSpeed"\nname = "A.B"\nsource_address = "x"',
            "0..253",
        ),
    ],
)
def test_a_bad_source_address_is_one_catalog_error(tmp_path: Path, entry: str, error: str) -> None:
    path = _catalog(tmp_path, DEFAULT_CATALOG.with_name("bus.dbc").read_text(), f"[[can]]\n{entry}\n")
    with pytest.raises(CatalogError, match=error):
        load_catalog(path)


def test_unknown_dm1_field_is_one_catalog_error(tmp_path: Path) -> None:
    path = _catalog(
        tmp_path, DEFAULT_CATALOG.with_name("bus.dbc").read_text(), '[[dm1]]\nfield = "x"\nname = "A.B"\n'
    )
    with pytest.raises(CatalogError, match="unknown DM1 field 'x'"):
        load_catalog(path)


# TSC1, Torque/Speed Control 1 (J1939-71 §5.3.1): PGN 0, PDU1, priority 3, sent by the transmission (0x03)
# to the engine (0x00). SPN 695 override control mode (byte 1 bits 1-2), SPN 898 requested speed (bytes 2-3,
# 0.125 rpm/bit), SPN 518 requested torque (byte 4, 1 %/bit, offset -125).
TSC1_DBC = """VERSION ""
NS_ :
BS_:
BU_: TCM ECM
BO_ 2348810243 TSC1: 8 TCM
 SG_ OverrideControlMode : 0|2@1+ (1,0) [0|3] "" ECM
 SG_ RequestedSpeed : 8|16@1+ (0.125,0) [0|8031.875] "rpm" ECM
 SG_ RequestedTorque : 24|8@1+ (1,-125) [-125|125] "%" ECM
BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG";
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 2348810243 3;
"""
TSC1_ENTRY = (
    '[[can]]\nmessage = "TSC1"\nsignal = "RequestedSpeed"\nname = "Vehicle.Powertrain.RequestedSpeed"\n'
)


@pytest.mark.parametrize(("source", "destination"), [(0x03, 0x00), (0x03, 0x0F), (0x0B, 0x00)])
def test_a_pdu1_pgn_matches_whatever_its_destination(tmp_path: Path, source: int, destination: int) -> None:
    catalog = load_catalog(_catalog(tmp_path, TSC1_DBC, TSC1_ENTRY))
    message = catalog.database.get_message_by_name("TSC1")
    assert message.frame_id == 0x0C000003 and message.protocol == "j1939"
    data = message.encode({"OverrideControlMode": 1, "RequestedSpeed": 1500.0, "RequestedTorque": 0})
    decoded = FrameDecoder(catalog.frames()).decode(frame(pgn_id(0, 3, source, destination), data))
    assert [(spec.name, value) for spec, value in decoded.values] == [
        ("Vehicle.Powertrain.RequestedSpeed", 1500.0)
    ]


# --------------------------------------------------------------------------- DM1 layout


def test_parse_dm1_lamps_and_dtcs() -> None:
    dm1 = parse_dm1(dm1_payload(mil=1, amber=1, dtcs=THREE_DTCS))
    assert (dm1.malfunction_indicator_lamp, dm1.red_stop_lamp, dm1.amber_warning_lamp, dm1.protect_lamp) == (
        1,
        0,
        1,
        0,
    )
    assert dm1.dtcs == (Dtc(168, 1, 3, 0), Dtc(100, 1, 1, 0), Dtc(524_000, 31, 126, 0))
    assert dtc_bytes(100, 1, 1) == bytes.fromhex("64000101")  # the J1939-73 example
    assert parse_dm1(dm1_payload(dtcs=[])).dtcs == ()  # "no active DTC": SPN 0, FMI 0
    assert (
        parse_dm1(dm1_payload(dtcs=[dtc_bytes(1234, 5, 2, conversion_method=1)])).dtcs[0].conversion_method
        == 1
    )
    with pytest.raises(Dm1Error):
        parse_dm1(b"\x00\xff\x00")


# --------------------------------------------------------------------------- transport protocol


def _decoder() -> tuple[Decoder, list[tuple[float, int, tuple[Dtc, ...]]]]:
    seen: list[tuple[float, int, tuple[Dtc, ...]]] = []
    decoder = Decoder(
        CATALOG, bus="chassis", apply_policy=False, on_dm1=lambda ts, sa, dm1: seen.append((ts, sa, dm1.dtcs))
    )
    return decoder, seen


def _run(decoder: Decoder, frames: list[Frame]) -> dict[str, float]:
    return {s.signal: s.value for f in frames for s in decoder.process(f)}


def test_single_frame_dm1_becomes_samples() -> None:
    decoder, seen = _decoder()
    got = _run(decoder, [frame(pgn_id(PGN_DM1, 6, 0x21), dm1_payload(amber=1, dtcs=[dtc_bytes(168, 1, 3)]))])
    assert got == {
        DM1 + "ActiveDtcCount": 1.0,
        DM1 + "AmberWarningLamp": 1.0,
        DM1 + "RedStopLamp": 0.0,
        DM1 + "MalfunctionIndicatorLamp": 0.0,
        DM1 + "ProtectLamp": 0.0,
    }
    assert seen == [(T0, 0x21, (Dtc(168, 1, 3, 0),))]


def test_dm1_over_bam_from_two_ecus_counts_all_their_dtcs() -> None:
    decoder, seen = _decoder()
    frames = bam_frames(PGN_DM1, dm1_payload(red=1, dtcs=THREE_DTCS), source=0x00)
    assert len(frames) == 3  # 14 bytes: 2 packets
    got = _run(decoder, frames)
    assert got[DM1 + "ActiveDtcCount"] == 3.0 and got[DM1 + "RedStopLamp"] == 1.0
    assert seen[0][2] == (Dtc(168, 1, 3, 0), Dtc(100, 1, 1, 0), Dtc(524_000, 31, 126, 0))
    # a second ECU's single-frame DM1: the bus-wide count adds up, the red lamp stays on (ECU 0x00's)
    got = _run(
        decoder, [frame(pgn_id(PGN_DM1, 6, 0x17), dm1_payload(amber=1, dtcs=[dtc_bytes(84, 2, 1)]), T0 + 1)]
    )
    assert got[DM1 + "ActiveDtcCount"] == 4.0 and got[DM1 + "RedStopLamp"] == 1.0
    assert got[DM1 + "AmberWarningLamp"] == 1.0
    assert decoder.stats.skipped["tp_sequence"] == 0


def test_dm1_over_rts_cts_is_reassembled_by_a_listener() -> None:
    decoder, seen = _decoder()
    payload = dm1_payload(amber=1, dtcs=[*THREE_DTCS, dtc_bytes(5919, 4, 2)])  # 18 bytes: 3 packets
    frames = rts_cts_frames(PGN_DM1, payload, source=0x00, destination=0xF9)
    got = _run(decoder, frames)
    assert got[DM1 + "ActiveDtcCount"] == 4.0
    assert seen and seen[0][1] == 0x00 and len(seen[0][2]) == 4
    assert not any(decoder.stats.skipped[p] for p in TransportProblem)


def test_rts_cts_hold_and_retransmission_request() -> None:
    # GIVEN a connection where the responder holds (CTS 0 packets), then asks for packet 2 again
    payload = dm1_payload(dtcs=THREE_DTCS)  # 14 bytes: 2 packets
    a, b, ts = 0x00, 0xF9, T0
    frames = [
        cm(bytes([16, 14, 0, 2, 0xFF]), PGN_DM1, source=a, destination=b, ts=ts),
        cm(bytes([17, 0, 0xFF, 0xFF, 0xFF]), PGN_DM1, source=b, destination=a, ts=ts + 0.1),  # hold
        cm(bytes([17, 2, 1, 0xFF, 0xFF]), PGN_DM1, source=b, destination=a, ts=ts + 1.0),  # within T4
        dt(1, payload, source=a, destination=b, ts=ts + 1.05),
        cm(bytes([17, 1, 1, 0xFF, 0xFF]), PGN_DM1, source=b, destination=a, ts=ts + 1.1),  # packet 1 again
        dt(1, payload, source=a, destination=b, ts=ts + 1.15),
        dt(2, payload, source=a, destination=b, ts=ts + 1.2),
    ]
    decoder, seen = _decoder()
    assert _run(decoder, frames)[DM1 + "ActiveDtcCount"] == 3.0
    assert len(seen) == 1 and not any(decoder.stats.skipped[p] for p in TransportProblem)


def test_a_bam_carrying_a_dbc_message_decodes_like_a_frame() -> None:
    # the DBC's AMB (8 bytes) sent by BAM, padded to 9 bytes (the smallest TP payload)
    spec = DB.get_message_by_name("AMB")
    data = spec.encode(
        {"AmbientAirTemperature": -5.0, "CabInteriorTemperature": 18.0, "BarometricPressure": 95}
    )
    decoder, _ = _decoder()
    got = _run(decoder, bam_frames(0xFEF5, bytes(data) + b"\xff", source=0x21))
    assert got["Vehicle.Exterior.AirTemperature"] == -5.0


def _problems(decoder: Decoder) -> dict[str, int]:
    return {p.value: decoder.stats.skipped[p] for p in TransportProblem if decoder.stats.skipped[p]}


def test_malformed_sessions_are_counted_and_skipped_and_good_ones_still_pass() -> None:
    payload = dm1_payload(red=1, dtcs=[*THREE_DTCS, dtc_bytes(5919, 4, 2)])  # 3 packets
    good = bam_frames(PGN_DM1, payload, source=0x00, ts=T0 + 100)
    missing = [f for i, f in enumerate(bam_frames(PGN_DM1, payload, source=0x00)) if i != 2]  # no packet 2
    reordered = bam_frames(PGN_DM1, payload, source=0x17, ts=T0 + 10)
    reordered[1], reordered[2] = reordered[2], reordered[1]
    wrong_count = bam_frames(PGN_DM1, payload, source=0x21, ts=T0 + 20)
    wrong_count[0] = frame(wrong_count[0].arbitration_id, bytes([32, 18, 0, 4, 0xFF, 0xCA, 0xFE, 0]), T0 + 20)
    late = bam_frames(PGN_DM1, payload, source=0x31, ts=T0 + 30)
    late[2] = frame(late[2].arbitration_id, late[2].data, late[1].ts + T1_S + 0.1)  # past T1
    late = late[:3]
    aborted = rts_cts_frames(PGN_DM1, payload, source=0x00, destination=0xF9, ts=T0 + 40)[:3]
    aborted.append(
        cm(bytes([255, 3, 0xFF, 0xFF, 0xFF]), PGN_DM1, source=0xF9, destination=0x00, ts=T0 + 40.2)
    )
    short_cm = [frame(pgn_id(PGN_TP_CM, 7, 0x05, GLOBAL_ADDRESS), b"\x20\x0e\x00", T0 + 50)]
    short_dm1 = [frame(pgn_id(PGN_DM1, 6, 0x05), b"\x00\xff\x00", T0 + 60)]

    decoder, seen = _decoder()
    frames = missing + reordered + wrong_count + late + aborted + short_cm + short_dm1 + good
    samples = [s for f in frames for s in decoder.process(f)]
    assert _problems(decoder) == {
        "tp_sequence": 2,  # packet 3 where 2 was due; packet 2 where 1 was due (reordered)
        "tp_bad_announce": 2,  # 18 bytes announced as 4 packets; a TP.CM of 3 bytes
        "tp_timeout": 1,  # the late packet's session, dropped when the packet came
        "tp_aborted": 1,
        # packets no session expects: the reordered session's last two, the refused announcement's
        # three, and the late packet
        "tp_orphan": 2 + 3 + 1,
    }
    assert decoder.stats.skipped["dm1_malformed"] == 1
    # THEN only the good session produced a DM1
    assert [(sa, len(dtcs)) for _, sa, dtcs in seen] == [(0x00, 4)]
    assert {s.signal: s.value for s in samples}[DM1 + "ActiveDtcCount"] == 4.0


def test_sessions_are_bounded_and_a_new_announce_replaces_an_unfinished_one() -> None:
    reassembler = TransportReassembler()
    out = Offered()
    announce = bytes([32, 14, 0, 2, 0xFF]) + PGN_DM1.to_bytes(3, "little")
    for source in range(MAX_SESSIONS + 5):
        reassembler.offer(T0, PGN_TP_CM, source, GLOBAL_ADDRESS, announce, out)
    assert len(reassembler) == MAX_SESSIONS
    assert out.problems.count(TransportProblem.OVERFLOW) == 5
    reassembler.offer(T0, PGN_TP_CM, MAX_SESSIONS + 4, GLOBAL_ADDRESS, announce, out)
    assert out.problems.count(TransportProblem.ABORTED) == 1


@settings(deadline=None, max_examples=300)  # no per-example time limit: CI machines are shared
@given(
    st.lists(
        st.tuples(
            st.sampled_from([PGN_TP_CM, PGN_TP_DT, PGN_DM1]),
            st.sampled_from([0x00, 0x17, 0xF9]),
            st.sampled_from([0x00, 0xF9, GLOBAL_ADDRESS]),
            st.binary(max_size=8),
            st.floats(min_value=0, max_value=3),
        ),
        max_size=40,
    )
)
def test_any_transport_traffic_never_raises(traffic: list[tuple[int, int, int, bytes, float]]) -> None:
    decoder, _ = _decoder()
    ts = T0
    for pgn, source, destination, data, gap in traffic:
        ts += gap
        for sample in decoder.process(frame(pgn_id(pgn, 7, source, destination), data, ts)):
            assert math.isfinite(sample.value)
    assert decoder.stats.frames_in == len(traffic)


# --------------------------------------------------------------------------- DTC alerts


def test_dtc_alerts_raise_on_new_clear_on_gone_and_follow_the_lamps() -> None:
    alerts = DtcAlerts()
    # GIVEN ECU 0x00 reports two DTCs with the amber lamp on
    first = alerts.observe(T0, 0x00, parse_dm1(dm1_payload(amber=1, dtcs=THREE_DTCS[:2])))
    assert [(a.rule, a.severity, a.active, a.value) for a in first] == [
        ("dm1:sa0:spn168:fmi1", "warning", True, 3.0),
        ("dm1:sa0:spn100:fmi1", "warning", True, 1.0),
    ]
    assert "SPN 168 FMI 1" in first[0].message and "amber" in first[0].message
    # WHEN the same DM1 repeats (every second, J1939-73): nothing changes
    assert alerts.observe(T0 + 1, 0x00, parse_dm1(dm1_payload(amber=1, dtcs=THREE_DTCS[:2]))) == []
    # WHEN one DTC is gone and the red stop lamp comes on: the other escalates, the gone one clears
    changes = alerts.observe(T0 + 2, 0x00, parse_dm1(dm1_payload(red=1, dtcs=THREE_DTCS[:1])))
    assert [(a.rule, a.severity, a.active) for a in changes] == [
        ("dm1:sa0:spn168:fmi1", "critical", True),
        ("dm1:sa0:spn100:fmi1", "warning", False),
    ]
    # another ECU's DTCs are its own alerts; no lamp on → info
    other = alerts.observe(T0 + 3, 0x17, parse_dm1(dm1_payload(dtcs=THREE_DTCS[:1])))
    assert [(a.rule, a.severity) for a in other] == [("dm1:sa23:spn168:fmi1", "info")]
    assert alerts.active() == {"dm1:sa0:spn168:fmi1": "critical", "dm1:sa23:spn168:fmi1": "info"}
    # WHEN ECU 0x00 reports no DTC: its alert clears, at the severity it had
    cleared = alerts.observe(T0 + 4, 0x00, parse_dm1(dm1_payload(dtcs=[])))
    assert [(a.rule, a.severity, a.active) for a in cleared] == [("dm1:sa0:spn168:fmi1", "critical", False)]
    assert dm1_severity(parse_dm1(dm1_payload(red=1, amber=1, dtcs=[]))) == "critical"


def test_a_resumed_replay_warms_the_dtc_state_without_raising_again() -> None:
    # GIVEN a replay resumed after a DM1 whose alert an earlier run stored
    alerts, raised = DtcAlerts(), []
    decoder = Decoder(
        CATALOG, bus="chassis", on_dm1=lambda ts, sa, dm1: raised.extend(alerts.observe(ts, sa, dm1))
    )
    skipped = [frame(pgn_id(PGN_DM1, 6, 0x00), dm1_payload(red=1, dtcs=[dtc_bytes(168, 1, 3)]))]
    # WHEN the skipped frames warm the decoder up
    _policy_warm_up(decoder, alerts)(skipped)
    # THEN nothing is raised again, but the DTC is known: the all-clear that follows clears it
    assert raised == [] and alerts.active() == {"dm1:sa0:spn168:fmi1": "critical"}
    decoder.process(frame(pgn_id(PGN_DM1, 6, 0x00), dm1_payload(dtcs=[]), T0 + 1))
    assert [(a.rule, a.active) for a in raised] == [("dm1:sa0:spn168:fmi1", False)]
    assert decoder.stats.frames_in == 1  # the warm-up is not counted


def _tracked(alerts: DtcAlerts) -> tuple[Decoder, list[Alert]]:
    """A decoder whose DM1s feed `alerts` (as the alert stage does), and the alert changes they made."""
    changes: list[Alert] = []

    def on_dm1(ts: float, source: int, dm1: Dm1) -> None:
        changes.extend(alerts.observe(ts, source, dm1))
        changes.extend(alerts.expire(-math.inf))  # the bus's own DM1 time only

    return Decoder(CATALOG, bus="chassis", on_dm1=on_dm1), changes


def test_an_ecu_whose_dm1_stops_has_its_dtcs_expired_and_raised_again_when_it_returns() -> None:
    # GIVEN ECU 0x00 (red stop lamp, 3 DTCs over BAM) and ECU 0x03 (amber, one DTC) broadcasting every
    # second (J1939-73), then ECU 0x00 falls silent after T0 + 2
    alerts = DtcAlerts()
    decoder, changes = _tracked(alerts)
    for i in range(9):
        if i <= 2 or i == 8:
            for f in bam_frames(PGN_DM1, dm1_payload(red=1, dtcs=THREE_DTCS), source=0x00, ts=T0 + i):
                decoder.process(f)
        decoder.process(
            frame(pgn_id(PGN_DM1, 6, 0x03), dm1_payload(amber=1, dtcs=[dtc_bytes(5919, 4, 2)]), T0 + i + 0.5)
        )
        if i == 5:  # ECU 0x00's last DM1 completed at T0 + 2.1: 3.4 s ago, within the timeout
            assert len(alerts.active()) == 4 and alerts.expired == 0
    # THEN its DTCs were cleared once, at the severity they had, after the timeout and not before
    gone = [a for a in changes if not a.active]
    assert [(a.rule, a.severity) for a in gone] == [
        ("dm1:sa0:spn168:fmi1", "critical"),
        ("dm1:sa0:spn100:fmi1", "critical"),
        ("dm1:sa0:spn524000:fmi31", "critical"),
    ]
    assert all(a.ts == T0 + 6.5 and "no DM1 from this ECU for 4.4 s" in a.message for a in gone)
    assert DM1_TIMEOUT_S == 3.5 and alerts.expired == 1
    # AND ECU 0x03, still broadcasting, kept its one alert, raised once
    assert [(a.rule, a.active) for a in changes].count(("dm1:sa3:spn5919:fmi4", True)) == 1
    # AND ECU 0x00's return at T0 + 8 raises its DTCs again
    assert [(a.rule, a.ts) for a in changes if a.active][-3:] == [
        ("dm1:sa0:spn168:fmi1", T0 + 8.1),
        ("dm1:sa0:spn100:fmi1", T0 + 8.1),
        ("dm1:sa0:spn524000:fmi31", T0 + 8.1),
    ]


def test_the_only_dm1_sender_expires_on_the_stream_time_of_the_other_signals() -> None:
    # GIVEN the bus's only DM1 sender reports a DTC, then falls silent while the other signals go on
    alerts = DtcAlerts()
    alerts.observe(T0, 0x00, parse_dm1(dm1_payload(amber=1, dtcs=[dtc_bytes(168, 1, 3)])))
    # THEN the alert stage's now expires it once past the timeout ...
    assert alerts.expire(T0 + DM1_TIMEOUT_S) == []
    # ... but not a now on another time base (a second log replayed beside this one, hours later)
    assert alerts.expire(T0 + 3 * 3600) == []
    cleared = alerts.expire(T0 + DM1_TIMEOUT_S + 0.1)
    assert [(a.rule, a.severity, a.active) for a in cleared] == [("dm1:sa0:spn168:fmi1", "warning", False)]
    assert alerts.active() == {}


def test_a_clock_stepped_back_restarts_the_timeout_instead_of_freezing_it() -> None:
    alerts = DtcAlerts()
    dm1 = parse_dm1(dm1_payload(amber=1, dtcs=[dtc_bytes(168, 1, 3)]))
    alerts.observe(T0, 0x00, dm1)
    alerts.observe(T0, 0x03, dm1)
    # WHEN the host clock steps back an hour (NTP) and ECU 0x00 falls silent at that moment
    back = T0 - 3600
    alerts.observe(back, 0x03, dm1)
    assert alerts.expire(back) == []  # ECU 0x00's last DM1 is "an hour ahead": its timeout starts here
    alerts.observe(back + 3, 0x03, dm1)
    assert alerts.expire(back + 3) == []
    alerts.observe(back + 4, 0x03, dm1)
    # THEN it expires a timeout after the step, not an hour later
    assert [a.rule for a in alerts.expire(back + 4)] == ["dm1:sa0:spn168:fmi1"]


@pytest.mark.parametrize(
    "payload",
    [
        dm1_payload(dtcs=[]),  # the single DTC all zeros: SPN 0, FMI 0 (J1939-73 §5.7.1)
        bytes([0x00, 0xFF]) + b"\xff" * 6,  # lamps off, the DTC field the all-ones filler
        bytes([0x00, 0xFF, 0x00, 0x00, 0x00, 0x00]),  # a 6-byte DM1 (lamps and one DTC), no padding
    ],
    ids=["spn0-fmi0", "all-ones", "six-bytes"],
)
def test_a_dm1_without_an_active_dtc_clears_the_ecus_alerts(payload: bytes) -> None:
    alerts = DtcAlerts()
    decoder, changes = _tracked(alerts)
    decoder.process(frame(pgn_id(PGN_DM1, 6, 0x00), dm1_payload(red=1, dtcs=THREE_DTCS[:2]), T0))
    decoder.process(frame(pgn_id(PGN_DM1, 6, 0x00), payload, T0 + 1))
    assert [(a.rule, a.active, a.ts) for a in changes] == [
        ("dm1:sa0:spn168:fmi1", True, T0),
        ("dm1:sa0:spn100:fmi1", True, T0),
        ("dm1:sa0:spn168:fmi1", False, T0 + 1),
        ("dm1:sa0:spn100:fmi1", False, T0 + 1),
    ]
    assert alerts.active() == {} and alerts.expired == 0
    assert decoder.stats.skipped["dm1_malformed"] == 0
