"""`protocols.nmea` on short stretches of real receivers whose output departs from the textbook, each
for a reason given at its lines: ZDA before the other sentences, an RMC without its magnetic-variation
direction field, one epoch's times at different resolutions, seconds carried by RMC, GLL and GGA+ZDA in
turn.

Lines from gpsd's regression captures test/daemon/saab-r4.log, magellan315.log and humminbird-M37.log,
github.com/ukyg9e5r6k7gubiekd6/gpsd @ 11a1896 (mirror of gitlab.com/gpsd/gpsd), BSD-2-Clause: see
tests/data/nmea/COPYING.
"""

from __future__ import annotations

import calendar

import pytest

from protocols.nmea import GpsFix, NmeaReader, Rmc, parse_sentence


def read(lines: list[str]) -> tuple[list[GpsFix], NmeaReader]:
    reader = NmeaReader()
    fixes = reader.feed("\r\n".join(lines).encode() + b"\r\n")
    return fixes + reader.flush(), reader


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)[:6]))


SAAB_R4 = [  # ZDA first, GLL and GGA with hhmmss, RMC with hhmmss.ss whose direction field is left out
    "!AIVDO,1,1,,B,13`kvwO005wJnb0Lfo:@7P8F05`L,0*5B",
    "$GPZDA,130711,01,06,2011,01,00*49",
    "$GPGLL,5012.790800,N,00806.879600,W,130711,A,D*5B",
    "$GPGGA,130711,5012.790800,N,00806.879600,W,2,,,,,,,*6A",
    "$GPVTG,3.0,T,,,0.50,N,,,D*16",
    "$GPRMC,130711.00,A,5012.790800,N,00806.879600,W,0.5,3.0,010611,,A*6A",
    "$GPDTM,W84,C*52",
    "$HEHDT,4.0,T*2B",
    "$PFEC,AIcmd,0,35,A,01062011,130712*06",
    "$GPZDA,130712,01,06,2011,01,00*4A",
    "$GPGLL,5012.791400,N,00806.879600,W,130712,A,D*55",
    "$GPGGA,130712,5012.791400,N,00806.879600,W,2,,,,,,,*64",
    "$GPVTG,3.1,T,,,0.50,N,,,D*17",
    "$GPRMC,130712.00,A,5012.791400,N,00806.879600,W,0.5,3.1,010611,,A*65",
]


def test_saab_r4_rmc_without_direction_field_and_zda_first() -> None:
    rmc = parse_sentence(SAAB_R4[5])
    assert isinstance(rmc, Rmc) and (rmc.mag_var_deg, rmc.mode) == (None, "A")
    fixes, reader = read(SAAB_R4)
    assert [(f.ts, f.valid, f.date_carried) for f in fixes] == [
        (utc(2011, 6, 1, 13, 7, 11), True, False),
        (utc(2011, 6, 1, 13, 7, 12), True, False),
    ]
    assert fixes[1].lat_deg == pytest.approx(50 + 12.7914 / 60, abs=1e-12)
    assert fixes[1].lon_deg == pytest.approx(-(8 + 6.8796 / 60), abs=1e-12)
    assert reader.counts == {
        "unsupported": 3,
        "proprietary": 1,
        "ZDA": 2,
        "GLL": 2,
        "GGA": 2,
        "VTG": 2,
        "RMC": 2,
    }


MAGELLAN_315 = [  # GLL with hhmmss.sss, GGA and RMC with hhmmss.ss; magnetic variation "01."
    "$GPGLL,3908.8199,N,00023.0832,W,120824.758,A*22",
    "$GPGGA,120824.76,3908.8199,N,00023.0832,W,1,06,2.1,00176,M,,,,*39",
    "$GPRMC,120824.76,A,3908.8199,N,00023.0832,W,00.0,000.0,130305,01.,W*62",
    "$GPGSA,A,3,19,15,03,18,22,11,,,,,,,3.5,2.1,2.7*34",
    "$GPGLL,3908.8200,N,00023.0832,W,120827.523,A*2C",
    "$GPGGA,120827.52,3908.8200,N,00023.0832,W,1,06,2.1,00176,M,,,,*3F",
    "$GPRMC,120827.52,A,3908.8200,N,00023.0832,W,00.0,000.0,130305,01.,W*64",
]


def test_magellan_315_sentences_of_one_epoch_at_different_resolutions_make_one_fix() -> None:
    assert parse_sentence(MAGELLAN_315[2]).mag_var_deg == -1.0  # type: ignore[union-attr]
    fixes, reader = read(MAGELLAN_315)
    assert [(f.ts, f.valid, f.satellites) for f in fixes] == [
        (utc(2005, 3, 13, 12, 8, 24) + 0.758, True, 6),
        (utc(2005, 3, 13, 12, 8, 27) + 0.523, True, 6),
    ]
    assert "duplicate" not in reader.counts


HUMMINBIRD_M37 = [  # talker IN; RMC, GLL and GGA+ZDA in turn, each its own second, with depth sentences
    "$INDPT,2.2,0.0*47",
    "$INRMC,194101,A,4426.1130,N,07140.5596,W,5.2,77.3,160906,15.8,W*60",
    "$INDPT,2.1,0.0*44",
    "$INGLL,4426.1130,N,07140.5579,W,194102,A*2C",
    "$INVTG,77.5,T,93.3,M,5.2,N,9.7,K*5B",
    "$INMTW,17.9,C*1B",
    "$INDPT,2.1,0.0*44",
    "$INRMC,194103,A,4426.1134,N,07140.5558,W,5.3,77.0,160906,15.8,W*66",
    "$INDPT,2.0,0.0*45",
    "$INGGA,194104,4426.1138,N,07140.5536,W,2,10,0.9,267.9,M,,,,*13",
    "$INZDA,194104,16,09,2006,-05,00*73",
    "$INMTW,17.9,C*1B",
]


def test_humminbird_m37_every_second_is_a_fix_whichever_sentence_carries_it() -> None:
    fixes, reader = read(HUMMINBIRD_M37)
    start = utc(2006, 9, 16, 19, 41, 1)
    assert [(f.ts - start, f.valid, f.date_carried) for f in fixes] == [
        (0, True, False),  # RMC
        (1, True, True),  # GLL (+VTG): the RMC's date
        (2, True, False),  # RMC
        (3, True, False),  # GGA dated by its ZDA
    ]
    assert [f.lon_deg for f in fixes] == pytest.approx(
        [-(71 + m / 60) for m in (40.5596, 40.5579, 40.5558, 40.5536)], abs=1e-12
    )
    assert fixes[1].speed_kmh == 9.7 and fixes[3].alt_m == 267.9
    assert reader.counts["unsupported"] == 6  # DPT (depth) and MTW (water temperature)
