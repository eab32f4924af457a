"""NMEA 0183 from the bus GPS receiver: sentences (RMC, GGA, VTG, GSA) and the fixes they make.

Two layers:

* `parse_sentence(line)` is pure: one sentence in, one frozen dataclass out, or `NmeaError` with a
  `kind` ("framing", "truncated", "checksum", "proprietary", "unsupported", "field").
* `NmeaReader.feed(data)` takes the serial byte stream in chunks of any size, finds sentences in it
  (CR, LF or CRLF endings; binary such as u-blox UBX frames and non-UTF-8 bytes in between), groups
  the sentences of one epoch (same UTC time of day) into one `GpsFix`, and never raises: every
  skipped line is counted by kind in `NmeaReader.counts`.

Decisions (facts from NMEA 0183 where cited; the rest is ours):

* Checksum. A sentence without `*hh` is rejected as "truncated". NMEA 0183 makes the checksum
  mandatory for the sentences we read, real receivers always send it, and a line cut short by a
  serial overrun or a reconnect looks exactly like a sentence without one; accepting it would
  accept a half sentence whose cut fell on a field boundary.
* Talkers: any two-letter talker (GP, GN, GL, GA, BD, GB, QZ, ...) is accepted and kept in `talker`.
  Proprietary sentences (`$P` + maker) are "proprietary"; other types (GSV, GLL, ZDA, TXT...) and
  `!` encapsulation sentences (AIS) are "unsupported".
* Empty fields are `None`. Latitude/longitude are signed degrees (south and west negative);
  minutes of 60 or more, or a value without its hemisphere, are "field" errors.
* Two-digit years: NMEA RMC carries `yy`; GPS time starts in 1980, so 80-99 is 19yy, else 20yy.
  Receivers with a GPS week-rollover bug report dates 1024 weeks early; we do not guess a
  correction, we report what the receiver says.
* Validity. A fix is valid when every validity indicator in its epoch says so: RMC status `A` with
  a mode indicator (NMEA 2.3+) that is not N (no fix), S (simulator) or M (manual input), and GGA
  quality 1-6 (not 0 invalid, 7 manual, 8 simulation). A status `V` RMC means no valid fix. The
  RMC navigational status field of NMEA 4.1 (u-blox always sends `V`, "not supported") is ignored.
  Position, altitude, speed and course are `None` in a fix that is not valid.
* Epochs. RMC and GGA carry the UTC time; a sentence with a different time closes the open epoch
  and emits its fix, so a fix comes out when the next epoch starts (one epoch of latency), or on
  `flush()` at the end of a stream. VTG and GSA carry no time and join the epoch open when they
  arrive. RMC is preferred for position, speed and course; GGA gives altitude, quality,
  satellites and HDOP; VTG fills speed and course only where the epoch's RMC has none.
* Fix time. `ts` is the GPS time: the date from the epoch's RMC plus its UTC time. An epoch without
  an RMC date (GGA-only, or an RMC with an empty date) takes the date of the last RMC with status
  `A`, moved to the next day when the time of day has gone back by more than 12 h (midnight), and
  says so in `date_carried`. An epoch before any such date is dropped and counted as "undated":
  the wall clock of the gateway is never used.
* Bounded memory: a sentence longer than `MAX_SENTENCE_CHARS` is discarded ("overlong"); NMEA
  0183 allows 82 characters including `$` and CRLF, real receivers exceed it a little.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.errors import NmeaError

KMH_PER_KNOT = 1.852  # exact: 1 international knot = 1852 m/h
MAX_SENTENCE_CHARS = 128  # from `$` to the character before CR/LF; NMEA's own limit is 80 + CRLF
MAX_GSA_PER_EPOCH = 8  # one GSA per constellation; more is a broken receiver, not more data

_FIX_QUALITIES = frozenset({1, 2, 3, 4, 5, 6})  # GPS, DGPS, PPS, RTK fixed, RTK float, dead reckoning
_NO_FIX_MODES = frozenset({"N", "S", "M"})  # mode indicator: not valid, simulator, manual input
_SECONDS_PER_DAY = 86_400
_HALF_DAY_MS = 43_200_000

_ADDRESS = re.compile(r"[A-Z][A-Z0-9]{4}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_UNSIGNED_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_INTEGER = re.compile(r"[0-9]+")
_TIME = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})(?:\.([0-9]*))?")
_DATE = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


@dataclass(frozen=True, slots=True)
class Rmc:
    """Recommended minimum data: time, date, status, position, speed and course over ground."""

    talker: str
    utc_time_ms: int | None  # milliseconds since UTC midnight
    status: str  # "A" data valid, "V" void (no valid fix)
    lat_deg: float | None
    lon_deg: float | None
    speed_kmh: float | None  # sent in knots
    course_deg: float | None  # true course over ground
    date: dt.date | None
    mag_var_deg: float | None  # magnetic variation, east positive
    mode: str | None  # NMEA 2.3+ mode indicator: A, D, E, F, M, N, P, R, S


@dataclass(frozen=True, slots=True)
class Gga:
    """Fix data: time, position, quality, satellites in use, HDOP, altitude."""

    talker: str
    utc_time_ms: int | None
    lat_deg: float | None
    lon_deg: float | None
    quality: int | None  # 0 invalid, 1 GPS, 2 DGPS, 3 PPS, 4 RTK, 5 float RTK, 6 estimated, 7, 8
    satellites: int | None  # in use
    hdop: float | None
    alt_m: float | None  # antenna altitude above mean sea level (geoid)
    geoid_sep_m: float | None  # geoid above the WGS-84 ellipsoid


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


Sentence = Rmc | Gga | Vtg | Gsa


@dataclass(frozen=True, slots=True)
class GpsFix:
    """One epoch of the receiver, from the sentences that share its UTC time."""

    ts: float  # Unix epoch seconds UTC: RMC date + UTC time of the epoch (GPS time, not the wall clock)
    valid: bool
    lat_deg: float | None  # None unless valid
    lon_deg: float | None
    alt_m: float | None  # above mean sea level
    speed_kmh: float | None
    course_deg: float | None  # true
    fix_quality: int | None  # GGA quality
    fix_mode: int | None  # GSA: 1 no fix, 2 2D, 3 3D
    satellites: int | None  # in use
    hdop: float | None
    pdop: float | None
    vdop: float | None
    geoid_sep_m: float | None
    date_carried: bool  # the date came from an earlier RMC, not from this epoch


# --- one sentence -------------------------------------------------------------------------------


def parse_sentence(line: str) -> Sentence:
    """Parse one sentence (`$...*hh`, trailing CR/LF allowed). Raises `NmeaError` and nothing else."""
    text = line.rstrip("\r\n")
    if not text.startswith(("$", "!")):
        raise NmeaError("a sentence starts with '$'", kind="framing")
    if not text.isascii() or not text.isprintable():
        raise NmeaError("non-printable character in sentence", kind="framing")
    star = text.rfind("*")
    if star < 0:
        raise NmeaError("no checksum", kind="truncated")
    given = text[star + 1 :]
    if not _HEX2.fullmatch(given):
        raise NmeaError(f"checksum field {given!r} is not two hex digits", kind="truncated")
    body = text[1:star]
    computed = 0
    for char in body:
        computed ^= ord(char)
    if computed != int(given, 16):
        raise NmeaError(f"checksum {given} != computed {computed:02X}", kind="checksum")
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
    return parser(talker, fields[1:])


def _parse_rmc(talker: str, f: list[str]) -> Rmc:
    _require(f, 9, "RMC")
    status = f[1]
    if status not in ("A", "V"):
        raise NmeaError(f"RMC status {status!r}", kind="field")
    speed_kn = _unsigned(f[6], "speed")
    mode = _optional(f, 11)
    return Rmc(
        talker=talker,
        utc_time_ms=_time_ms(f[0]),
        status=status,
        lat_deg=_latitude(f[2], f[3]),
        lon_deg=_longitude(f[4], f[5]),
        speed_kmh=None if speed_kn is None else speed_kn * KMH_PER_KNOT,
        course_deg=_course(f[7]),
        date=_date(f[8]),
        mag_var_deg=_mag_var(_optional(f, 9), _optional(f, 10)),
        mode=_mode(mode),
    )


def _parse_gga(talker: str, f: list[str]) -> Gga:
    _require(f, 9, "GGA")
    quality = _integer(f[5], "quality")
    if quality is not None and quality > 8:
        raise NmeaError(f"GGA quality {quality}", kind="field")
    alt_unit = _optional(f, 9)
    if alt_unit not in (None, "M"):
        raise NmeaError(f"altitude unit {alt_unit!r}", kind="field")
    sep = _optional(f, 10)
    return Gga(
        talker=talker,
        utc_time_ms=_time_ms(f[0]),
        lat_deg=_latitude(f[1], f[2]),
        lon_deg=_longitude(f[3], f[4]),
        quality=quality,
        satellites=_integer(f[6], "satellites"),
        hdop=_unsigned(f[7], "HDOP"),
        alt_m=_signed(f[8], "altitude"),
        geoid_sep_m=None if sep is None else _signed(sep, "geoid separation"),
    )


def _parse_vtg(talker: str, f: list[str]) -> Vtg:
    _require(f, 8, "VTG")
    for unit, expected in zip((f[1], f[3], f[5], f[7]), "TMNK", strict=True):
        if unit not in ("", expected):  # some receivers leave the letter empty with the value
            raise NmeaError(f"VTG unit letter {unit!r} where {expected!r} belongs", kind="field")
    speed_kmh = _unsigned(f[6], "speed")
    if speed_kmh is None:
        speed_kn = _unsigned(f[4], "speed")
        speed_kmh = None if speed_kn is None else speed_kn * KMH_PER_KNOT
    return Vtg(
        talker=talker,
        course_deg=_course(f[0]),
        course_mag_deg=_course(f[2]),
        speed_kmh=speed_kmh,
        mode=_mode(_optional(f, 8)),
    )


def _parse_gsa(talker: str, f: list[str]) -> Gsa:
    _require(f, 17, "GSA")
    selection = f[0] or None
    if selection not in (None, "A", "M"):
        raise NmeaError(f"GSA selection mode {selection!r}", kind="field")
    fix_mode = _integer(f[1], "fix mode")
    if fix_mode is not None and fix_mode not in (1, 2, 3):
        raise NmeaError(f"GSA fix mode {fix_mode}", kind="field")
    ids = tuple(i for i in (_integer(s, "satellite id") for s in f[2:14]) if i is not None)
    return Gsa(
        talker=talker,
        selection=selection,
        fix_mode=fix_mode,
        satellite_ids=ids,
        pdop=_unsigned(f[14], "PDOP"),
        hdop=_unsigned(f[15], "HDOP"),
        vdop=_unsigned(f[16], "VDOP"),
        system_id=_integer(f[17], "system id") if len(f) > 17 else None,
    )


_PARSERS: dict[str, Callable[[str, list[str]], Sentence]] = {
    "RMC": _parse_rmc,
    "GGA": _parse_gga,
    "VTG": _parse_vtg,
    "GSA": _parse_gsa,
}


def _require(f: list[str], n: int, kind: str) -> None:
    if len(f) < n:
        raise NmeaError(f"{kind} has {len(f)} fields, needs at least {n}", kind="field")


def _optional(f: list[str], i: int) -> str | None:
    return f[i] or None if i < len(f) else None


def _signed(s: str, what: str) -> float | None:
    if not s:
        return None
    if not _DECIMAL.fullmatch(s):
        raise NmeaError(f"{what} {s!r} is not a number", kind="field")
    return float(s)


def _unsigned(s: str, what: str) -> float | None:
    if not s:
        return None
    if not _UNSIGNED_DECIMAL.fullmatch(s):
        raise NmeaError(f"{what} {s!r} is not a non-negative number", kind="field")
    return float(s)


def _integer(s: str, what: str) -> int | None:
    if not s:
        return None
    if not _INTEGER.fullmatch(s):
        raise NmeaError(f"{what} {s!r} is not an integer", kind="field")
    return int(s)


def _course(s: str) -> float | None:
    value = _unsigned(s, "course")
    if value is not None and value > 360.0:
        raise NmeaError(f"course {s!r} > 360", kind="field")
    return value


def _mode(s: str | None) -> str | None:
    if s is not None and (len(s) != 1 or not s.isalpha()):
        raise NmeaError(f"mode indicator {s!r}", kind="field")
    return s


def _time_ms(s: str) -> int | None:
    if not s:
        return None
    m = _TIME.fullmatch(s)
    if m is None:
        raise NmeaError(f"time {s!r} is not hhmmss.ss", kind="field")
    hh, mm, ss = int(m[1]), int(m[2]), int(m[3])
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        raise NmeaError(f"time {s!r} out of range", kind="field")
    frac = m[4] or ""
    ms = round(int(frac) * 10 ** (3 - len(frac))) if frac else 0
    return ((hh * 60 + mm) * 60 + ss) * 1000 + ms


def _date(s: str) -> dt.date | None:
    if not s:
        return None
    m = _DATE.fullmatch(s)
    if m is None:
        raise NmeaError(f"date {s!r} is not ddmmyy", kind="field")
    yy = int(m[3])
    try:
        return dt.date(1900 + yy if yy >= 80 else 2000 + yy, int(m[2]), int(m[1]))
    except ValueError as err:
        raise NmeaError(f"date {s!r} does not exist", kind="field") from err


def _angle(value: str, hemisphere: str, positive: str, negative: str, degree_digits: int) -> float | None:
    """`dddmm.mmmm` + hemisphere letter → signed degrees. Splits the string, not the float."""
    if not value and not hemisphere:
        return None
    if hemisphere not in (positive, negative):
        raise NmeaError(f"hemisphere {hemisphere!r} for {value!r}", kind="field")
    if not _UNSIGNED_DECIMAL.fullmatch(value):
        raise NmeaError(f"coordinate {value!r}", kind="field")
    point = value.find(".")
    whole = value if point < 0 else value[:point]
    if len(whole) < 2 or len(whole) > degree_digits + 2:
        raise NmeaError(f"coordinate {value!r} is not d..dmm.m", kind="field")
    degrees = int(whole[:-2] or "0")
    minutes = float(value[len(whole) - 2 :])
    if minutes >= 60.0:
        raise NmeaError(f"coordinate {value!r}: minutes >= 60", kind="field")
    angle = degrees + minutes / 60.0
    limit = 90.0 if degree_digits == 2 else 180.0
    if angle > limit:
        raise NmeaError(f"coordinate {value!r} beyond {limit}", kind="field")
    return -angle if hemisphere == negative else angle


def _latitude(value: str, hemisphere: str) -> float | None:
    return _angle(value, hemisphere, "N", "S", 2)


def _longitude(value: str, hemisphere: str) -> float | None:
    return _angle(value, hemisphere, "E", "W", 3)


def _mag_var(value: str | None, direction: str | None) -> float | None:
    if value is None:
        return None
    magnitude = _unsigned(value, "magnetic variation")
    if direction not in ("E", "W"):
        raise NmeaError(f"magnetic variation direction {direction!r}", kind="field")
    assert magnitude is not None
    return -magnitude if direction == "W" else magnitude


# --- the byte stream ----------------------------------------------------------------------------

_START = re.compile(rb"[$!]")
_BODY = re.compile(rb"[\x20\x22\x23\x25-\x7e]*")  # printable ASCII except the start characters $ and !
_LINE_END = frozenset(b"\r\n")


@dataclass(slots=True)
class _Epoch:
    utc_time_ms: int
    rmc: Rmc | None = None
    gga: Gga | None = None
    vtg: Vtg | None = None
    gsas: list[Gsa] = field(default_factory=list)


class NmeaReader:
    """Turns the receiver's byte stream into `GpsFix`es. Never raises on input; counts instead.

    `counts` holds accepted sentences by type ("RMC", "GGA", "VTG", "GSA") and skips by kind:
    the `NmeaError` kinds ("framing", "truncated", "checksum", "proprietary", "unsupported",
    "field"), plus "garbage" (a stretch of bytes between sentences that is not one, counted once
    per stretch), "overlong" (a line longer than `max_sentence_chars`), "untimed" (RMC/GGA with an
    empty time), "orphan" (VTG/GSA before any epoch), "duplicate" (a second RMC/GGA/VTG in one
    epoch, or GSAs beyond `MAX_GSA_PER_EPOCH`) and "undated" (an epoch dropped because no date
    was known yet).
    """

    def __init__(self, max_sentence_chars: int = MAX_SENTENCE_CHARS) -> None:
        self.counts: dict[str, int] = {}
        self._max_chars = max_sentence_chars
        self._line: bytearray | None = None  # the sentence being assembled, from its `$`
        self._garbage_counted = False  # the current stretch of garbage was counted already
        self._epoch: _Epoch | None = None
        self._last_date: dt.date | None = None
        self._last_date_time_ms = 0

    def feed(self, data: bytes) -> list[GpsFix]:
        """Consume a chunk of any size; return the fixes of the epochs it completed."""
        fixes: list[GpsFix] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._line is None:
                start = _START.search(data, pos)
                stop = end if start is None else start.start()
                if any(b not in _LINE_END for b in data[pos:stop]):
                    self._garbage()
                if start is None:
                    break
                self._line = bytearray(data[stop : stop + 1])
                pos = stop + 1
                continue
            body = _BODY.match(data, pos)
            assert body is not None  # the pattern matches the empty string
            self._line += body.group()
            pos = body.end()
            if len(self._line) > self._max_chars:
                self._count("overlong")
                self._line = None
                self._garbage_counted = True  # the rest of that line is part of the same fault
                continue
            if pos >= end:
                break  # wait for the rest of the line
            byte = data[pos]
            if byte in _LINE_END:
                line = self._line.decode("ascii")
                self._line = None
                self._garbage_counted = False
                pos += 1
                fixes.extend(self._sentence(line))
            elif byte in b"$!":  # a new sentence started before this one ended
                self._count("truncated" if b"," in self._line else "garbage")
                self._line = bytearray(data[pos : pos + 1])
                pos += 1
            else:
                self._line = None  # binary in the middle of a sentence: not a sentence
                self._garbage()
                pos += 1
        return fixes

    def flush(self) -> list[GpsFix]:
        """End of stream: emit the open epoch. A partial line is dropped and counted "truncated"."""
        if self._line is not None:
            self._count("truncated")
            self._line = None
        fix = self._close_epoch()
        return [] if fix is None else [fix]

    # -- internals --

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _garbage(self) -> None:
        if not self._garbage_counted:
            self._count("garbage")
            self._garbage_counted = True

    def _sentence(self, line: str) -> list[GpsFix]:
        if "," not in line:  # not even the shape of a sentence: a `$` byte inside binary data
            self._garbage()
            return []
        try:
            sentence = parse_sentence(line)
        except NmeaError as err:
            self._count(err.kind)
            return []
        self._count(type(sentence).__name__.upper())
        return self._assemble(sentence)

    def _assemble(self, sentence: Sentence) -> list[GpsFix]:
        fixes: list[GpsFix] = []
        if isinstance(sentence, Rmc | Gga):
            if sentence.utc_time_ms is None:
                self._count("untimed")
                return fixes
            if self._epoch is not None and self._epoch.utc_time_ms != sentence.utc_time_ms:
                fix = self._close_epoch()
                if fix is not None:
                    fixes.append(fix)
            if self._epoch is None:
                self._epoch = _Epoch(sentence.utc_time_ms)
        epoch = self._epoch
        if epoch is None:
            self._count("orphan")
        elif isinstance(sentence, Rmc) and epoch.rmc is None:
            epoch.rmc = sentence
        elif isinstance(sentence, Gga) and epoch.gga is None:
            epoch.gga = sentence
        elif isinstance(sentence, Vtg) and epoch.vtg is None:
            epoch.vtg = sentence
        elif isinstance(sentence, Gsa) and len(epoch.gsas) < MAX_GSA_PER_EPOCH:
            epoch.gsas.append(sentence)
        else:
            self._count("duplicate")
        return fixes

    def _close_epoch(self) -> GpsFix | None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return None
        rmc, gga, vtg = epoch.rmc, epoch.gga, epoch.vtg
        date = rmc.date if rmc is not None else None
        carried = date is None
        if date is None:
            if self._last_date is None:
                self._count("undated")
                return None
            date = self._last_date
            if epoch.utc_time_ms < self._last_date_time_ms - _HALF_DAY_MS:
                date += dt.timedelta(days=1)  # crossed midnight since that RMC
        if (rmc is not None and rmc.status == "A") or (carried and self._last_date is not None):
            self._last_date, self._last_date_time_ms = date, epoch.utc_time_ms

        indicators: list[bool] = []
        if rmc is not None:
            indicators.append(rmc.status == "A" and rmc.mode not in _NO_FIX_MODES)
        if gga is not None and gga.quality is not None:
            indicators.append(gga.quality in _FIX_QUALITIES)
        lat, lon = None, None
        for source in (rmc, gga):
            if source is not None and source.lat_deg is not None and source.lon_deg is not None:
                lat, lon = source.lat_deg, source.lon_deg
                break
        valid = bool(indicators) and all(indicators) and lat is not None

        speed = next((x.speed_kmh for x in (rmc, vtg) if x is not None and x.speed_kmh is not None), None)
        course = next((x.course_deg for x in (rmc, vtg) if x is not None and x.course_deg is not None), None)
        gsa = next((g for g in epoch.gsas if g.fix_mode is not None), None)
        days = (date - dt.date(1970, 1, 1)).days
        return GpsFix(
            ts=days * _SECONDS_PER_DAY + epoch.utc_time_ms / 1000.0,
            valid=valid,
            lat_deg=lat if valid else None,
            lon_deg=lon if valid else None,
            alt_m=gga.alt_m if valid and gga is not None else None,
            speed_kmh=speed if valid else None,
            course_deg=course if valid else None,
            fix_quality=gga.quality if gga is not None else None,
            fix_mode=gsa.fix_mode if gsa is not None else None,
            satellites=gga.satellites if gga is not None else None,
            hdop=gga.hdop if gga is not None and gga.hdop is not None else (gsa.hdop if gsa else None),
            pdop=gsa.pdop if gsa is not None else None,
            vdop=gsa.vdop if gsa is not None else None,
            geoid_sep_m=gga.geoid_sep_m if gga is not None else None,
            date_carried=carried,
        )
