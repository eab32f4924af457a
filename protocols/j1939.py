"""SAE J1939 on the wire: the 29-bit identifier's fields, the transport protocol's parameter groups, and the
layout of DM1 (active diagnostic trouble codes).

Identifier (SAE J1939-21, §5.2): priority (3 bits), extended data page and data page (1 each), PDU format
PF (8), PDU specific PS (8), source address SA (8). The parameter group number (PGN) is data page + PF + PS,
except when PF < 240 (PDU1, destination-specific): PS is then the destination address and the PGN carries 0
in its place. The bit work is done here (a few shifts; the running agent does not import cantools for it) and
cached, since the decoder asks once per identifier it has not seen yet; tests/unit/test_j1939.py checks it
against `cantools.j1939` over many identifiers.

DM1 (SAE J1939-73, §5.7.1, PGN 65226): byte 1 holds four 2-bit lamp states (bits 8-7 malfunction indicator
lamp, 6-5 red stop lamp, 4-3 amber warning lamp, 2-1 protect lamp; 00 off, 01 on, 10 reserved, 11 not
available), byte 2 their flash states, then one 4-byte DTC per active fault: SPN low 16 bits (bytes 3-4,
little-endian), SPN high 3 bits in bits 8-6 of byte 5, FMI in bits 5-1 of byte 5, SPN conversion method in
bit 8 of byte 6 and occurrence count in bits 7-1 of byte 6. With no active fault the single DTC is all
zeros (SPN 0, FMI 0), and an 8-byte frame is padded with 0xFF.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

# Parameter groups (PGN) of SAE J1939-21 §5.10 (transport protocol) and J1939-73 §5.7.1 (DM1).
PGN_TP_CM: Final = 0xEC00  # 60416 transport protocol, connection management
PGN_TP_DT: Final = 0xEB00  # 60160 transport protocol, data transfer
PGN_DM1: Final = 0xFECA  # 65226 active diagnostic trouble codes

GLOBAL_ADDRESS: Final = 0xFF  # J1939-81: "all nodes"; the destination of a BAM
NULL_ADDRESS: Final = 0xFE  # J1939-81: no address claimed; never a data sender
MAX_SENDER_ADDRESS: Final = 0xFD

# The bits of an identifier that a PGN match compares: EDP, DP, PF and, for PDU2, PS (J1939-21 §5.2).
PDU1_PGN_MASK: Final = 0x03FF0000
PDU2_PGN_MASK: Final = 0x03FFFF00
EXTENDED_ID_MASK: Final = 0x1FFFFFFF


@dataclass(frozen=True, slots=True)
class J1939Id:
    priority: int
    pgn: int
    source: int
    destination: int  # PDU1: the PS byte; PDU2: the global address


def is_pdu1(pdu_format: int) -> bool:
    """PDU1 (PF < 240): PS is a destination address, not part of the PGN."""
    return pdu_format < 240


@functools.lru_cache(maxsize=4096)
def split_id(frame_id: int) -> J1939Id:
    """The J1939 fields of a 29-bit identifier (cached: a bus carries a few hundred distinct ids)."""
    frame_id &= EXTENDED_ID_MASK
    priority = frame_id >> 26  # 3 bits
    page_and_format = (frame_id >> 16) & 0x3FF  # EDP, DP and PF
    pdu_specific = (frame_id >> 8) & 0xFF
    if is_pdu1(page_and_format & 0xFF):
        return J1939Id(priority, page_and_format << 8, frame_id & 0xFF, pdu_specific)
    return J1939Id(priority, (page_and_format << 8) | pdu_specific, frame_id & 0xFF, GLOBAL_ADDRESS)


def pgn_filter(frame_id: int) -> tuple[int, int]:
    """`(can_id, can_mask)` of an acceptance filter passing every frame of `frame_id`'s PGN, whatever its
    priority, source address and (PDU1) destination."""
    mask = PDU1_PGN_MASK if is_pdu1((frame_id >> 16) & 0xFF) else PDU2_PGN_MASK
    return frame_id & mask, mask


def pgn_id(pgn: int, priority: int = 6, source: int = 0, destination: int = GLOBAL_ADDRESS) -> int:
    """A 29-bit identifier carrying `pgn` (J1939-21 §5.2); PDU1 PGNs take `destination` in PS."""
    pdu_specific = destination if is_pdu1((pgn >> 8) & 0xFF) else pgn & 0xFF
    return (priority << 26) | ((pgn >> 8) << 16) | (pdu_specific << 8) | source


# --------------------------------------------------------------------------- DM1


DM1_FIELDS: Final = frozenset(
    {
        "active_dtc_count",
        "malfunction_indicator_lamp",
        "red_stop_lamp",
        "amber_warning_lamp",
        "protect_lamp",
    }
)
"""What a catalog `[[dm1]]` entry may name: the count of active DTCs, or one lamp (0 off, 1 on)."""


@dataclass(frozen=True, slots=True)
class Dtc:
    spn: int  # suspect parameter number, 19 bits
    fmi: int  # failure mode identifier, 5 bits
    occurrences: int  # 7 bits; 127 means "not available"
    conversion_method: int  # 1 bit (SPN conversion method; 0 for every ECU built to J1939-73 since 1996)


@dataclass(frozen=True, slots=True)
class Dm1:
    malfunction_indicator_lamp: int
    red_stop_lamp: int
    amber_warning_lamp: int
    protect_lamp: int
    dtcs: tuple[Dtc, ...]  # active faults; empty when the ECU reports none


class Dm1Error(ValueError):
    """A DM1 payload that does not follow J1939-73's layout."""


def parse_dm1(data: bytes) -> Dm1:
    """One DM1 payload (a single frame or a reassembled transport session) → lamps and active DTCs."""
    if len(data) < 6:
        raise Dm1Error(f"DM1 needs at least 6 bytes (lamps and one DTC), got {len(data)}")
    lamps = data[0]
    dtcs: list[Dtc] = []
    for at in range(2, len(data) - 3, 4):
        chunk = data[at : at + 4]
        if chunk == b"\xff\xff\xff\xff":
            break  # padding of the last frame
        spn = chunk[0] | (chunk[1] << 8) | ((chunk[2] >> 5) << 16)
        fmi = chunk[2] & 0x1F
        if spn == 0 and fmi == 0:
            continue  # "no active DTC"
        dtcs.append(Dtc(spn, fmi, chunk[3] & 0x7F, chunk[3] >> 7))
    return Dm1(
        malfunction_indicator_lamp=(lamps >> 6) & 0x3,
        red_stop_lamp=(lamps >> 4) & 0x3,
        amber_warning_lamp=(lamps >> 2) & 0x3,
        protect_lamp=lamps & 0x3,
        dtcs=tuple(dtcs),
    )


def dm1_rule(source: int, dtc: Dtc) -> str:
    """The alert rule name of one active DTC of one ECU, as it travels in `AlertRecord.rule`."""
    return f"dm1:sa{source}:spn{dtc.spn}:fmi{dtc.fmi}"
