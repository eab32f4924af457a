"""`NmeaReader` against gpsd's own decodes of real receiver captures.

Data: gpsd regression tests, github.com/ukyg9e5r6k7gubiekd6/gpsd @ 6362727 (mirror of
gitlab.com/gpsd/gpsd), BSD-2-Clause (tests/data/nmea/COPYING, tests/data/nmea/README.md).

Each `.log` is fed through the reader in odd-sized chunks; each `.log.chk` holds the sentences gpsd
read, each followed by the JSON reports it emitted. Every gpsd TPV with a 2D/3D fix is keyed by the
UTC time of day of its epoch: its own `time` when it has one, otherwise the time field of the last
sentence gpsd echoed before it (gpsd reports fixes before it knows a date, e.g. from a GGA that
precedes the first RMC). Our valid fixes are keyed the same way, and the two key sets must be equal
except for the exceptions listed below, each explained from the data and each checked to hold.

Dates: gpsd's regression runs move dates older than gpsd's build by 1024 GPS weeks (7168 days; it
treats them as GPS week-rollover victims), so 2014-05-26 comes out as 2034-01-09. The time of day is
untouched. We compare the time of day exactly and require the date difference to be exactly the
shift listed per capture (0 for the 2019 captures, 1024 weeks for the older ones).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocols.nmea import GpsFix, NmeaReader

DATA = Path(__file__).parent.parent / "data" / "nmea"
CAPTURES = sorted(p.name for p in DATA.glob("*.log"))
ROLLOVER_DAYS = 1024 * 7

# Captures whose gpsd dates are moved by the week-rollover handling (see the module docstring).
DATE_SHIFT_DAYS = {
    "bu353-glonass.log": ROLLOVER_DAYS,
    "com-1289.log": ROLLOVER_DAYS,
    "gp-320fw-2019-04-07-coldboot.log": 0,
    "mt3339.log": ROLLOVER_DAYS,
    "neo-m8n.log": ROLLOVER_DAYS,
    "rx210.log": ROLLOVER_DAYS,
    "tr737A+.log": ROLLOVER_DAYS,
    "ublox-zed-f9p_hpg1.11.log": 0,
}

# Epochs where gpsd reports a fix and we do not (capture, UTC time of day) → why, from the data.
GPSD_ONLY = {
    ("tr737A+.log", "07:17:34.929"): "GGA quality 0 (fix not valid) and RMC status V; gpsd shows mode 3",
    ("gp-320fw-2019-04-07-coldboot.log", "00:03:43.030"): "GGA before the first RMC: no date yet, "
    "we drop the epoch as undated rather than invent a date",
    ("neo-m8n.log", "17:19:25.000"): "only a GLL of this epoch is in the capture (it starts mid-epoch), "
    "before any RMC or ZDA: we drop the epoch as undated",
}
# gpsd fixes from Garmin demo mode (GGA quality 8 = simulation, RMC status V, mode S) are reported by
# gpsd with "status": 8 (a later report of the same epoch, after Garmin's $PGRMZ, may omit it); a
# simulated position is not a fix of the bus, so ours are invalid.
SIMULATION_STATUS = 8

# Epochs where we report a fix and gpsd does not.
OURS_ONLY = {
    ("neo-m8n.log", "17:19:48.000"): "the capture ends after this epoch's RMC/VTG/GGA, before the GLL "
    "after which this receiver's gpsd TPVs come; we emit it on flush()",
    ("ublox-zed-f9p_hpg1.11.log", "01:19:03.000"): "the .chk has no TPV for the first epoch of the "
    "capture (its sentences are followed only by a UBX RAW report); gpsd starts at 01:19:04",
}

# How many epochs are compared per capture (both sides have a fix), so a silent drop fails.
EXPECTED_MATCHED = {
    "GPSmap-76S.log": 0,
    "bu353-glonass.log": 9,
    "com-1289.log": 14,
    "garmin-geko201.log": 0,
    "gp-320fw-2019-04-07-coldboot.log": 1,
    "holux-gm-210.log": 0,
    "mt3339.log": 30,
    "neo-m8n.log": 22,
    "rx210.log": 40,
    "skytraq.log": 0,
    "tr737A+.log": 8,
    "ublox-zed-f9p_hpg1.11.log": 654,
}


@dataclass(frozen=True)
class GpsdTpv:
    tod: str  # HH:MM:SS.mmm
    trigger: str  # sentence type gpsd had just read: RMC, GGA, GSA, GLL...
    date: dt.date | None
    lat: float
    lon: float
    alt_msl: float | None
    speed_ms: float | None
    track: float | None
    status: int | None


def tod_text(ms: int) -> str:
    seconds, milli = divmod(ms, 1000)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{milli:03d}"


def sentence_tod(sentence: str) -> str | None:
    """Time of day of an echoed sentence, from the field NMEA puts it in (None if it has none)."""
    fields = sentence.split("*")[0].split(",")
    kind = fields[0][3:]
    index = {"RMC": 1, "GGA": 1, "ZDA": 1, "GLL": 5, "GNS": 1, "GST": 1}.get(kind)
    if index is None or len(fields) <= index or len(fields[index]) < 6:
        return None
    raw = fields[index]
    frac = raw.partition(".")[2]
    ms = round(int(frac) * 10 ** (3 - len(frac))) if frac else 0
    return f"{raw[0:2]}:{raw[2:4]}:{raw[4:6]}.{ms:03d}"


def gpsd_fixes(capture: str) -> list[GpsdTpv]:
    tpvs: list[GpsdTpv] = []
    trigger, last_tod = "", None
    for line in (DATA / f"{capture}.chk").read_text(encoding="latin-1").splitlines():
        if line.startswith("$"):
            trigger = line[3:6]
            last_tod = sentence_tod(line) or last_tod
            continue
        if not line.startswith("{"):
            continue
        report = json.loads(line)
        if report.get("class") != "TPV" or report.get("mode", 0) < 2 or "lat" not in report:
            continue
        if "time" in report:
            stamp = dt.datetime.fromisoformat(report["time"].replace("Z", "+00:00"))
            tod, date = stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}", stamp.date()
        else:
            assert last_tod is not None, f"{capture}: undated TPV before any timed sentence"
            tod, date = last_tod, None
        tpvs.append(
            GpsdTpv(
                tod=tod,
                trigger=trigger,
                date=date,
                lat=report["lat"],
                lon=report["lon"],
                alt_msl=report.get("altMSL", report.get("alt")),
                speed_ms=report.get("speed"),
                track=report.get("track"),
                status=report.get("status"),
            )
        )
    return tpvs


def our_fixes(capture: str) -> tuple[list[GpsFix], NmeaReader]:
    reader = NmeaReader()
    data = (DATA / capture).read_bytes()
    fixes: list[GpsFix] = []
    for start in range(0, len(data), 61):  # chunks that split sentences everywhere
        fixes.extend(reader.feed(data[start : start + 61]))
    fixes.extend(reader.flush())
    return fixes, reader


def fix_tod(fix: GpsFix) -> str:
    return tod_text(round(fix.ts * 1000) % 86_400_000)


@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_matches_gpsd(capture: str) -> None:
    fixes, reader = our_fixes(capture)
    ours_all = {fix_tod(f): f for f in fixes}
    ours = {tod: f for tod, f in ours_all.items() if f.valid}
    tpvs = gpsd_fixes(capture)
    theirs: dict[str, list[GpsdTpv]] = {}
    for tpv in tpvs:
        theirs.setdefault(tpv.tod, []).append(tpv)

    # Exceptions: each one must apply, and for the reason given.
    for tod, group in theirs.items():
        if tod in ours:
            continue
        if any(t.status == SIMULATION_STATUS for t in group):  # gpsd flagged the epoch simulated
            assert ours_all[tod].fix_quality == 8 and not ours_all[tod].valid
            continue
        assert (capture, tod) in GPSD_ONLY, f"gpsd has a fix at {tod} that we do not"
        assert tod not in ours_all or not ours_all[tod].valid
    for tod in ours:
        if tod not in theirs:
            assert (capture, tod) in OURS_ONLY, f"we have a fix at {tod} that gpsd does not"
    for (name, tod), why in GPSD_ONLY.items():
        if name == capture:
            assert tod in theirs and tod not in ours, why
    for (name, tod), why in OURS_ONLY.items():
        if name == capture:
            assert tod in ours and tod not in theirs, why
    if capture in ("gp-320fw-2019-04-07-coldboot.log", "neo-m8n.log"):
        assert reader.counts["undated"] == 1  # the GGA / GLL epoch of GPSD_ONLY

    matched = sorted(set(ours) & set(theirs))
    assert len(matched) == EXPECTED_MATCHED[capture]
    for tod in matched:
        fix = ours[tod]
        assert fix.lat_deg is not None and fix.lon_deg is not None
        fix_date = dt.datetime.fromtimestamp(fix.ts, dt.UTC).date()
        for tpv in theirs[tod]:
            assert fix.lat_deg == pytest.approx(tpv.lat, abs=1e-6), tod
            assert fix.lon_deg == pytest.approx(tpv.lon, abs=1e-6), tod
            if tpv.date is not None:
                assert (tpv.date - fix_date).days == DATE_SHIFT_DAYS[capture], tod
            # gpsd prints 3 decimals. Its altitude is only this epoch's in a GGA-triggered report
            # (an RMC-first receiver's RMC report still carries the previous GGA's), and its speed
            # is only the receiver's in an RMC-triggered report (elsewhere gpsd may derive it).
            if tpv.trigger == "GGA" and tpv.alt_msl is not None:
                assert fix.alt_m == pytest.approx(tpv.alt_msl, abs=1.5e-3), tod
            if tpv.trigger == "RMC" and tpv.speed_ms is not None:
                assert fix.speed_kmh is not None
                assert fix.speed_kmh / 3.6 == pytest.approx(tpv.speed_ms, abs=1.5e-3), tod
            if tpv.trigger == "RMC" and tpv.track is not None:
                assert fix.course_deg == pytest.approx(tpv.track, abs=1e-4), tod


def test_every_capture_with_fixes_is_compared() -> None:
    # GIVEN the captures on disk WHEN we list those in which gpsd found a fix
    simulated = {(t.tod, c) for c in CAPTURES for t in gpsd_fixes(c) if t.status == SIMULATION_STATUS}
    with_fixes = {c for c in CAPTURES if any((t.tod, c) not in simulated for t in gpsd_fixes(c))}
    assert {c for _, c in simulated} == {"GPSmap-76S.log", "garmin-geko201.log"}
    # THEN each of them is expected to match a positive number of epochs, and the table is complete
    assert set(EXPECTED_MATCHED) == set(CAPTURES)
    assert {c for c, n in EXPECTED_MATCHED.items() if n > 0} == with_fixes
    assert sum(EXPECTED_MATCHED.values()) == 778


def test_no_fix_captures_really_have_no_valid_fix() -> None:
    # Cold start / demo-mode captures: gpsd never reports a real fix, and neither do we.
    for capture in ("holux-gm-210.log", "skytraq.log", "GPSmap-76S.log", "garmin-geko201.log"):
        fixes, _ = our_fixes(capture)
        assert fixes, capture
        assert not any(f.valid for f in fixes), capture


def reproduced(capture: str) -> tuple[int, int]:
    """(gpsd's fix epochs we reproduce, gpsd's fix epochs) in one capture.

    A gpsd fix epoch is a UTC time of day with a 2D/3D TPV, except those gpsd itself flags as simulated
    (status 8: a receiver in demo mode). We reproduce it when we emit a valid fix at that time of day
    whose latitude and longitude are within 1e-6 degrees of every gpsd TPV of the epoch and whose
    date differs from gpsd's (where gpsd gives one) by exactly the capture's rollover shift.
    """
    fixes, _ = our_fixes(capture)
    ours = {fix_tod(f): f for f in fixes if f.valid}
    theirs: dict[str, list[GpsdTpv]] = {}
    for tpv in gpsd_fixes(capture):
        theirs.setdefault(tpv.tod, []).append(tpv)
    real = {tod: group for tod, group in theirs.items() if all(t.status != SIMULATION_STATUS for t in group)}

    def same(fix: GpsFix, tpv: GpsdTpv) -> bool:
        assert fix.lat_deg is not None and fix.lon_deg is not None
        date = dt.datetime.fromtimestamp(fix.ts, dt.UTC).date()
        return (
            abs(fix.lat_deg - tpv.lat) <= 1e-6
            and abs(fix.lon_deg - tpv.lon) <= 1e-6
            and (tpv.date is None or (tpv.date - date).days == DATE_SHIFT_DAYS[capture])
        )

    hits = sum(1 for tod, group in real.items() if tod in ours and all(same(ours[tod], t) for t in group))
    return hits, len(real)


def test_fix_rate_over_gpsd_captures() -> None:
    # WHEN every capture is read THEN we reproduce >= 95 % of gpsd's fixes, and none of a receiver's
    # fixes are all lost (run with -s to see the table)
    rates = {capture: reproduced(capture) for capture in CAPTURES}
    hits, total = sum(h for h, _ in rates.values()), sum(n for _, n in rates.values())
    print("\ncapture                              ours/gpsd fixes")
    for capture, (h, n) in rates.items():
        print(f"{capture:36} {h:4d}/{n:<4d} {'-' if n == 0 else f'{100 * h / n:5.1f} %'}")
    print(f"{'total':36} {hits:4d}/{total:<4d} {100 * hits / total:5.1f} %")
    assert hits / total >= 0.95
    assert [c for c, (h, n) in rates.items() if n > 0 and h == 0] == []
