"""NMEA 0183 sentences: one line in, one frozen dataclass out (RMC, GGA, GNS, GLL, VTG, GSA, ZDA).

`parse_sentence(line)` is pure and raises `NmeaError` and nothing else, with a `kind`: "framing",
"truncated", "checksum", "proprietary", "unsupported" or "field".

Decisions (facts from NMEA 0183 where cited; the rest is ours):

* Checksum. NMEA 0183 makes `*hh` (XOR of the characters between `$` and `*`, two hex digits)
  mandatory for the sentences read here; we accept its hex digits in either case. A sentence
  without one is "truncated" by default: a line cut short by a serial overrun or a reconnect looks
  exactly like a sentence without a checksum. `checksum_required=False` is for receivers that never
  send one (a per-source setting): an unchecked sentence must then have every field its type had
  by NMEA 2.0 (`_COMPLETE_FIELDS`), so a cut that removed whole fields is still caught; a cut
  inside the last field is not, which is the price of such a receiver.
* Talkers: any two-character talker (GP, GN, GL, GA, GB, BD, QZ, ...) is accepted and kept in
  `talker`. Proprietary sentences (`$P` + maker) are "proprietary"; other types (GSV, TXT, ...)
  and `!` encapsulation sentences (AIS) are "unsupported".
* Empty fields are `None`; a sentence may end early where the fields left out are optional
  additions of later NMEA versions (RMC's mode, GLL's time/status/mode, GGA's geoid separation...).
  Latitude/longitude are signed degrees (south and west negative); minutes of 60 or more, or a
  value without its hemisphere, are "field" errors. Magnetic variation is read leniently
  (`nmea_fields.magnetic_variation`): it is not part of a fix.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from protocols.errors import NmeaError
from protocols.nmea_fields import (
    calendar_date,
    course,
    ddmmyy,
    integer,
    latitude,
    longitude,
    magnetic_variation,
    mode_indicator,
    optional,
    require,
    signed,
    unsigned,
    utc_time_ms,
    utc_time_step_ms,
)

KMH_PER_KNOT = 1.852  # exact: 1 international knot = 1852 m/h

_ADDRESS = re.compile(r"[A-Z][A-Z0-9]{4}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


@dataclass(frozen=True, slots=True)
class Rmc:
    """Recommended minimum data: time, date, status, position, speed and course over ground."""

    talker: str
    utc_time_ms: int | None  # milliseconds since UTC midnight
    utc_time_step_ms: int  # resolution of the time as sent: 1000 for hhmmss, 10 for hhmmss.ss
    status: str  # "A" data valid, "V" void (no valid fix)
    lat_deg: float | None
    lon_deg: float | None
    speed_kmh: float | None  # sent in knots
    course_deg: float | None  # true course over ground
    date: dt.date | None
    mag_var_deg: float | None  # magnetic variation, east positive; None if absent or not understood
    mode: str | None  # NMEA 2.3+ mode indicator: A, D, E, F, M, N, P, R, S


@dataclass(frozen=True, slots=True)
class Gga:
    """Fix data: time, position, quality, satellites in use, HDOP, altitude."""

    talker: str
    utc_time_ms: int | None
    utc_time_step_ms: int
    lat_deg: float | None
    lon_deg: float | None
    quality: int | None  # 0 invalid, 1 GPS, 2 DGPS, 3 PPS, 4 RTK, 5 float RTK, 6 estimated, 7, 8
    satellites: int | None  # in use
    hdop: float | None
    alt_m: float | None  # antenna altitude above mean sea level (geoid)
    geoid_sep_m: float | None  # geoid above the WGS-84 ellipsoid


@dataclass(frozen=True, slots=True)
class Gns:
    """GNSS fix data (NMEA 3.0+): GGA's content with one mode indicator per constellation."""

    talker: str
    utc_time_ms: int | None
    utc_time_step_ms: int
    lat_deg: float | None
    lon_deg: float | None
    modes: str | None  # one letter per constellation (GPS, GLONASS, Galileo, BeiDou, ...), as RMC's mode
    satellites: int | None  # in use, all constellations
    hdop: float | None
    alt_m: float | None  # above mean sea level
    geoid_sep_m: float | None


@dataclass(frozen=True, slots=True)
class Gll:
    """Geographic position: latitude, longitude, and since NMEA 2.0 UTC time and status."""

    talker: str
    lat_deg: float | None
    lon_deg: float | None
    utc_time_ms: int | None  # None in NMEA 1.5 GLL, which ends after the longitude
    utc_time_step_ms: int
    status: str | None  # "A" valid, "V" void; None when not sent (NMEA 1.5)
    mode: str | None  # NMEA 2.3+


