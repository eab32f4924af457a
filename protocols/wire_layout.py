"""The payload's constants, limits and fixed-width integer columns (`protocols.wire` describes the layout)."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from protocols.errors import WireError
from protocols.wire_dict import CURRENT
from protocols.wire_fields import wire_list

WIRE_VERSION: Final = 2

MAGIC: Final = b"VG"
FLAG_ZSTD: Final = 0x01
"""The body is one zstd frame with content size and checksum. Required in version 2; other bits reserved."""
HEADER: Final = MAGIC + bytes((WIRE_VERSION, FLAG_ZSTD, CURRENT))
"""What `encode_batch` writes: the current codebook's id closes the header."""
HEADER_LEN: Final = len(HEADER)

ZSTD_LEVEL: Final = 19
"""Default compression level. On a minute of telemetry (~4 KB of body) level 19 is ~3 % smaller than
level 9 for ~1 ms instead of ~0.4 ms of compression (x86; the column building costs more); zstd scales
its window down to the input, so memory stays small."""

MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
"""Largest payload (header + compressed body) accepted or produced."""
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
"""Largest decompressed body; a frame declaring more is refused before decompression."""
MAX_SAMPLES: Final = 250_000
MAX_PREDICTIONS: Final = 50_000
MAX_ALERTS: Final = 10_000
MAX_SIGNALS: Final = 4_096
"""Distinct signal names in one batch."""
MAX_NAME_BYTES: Final = 128
"""UTF-8 length of a signal, model, model version, output or rule name."""
MAX_MESSAGE_BYTES: Final = 1_024
"""UTF-8 length of an alert message."""
MAX_SEQ: Final = 2**53 - 1
"""Sequence numbers are 0..MAX_SEQ (exact in float64 and JSON)."""
MAX_ABS_TS_MS: Final = 2**53 - 1
MAX_ABS_QUANTUM_STEPS: Final = 2**53
"""A quantized value is at most this many quanta away from zero, or its signal travels exactly."""
SEVERITIES: Final = frozenset({"info", "warning", "critical"})

WIDTHS: Final = (0, 1, 2, 4, 8)
MAX_STEP: Final = 2 * MAX_ABS_QUANTUM_STEPS  # |step[j] - step[j-1]|: a slope
MAX_TS_STEP: Final = 2 * MAX_ABS_TS_MS

IntArray = npt.NDArray[np.int64]
UIntArray = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]

# --- fixed-width columns ----------------------------------------------------------------------------------


def zigzag(values: IntArray) -> UIntArray:
    return ((values << 1) ^ (values >> 63)).view(np.uint64)


def unzigzag(values: UIntArray) -> IntArray:
    half = (values >> np.uint64(1)).astype(np.int64)
    return half ^ -((values & np.uint64(1)).astype(np.int64))


def pack_column(values: UIntArray) -> list[object]:
    """`[width, planes]` for unsigned values: the narrowest width, bytes split into planes."""
    top = int(values.max()) if values.size else 0
    width = next(w for w in WIDTHS if top < 1 << (8 * w))
    if width == 0:
        return [0, b""]
    fixed = values.astype(f"<u{width}")
    return [width, _to_planes(fixed.view(np.uint8), width)]


def _to_planes(raw: npt.NDArray[np.uint8], width: int) -> bytes:
    return raw.reshape(-1, width).T.tobytes()


def _from_planes(planes: bytes, width: int) -> npt.NDArray[np.uint8]:
    return np.frombuffer(planes, dtype=np.uint8).reshape(width, -1).T.reshape(-1)


def column_shape(column: object, what: str) -> tuple[int, bytes]:
    """The width and planes of an integer column, checked for type only."""
    parts = wire_list(column, what)
    if len(parts) != 2:
        raise WireError(f"{what}: a column is [width, planes]")
    width, planes = parts
    if type(width) is not int or width not in WIDTHS or not isinstance(planes, bytes):
        raise WireError(f"{what}: bad column width or planes")
    return width, planes


def column_parts(column: object, n: int, what: str) -> tuple[int, bytes]:
    """The width and planes of an integer column of `n` elements, checked (`unpack_column` unpacks it)."""
    width, planes = column_shape(column, what)
    if len(planes) != n * width:
        raise WireError(f"{what}: {len(planes)} bytes for {n} elements of width {width}")
    return width, planes


def unpack_column(column: object, n: int, what: str) -> UIntArray:
    width, planes = column_parts(column, n, what)
    if width == 0:
        return np.zeros(n, dtype=np.uint64)
    return _from_planes(planes, width).view(f"<u{width}").astype(np.uint64)


def pack_floats(values: FloatArray) -> bytes:
    return _to_planes(values.astype("<f8").view(np.uint8), 8)


def unpack_floats(planes: object, n: int, what: str) -> FloatArray:
    if not isinstance(planes, bytes) or len(planes) != 8 * n:
        raise WireError(f"{what}: expected {n} float64 values")
    return _from_planes(planes, 8).view("<f8").astype(np.float64)


def later_than_first(counts: IntArray) -> npt.NDArray[np.bool_]:
    """For signals of `counts` samples laid out one after the other: True except at each one's first."""
    later = np.ones(int(counts.sum()), dtype=bool)
    later[np.cumsum(counts) - counts] = False
    return later


def running_by_signal(
    firsts: IntArray, deltas: IntArray, counts: IntArray, delta_bound: int, bound: int, what: str
) -> IntArray:
    """Signal after signal (`counts[k]` elements each, every count >= 1): `firsts[k]`, then running sums
    of its `counts[k] - 1` next `deltas`, each |delta| <= delta_bound, every result checked within ±bound.

    One cumulative sum for all signals, which int64 may wrap; each result is its signal's first plus the
    difference of two such sums, exact modulo 2**64. Results within ±bound are therefore exact, because
    the one before each is (induction from `firsts`) and a step adds at most delta_bound."""
    assert bound + delta_bound < 2**63
    if firsts.size and (int(firsts.max()) > bound or int(firsts.min()) < -bound):
        raise WireError(f"{what}: value out of range")
    if deltas.size and (int(deltas.max()) > delta_bound or int(deltas.min()) < -delta_bound):
        raise WireError(f"{what}: delta out of range")
    later = later_than_first(counts)
    steps = np.zeros(later.size, dtype=np.int64)
    steps[later] = deltas
    sums = np.cumsum(steps, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    result: IntArray = sums - np.repeat(sums[starts] - firsts, counts)
    if result.size and (int(result.max()) > bound or int(result.min()) < -bound):
        raise WireError(f"{what}: value out of range")
    return result
