"""Checks of one field: what the encoder accepts from a caller (`int_field`, ...) and what the decoder
accepts from a payload (`wire_int`, ...: exact msgpack types). Every failure is a `WireError`."""

from __future__ import annotations

import operator

import numpy as np

from protocols.errors import WireError
from protocols.topics import ID_MAX_LEN, is_valid_id


def int_field(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool):
        raise WireError(f"{what} must be an integer, not bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]  # TypeError below when not an index
    except TypeError:
        raise WireError(f"{what} must be an integer, not {type(value).__name__}") from None
    if not low <= number <= high:
        raise WireError(f"{what} {number} out of range [{low}, {high}]")
    return number


def float_field(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer):
        raise WireError(f"{what} must be a float, not {type(value).__name__}")
    return float(value)


def text_field(value: object, max_bytes: int, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what} must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise WireError(f"{what} is not encodable as UTF-8") from None
    if size > max_bytes or (size == 0 and not allow_empty):
        raise WireError(f"{what} must be {0 if allow_empty else 1}..{max_bytes} UTF-8 bytes, not {size}")
    return value


def vehicle_field(value: object) -> str:
    if not is_valid_id(value):
        raise WireError(f"invalid vehicle id {value!r}: 1-{ID_MAX_LEN} of A-Z a-z 0-9 _ . -")
    assert isinstance(value, str)
    return value


def wire_list(value: object, what: str, length: int | None = None) -> list[object]:
    if not isinstance(value, list):
        raise WireError(f"{what}: expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise WireError(f"{what}: expected {length} elements, got {len(value)}")
    return value


def wire_int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise WireError(f"{what}: expected an integer in [{low}, {high}]")
    return value


def wire_float(value: object, what: str) -> float:
    if type(value) is not float:
        raise WireError(f"{what}: expected a float")
    return value


def wire_text(value: object, max_bytes: int, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what}: expected a string")
    return text_field(value, max_bytes, what, allow_empty=allow_empty)
