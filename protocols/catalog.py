"""The signal catalog: which DBC signals and GPS fields a vehicle reports, under which canonical
names, units and sampling policy.

A catalog is a TOML file next to its DBC (see `catalog.toml` for the format). Loading checks every
entry against the DBC, so a catalog that loads is one the agent can decode with. Every mistake in
the catalog is reported as one `CatalogError` that names the file and line; the DBC is loaded by
`protocols.dbc` (known defects repaired, each kept in `Catalog.dbc_warnings`; others a `DbcError`).

A loaded catalog keeps what decoding needs of each DBC message it maps as plain data (`Catalog.messages`,
`protocols.dbc_layout`), not cantools objects: a catalog read back from its cache (`protocols.catalog_cache`)
decodes without importing cantools. `Catalog.database` (cantools' reading of the DBC) is loaded on first use.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from protocols.dbc import load_dbc, read_dbc
from protocols.dbc_layout import MessageLayout, message_layout
from protocols.errors import CatalogError
from protocols.j1939 import DM1_FIELDS, MAX_SENDER_ADDRESS

if TYPE_CHECKING:
    from cantools.database.can import Database, Message

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_DBC",
    "Catalog",
    "catalog_signal_names",
    "load_catalog",
    "load_dbc",
    "parse_catalog",
]

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")
DEFAULT_DBC = Path(__file__).with_name("bus.dbc")
ENTRY_KINDS = (
    "can",
    "gps",
    "dm1",
)  # the arrays of tables a catalog maps signals in: [[can]], [[gps]], [[dm1]]

GPS_FIELDS = frozenset({"lat_deg", "lon_deg", "alt_m", "course_deg", "speed_kmh", "hdop", "satellites"})
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class Priority(IntEnum):
    """Eviction order from a full buffer: lowest goes first."""

    ROUTINE = 0
    NORMAL = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class SamplingPolicy:
    min_interval_s: float  # never keep two values closer than this
    max_interval_s: float  # always keep a value at least this often (heartbeat)
    deadband: float  # keep a value earlier only when it moved at least this much


class SignalSampler:
    """The sampling policy of one signal, applied on source timestamps: the one implementation the agent
    runs on the bus and training runs on recorded data, so both keep the same samples.

    A value is kept when it is the first, when `max_interval_s` has passed since the last kept value
    (heartbeat), or when `min_interval_s` has passed AND it moved at least `deadband` from the last kept
    value. A timestamp earlier than the last kept one (a source clock reset, a second log replayed)
    restarts the signal: that value is kept.
    """

    __slots__ = ("_last_ts", "_last_value", "policy")

    def __init__(self, policy: SamplingPolicy) -> None:
        self.policy = policy
        self._last_ts: float | None = None
        self._last_value = 0.0

    def offer(self, ts: float, value: float) -> bool:
        last_ts = self._last_ts
        if last_ts is not None and ts >= last_ts:
            elapsed = ts - last_ts
            policy = self.policy
            if elapsed < policy.max_interval_s and (
                elapsed < policy.min_interval_s or abs(value - self._last_value) < policy.deadband
            ):
                return False
        self._last_ts = ts
        self._last_value = value
        return True

    def refusal_window(self, value: float) -> tuple[float, float] | None:
        """`(start, end)`: `offer(ts, value)` with this same value refuses it for every `ts` in `[start, end)`
        (until another value is kept); None before the first kept value. Within the deadband of the last
        kept value that lasts until the heartbeat (`max_interval_s`), otherwise until `min_interval_s` has
        passed. A decoder may skip a frame repeating one it has seen inside this window (`agent.decode`)."""
        last_ts = self._last_ts
        if last_ts is None:
            return None
        policy = self.policy
        if abs(value - self._last_value) < policy.deadband:
            span = policy.max_interval_s
        else:
            span = min(policy.min_interval_s, policy.max_interval_s)
        # `offer` tests `ts - last_ts < span`; the end is the first float where that turns false (the
        # rounded sum may be off by an ulp either way).
        end = last_ts + span
        while end > last_ts and end - last_ts >= span:
            end = math.nextafter(end, -math.inf)
        while end - last_ts < span:
            end = math.nextafter(end, math.inf)
        return last_ts, end


@dataclass(frozen=True, slots=True)
class SignalSpec:
    name: str  # canonical name, e.g. "Vehicle.Speed"
    unit: str
    vss: bool  # a COVESA VSS path (False: a voltgate overlay path)
    priority: Priority
    policy: SamplingPolicy
    resolution: float  # the step a value travels in on the wire
    source: Literal["can", "gps", "dm1"]
    message: str = ""  # CAN only: DBC message name
    dbc_signal: str = ""  # CAN only: DBC signal name
    gps_field: str = ""  # GPS only: a field of the decoded fix
    dm1_field: str = ""  # DM1 only: one of `protocols.j1939.DM1_FIELDS`
    source_address: int | None = None  # J1939 (CAN, DM1): only this sender; None: any sender


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """What to decode from one CAN frame id."""

    message: MessageLayout
    signals: tuple[tuple[str, SignalSpec], ...]  # (DBC signal name, spec)
    database: Callable[[], Database] = field(repr=False, compare=False)  # the catalog's, loaded on first use

    def cantools_message(self) -> Message:
        """cantools' message (imports cantools and reads the DBC on the catalog's first call)."""
        return self.database().get_message_by_name(self.message.name)


@dataclass(frozen=True)
class Catalog:
    path: Path
    name: str
    version: str
    dbc_path: Path
    messages: Mapping[str, MessageLayout]  # the DBC messages the catalog's CAN entries name, by name
    signals: tuple[SignalSpec, ...]
    dbc_warnings: tuple[str, ...] = ()  # the DBC's defects, repaired on load (`protocols.dbc`)
    loaded_database: Database | None = field(default=None, repr=False, compare=False)
    _by_name: Mapping[str, SignalSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.signals})

    @property
    def database(self) -> Database:
        """cantools' reading of the catalog's DBC: the one it was checked against, else the DBC read now
        (importing cantools) and kept."""
        if self.loaded_database is None:
            object.__setattr__(self, "loaded_database", read_dbc(self.dbc_path).database)
        assert self.loaded_database is not None
        return self.loaded_database

    def __iter__(self) -> Iterator[SignalSpec]:
        return iter(self.signals)

    def __len__(self) -> int:
        return len(self.signals)

    def by_name(self, name: str) -> SignalSpec:
        return self._by_name[name]

    def frames(self) -> dict[int, FrameSpec]:
        """Frame id (as python-can reports it, without the extended flag) → what to decode."""
        grouped: dict[str, list[tuple[str, SignalSpec]]] = {}
        for spec in self.signals:
            if spec.source == "can":
                grouped.setdefault(spec.message, []).append((spec.dbc_signal, spec))
        out: dict[int, FrameSpec] = {}
        for message_name, pairs in grouped.items():
            message = self.messages[message_name]
            out[message.frame_id] = FrameSpec(message, tuple(pairs), partial(_database_of, self))
        return out

    def gps_signals(self) -> tuple[SignalSpec, ...]:
        return tuple(s for s in self.signals if s.source == "gps")

    def dm1_signals(self) -> tuple[SignalSpec, ...]:
        return tuple(s for s in self.signals if s.source == "dm1")

    def quanta(self) -> dict[str, float]:
        """Canonical name → wire resolution, for `protocols.wire.encode_batch`."""
        return {s.name: s.resolution for s in self.signals}


# --------------------------------------------------------------------------- catalog


def load_catalog(path: Path = DEFAULT_CATALOG, dbc_path: Path | None = None) -> Catalog:
    """Load and check a catalog. The DBC is `dbc_path`, or the catalog's `dbc` key resolved next
    to the catalog file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CatalogError(f"{path}: cannot read the signal catalog: {err}") from err
    return parse_catalog(text, path, dbc_path)


