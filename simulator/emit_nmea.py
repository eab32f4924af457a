"""NMEA 0183 sentences from the bus state: what the GPS receiver says once a second.

`nmea_sentences(state)` is pure: RMC, GGA, VTG and GSA for one epoch, each `$...*hh` with CRLF.
`NmeaEmitter.sentences(state)` schedules them at 1 Hz on simulation time.

Decisions:

* Talker `GN` (a multi-constellation receiver, as the u-blox and MediaTek modules on gateways are) or
  `GP`. With `GN`, the GSA carries the NMEA 4.11 system id (1 = GPS) as the last field.
* Positions with 5 decimals of minutes (u-blox's format): about 2 cm, well inside 1e-5 degree.
* No fix (`gps_valid` False, the `gps_loss` fault): the receiver keeps talking, as real ones do, with
  its clock still running: RMC status `V` and mode `N` with empty position, speed and course; GGA
  quality 0 with empty position and altitude; VTG mode `N`; GSA fix mode 1 with no satellites and
  DOPs 99.99.
* Times are the state's `ts` (GPS time, UTC) to the hundredth of a second; the date is in the RMC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from simulator.state import BusState

KNOTS_PER_KMH = 1.0 / 1.852
NO_FIX_DOP = 99.99
SATELLITE_IDS = (2, 5, 7, 9, 13, 15, 18, 20, 23, 26, 29, 30)  # PRNs in a plausible sky, up to 12 used


def nmea_checksum(body: str) -> str:
    """XOR of every character between `$` and `*`, as two upper-case hex digits."""
    value = 0
    for char in body:
        value ^= ord(char)
    return f"{value:02X}"


def nmea_sentence(body: str) -> str:
    return f"${body}*{nmea_checksum(body)}\r\n"


def _utc_fields(ts: float) -> tuple[str, str]:
    """(hhmmss.ss, ddmmyy) of a Unix time, rounded to the hundredth without carrying into 60 s."""
    centis = round(ts * 100.0)
    moment = datetime.fromtimestamp(centis // 100, UTC)
    return f"{moment:%H%M%S}.{centis % 100:02d}", f"{moment:%d%m%y}"


def _angle(value_deg: float, degree_digits: int, positive: str, negative: str) -> tuple[str, str]:
    """(d..dmm.mmmmm, hemisphere) with the minutes rounded in integer units of 1e-5 minute."""
    units = round(abs(value_deg) * 60.0 * 100_000)
    degrees, rem = divmod(units, 60 * 100_000)
    minutes, frac = divmod(rem, 100_000)
    return f"{degrees:0{degree_digits}d}{minutes:02d}.{frac:05d}", positive if value_deg >= 0 else negative


def _dops(hdop: float) -> tuple[float, float, float]:
    """(PDOP, HDOP, VDOP): vertical geometry is weaker than horizontal, VDOP ≈ 1.5 HDOP."""
    vdop = 1.5 * hdop
    return math.hypot(hdop, vdop), hdop, vdop


def _fix_sentences(state: BusState, talker: str, hhmmss: str, ddmmyy: str) -> list[str]:
    lat, ns = _angle(state.lat_deg, 2, "N", "S")
    lon, ew = _angle(state.lon_deg, 3, "E", "W")
    knots = f"{state.speed_kmh * KNOTS_PER_KMH:.3f}"
    kmh = f"{state.speed_kmh:.3f}"
    course = f"{state.heading_deg % 360.0:.2f}"
    n_sats = max(0, min(state.gps_satellites, len(SATELLITE_IDS)))
    pdop, hdop, vdop = _dops(state.gps_hdop)
    prns = [f"{p:02d}" for p in SATELLITE_IDS[:n_sats]] + [""] * (len(SATELLITE_IDS) - n_sats)
    gsa = [talker + "GSA", "A", "3", *prns, f"{pdop:.2f}", f"{hdop:.2f}", f"{vdop:.2f}"]
    if talker == "GN":
        gsa.append("1")
    return [
        nmea_sentence(f"{talker}RMC,{hhmmss},A,{lat},{ns},{lon},{ew},{knots},{course},{ddmmyy},,,A"),
        nmea_sentence(
            f"{talker}GGA,{hhmmss},{lat},{ns},{lon},{ew},1,{n_sats:02d},{hdop:.2f},{state.alt_m:.1f},M,,M,,"
        ),
        nmea_sentence(f"{talker}VTG,{course},T,,M,{knots},N,{kmh},K,A"),
        nmea_sentence(",".join(gsa)),
    ]


def _no_fix_sentences(talker: str, hhmmss: str, ddmmyy: str) -> list[str]:
    gsa = [talker + "GSA", "A", "1", *([""] * len(SATELLITE_IDS)), *([f"{NO_FIX_DOP:.2f}"] * 3)]
    if talker == "GN":
        gsa.append("1")
    return [
        nmea_sentence(f"{talker}RMC,{hhmmss},V,,,,,,,{ddmmyy},,,N"),
        nmea_sentence(f"{talker}GGA,{hhmmss},,,,,0,00,{NO_FIX_DOP:.2f},,,,,,"),
        nmea_sentence(f"{talker}VTG,,,,,,,,,N"),
        nmea_sentence(",".join(gsa)),
    ]


def nmea_sentences(state: BusState, talker: str = "GN") -> list[str]:
    """The receiver's sentences for the epoch at `state.ts`: RMC, GGA, VTG, GSA (each ending CRLF)."""
    if len(talker) != 2 or not talker.isalpha() or not talker.isupper():
        raise ValueError(f"an NMEA talker is two upper-case letters, not {talker!r}")
    hhmmss, ddmmyy = _utc_fields(state.ts)
    if state.gps_valid and math.isfinite(state.lat_deg) and math.isfinite(state.lon_deg):
        return _fix_sentences(state, talker, hhmmss, ddmmyy)
    return _no_fix_sentences(talker, hhmmss, ddmmyy)


class NmeaEmitter:
    """The sentences due at each state: one epoch per `period_s` of simulation time (1 Hz)."""

    def __init__(self, talker: str = "GN", period_s: float = 1.0) -> None:
        self.talker = talker
        self._period_ms = round(period_s * 1000.0)
        self._next_due_ms: int | None = None
        self.epochs = 0

    def sentences(self, state: BusState) -> list[str]:
        t_ms = round(state.t_s * 1000.0)
        if self._next_due_ms is None:
            self._next_due_ms = -(-t_ms // self._period_ms) * self._period_ms  # the next whole period
        if t_ms < self._next_due_ms:
            return []
        while self._next_due_ms <= t_ms:
            self._next_due_ms += self._period_ms
        self.epochs += 1
        return nmea_sentences(state, self.talker)
