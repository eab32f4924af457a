"""NMEA 0183 from the bus GPS receiver: the fixes its sentences make.

Three modules, one concept each: `nmea_stream` cuts the serial byte stream into lines,
`nmea_sentences` parses one line into a sentence (RMC, GGA, GNS, GLL, VTG, GSA, ZDA), and this module
groups the sentences of one epoch into a `GpsFix`. `NmeaReader.feed(data)` takes the byte stream in
chunks of any size and never raises: every skipped line is counted by kind in `NmeaReader.counts`,
and the first of each kind is kept with its reason in `NmeaReader.first_skips` (to be reported once).

Decisions (facts from NMEA 0183 where cited; the rest is ours):

* Validity. A fix is valid when every validity indicator in its epoch says so: RMC and GLL status
  `A` with a mode indicator (NMEA 2.3+) that is not N (no fix), S (simulator) or M (manual input),
  and GGA quality 1-6 (not 0 invalid, 7 manual, 8 simulation). The RMC navigational status field of
  NMEA 4.1 (u-blox always sends `V`, "not supported") is ignored. Position, altitude, speed and
  course are `None` in a fix that is not valid.
* Epochs. RMC, GGA, GNS and GLL carry the UTC time; a sentence with a different time (beyond the
  resolution of the coarser of the two time fields: 120824.758 and 120824.76 are one epoch) closes the open
  epoch and emits its fix, so a fix comes out when the next epoch starts (one epoch of latency), or
  on `flush()` at the end of a stream. VTG, GSA and a GLL without time (NMEA 1.5) join the epoch
  open when they arrive. Position comes from RMC, else GGA, else GNS, else GLL; GGA (else GNS) gives
  altitude, satellites and HDOP, GGA the quality; VTG fills speed and course only where the epoch's
  RMC has none. A GNS says "valid" when any of its per-constellation modes is a fix mode.
* Fix time. `ts` is the GPS time: the date of the epoch plus its UTC time. The date is the epoch's
  RMC date, else that of a ZDA with the epoch's time (before or after the epoch's other sentences).
  Otherwise it is carried from the last date known (an RMC with status `A`, or any ZDA), moved by a
  day when the time of day differs from that date's by more than 12 h (midnight passed), and the
  fix says so in `date_carried`. An epoch before any date is dropped and counted as "undated": the
  wall clock of the gateway is never used. Receivers with a GPS week-rollover bug report dates 1024
  weeks early; we do not guess a correction here, we report what the receiver says.
* Bounded memory: a sentence longer than `MAX_SENTENCE_CHARS` is discarded ("overlong"); NMEA
  0183 allows 82 characters including `$` and CRLF, real receivers exceed it a little.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from protocols.errors import NmeaError
from protocols.nmea_sentences import KMH_PER_KNOT, Gga, Gll, Gns, Gsa, Rmc, Sentence, Vtg, Zda, parse_sentence
from protocols.nmea_stream import SentenceSplitter

__all__ = [
    "KMH_PER_KNOT",
    "MAX_GSA_PER_EPOCH",
    "MAX_SENTENCE_CHARS",
    "Gga",
    "Gll",
    "Gns",
    "GpsFix",
    "Gsa",
    "NmeaReader",
    "Rmc",
    "Sentence",
    "Vtg",
    "Zda",
    "parse_sentence",
]

MAX_SENTENCE_CHARS = 128  # from `$` to the character before CR/LF; NMEA's own limit is 80 + CRLF
MAX_GSA_PER_EPOCH = 8  # one GSA per constellation; more is a broken receiver, not more data

_FIX_QUALITIES = frozenset({1, 2, 3, 4, 5, 6})  # GPS, DGPS, PPS, RTK fixed, RTK float, dead reckoning
_NO_FIX_MODES = frozenset({"N", "S", "M"})  # mode indicator: not valid, simulator, manual input
_SECONDS_PER_DAY = 86_400
_HALF_DAY_MS = 43_200_000
_ONE_DAY = dt.timedelta(days=1)
_EPOCH_DAY = dt.date(1970, 1, 1)
_DETAIL_CHARS = 82  # of a skipped sentence, shown in its report


@dataclass(frozen=True, slots=True)
class GpsFix:
    """One epoch of the receiver, from the sentences that share its UTC time."""

    ts: float  # Unix epoch seconds UTC: date + UTC time of the epoch (GPS time, not the wall clock)
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
    date_carried: bool  # the date came from an earlier RMC/ZDA, not from one of this epoch


@dataclass(slots=True)
class _Epoch:
    utc_time_ms: int  # of the sentence that opened it
    utc_time_step_ms: int  # the coarsest resolution of the times of its sentences
    rmc: Rmc | None = None
    gga: Gga | None = None
    gns: Gns | None = None
    gll: Gll | None = None
    zda_date: dt.date | None = None  # from a ZDA with this epoch's time

    def same_time(self, utc_time_ms: int, step_ms: int) -> bool:
        """Whether a time is this epoch's, as far as the coarser of the two resolutions can tell: a
        receiver may send `hhmmss.sss` in one sentence and `hhmmss.ss` or `hhmmss` in another."""
        return abs(utc_time_ms - self.utc_time_ms) < max(step_ms, self.utc_time_step_ms)

    vtg: Vtg | None = None
    gsas: list[Gsa] = field(default_factory=list)


class NmeaReader:
    """Turns the receiver's byte stream into `GpsFix`es. Never raises on input; counts instead.

    `counts` holds accepted sentences by type ("RMC", "GGA", "GNS", "GLL", "VTG", "GSA", "ZDA"), of those
    "unchecked" (accepted without a checksum, only with `checksum_required=False`), and skips by
    kind: the `NmeaError` kinds ("framing", "truncated", "checksum", "proprietary", "unsupported",
    "field"), the stream's ("garbage", "overlong", see `nmea_stream`), plus "untimed" (RMC/GGA/GNS/GLL
    with an empty time, ZDA with an empty time or date), "orphan" (VTG/GSA/untimed GLL before any
    epoch), "duplicate" (a second RMC/GGA/GNS/GLL/VTG in one epoch, or GSAs beyond `MAX_GSA_PER_EPOCH`)
    and "undated" (an epoch dropped because no date was known yet). `first_skips` maps each skip
    kind to the reason and text of its first occurrence.
    """

    def __init__(
        self, max_sentence_chars: int = MAX_SENTENCE_CHARS, *, checksum_required: bool = True
    ) -> None:
        self.counts: dict[str, int] = {}
        self.first_skips: dict[str, str] = {}
        self._checksum_required = checksum_required
        self._splitter = SentenceSplitter(max_sentence_chars, self._skip)
        self._epoch: _Epoch | None = None
        self._date: dt.date | None = None  # the last date known...
        self._date_time_ms = 0  # ...the UTC time of day it was known at...
        self._date_step_ms = 1  # ...and that time's resolution

    def feed(self, data: bytes) -> list[GpsFix]:
        """Consume a chunk of any size; return the fixes of the epochs it completed."""
        fixes: list[GpsFix] = []
        for line in self._splitter.feed(data):
            fix = self._sentence(line)
            if fix is not None:
                fixes.append(fix)
        return fixes

    def flush(self) -> list[GpsFix]:
        """End of stream: emit the open epoch. A partial line is dropped and counted "truncated"."""
        self._splitter.flush()
        fix = self._close_epoch()
        return [] if fix is None else [fix]

    # -- internals --

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _skip(self, kind: str, detail: str) -> None:
        self._count(kind)
        if kind not in self.first_skips:
            self.first_skips[kind] = detail

    def _sentence(self, line: str) -> GpsFix | None:
        try:
            sentence = parse_sentence(line, checksum_required=self._checksum_required)
        except NmeaError as err:
            self._skip(err.kind, f"{err}: {line[:_DETAIL_CHARS]}")
            return None
        self._count(type(sentence).__name__.upper())
        if not self._checksum_required and "*" not in line:
            self._count("unchecked")
        return self._assemble(sentence, line)

    def _assemble(self, sentence: Sentence, line: str) -> GpsFix | None:
        if isinstance(sentence, Zda):
            if sentence.utc_time_ms is None or sentence.date is None:
                self._skip("untimed", f"ZDA without time or date: {line[:_DETAIL_CHARS]}")
            else:
                self._date, self._date_time_ms = sentence.date, sentence.utc_time_ms
                self._date_step_ms = sentence.utc_time_step_ms
                if self._epoch is not None and self._epoch.same_time(
                    sentence.utc_time_ms, sentence.utc_time_step_ms
                ):
                    self._epoch.zda_date = sentence.date
            return None
        fix = None
        if isinstance(sentence, Rmc | Gga | Gns) or (
            isinstance(sentence, Gll) and sentence.utc_time_ms is not None
        ):
            if sentence.utc_time_ms is None:
                self._skip("untimed", f"no UTC time: {line[:_DETAIL_CHARS]}")
                return None
            step = sentence.utc_time_step_ms
            if self._epoch is not None and not self._epoch.same_time(sentence.utc_time_ms, step):
                fix = self._close_epoch()
            if self._epoch is None:
                self._epoch = _Epoch(sentence.utc_time_ms, step)
                if self._date is not None and self._epoch.same_time(self._date_time_ms, self._date_step_ms):
                    self._epoch.zda_date = self._date  # its ZDA came first
            elif step > self._epoch.utc_time_step_ms:
                self._epoch.utc_time_step_ms = step
        epoch = self._epoch
        if epoch is None:
            self._skip("orphan", f"before any epoch: {line[:_DETAIL_CHARS]}")
        elif isinstance(sentence, Rmc) and epoch.rmc is None:
            epoch.rmc = sentence
        elif isinstance(sentence, Gga) and epoch.gga is None:
            epoch.gga = sentence
        elif isinstance(sentence, Gns) and epoch.gns is None:
            epoch.gns = sentence
        elif isinstance(sentence, Gll) and epoch.gll is None:
            epoch.gll = sentence
        elif isinstance(sentence, Vtg) and epoch.vtg is None:
            epoch.vtg = sentence
        elif isinstance(sentence, Gsa) and len(epoch.gsas) < MAX_GSA_PER_EPOCH:
            epoch.gsas.append(sentence)
        else:
            self._skip("duplicate", f"second of its type in epoch: {line[:_DETAIL_CHARS]}")
        return fix

    def _epoch_date(self, epoch: _Epoch) -> tuple[dt.date, bool] | None:
        """The epoch's date and whether it was carried from an earlier one; None if none is known."""
        rmc = epoch.rmc
        if rmc is not None and rmc.date is not None:
            date: dt.date = rmc.date
            if rmc.status == "A":
                self._date, self._date_time_ms, self._date_step_ms = date, epoch.utc_time_ms, 1
            return date, False
        if epoch.zda_date is not None:
            return epoch.zda_date, False
        if self._date is None:
            return None
        date = self._date
        shift_ms = epoch.utc_time_ms - self._date_time_ms
        if shift_ms < -_HALF_DAY_MS:
            date += _ONE_DAY  # crossed midnight since that date was known
        elif shift_ms > _HALF_DAY_MS:
            date -= _ONE_DAY  # the date was known just after a midnight this epoch preceded
        if date > self._date or (date == self._date and shift_ms > 0):
            self._date, self._date_time_ms, self._date_step_ms = (
                date,
                epoch.utc_time_ms,
                1,
            )  # to see the next midnight
        return date, True

    def _close_epoch(self) -> GpsFix | None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return None
        dated = self._epoch_date(epoch)
        if dated is None:
            self._skip("undated", f"epoch {epoch.utc_time_ms} ms after midnight before any date")
            return None
        date, carried = dated
        rmc, gga, gns, gll, vtg = epoch.rmc, epoch.gga, epoch.gns, epoch.gll, epoch.vtg

        indicators: list[bool] = []
        if rmc is not None:
            indicators.append(rmc.status == "A" and rmc.mode not in _NO_FIX_MODES)
        if gga is not None and gga.quality is not None:
            indicators.append(gga.quality in _FIX_QUALITIES)
        if gns is not None and gns.modes is not None:
            indicators.append(any(mode not in _NO_FIX_MODES for mode in gns.modes))
        if gll is not None and gll.status is not None:
            indicators.append(gll.status == "A" and gll.mode not in _NO_FIX_MODES)
        lat, lon = None, None
        for source in (rmc, gga, gns, gll):
            if source is not None and source.lat_deg is not None and source.lon_deg is not None:
                lat, lon = source.lat_deg, source.lon_deg
                break
        valid = bool(indicators) and all(indicators) and lat is not None

        speed = next((x.speed_kmh for x in (rmc, vtg) if x is not None and x.speed_kmh is not None), None)
        course = next((x.course_deg for x in (rmc, vtg) if x is not None and x.course_deg is not None), None)
        gsa = next((g for g in epoch.gsas if g.fix_mode is not None), None)
        fix_data: Gga | Gns | None = gga if gga is not None else gns  # altitude, satellites, HDOP
        return GpsFix(
            ts=(date - _EPOCH_DAY).days * _SECONDS_PER_DAY + epoch.utc_time_ms / 1000.0,
            valid=valid,
            lat_deg=lat if valid else None,
            lon_deg=lon if valid else None,
            alt_m=fix_data.alt_m if valid and fix_data is not None else None,
            speed_kmh=speed if valid else None,
            course_deg=course if valid else None,
            fix_quality=gga.quality if gga is not None else None,
            fix_mode=gsa.fix_mode if gsa is not None else None,
            satellites=fix_data.satellites if fix_data is not None else None,
            hdop=fix_data.hdop
            if fix_data is not None and fix_data.hdop is not None
            else (gsa.hdop if gsa else None),
            pdop=gsa.pdop if gsa is not None else None,
            vdop=gsa.vdop if gsa is not None else None,
            geoid_sep_m=fix_data.geoid_sep_m if fix_data is not None else None,
            date_carried=carried,
        )
