"""`protocols.nmea` on what receivers send besides the textbook RMC+GGA: dates from ZDA, GLL-only and
GNS receivers, sentences without checksums (a per-source option), odd magnetic variation, year and
fraction formats, times of different resolutions; and the agent's GPS source passing the option on
and reporting each skip kind once. (Real receivers' lines: test_nmea_receivers.py.)

Sentences are written here from NMEA 0183's field layouts (RMC, GGA, GNS, GLL, ZDA) with our own
values; `nmea()` adds the checksum.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.settings import GpsSettings
from agent.sources.gps import GpsSource
from protocols.catalog import load_catalog
from protocols.errors import NmeaError
from protocols.nmea import Gll, Gns, GpsFix, NmeaReader, Rmc, Zda, parse_sentence

LAT = 48 + 7.038 / 60
LON = 11 + 31.0 / 60


def nmea(body: str) -> str:
    return f"${body}*{reduce(lambda acc, c: acc ^ ord(c), body, 0):02X}"


def read(lines: list[str], reader: NmeaReader | None = None) -> tuple[list[GpsFix], NmeaReader]:
    reader = reader or NmeaReader()
    fixes = reader.feed("\r\n".join(lines).encode() + b"\r\n")
    return fixes + reader.flush(), reader


def gga(hhmmss: str, quality: int = 1) -> str:
    return nmea(f"GPGGA,{hhmmss},4807.038,N,01131.000,E,{quality},08,0.9,545.4,M,46.9,M,,")


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)[:6]))


# --- magnetic variation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variation", "expected"),
    [
        ("3.1,W", -3.1),  # NMEA's form
        ("003.1,E", 3.1),
        ("3.1W,", -3.1),  # letter glued to the value, its own field empty
        ("-3.1,", -3.1),  # signed value, no letter
        ("3.1,", None),  # a magnitude without direction
        (",W", None),  # a letter without magnitude
        ("3.1,X", None),  # an unknown letter
        ("N/A,", None),  # not a number
    ],
)
def test_unusual_magnetic_variation_never_costs_the_position(variation: str, expected: float | None) -> None:
    line = nmea(f"GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,{variation},A")
    s = parse_sentence(line)
    assert isinstance(s, Rmc)
    assert s.mag_var_deg == (None if expected is None else pytest.approx(expected))
    (fix,), _ = read([line])
    assert fix.valid and fix.lat_deg == pytest.approx(LAT, abs=1e-12)


# --- dates: ZDA, previous RMC, year forms -------------------------------------------------------


def test_zda_parses_date_and_time() -> None:
    s = parse_sentence("$GPZDA,202640.000,13,04,2015,,*54")
    assert s == Zda("GP", (20 * 3600 + 26 * 60 + 40) * 1000, 1, dt.date(2015, 4, 13))
    assert parse_sentence(nmea("GNZDA,202640.00,13,04,15,-05,00")).date == dt.date(2015, 4, 13)  # type: ignore[union-attr]
    assert parse_sentence(nmea("GPZDA,,,,,,")).date is None  # type: ignore[union-attr]
    for bad in ("GPZDA,202640.00,32,04,2015,,", "GPZDA,202640.00,13,04,,,", "GPZDA,202640.00,13,04,1015,,"):
        with pytest.raises(NmeaError):
            parse_sentence(nmea(bad))


@pytest.mark.parametrize("zda_first", [False, True])
def test_receiver_without_rmc_dates_its_epochs_from_zda(zda_first: bool) -> None:
    # GIVEN a GGA+ZDA receiver (no RMC), ZDA sent after or before the GGA of its second
    epochs = [
        (gga("120000.00"), nmea("GPZDA,120000.00,23,03,1994,,")),
        (gga("120001.00"), nmea("GPZDA,120001.00,23,03,1994,,")),
    ]
    lines = [line for pair in epochs for line in (pair[::-1] if zda_first else pair)]
    fixes, reader = read(lines)
    # THEN every epoch is a valid fix dated by its own ZDA
    assert [(f.ts, f.valid, f.date_carried) for f in fixes] == [
        (utc(1994, 3, 23, 12, 0, 0), True, False),
        (utc(1994, 3, 23, 12, 0, 1), True, False),
    ]
    assert reader.counts == {"GGA": 2, "ZDA": 2}


def test_zda_dates_across_midnight_whichever_comes_first() -> None:
    # GIVEN ZDA-first output spanning midnight: the ZDA of 00:00:00 arrives while 23:59:59 is open
    lines = [
        nmea("GPZDA,235959.00,31,12,2023,,"),
        gga("235959.00"),
        nmea("GPZDA,000000.00,01,01,2024,,"),
        gga("000000.00"),
    ]
    fixes, _ = read(lines)
    midnight = utc(2024, 1, 1, 0, 0, 0)
    assert [f.ts for f in fixes] == [midnight - 1, midnight]


def test_gga_between_zdas_carries_the_last_date() -> None:
    # A receiver that sends ZDA only every few seconds: the epochs between carry its date
    fixes, _ = read(
        [nmea("GPZDA,120000.00,23,03,1994,,"), gga("120000.00"), gga("120001.00"), gga("120002.00")]
    )
    assert [f.date_carried for f in fixes] == [False, True, True]
    assert fixes[-1].ts == utc(1994, 3, 23, 12, 0, 2)


def test_gga_before_any_date_is_undated_not_guessed() -> None:
    lines = [gga("120000.00"), gga("120001.00"), nmea("GPZDA,120001.00,23,03,1994,,"), gga("120002.00")]
    fixes, reader = read(lines)
    assert [(f.ts, f.date_carried) for f in fixes] == [
        (utc(1994, 3, 23, 12, 0, 1), False),
        (utc(1994, 3, 23, 12, 0, 2), True),
    ]
    assert reader.counts["undated"] == 1
    assert "undated" in reader.first_skips


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("230394", (1994, 3, 23)),
        ("23031994", (1994, 3, 23)),
        ("010180", (1980, 1, 1)),
        ("311279", (2079, 12, 31)),
    ],
)
def test_rmc_years_of_two_or_four_digits(date: str, expected: tuple[int, int, int]) -> None:
    s = parse_sentence(nmea(f"GPRMC,120000,A,4807.038,N,01131.000,E,,,{date},,"))
    assert isinstance(s, Rmc) and s.date == dt.date(*expected)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("120000", 0),
        ("120000.5", 500),
        ("120000.25", 250),
        ("120000.123456", 123),
        ("120000.0004", 0),
        ("120000.", 0),
    ],
)
def test_fractional_seconds_of_any_length(text: str, ms: int) -> None:
    s = parse_sentence(nmea(f"GPGGA,{text},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    assert s.utc_time_ms == 12 * 3_600_000 + ms  # type: ignore[union-attr]


# --- GLL ----------------------------------------------------------------------------------------


def test_gll_forms() -> None:
    s = parse_sentence("$GNGLL,4404.14066,N,12118.85481,W,171925.00,A,A*66")
    assert s == Gll(
        "GN", pytest.approx(44 + 4.14066 / 60), pytest.approx(-(121 + 18.85481 / 60)), 62365000, 10, "A", "A"
    )
    old = parse_sentence(nmea("GPGLL,4807.038,N,01131.000,E"))  # NMEA 1.5: position only
    assert isinstance(old, Gll) and (old.utc_time_ms, old.status, old.mode) == (None, None, None)
    with pytest.raises(NmeaError):
        parse_sentence(nmea("GPGLL,4807.038,N,01131.000,E,120000,X,A"))


def test_gll_only_receiver_dated_by_zda() -> None:
    lines = [
        nmea("GPGLL,4807.038,N,01131.000,E,120000.00,A,A"),
        nmea("GPZDA,120000.00,23,03,1994,,"),
        nmea("GPGLL,4807.039,N,01131.000,E,120001.00,A,D"),
        nmea("GPZDA,120001.00,23,03,1994,,"),
    ]
    fixes, _ = read(lines)
    assert [(f.ts, f.valid) for f in fixes] == [
        (utc(1994, 3, 23, 12, 0, 0), True),
        (utc(1994, 3, 23, 12, 0, 1), True),
    ]
    assert fixes[0].lat_deg == pytest.approx(LAT, abs=1e-12) and fixes[0].lon_deg == pytest.approx(
        LON, abs=1e-12
    )
    assert fixes[1].lat_deg == pytest.approx(48 + 7.039 / 60, abs=1e-12)


def test_gll_only_epochs_after_an_rmc_carry_its_date() -> None:
    # GIVEN a receiver whose RMC comes rarely (or stopped) and whose GLL comes every second
    lines = [
        nmea("GPRMC,235958.00,A,4807.038,N,01131.000,E,1.0,2.0,311223,,,A"),
        nmea("GPGLL,4807.038,N,01131.000,E,235959.00,A,A"),
        nmea("GPGLL,4807.038,N,01131.000,E,000000.00,A,A"),
    ]
    fixes, _ = read(lines)
    midnight = utc(2024, 1, 1, 0, 0, 0)
    assert [(f.ts, f.valid, f.date_carried) for f in fixes] == [
        (midnight - 2, True, False),
        (midnight - 1, True, True),
        (midnight, True, True),
    ]


@pytest.mark.parametrize(("status", "mode"), [("V", "N"), ("A", "N"), ("A", "S"), ("V", "")])
def test_void_gll_is_no_fix(status: str, mode: str) -> None:
    lines = [
        nmea("GPZDA,120000.00,23,03,1994,,"),
        nmea(f"GPGLL,4807.038,N,01131.000,E,120000.00,{status},{mode}"),
    ]
    (fix,), _ = read(lines)
    assert not fix.valid and fix.lat_deg is None


def test_gll_of_the_epoch_agrees_with_rmc_and_gga() -> None:
    lines = [
        nmea("GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,,,A"),
        gga("120000.00"),
        nmea("GPGLL,4807.038,N,01131.000,E,120000.00,V,N"),  # one indicator says no fix
    ]
    (fix,), reader = read(lines)
    assert not fix.valid
    assert reader.counts == {"RMC": 1, "GGA": 1, "GLL": 1}


# --- GNS -----------------------------------------------------------------------------------------


def test_gns_parses_per_constellation_modes() -> None:
    s = parse_sentence(nmea("GNGNS,120000.00,4807.038,N,01131.000,E,ANA,14,0.8,545.4,46.9,,,V"))
    assert isinstance(s, Gns)
    assert (s.modes, s.satellites, s.hdop, s.alt_m, s.geoid_sep_m) == ("ANA", 14, 0.8, 545.4, 46.9)
    assert s.lat_deg == pytest.approx(LAT, abs=1e-12)
    with pytest.raises(NmeaError):
        parse_sentence(nmea("GNGNS,120000.00,4807.038,N,01131.000,E,an,14,0.8,545.4,46.9,,"))


@pytest.mark.parametrize(
    ("modes", "valid"), [("AN", True), ("NR", True), ("D", True), ("NN", False), ("SS", False)]
)
def test_receiver_with_gns_and_zda_only(modes: str, valid: bool) -> None:
    lines = [
        nmea("GNZDA,120000.00,23,03,1994,,"),
        nmea(f"GNGNS,120000.00,4807.038,N,01131.000,E,{modes},14,0.8,545.4,46.9,,"),
    ]
    (fix,), _ = read(lines)
    assert fix.ts == utc(1994, 3, 23, 12, 0, 0) and not fix.date_carried
    assert (fix.valid, fix.satellites, fix.hdop) == (valid, 14, 0.8)
    assert (fix.lat_deg, fix.alt_m) == ((pytest.approx(LAT, abs=1e-12), 545.4) if valid else (None, None))


def test_times_of_different_resolution_still_separate_epochs() -> None:
    # 10 Hz with one decimal in GGA and three in GLL: 0.1 s apart is another epoch
    lines = [
        nmea("GPZDA,120000.00,23,03,1994,,"),
        nmea("GPGLL,4807.038,N,01131.000,E,120000.100,A,A"),
        gga("120000.1"),
        nmea("GPGLL,4807.038,N,01131.000,E,120000.200,A,A"),
        gga("120000.2"),
    ]
    fixes, _ = read(lines)
    assert [round(f.ts - utc(1994, 3, 23, 12, 0, 0), 3) for f in fixes] == [0.1, 0.2]
    assert [f.fix_quality for f in fixes] == [1, 1]


# --- checksums ----------------------------------------------------------------------------------

UNCHECKED = [
    "$GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,,,A",
    "$GPGGA,120000.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
    "$GPRMC,120001.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,,,A",
]


def test_missing_checksums_are_rejected_by_default() -> None:
    fixes, reader = read(UNCHECKED)
    assert fixes == []
    assert reader.counts == {"truncated": 3}
    assert reader.first_skips["truncated"].startswith("no checksum: $GPRMC,120000.00")


def test_missing_checksums_are_accepted_when_the_source_allows() -> None:
    fixes, reader = read(UNCHECKED, NmeaReader(checksum_required=False))
    assert [(f.ts, f.valid) for f in fixes] == [
        (utc(1994, 3, 23, 12, 0, 0), True),
        (utc(1994, 3, 23, 12, 0, 1), True),
    ]
    assert reader.counts == {"RMC": 2, "GGA": 1, "unchecked": 3}


def test_unchecked_mode_still_checks_what_can_be_checked() -> None:
    reader = NmeaReader(checksum_required=False)
    lines = [
        "$GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0",  # cut after the course: fields missing
        "$GPGGA,120000.00,4807.038,N,01131.000,E,1,08,0.9,545.4",  # cut after the altitude
        "$GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,,,A*00",  # a checksum, and wrong
        "$GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,2.0,230394,,,a",  # a field error
    ]
    fixes, reader = read(lines, reader)
    assert fixes == []
    assert reader.counts == {"field": 3, "checksum": 1}


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$!*"), max_size=120))
def test_checksum_agrees_with_the_xor_of_every_character(text: str) -> None:
    # the reader's checksum is computed by folding; `nmea()` XORs character by character
    with pytest.raises(NmeaError) as info:
        parse_sentence(nmea(f"GPTXT,{text}"))
    assert info.value.kind == "unsupported"


@given(
    st.sampled_from(["GPRMC", "GNGGA", "GNGNS", "GPGLL", "GPZDA", "GPVTG", "GPGSA"]),
    st.lists(st.text(alphabet="0123456789.-NSEWAVDM", max_size=12), max_size=20),
)
def test_unchecked_sentences_of_any_shape_raise_only_nmea_error(address: str, fields: list[str]) -> None:
    line = ",".join(["$" + address, *fields])
    try:
        parse_sentence(line, checksum_required=False)
    except NmeaError as err:
        assert err.kind in {"field", "framing"}
    reader = NmeaReader(checksum_required=False)
    assert all(isinstance(f, GpsFix) for f in reader.feed(line.encode() + b"\r\n") + reader.flush())


def test_lowercase_checksum_hex() -> None:
    line = nmea("GPZDA,120000.00,23,03,1994,,")
    assert parse_sentence(line[:-2] + line[-2:].lower()) == parse_sentence(line)


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "QZ"])
def test_every_gnss_talker_for_gll_and_zda(talker: str) -> None:
    lines = [
        nmea(f"{talker}GLL,4807.038,N,01131.000,E,120000.00,A,A"),
        nmea(f"{talker}ZDA,120000.00,23,03,1994,,"),
    ]
    (fix,), reader = read(lines)
    assert fix.valid and reader.counts == {"GLL": 1, "ZDA": 1}


# --- the stream ---------------------------------------------------------------------------------


def test_split_reads_and_garbage_between_sentences() -> None:
    # GIVEN a GLL+ZDA stream with binary between sentences, fed one byte at a time
    data = (
        b"\xb5\x62\x01\x07garbage"
        + nmea("GPGLL,4807.038,N,01131.000,E,120000.00,A,A").encode()
        + b"\r\n\x00\xff"
        + nmea("GPZDA,120000.00,23,03,1994,,").encode()
        + b"\r\n"
    )
    reader = NmeaReader()
    fixes = [fix for i in range(len(data)) for fix in reader.feed(data[i : i + 1])] + reader.flush()
    assert [(f.ts, f.valid) for f in fixes] == [(utc(1994, 3, 23, 12, 0, 0), True)]
    assert reader.counts == {"garbage": 2, "GLL": 1, "ZDA": 1}


@pytest.mark.parametrize("chunk", [1 << 20, 512, 61])
def test_counts_do_not_depend_on_how_reads_cut_the_stream(chunk: int) -> None:
    # GIVEN the capture with the most binary between sentences (u-blox UBX frames)
    data = (Path(__file__).parent.parent / "data" / "nmea" / "ublox-zed-f9p_hpg1.11.log").read_bytes()
    whole = NmeaReader()
    expected = whole.feed(data) + whole.flush()
    reader = NmeaReader()
    fixes = [
        fix for i in range(0, len(data), chunk) for fix in reader.feed(data[i : i + chunk])
    ] + reader.flush()
    assert fixes == expected
    assert reader.counts == whole.counts


def test_each_skip_kind_keeps_its_first_reason() -> None:
    lines = [
        nmea("GPRMC,120000,X,,,,,,,230394,,"),
        nmea("GPRMC,120000,Y,,,,,,,230394,,"),
        "$GPGGA,12",
        nmea("PGRMZ,1,f,3"),
    ]
    _, reader = read(lines)
    assert reader.counts == {"field": 2, "truncated": 1, "proprietary": 1}
    assert set(reader.first_skips) == {"field", "truncated", "proprietary"}
    assert reader.first_skips["field"].startswith("RMC status 'X'")


# --- the agent's GPS source ---------------------------------------------------------------------


def test_gps_settings_default_to_checksums_required() -> None:
    assert GpsSettings().accept_missing_checksum is False
    assert GpsSettings(accept_missing_checksum=True).accept_missing_checksum is True


@pytest.mark.parametrize("accept", [False, True])
def test_gps_source_passes_the_checksum_option_to_its_reader(accept: bool) -> None:
    source = GpsSource(GpsSettings(accept_missing_checksum=accept), load_catalog())
    fixes = source.reader.feed("\r\n".join(UNCHECKED).encode() + b"\r\n")
    assert len(fixes) == (1 if accept else 0)


def test_gps_source_logs_each_skip_kind_once(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a source whose reader met three bad lines of one kind and one of another, over two reads
    source = GpsSource(GpsSettings(), load_catalog())
    caplog.set_level(logging.INFO, logger="agent.sources.gps")
    source.reader.feed(b"$GPRMC,1\r\n" + nmea("GPRMC,120000,X,,,,,,,230394,,").encode() + b"\r\n")
    source._export_counts()
    source.reader.feed(b"$GPRMC,2\r\n$GPRMC,3\r\n" + nmea("GPGSV,1,1,01,05,40,083,46").encode() + b"\r\n")
    source._export_counts()
    # THEN one warning per kind of malformed line, naming it and its first line; a note for sentences we skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("skipping truncated lines (first: no checksum: $GPRMC,1)" in m for m in warnings)
    assert any("skipping field lines" in m for m in warnings)
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(notes) == 1 and "skipping unsupported lines (first: sentence type GSV" in notes[0]
    assert source.nmea_counts == {"truncated": 3, "field": 1, "unsupported": 1}