@dataclass(frozen=True, slots=True)
class Vtg:
    """Course and speed over ground."""

    talker: str
    course_deg: float | None  # true
    course_mag_deg: float | None
    speed_kmh: float | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class Gsa:
    """DOP and the satellites used in the solution (one GSA per constellation on GNSS receivers)."""

    talker: str
    selection: str | None  # "A" automatic 2D/3D, "M" manual
    fix_mode: int | None  # 1 no fix, 2 2D, 3 3D
    satellite_ids: tuple[int, ...]
    pdop: float | None
    hdop: float | None
    vdop: float | None
    system_id: int | None  # NMEA 4.11: 1 GPS, 2 GLONASS, 3 Galileo, 4 BeiDou, 5 QZSS, 6 NavIC


@dataclass(frozen=True, slots=True)
class Zda:
    """UTC time and date (the local zone fields are not kept)."""

    talker: str
    utc_time_ms: int | None
    utc_time_step_ms: int
    date: dt.date | None  # None when day, month and year are all empty (receiver has no time yet)


Sentence = Rmc | Gga | Gns | Gll | Vtg | Gsa | Zda


def parse_sentence(line: str, *, checksum_required: bool = True) -> Sentence:
    """Parse one sentence (`$...*hh`, trailing CR/LF allowed). Raises `NmeaError` and nothing else."""
    text = line.rstrip("\r\n")
    if not text.startswith(("$", "!")):
        raise NmeaError("a sentence starts with '$'", kind="framing")
    if not text.isascii() or not text.isprintable():
        raise NmeaError("non-printable character in sentence", kind="framing")
    star = text.rfind("*")
    if star >= 0:
        given = text[star + 1 :]
        if not _HEX2.fullmatch(given):
            raise NmeaError(f"checksum field {given!r} is not two hex digits", kind="truncated")
        body = text[1:star]
        computed = _xor_of_chars(body)
        if computed != int(given, 16):
            raise NmeaError(f"checksum {given} != computed {computed:02X}", kind="checksum")
    elif checksum_required:
        raise NmeaError("no checksum", kind="truncated")
    else:
        body = text[1:]
    if text[0] == "!":
        raise NmeaError("encapsulation sentence", kind="unsupported")
    fields = body.split(",")
    address = fields[0]
    if address.startswith("P"):
        raise NmeaError(f"proprietary sentence {address}", kind="proprietary")
    if not _ADDRESS.fullmatch(address):
        raise NmeaError(f"bad address field {address!r}", kind="framing")
    talker, kind = address[:2], address[2:]
    parser = _PARSERS.get(kind)
    if parser is None:
        raise NmeaError(f"sentence type {kind} is not parsed", kind="unsupported")
    if star < 0:
        require(fields[1:], _COMPLETE_FIELDS[kind], f"{kind} without checksum")
    return parser(talker, fields[1:])


def _xor_of_chars(text: str) -> int:
    """NMEA's checksum: the XOR of all characters. Folds the text as one integer, halving its width each
    step (XOR is associative and commutative, so pairing bytes up in any order gives the same byte):
    log2(n) big-integer operations instead of n Python-level ones, a third less CPU per sentence."""
    width = len(text)
    folded = int.from_bytes(text.encode("ascii"))
    while width > 1:
        half = (width + 1) >> 1
        bits = half << 3
        folded = (folded >> bits) ^ (folded & ((1 << bits) - 1))
        width = half
    return folded


def _parse_rmc(talker: str, f: list[str]) -> Rmc:
    require(f, 9, "RMC")
    status = f[1]
    if status not in ("A", "V"):
        raise NmeaError(f"RMC status {status!r}", kind="field")
    speed_kn = unsigned(f[6], "speed")
    direction, mode = optional(f, 10), optional(f, 11)
    if len(f) == 11 and direction not in (None, "E", "W"):
        direction, mode = None, direction  # the direction field left out: `ddmmyy,,A` (Saab R4)
    return Rmc(
        talker=talker,
        utc_time_ms=utc_time_ms(f[0]),
        utc_time_step_ms=utc_time_step_ms(f[0]),
        status=status,
        lat_deg=latitude(f[2], f[3]),
        lon_deg=longitude(f[4], f[5]),
        speed_kmh=None if speed_kn is None else speed_kn * KMH_PER_KNOT,
        course_deg=course(f[7]),
        date=ddmmyy(f[8]),
        mag_var_deg=magnetic_variation(optional(f, 9), direction),
        mode=mode_indicator(mode),
    )


def _parse_gga(talker: str, f: list[str]) -> Gga:
    require(f, 9, "GGA")
    quality = integer(f[5], "quality")
    if quality is not None and quality > 8:
        raise NmeaError(f"GGA quality {quality}", kind="field")
    alt_unit = optional(f, 9)
    if alt_unit not in (None, "M"):
        raise NmeaError(f"altitude unit {alt_unit!r}", kind="field")
    sep = optional(f, 10)
    return Gga(
        talker=talker,
        utc_time_ms=utc_time_ms(f[0]),
        utc_time_step_ms=utc_time_step_ms(f[0]),
        lat_deg=latitude(f[1], f[2]),
        lon_deg=longitude(f[3], f[4]),
        quality=quality,
        satellites=integer(f[6], "satellites"),
        hdop=unsigned(f[7], "HDOP"),
        alt_m=signed(f[8], "altitude"),
        geoid_sep_m=None if sep is None else signed(sep, "geoid separation"),
    )