def parse_catalog(
    text: str,
    path: Path,
    dbc_path: Path | None = None,
    *,
    database: Database | None = None,
    dbc_warnings: tuple[str, ...] = (),
) -> Catalog:
    """Check a catalog's TOML `text` (`path` names it in errors and resolves its `dbc` key) against
    `database` (read from `dbc_path` with `dbc_warnings`), or the DBC at `dbc_path` or at its `dbc` key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # Python < 3.14 puts the position only in the message: "... (at line 3, column 7)".
        position = re.search(r"\(at line (\d+), column \d+\)$", str(err))
        line = getattr(err, "lineno", None) or (int(position.group(1)) if position else None)
        reason = getattr(err, "msg", None) or (str(err)[: position.start()].strip() if position else str(err))
        where = f"{path}:{line}" if line else str(path)
        raise CatalogError(f"{where}: not valid TOML: {reason}") from err
    entries = _EntryLocator(path, text)

    header = doc.get("catalog")
    if not isinstance(header, dict):
        raise CatalogError(f"{path}: missing the [catalog] table (name, version, dbc)")
    name = _require_str(header, "name", entries.at("catalog", 0))
    version = _require_str(header, "version", entries.at("catalog", 0))
    if dbc_path is None:
        dbc_path = path.parent / _require_str(header, "dbc", entries.at("catalog", 0))
    if database is None:
        loaded = read_dbc(dbc_path)
        database, dbc_warnings = loaded.database, loaded.warnings

    specs: list[SignalSpec] = []
    first_seen: dict[str, str] = {}
    for kind in ENTRY_KINDS:
        raw = doc.get(kind, [])
        if not isinstance(raw, list):
            raise CatalogError(f"{path}: `{kind}` must be an array of tables ([[{kind}]])")
        for index, entry in enumerate(raw):
            where = entries.at(kind, index)
            if not isinstance(entry, dict):
                raise CatalogError(f"{where}: a [[{kind}]] entry must be a table")
            if kind == "can":
                spec = _can_spec(entry, where, database, dbc_path)
            else:
                spec = _gps_spec(entry, where) if kind == "gps" else _dm1_spec(entry, where)
            if spec.name in first_seen:
                raise CatalogError(
                    f"{where}: canonical name {spec.name!r} is already used at {first_seen[spec.name]}"
                )
            first_seen[spec.name] = where
            specs.append(spec)
    if not specs:
        raise CatalogError(f"{path}: the catalog maps no signals")
    message_names = dict.fromkeys(spec.message for spec in specs if spec.source == "can")
    return Catalog(
        path=path,
        name=name,
        version=version,
        dbc_path=dbc_path,
        messages={m: message_layout(database.get_message_by_name(m)) for m in message_names},
        signals=tuple(specs),
        dbc_warnings=dbc_warnings,
        loaded_database=database,
    )


def _database_of(catalog: Catalog) -> Database:
    return catalog.database


def catalog_signal_names(path: Path = DEFAULT_CATALOG) -> tuple[str, ...]:
    """The canonical names a catalog maps, read without its DBC: for a reader of stored samples (the
    cloud), which needs the names but decodes nothing. `load_catalog` checks the same file in full."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise CatalogError(f"{path}: cannot read the signal catalog: {err}") from err
    entries = [entry for kind in ENTRY_KINDS for entry in doc.get(kind, []) if isinstance(entry, dict)]
    return tuple(name for entry in entries if isinstance(name := entry.get("name"), str))


