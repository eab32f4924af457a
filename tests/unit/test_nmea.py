"""Unit tests of `protocols.nmea`: sentences, error kinds, the stream reader, fuzzing.

Real sentences below come from gpsd regression tests, github.com/ukyg9e5r6k7gubiekd6/gpsd @ 6362727
(mirror of gitlab.com/gpsd/gpsd), BSD-2-Clause: see tests/data/nmea/COPYING and README.md.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import NmeaError
from protocols.nmea import (
    KMH_PER_KNOT,
    MAX_SENTENCE_CHARS,
    Gga,
    GpsFix,
    Gsa,
    NmeaReader,
    Rmc,
    Vtg,
    parse_sentence,
)

DATA = Path(__file__).parent.parent / "data" / "nmea"


def nmea(body: str) -> str:
    """`$body*hh` with the NMEA checksum (XOR of the characters between `$` and `*`)."""
    return f"${body}*{reduce(lambda acc, c: acc ^ ord(c), body, 0):02X}"


def feed_all(reader: NmeaReader, *chunks: bytes) -> list[GpsFix]:
    fixes: list[GpsFix] = []
    for chunk in chunks:
        fixes.extend(reader.feed(chunk))
    return fixes + reader.flush()


# --- sentences ----------------------------------------------------------------------------------


def test_rmc_from_a_glonass_receiver() -> None:
    s = parse_sentence("$GNRMC,081411.000,A,5541.1955,N,03737.2872,E,0.60,301.29,260514,,,A*74\r\n")
    assert isinstance(s, Rmc)
    assert s.talker == "GN"
    assert s.utc_time_ms == ((8 * 60 + 14) * 60 + 11) * 1000
    assert s.status == "A"
    assert s.lat_deg == pytest.approx(55 + 41.1955 / 60, abs=1e-12)
    assert s.lon_deg == pytest.approx(37 + 37.2872 / 60, abs=1e-12)
    assert s.speed_kmh == pytest.approx(0.60 * 1.852)
    assert s.course_deg == 301.29
    assert s.date == dt.date(2014, 5, 26)
    assert s.mag_var_deg is None
    assert s.mode == "A"


def test_rmc_west_void_with_magnetic_variation_and_six_digit_time() -> None:
    s = parse_sentence("$GPRMC,125106,V,3854.5087,N,07726.4523,W,0.0,0.0,241011,10.5,W,S*28")
    assert isinstance(s, Rmc)
    assert s.status == "V"
    assert s.utc_time_ms == (12 * 3600 + 51 * 60 + 6) * 1000
    assert s.lon_deg == pytest.approx(-(77 + 26.4523 / 60))
    assert s.mag_var_deg == -10.5
    assert s.mode == "S"
    assert s.date == dt.date(2011, 10, 24)


def test_rmc_south_east_nmea41_with_navigational_status() -> None:
    s = parse_sentence("$GNRMC,011903.00,A,4552.65550,S,17030.00756,E,0.214,,120419,,,A,V*0F")
    assert isinstance(s, Rmc)
    assert s.lat_deg == pytest.approx(-(45 + 52.65550 / 60))
    assert s.lon_deg == pytest.approx(170 + 30.00756 / 60)
    assert s.course_deg is None
    assert s.date == dt.date(2019, 4, 12)


def test_rmc_with_no_fix_has_empty_fields() -> None:
    s = parse_sentence("$GNRMC,184040.00,V,,,,,,,030416,,,N*6A")
    assert isinstance(s, Rmc)
    assert (s.lat_deg, s.lon_deg, s.speed_kmh, s.course_deg) == (None, None, None, None)
    assert s.status == "V" and s.mode == "N"


def test_rmc_two_digit_years_follow_the_gps_era() -> None:
    late = parse_sentence(nmea("GPRMC,000426.00,V,,,,,,,220899,,,N"))
    early = parse_sentence(nmea("GPRMC,000426.00,V,,,,,,,010179,,,N"))
    assert isinstance(late, Rmc) and isinstance(early, Rmc)
    assert late.date == dt.date(1999, 8, 22)
    assert early.date == dt.date(2079, 1, 1)


def test_gga_with_differential_fix() -> None:
    s = parse_sentence("$GPGGA,202640.000,4404.1306,N,12118.8515,W,2,10,0.98,1127.7,M,-19.6,M,0000,0000*6C")
    assert isinstance(s, Gga)
    assert s.utc_time_ms == (20 * 3600 + 26 * 60 + 40) * 1000
    assert s.lat_deg == pytest.approx(44.068843333, abs=1e-9)
    assert s.lon_deg == pytest.approx(-121.314191667, abs=1e-9)
    assert (s.quality, s.satellites, s.hdop) == (2, 10, 0.98)
    assert (s.alt_m, s.geoid_sep_m) == (1127.7, -19.6)


def test_gga_without_fix() -> None:
    s = parse_sentence("$GNGGA,184041.00,,,,,0,04,28.92,,,,,,*75")
    assert isinstance(s, Gga)
    assert (s.lat_deg, s.lon_deg, s.alt_m, s.geoid_sep_m) == (None, None, None, None)
    assert (s.quality, s.satellites, s.hdop) == (0, 4, 28.92)


def test_gga_millisecond_time() -> None:
    s = parse_sentence("$GPGGA,143748.77,4806.3731,N,00138.6217,W,1,10,1.1,42.2,M,48.5,M,,*4B")
    assert isinstance(s, Gga)
    assert s.utc_time_ms == (14 * 3600 + 37 * 60 + 48) * 1000 + 770


def test_vtg_prefers_kmh_and_falls_back_to_knots() -> None:
    s = parse_sentence("$GNVTG,,T,,M,0.117,N,0.216,K,A*3F")
    assert isinstance(s, Vtg)
    assert (s.course_deg, s.course_mag_deg, s.speed_kmh, s.mode) == (None, None, 0.216, "A")
    knots_only = parse_sentence(nmea("GPVTG,054.7,T,034.4,M,005.5,N,,K"))
    assert isinstance(knots_only, Vtg)
    assert knots_only.speed_kmh == pytest.approx(5.5 * KMH_PER_KNOT)
    assert (knots_only.course_deg, knots_only.course_mag_deg, knots_only.mode) == (54.7, 34.4, None)


def test_gsa_per_constellation() -> None:
    s = parse_sentence("$GNGSA,A,3,03,19,27,13,,,,,,,,,2.75,2.56,1.00*10")
    assert isinstance(s, Gsa)
    assert (s.selection, s.fix_mode, s.satellite_ids) == ("A", 3, (3, 19, 27, 13))
    assert (s.pdop, s.hdop, s.vdop, s.system_id) == (2.75, 2.56, 1.00, None)
    empty = parse_sentence("$GPGSA,A,1,,,,,,,,,,,,,,,*1E")
    assert isinstance(empty, Gsa)
    assert (empty.fix_mode, empty.satellite_ids, empty.pdop) == (1, (), None)
    v411 = parse_sentence(nmea("GNGSA,A,3,01,02,,,,,,,,,,,1.0,0.5,0.8,1"))
    assert isinstance(v411, Gsa) and v411.system_id == 1


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "BD", "GB", "QZ", "GI"])
def test_any_talker(talker: str) -> None:
    s = parse_sentence(nmea(f"{talker}RMC,120000.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"))
    assert isinstance(s, Rmc) and s.talker == talker
    assert s.lat_deg == pytest.approx(48 + 7.038 / 60)


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        ("4807.038,N", "01131.000,E", (48.1173, 11.516666667)),
        ("4807.038,S", "01131.000,E", (-48.1173, 11.516666667)),
        ("4807.038,N", "01131.000,W", (48.1173, -11.516666667)),
        ("4807.038,S", "01131.000,W", (-48.1173, -11.516666667)),
        ("0000.000,S", "00000.000,W", (0.0, 0.0)),
        ("9000.000,N", "18000.000,W", (90.0, -180.0)),
    ],
)
def test_hemisphere_signs(lat: str, lon: str, expected: tuple[float, float]) -> None:
    s = parse_sentence(nmea(f"GPGGA,120000,{lat},{lon},1,08,0.9,545.4,M,46.9,M,,"))
    assert isinstance(s, Gga)
    assert (s.lat_deg, s.lon_deg) == pytest.approx(expected, abs=1e-9)


def test_lowercase_checksum_is_accepted() -> None:
    assert isinstance(parse_sentence("$GNVTG,,T,,M,0.117,N,0.216,K,A*3f"), Vtg)


# --- error kinds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("$GNVTG,,T,,M,0.117,N,0.216,K,A*3E", "checksum"),
        ("$GNVTG,,T,,M,0.118,N,0.216,K,A*3F", "checksum"),
        ("$GNVTG,,T,,M,0.117,N,0.216,K,A", "truncated"),
        ("$GPGGA,012530.562,4131.7353,N,09336.8150,W,0,00,50.", "truncated"),
        ("$GNVTG,,T,,M,0.117,N,0.216,K,A*3", "truncated"),
        ("$GNVTG,,T,,M,0.117,N,0.216,K,A*", "truncated"),
        ("$PGRME,15.0,M,22.5,M,27.0,M*1A", "proprietary"),
        (
            "$PSTI,030,212406.000,V,0000.0000000,N,00000.0000000,E,0.000,0.00,0.00,0.00,280316,N,0.0,0.0*01",
            "proprietary",
        ),
        ("$GPGSV,3,3,09,30,67,294,50*48", "unsupported"),
        (nmea("GPTXT,01,01,02,ANTSTATUS=OK"), "unsupported"),
        ("!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*24", "unsupported"),
        ("GPVTG,,T,,M,0.117,N,0.216,K,A*3F", "framing"),
        ("", "framing"),
        ("$GNVTG,,T,,M,0.117,N,\x000.216,K,A*3F", "framing"),
        ("$GNVTG,,T,,M,0.117,N,é.216,K,A*3F", "framing"),
        (nmea("gpRMC,1"), "framing"),
        (nmea("GP,1,2"), "framing"),
        # minutes >= 60 (a cold-starting MT3329 sends 8960.0000,N)
        ("$GPRMC,071732.929,V,8960.0000,N,00000.0000,E,0.00,0.00,111111,,,N*73", "field"),
        (nmea("GPRMC,120000,A,4807.038,,01131.000,E,1.0,2.0,230394,,"), "field"),  # no hemisphere
        (nmea("GPRMC,120000,A,4807.038,E,01131.000,N,1.0,2.0,230394,,"), "field"),  # swapped
        (nmea("GPRMC,120000,A,9100.000,N,01131.000,E,1.0,2.0,230394,,"), "field"),  # lat > 90
        (nmea("GPRMC,120000,A,4807.038,N,18100.000,E,1.0,2.0,230394,,"), "field"),  # lon > 180
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,1.0,2.0,310294,,"), "field"),  # 31 February
        (nmea("GPRMC,250000,A,4807.038,N,01131.000,E,1.0,2.0,230394,,"), "field"),  # hour 25
        (nmea("GPRMC,120000,X,4807.038,N,01131.000,E,1.0,2.0,230394,,"), "field"),  # status
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,-1.0,2.0,230394,,"), "field"),  # speed < 0
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,1.0,361.0,230394,,"), "field"),  # course
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,1_0,2.0,230394,,"), "field"),  # not NMEA
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,nan,2.0,230394,,"), "field"),
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,1.0,2.0,230394,3.1,W,a"), "field"),  # mode letter
        (nmea("GPRMC,120000,A,4807.038,N,01131.000,E,1.0,2.0"), "field"),  # too few fields
        (nmea("GPGGA,120000,4807.038,N,01131.000,E,9,08,0.9,545.4,M,46.9,M,,"), "field"),  # quality
        (nmea("GPGGA,120000,4807.038,N,01131.000,E,1,08,0.9,545.4,F,46.9,M,,"), "field"),  # feet
        (nmea("GPGGA,120000,4807.038,N,01131.000,E,1,x8,0.9,545.4,M,46.9,M,,"), "field"),
        (nmea("GPVTG,054.7,K,034.4,M,005.5,N,010.2,K"), "field"),  # unit letter
        (nmea("GPGSA,A,4,,,,,,,,,,,,,1.0,1.0,1.0"), "field"),  # fix mode 4
        (nmea("GPGSA,X,3,,,,,,,,,,,,,1.0,1.0,1.0"), "field"),
        (nmea("GPGSA,A,3,01,02"), "field"),
    ],
)
def test_error_kinds(line: str, kind: str) -> None:
    with pytest.raises(NmeaError) as info:
        parse_sentence(line)
    assert info.value.kind == kind


# --- the stream reader --------------------------------------------------------------------------

EPOCH_1 = [
    "$GPGGA,202640.000,4404.1306,N,12118.8515,W,2,10,0.98,1127.7,M,-19.6,M,0000,0000*6C",
    "$GPGSA,A,3,20,16,09,03,07,10,23,19,27,30,,,1.64,0.98,1.31*05",
    "$GPRMC,202640.000,A,4404.1306,N,12118.8515,W,0.03,225.97,130415,,,D*73",
]
EPOCH_2_START = "$GPGGA,202641.000,4404.1305,N,12118.8515,W,2,11,0.83,1127.7,M,-19.6,M,0000,0000*65"
EPOCH_1_TS = calendar.timegm((2015, 4, 13, 20, 26, 40))


def test_one_epoch_becomes_one_fix_when_the_next_epoch_starts() -> None:
    reader = NmeaReader()
    # GIVEN all sentences of one epoch WHEN they arrive THEN nothing is emitted yet (epoch still open)
    assert reader.feed("\r\n".join(EPOCH_1).encode() + b"\r\n") == []
    # WHEN the next epoch's first sentence arrives THEN the first epoch comes out as one fix
    fixes = reader.feed(EPOCH_2_START.encode() + b"\r\n")
    assert fixes == [
        GpsFix(
            ts=EPOCH_1_TS,
            valid=True,
            lat_deg=pytest.approx(44.068843333, abs=1e-9),
            lon_deg=pytest.approx(-121.314191667, abs=1e-9),
            alt_m=1127.7,
            speed_kmh=pytest.approx(0.03 * 1.852),
            course_deg=225.97,
            fix_quality=2,
            fix_mode=3,
            satellites=10,
            hdop=0.98,
            pdop=1.64,
            vdop=1.31,
            geoid_sep_m=-19.6,
            date_carried=False,
        )
    ]
    assert reader.counts == {"GGA": 2, "GSA": 1, "RMC": 1}
    # AND the second epoch has no RMC of its own: its date is carried from the first
    (last,) = reader.flush()
    assert last.ts == EPOCH_1_TS + 1 and last.date_carried and last.valid
    assert last.speed_kmh is None and last.satellites == 11


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r", b"\n\r"])
def test_line_endings(ending: bytes) -> None:
    fixes = feed_all(NmeaReader(), ending.join(s.encode() for s in EPOCH_1) + ending)
    assert len(fixes) == 1 and fixes[0].valid and fixes[0].fix_mode == 3


def test_byte_by_byte_equals_one_chunk() -> None:
    data = (DATA / "mt3339.log").read_bytes()
    whole_reader, byte_reader = NmeaReader(), NmeaReader()
    whole = feed_all(whole_reader, data)
    single = feed_all(byte_reader, *(data[i : i + 1] for i in range(len(data))))
    assert len(whole) == 30
    assert single == whole
    assert byte_reader.counts == whole_reader.counts


def test_binary_and_non_utf8_bytes_between_sentences() -> None:
    ubx = bytes.fromhex("b562 0107 5c00 1c8c 2e1b e307 0401 1b24 3737") + b"\xff\xfe$\x81"
    data = (
        ubx + EPOCH_1[0].encode() + b"\r\n\xc3\x28garbage\r\n" + b"\r\n".join(s.encode() for s in EPOCH_1[1:])
    )
    reader = NmeaReader()
    fixes = feed_all(reader, data + b"\r\n")
    assert len(fixes) == 1 and fixes[0].valid and fixes[0].alt_m == 1127.7
    assert reader.counts["garbage"] == 2
    assert reader.counts["GGA"] == 1 and reader.counts["RMC"] == 1


def test_sentence_interrupted_by_a_new_one_is_truncated() -> None:
    reader = NmeaReader()
    feed_all(reader, b"$GPGSV,3,3,12,06,08,270,,16,01,090,,02,16,270," + EPOCH_1[0].encode() + b"\r\n")
    assert reader.counts == {"truncated": 1, "GGA": 1, "undated": 1}


def test_overlong_line_is_discarded_and_the_next_sentence_survives() -> None:
    reader = NmeaReader()
    long_line = b"$GPTXT," + b"A" * 10_000 + b"\r\n"
    fixes = feed_all(reader, long_line, *(s.encode() + b"\r\n" for s in EPOCH_1))
    assert reader.counts["overlong"] == 1
    assert "garbage" not in reader.counts  # the tail of the long line is part of the same fault
    assert len(fixes) == 1 and fixes[0].valid


def test_sentence_at_the_length_limit_is_kept() -> None:
    body = "GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,,"
    padded = body + "," * (MAX_SENTENCE_CHARS - len(body) - 4)  # $ + body + *hh
    line = nmea(padded)
    assert len(line) == MAX_SENTENCE_CHARS
    reader = NmeaReader()
    assert len(feed_all(reader, line.encode() + b"\n")) == 1
    reader = NmeaReader()
    assert feed_all(reader, nmea(padded + ",").encode() + b"\n") == []
    assert reader.counts == {"overlong": 1}


def test_skips_are_counted_per_kind() -> None:
    lines = [
        "$GNVTG,,T,,M,0.117,N,0.216,K,A*3E",  # checksum
        "$PGRME,15.0,M,22.5,M,27.0,M*1A",  # proprietary
        "$GPGSV,3,3,09,30,67,294,50*48",  # unsupported
        "$GPRMC,071732.929,V,8960.0000,N,00000.0000,E,0.00,0.00,111111,,,N*73",  # field
        "$GNVTG,,T,,M,0.117,N,0.216,K,A",  # truncated
        "$GNVTG,,T,,M,0.117,N,0.216,K,A*3F",  # orphan: no epoch open yet
        nmea("GPRMC,,V,,,,,,,,,,N"),  # untimed
    ]
    reader = NmeaReader()
    assert feed_all(reader, "\r\n".join(lines).encode() + b"\r\n") == []
    assert reader.counts == {
        "checksum": 1,
        "proprietary": 1,
        "unsupported": 1,
        "field": 1,
        "truncated": 1,
        "VTG": 1,
        "orphan": 1,
        "RMC": 1,
        "untimed": 1,
    }


def test_void_rmc_is_no_fix_and_hides_its_position() -> None:
    line = "$GPRMC,012519.563,V,4131.7353,N,09336.8150,W,0.00,,050405,,*14"
    (fix,) = feed_all(NmeaReader(), line.encode() + b"\r\n")
    assert not fix.valid
    assert (fix.lat_deg, fix.lon_deg, fix.speed_kmh) == (None, None, None)
    assert fix.ts == calendar.timegm((2005, 4, 5, 1, 25, 19)) + 0.563


@pytest.mark.parametrize(
    ("status_mode", "gga_quality", "valid"),
    [
        (("A", "A"), 1, True),
        (("A", "N"), 1, False),
        (("V", "A"), 1, False),
        (("A", "A"), 0, False),
        (("A", "A"), 8, False),
        (("A", "D"), 2, True),
        (("A", "E"), 6, True),
        (("A", "S"), 1, False),
    ],
)
def test_validity_needs_every_indicator(status_mode: tuple[str, str], gga_quality: int, valid: bool) -> None:
    status, mode = status_mode
    rmc = nmea(f"GNRMC,120000.00,{status},4807.038,N,01131.000,E,1.0,2.0,230394,,,{mode}")
    gga = nmea(f"GNGGA,120000.00,4807.038,N,01131.000,E,{gga_quality},08,0.9,545.4,M,46.9,M,,")
    (fix,) = feed_all(NmeaReader(), f"{rmc}\r\n{gga}\r\n".encode())
    assert fix.valid is valid
    assert (fix.lat_deg is not None) is valid


def test_no_date_yet_means_no_fix() -> None:
    # GIVEN a GGA epoch before any RMC, then a void RMC with a (possibly garbage) date, then a GGA
    lines = [
        "$GPGGA,000343.03,4808.9993,N,01135.0798,E,1,04,01.4,00460.0,M,0046.2,M,,*56",
        nmea("GPRMC,000344.00,V,,,,,,,161206,,,N"),
        nmea("GPGGA,000345.00,4808.9993,N,01135.0798,E,1,04,1.4,460.0,M,46.2,M,,"),
    ]
    reader = NmeaReader()
    fixes = feed_all(reader, "\n".join(lines).encode() + b"\n")
    # THEN only the void RMC's own epoch is dated; neither GGA epoch borrows a date it cannot trust
    assert [f.ts for f in fixes] == [calendar.timegm((2006, 12, 16, 0, 3, 44))]
    assert reader.counts["undated"] == 2


def test_carried_date_rolls_over_at_midnight() -> None:
    lines = [
        nmea("GPRMC,235959.00,A,4807.038,N,01131.000,E,1.0,2.0,311223,,,A"),
        nmea("GPGGA,000000.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        nmea("GPGGA,000001.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
    ]
    fixes = feed_all(NmeaReader(), "\n".join(lines).encode() + b"\n")
    midnight = calendar.timegm((2024, 1, 1, 0, 0, 0))
    assert [f.ts for f in fixes] == [midnight - 1, midnight, midnight + 1]
    assert [f.date_carried for f in fixes] == [False, True, True]


def test_vtg_gives_speed_and_course_only_where_rmc_has_none() -> None:
    lines = [
        nmea("GPRMC,120000.00,A,4807.038,N,01131.000,E,10.0,20.0,230394,,,A"),
        nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A"),
        nmea("GPGGA,120001.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
        nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A"),
        nmea("GPRMC,120002.00,A,4807.038,N,01131.000,E,10.0,,230394,,,A"),
        nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A"),
    ]
    with_rmc, without_rmc, rmc_without_course = feed_all(NmeaReader(), "\n".join(lines).encode() + b"\n")
    assert (with_rmc.speed_kmh, with_rmc.course_deg) == (pytest.approx(18.52), 20.0)
    assert (without_rmc.speed_kmh, without_rmc.course_deg) == (10.2, 54.7)
    assert (rmc_without_course.speed_kmh, rmc_without_course.course_deg) == (pytest.approx(18.52), 54.7)


def test_flush_drops_a_partial_line() -> None:
    reader = NmeaReader()
    fixes = feed_all(reader, b"\r\n".join(s.encode() for s in EPOCH_1) + b"\r\n$GPGGA,2026")
    assert len(fixes) == 1
    assert reader.counts["truncated"] == 1
    assert reader.flush() == []


# --- fuzzing ------------------------------------------------------------------------------------

VALID_SENTENCES = [
    "$GNRMC,081411.000,A,5541.1955,N,03737.2872,E,0.60,301.29,260514,,,A*74",
    "$GPGGA,202640.000,4404.1306,N,12118.8515,W,2,10,0.98,1127.7,M,-19.6,M,0000,0000*6C",
    "$GNVTG,,T,,M,0.117,N,0.216,K,A*3F",
    "$GNGSA,A,3,03,19,27,13,,,,,,,,,2.75,2.56,1.00*10",
    "$GNRMC,011903.00,A,4552.65550,S,17030.00756,E,0.214,,120419,,,A,V*0F",
]
ALPHABET = st.sampled_from(list("0123456789.,-+ABCDEFGHIJKLMNOPQRSTUVWXYZ*$ \x00\xff_e"))


@st.composite
def mutated_sentences(draw: st.DrawFn) -> str:
    """A real sentence with characters replaced, inserted or deleted, usually re-checksummed so
    that the field parsers (not just the checksum test) see the damage."""
    line = draw(st.sampled_from(VALID_SENTENCES))
    body = list(line[1 : line.rindex("*")])
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "insert" or not body:
            body.insert(i, draw(ALPHABET))
        elif op == "replace":
            body[min(i, len(body) - 1)] = draw(ALPHABET)
        else:
            del body[min(i, len(body) - 1)]
    text = "".join(body)
    keep_old_checksum = draw(st.integers(0, 9)) == 0
    return line[:1] + text + line[line.rindex("*") :] if keep_old_checksum else nmea(text)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_nmea_error(data: bytes) -> None:
    with contextlib.suppress(NmeaError):
        parse_sentence(data.decode("latin-1"))


@settings(max_examples=500)
@given(mutated_sentences())
def test_mutated_sentences_raise_only_nmea_error(line: str) -> None:
    try:
        parse_sentence(line)
    except NmeaError as err:
        assert err.kind in {"framing", "truncated", "checksum", "proprietary", "unsupported", "field"}


@given(
    st.lists(
        st.one_of(st.binary(max_size=64), mutated_sentences().map(lambda s: s.encode("latin-1"))), max_size=30
    ),
    st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b""]), min_size=1),
)
def test_reader_never_raises(parts: list[bytes], endings: list[bytes]) -> None:
    reader = NmeaReader()
    data = b"".join(p + endings[i % len(endings)] for i, p in enumerate(parts))
    fixes = feed_all(reader, data[: len(data) // 2], data[len(data) // 2 :])
    assert all(isinstance(f, GpsFix) for f in fixes)
    assert all(v > 0 for v in reader.counts.values())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_any_chunking_of_a_real_capture_gives_the_same_fixes(sizes: list[int]) -> None:
    data = (DATA / "neo-m8n.log").read_bytes()
    expected = feed_all(NmeaReader(), data)
    reader, chunks, pos, i = NmeaReader(), [], 0, 0
    while pos < len(data):
        chunks.append(data[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    assert feed_all(reader, *chunks) == expected
