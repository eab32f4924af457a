"""NMEA 0183 field values: numbers, UTC time, dates, latitude/longitude, magnetic variation.

Each function takes the text of one field (empty means "not given") and returns the value in our
units, `None` for an empty field, or raises `NmeaError(kind="field")` for a malformed one. Used by
`protocols.nmea_sentences`; pure and without state.

Deviations of real receivers accepted here (the standard's form is accepted too):

* Fractional seconds of any length (`hhmmss`, `hhmmss.s` ... `hhmmss.ssssss`), rounded to the
  millisecond.
* Years of two or four digits: RMC's date is `ddmmyy` in NMEA 0183, a few receivers send
  `ddmmyyyy`; ZDA's year is four digits, a few send two. Two-digit years 80-99 are 19yy, others
  20yy (GPS time starts in 1980).
* Latitude/longitude with any number of decimals of minutes and degrees without leading zeros.
"""

from __future__ import annotations

import datetime as dt
import re

from protocols.errors import NmeaError

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_UNSIGNED_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_INTEGER = re.compile(r"[0-9]+")
_TIME = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})(?:\.([0-9]*))?")
_DDMMYY = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2}|[0-9]{4})")
_MAG_VAR_WITH_LETTER = re.compile(r"((?:[0-9]+\.?[0-9]*|\.[0-9]+))([EW])")


def require(f: list[str], n: int, kind: str) -> None:
    if len(f) < n:
        raise NmeaError(f"{kind} has {len(f)} fields, needs at least {n}", kind="field")


def optional(f: list[str], i: int) -> str | None:
    return f[i] or None if i < len(f) else None


def signed(s: str, what: str) -> float | None:
    if not s:
        return None
    if not _DECIMAL.fullmatch(s):
        raise NmeaError(f"{what} {s!r} is not a number", kind="field")
    return float(s)


def unsigned(s: str, what: str) -> float | None:
    if not s:
        return None
    if not _UNSIGNED_DECIMAL.fullmatch(s):
        raise NmeaError(f"{what} {s!r} is not a non-negative number", kind="field")
    return float(s)


def integer(s: str, what: str) -> int | None:
    if not s:
        return None
    if not _INTEGER.fullmatch(s):
        raise NmeaError(f"{what} {s!r} is not an integer", kind="field")
    return int(s)


def course(s: str) -> float | None:
    value = unsigned(s, "course")
    if value is not None and value > 360.0:
        raise NmeaError(f"course {s!r} > 360", kind="field")
    return value


def mode_indicator(s: str | None) -> str | None:
    if s is not None and (len(s) != 1 or not "A" <= s <= "Z"):
        raise NmeaError(f"mode indicator {s!r}", kind="field")
    return s


def utc_time_ms(s: str) -> int | None:
    """`hhmmss[.s...]` → milliseconds since UTC midnight."""
    if not s:
        return None
    m = _TIME.fullmatch(s)
    if m is None:
        raise NmeaError(f"time {s!r} is not hhmmss.ss", kind="field")
    hh, mm, ss = int(m[1]), int(m[2]), int(m[3])
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        raise NmeaError(f"time {s!r} out of range", kind="field")
    frac = m[4]
    ms = round(int(frac) * 10 ** (3 - len(frac))) if frac else 0
    return ((hh * 60 + mm) * 60 + ss) * 1000 + ms


def utc_time_step_ms(s: str) -> int:
    """The resolution of a time field: 1000 ms for `hhmmss`, 100 for `hhmmss.s`, 10 for `hhmmss.ss`..."""
    point = s.find(".")
    return 1000 if point < 0 else 10 ** max(0, 4 - len(s) + point)


def calendar_date(day: int, month: int, year: int, text: str) -> dt.date:
    if year < 100:
        year += 1900 if year >= 80 else 2000
    try:
        return dt.date(year, month, day)
    except ValueError as err:
        raise NmeaError(f"date {text!r} does not exist", kind="field") from err


def ddmmyy(s: str) -> dt.date | None:
    """RMC's date: `ddmmyy` (NMEA 0183) or `ddmmyyyy` (some receivers)."""
    if not s:
        return None
    m = _DDMMYY.fullmatch(s)
    if m is None:
        raise NmeaError(f"date {s!r} is not ddmmyy", kind="field")
    return calendar_date(int(m[1]), int(m[2]), int(m[3]), s)


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


def latitude(value: str, hemisphere: str) -> float | None:
    return _angle(value, hemisphere, "N", "S", 2)


def longitude(value: str, hemisphere: str) -> float | None:
    return _angle(value, hemisphere, "E", "W", 3)


def magnetic_variation(value: str | None, direction: str | None) -> float | None:
    """Degrees, east positive; `None` when not given or not understood.

    Forms seen besides NMEA's `value,E|W`: a signed value with the letter empty, the letter glued to
    the value (`3.1W`), a value without any direction, the letter alone. Magnetic variation is not
    part of a fix, so a form we cannot read gives `None` and never costs the sentence its position.
    """
    if value is None:
        return None
    glued = _MAG_VAR_WITH_LETTER.fullmatch(value)
    if glued is not None:
        value, direction = glued[1], glued[2]
    if not _DECIMAL.fullmatch(value):
        return None
    magnitude = float(value)
    if direction == "W":
        return -magnitude
    if direction == "E" or value[0] in "+-":
        return magnitude
    return None  # a magnitude without a direction says nothing usable