class _EntryLocator:
    """Finds the line of the Nth [table] or [[table]] header, for error messages (tomllib keeps no
    positions)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self._lines: dict[str, list[int]] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if m := re.match(r"^\s*\[\[?\s*(\w+)\s*\]", line):
                self._lines.setdefault(m.group(1), []).append(number)

    def at(self, kind: str, index: int) -> str:
        numbers = self._lines.get(kind, [])
        return f"{self.path}:{numbers[index]}" if index < len(numbers) else str(self.path)


def _can_spec(entry: dict[str, object], where: str, database: Database, dbc_path: Path) -> SignalSpec:
    message_name = _require_str(entry, "message", where)
    signal_name = _require_str(entry, "signal", where)
    try:
        message = database.get_message_by_name(message_name)
    except KeyError:
        raise CatalogError(f"{where}: message {message_name!r} is not in {dbc_path}") from None
    try:
        signal = message.get_signal_by_name(signal_name)
    except KeyError:
        raise CatalogError(
            f"{where}: signal {signal_name!r} is not in message {message_name!r} of {dbc_path}"
        ) from None
    scale = abs(float(signal.scale)) or 1.0
    spec = _spec(entry, where, "can", default_resolution=scale, message=message_name, dbc_signal=signal_name)
    if spec.source_address is not None and message.protocol != "j1939":
        raise CatalogError(f"{where}: `source_address` needs a J1939 message; {message_name!r} is not one")
    return spec


def _gps_spec(entry: dict[str, object], where: str) -> SignalSpec:
    gps_field = _require_str(entry, "field", where)
    if gps_field not in GPS_FIELDS:
        known = ", ".join(sorted(GPS_FIELDS))
        raise CatalogError(f"{where}: unknown GPS field {gps_field!r} (one of {known})")
    spec = _spec(entry, where, "gps", default_resolution=0.0, gps_field=gps_field)
    if spec.resolution <= 0:
        raise CatalogError(f"{where}: a GPS entry needs a positive `resolution`")
    return spec


def _dm1_spec(entry: dict[str, object], where: str) -> SignalSpec:
    dm1_field = _require_str(entry, "field", where)
    if dm1_field not in DM1_FIELDS:
        known = ", ".join(sorted(DM1_FIELDS))
        raise CatalogError(f"{where}: unknown DM1 field {dm1_field!r} (one of {known})")
    return _spec(entry, where, "dm1", default_resolution=1.0, dm1_field=dm1_field)


def _source_address(entry: Mapping[str, object], where: str) -> int | None:
    """A J1939 sender address, 0..253 (254 is the null address, 255 the global one: J1939-81)."""
    value = entry.get("source_address")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SENDER_ADDRESS:
        raise CatalogError(f"{where}: `source_address` must be a J1939 sender address, 0..253")
    return value


def _spec(
    entry: dict[str, object],
    where: str,
    source: Literal["can", "gps", "dm1"],
    *,
    default_resolution: float,
    message: str = "",
    dbc_signal: str = "",
    gps_field: str = "",
    dm1_field: str = "",
) -> SignalSpec:
    name = _require_str(entry, "name", where)
    if not _NAME_RE.match(name):
        raise CatalogError(f"{where}: {name!r} is not a dotted canonical name like 'Vehicle.Speed'")
    priority_text = _require_str(entry, "priority", where, default="routine")
    try:
        priority = Priority[priority_text.upper()]
    except KeyError:
        raise CatalogError(
            f"{where}: priority {priority_text!r} is not one of routine, normal, critical"
        ) from None
    policy = SamplingPolicy(
        min_interval_s=_require_number(entry, "min_interval_s", where, default=0.0),
        max_interval_s=_require_number(entry, "max_interval_s", where, default=60.0),
        deadband=_require_number(entry, "deadband", where, default=0.0),
    )
    if policy.max_interval_s < policy.min_interval_s:
        raise CatalogError(f"{where}: max_interval_s must not be below min_interval_s")
    vss = entry.get("vss", False)
    if not isinstance(vss, bool):
        raise CatalogError(f"{where}: `vss` must be true or false")
    return SignalSpec(
        name=name,
        unit=_require_str(entry, "unit", where, default="-"),
        vss=vss,
        priority=priority,
        policy=policy,
        resolution=_require_number(entry, "resolution", where, default=default_resolution),
        source=source,
        message=message,
        dbc_signal=dbc_signal,
        gps_field=gps_field,
        dm1_field=dm1_field,
        source_address=_source_address(entry, where) if source != "gps" else None,
    )


def _require_str(table: Mapping[str, object], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise CatalogError(f"{where}: missing `{key}`")
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: `{key}` must be a non-empty string")
    return value


def _require_number(table: Mapping[str, object], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise CatalogError(f"{where}: `{key}` must be a non-negative number")
    return float(value)