def _parse_gns(talker: str, f: list[str]) -> Gns:
    require(f, 10, "GNS")
    modes = f[5] or None
    if modes is not None and not all("A" <= c <= "Z" for c in modes):
        raise NmeaError(f"GNS mode indicators {f[5]!r}", kind="field")
    return Gns(
        talker=talker,
        utc_time_ms=utc_time_ms(f[0]),
        utc_time_step_ms=utc_time_step_ms(f[0]),
        lat_deg=latitude(f[1], f[2]),
        lon_deg=longitude(f[3], f[4]),
        modes=modes,
        satellites=integer(f[6], "satellites"),
        hdop=unsigned(f[7], "HDOP"),
        alt_m=signed(f[8], "altitude"),
        geoid_sep_m=signed(f[9], "geoid separation"),
    )


def _parse_gll(talker: str, f: list[str]) -> Gll:
    require(f, 4, "GLL")
    status = optional(f, 5)
    if status not in (None, "A", "V"):
        raise NmeaError(f"GLL status {status!r}", kind="field")
    return Gll(
        talker=talker,
        lat_deg=latitude(f[0], f[1]),
        lon_deg=longitude(f[2], f[3]),
        utc_time_ms=utc_time_ms(f[4]) if len(f) > 4 else None,
        utc_time_step_ms=utc_time_step_ms(f[4]) if len(f) > 4 else 1000,
        status=status,
        mode=mode_indicator(optional(f, 6)),
    )


def _parse_vtg(talker: str, f: list[str]) -> Vtg:
    require(f, 8, "VTG")
    for unit, expected in zip((f[1], f[3], f[5], f[7]), "TMNK", strict=True):
        if unit not in ("", expected):  # some receivers leave the letter empty with the value
            raise NmeaError(f"VTG unit letter {unit!r} where {expected!r} belongs", kind="field")
    speed_kmh = unsigned(f[6], "speed")
    if speed_kmh is None:
        speed_kn = unsigned(f[4], "speed")
        speed_kmh = None if speed_kn is None else speed_kn * KMH_PER_KNOT
    return Vtg(
        talker=talker,
        course_deg=course(f[0]),
        course_mag_deg=course(f[2]),
        speed_kmh=speed_kmh,
        mode=mode_indicator(optional(f, 8)),
    )


def _parse_gsa(talker: str, f: list[str]) -> Gsa:
    require(f, 17, "GSA")
    selection = f[0] or None
    if selection not in (None, "A", "M"):
        raise NmeaError(f"GSA selection mode {selection!r}", kind="field")
    fix_mode = integer(f[1], "fix mode")
    if fix_mode is not None and fix_mode not in (1, 2, 3):
        raise NmeaError(f"GSA fix mode {fix_mode}", kind="field")
    ids = tuple(i for i in (integer(s, "satellite id") for s in f[2:14]) if i is not None)
    return Gsa(
        talker=talker,
        selection=selection,
        fix_mode=fix_mode,
        satellite_ids=ids,
        pdop=unsigned(f[14], "PDOP"),
        hdop=unsigned(f[15], "HDOP"),
        vdop=unsigned(f[16], "VDOP"),
        system_id=integer(f[17], "system id") if len(f) > 17 else None,
    )


def _parse_zda(talker: str, f: list[str]) -> Zda:
    require(f, 4, "ZDA")
    day, month, year = (integer(s, "ZDA date") for s in f[1:4])
    if day is None and month is None and year is None:
        date = None
    elif day is None or month is None or year is None or year >= 10_000 or 100 <= year < 1980:
        raise NmeaError(f"ZDA date {f[1]!r},{f[2]!r},{f[3]!r}", kind="field")
    else:
        date = calendar_date(day, month, year, ",".join(f[1:4]))
    return Zda(talker, utc_time_ms(f[0]), utc_time_step_ms(f[0]), date)


_PARSERS: dict[str, Callable[[str, list[str]], Sentence]] = {
    "RMC": _parse_rmc,
    "GGA": _parse_gga,
    "GNS": _parse_gns,
    "GLL": _parse_gll,
    "VTG": _parse_vtg,
    "GSA": _parse_gsa,
    "ZDA": _parse_zda,
}

# Fields after the address in NMEA 2.0, demanded of a sentence that comes without a checksum.
_COMPLETE_FIELDS = {"RMC": 11, "GGA": 14, "GNS": 12, "GLL": 6, "VTG": 8, "GSA": 17, "ZDA": 6}
