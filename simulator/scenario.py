"""What a simulated bus-day is made of, as the command line and scenario files say it: durations, start
times, faults, and the `Scenario` of one bus-day for `voltgate-sim truth`. Errors are `UsageError`: one
sentence, naming the option or file, that the CLI prints with exit status 2.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulator.bus import NAIROBI_MILD, AmbientProfile, BusConfig
from simulator.cycles import DriverStyle, PassengerProfile
from simulator.faults import Fault, FaultKind, FaultSchedule

log = logging.getLogger("simulator")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms]?)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
_FAULT = re.compile(
    r"(?P<kind>[a-z_]+)(?::(?P<target>[a-z_0-9]+))?@(?P<onset>[^/=]+)"
    r"(?:/(?P<duration>[^=]+))?(?:=(?P<severity>[0-9.]+))?"
)


class UsageError(Exception):
    """A bad argument: reported in one sentence, exit status 2."""


# -- argument values --------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `1h`, `1h30m`, `0.5h`."""
    s = text.strip().lower()
    pos, total, units = 0, 0.0, []
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise UsageError(f"{text!r} is not a duration (examples: 90s, 15m, 1h, 1h30m)")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        units.append(m.group(2))
        pos = m.end()
    if not units or ("" in units and len(units) > 1) or not math.isfinite(total):
        raise UsageError(f"{text!r} is not a duration (examples: 90s, 15m, 1h, 1h30m)")
    return total


def parse_start(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--start {text!r} is not an ISO 8601 time such as 2024-03-04T02:25:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_local_time(text: str) -> float:
    """`HH:MM` (24 h, the bus's local time) → hours since local midnight."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if m is None:
        raise UsageError(f"--departure {text!r} is not a local time such as 05:30")
    return int(m.group(1)) + int(m.group(2)) / 60.0


def parse_fault(text: str) -> Fault:
    m = _FAULT.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--fault {text!r} is not KIND[:TARGET]@ONSET[/DURATION][=SEVERITY]")
    kinds = [k.value for k in FaultKind]
    if m["kind"] not in kinds:
        raise UsageError(f"--fault {text!r}: unknown fault {m['kind']!r}; one of {', '.join(kinds)}")
    onset = parse_duration(m["onset"])
    duration = parse_duration(m["duration"]) if m["duration"] else math.inf
    try:
        severity = float(m["severity"]) if m["severity"] else 1.0
        return Fault(FaultKind(m["kind"]), onset, duration, severity, m["target"] or "")
    except ValueError as err:
        raise UsageError(f"--fault {text!r}: {err}") from None


# -- the truth scenario -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One bus-day for `truth`: the bus, its day, its driver and load, and its faults."""

    seed: int = 0
    start_utc: datetime = BusConfig.start_utc
    duration_s: float = 3600.0
    ambient_mean_c: float = NAIROBI_MILD.mean_c
    ambient_amplitude_c: float = NAIROBI_MILD.amplitude_c
    aggressiveness: float = DriverStyle().aggressiveness
    peak_boardings: float = PassengerProfile().peak_boardings_per_stop
    soh_pct: float = BusConfig.soh_pct
    initial_soc_pct: float = BusConfig.initial_soc_pct
    round_trips: int = BusConfig.round_trips
    layover_charging: bool = BusConfig.layover_charging
    faults_per_day: float = 0.0
    fault_kinds: tuple[FaultKind, ...] = tuple(FaultKind)  # a repeated kind is drawn more often
    faults: tuple[Fault, ...] = ()

    def check(self) -> None:
        """Raise UsageError, naming the option, for a value outside what the simulator models."""
        checks = (  # (option, value, allowed, what is allowed); a NaN is never allowed
            ("--duration", self.duration_s, 0.0 < self.duration_s < math.inf, "above 0"),
            ("--soh-pct", self.soh_pct, 0.0 < self.soh_pct <= 100.0, "above 0 and at most 100"),
            (
                "--initial-soc-pct",
                self.initial_soc_pct,
                0.0 <= self.initial_soc_pct <= 100.0,
                "from 0 to 100",
            ),
            ("--aggressiveness", self.aggressiveness, 0.0 <= self.aggressiveness <= 1.0, "from 0 to 1"),
            ("--peak-boardings", self.peak_boardings, 0.0 <= self.peak_boardings <= 1000.0, "from 0 to 1000"),
            ("--ambient-mean-c", self.ambient_mean_c, -60.0 <= self.ambient_mean_c <= 60.0, "from -60 to 60"),
            (
                "--ambient-amplitude-c",
                self.ambient_amplitude_c,
                0.0 <= self.ambient_amplitude_c <= 30.0,
                "from 0 to 30",
            ),
            ("--round-trips", self.round_trips, 1 <= self.round_trips <= 100, "from 1 to 100"),
            ("--random-faults", self.faults_per_day, 0.0 <= self.faults_per_day <= 1e4, "from 0 to 10000"),
        )
        for option, value, allowed, what in checks:
            if not allowed:
                raise UsageError(f"{option} {value:g} must be {what}")
        if self.faults_per_day > 0 and not self.fault_kinds:
            raise UsageError("--random-faults needs at least one --random-fault-kind")

    def config(self) -> BusConfig:
        faults = list(self.faults)
        if self.faults_per_day > 0:
            drawn = FaultSchedule.random(self.seed, self.duration_s, self.faults_per_day, self.fault_kinds)
            faults += drawn.faults
        return BusConfig(
            seed=self.seed,
            start_utc=self.start_utc,
            ambient=AmbientProfile(self.ambient_mean_c, self.ambient_amplitude_c),
            driver=DriverStyle(self.aggressiveness),
            passengers=PassengerProfile(peak_boardings_per_stop=self.peak_boardings),
            soh_pct=self.soh_pct,
            initial_soc_pct=self.initial_soc_pct,
            faults=fault_schedule(faults, self.seed),
            round_trips=self.round_trips,
            layover_charging=self.layover_charging,
        )


def _json_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError("must be a number")
    return float(value)


def _json_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError("must be a whole number")
    return value


def _json_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise UsageError("must be true or false")
    return value


def _json_str(value: object) -> str:
    if not isinstance(value, str):
        raise UsageError("must be a string")
    return value


def _json_strs(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError("must be a list of strings")
    return [str(v) for v in value]


def _json_duration(value: object) -> float:
    return parse_duration(value) if isinstance(value, str) else _json_number(value)


def parse_fault_kind(text: str) -> FaultKind:
    kinds = [k.value for k in FaultKind]
    if text not in kinds:
        raise UsageError(f"{text!r} is not a fault kind; one of {', '.join(kinds)}")
    return FaultKind(text)


# scenario JSON key (the long option, `_` for `-`) → (Scenario field, reader of the JSON value)
_SCENARIO_KEYS: dict[str, tuple[str, Callable[[object], object]]] = {
    "seed": ("seed", _json_int),
    "start": ("start_utc", lambda v: parse_start(_json_str(v))),
    "duration": ("duration_s", _json_duration),
    "ambient_mean_c": ("ambient_mean_c", _json_number),
    "ambient_amplitude_c": ("ambient_amplitude_c", _json_number),
    "aggressiveness": ("aggressiveness", _json_number),
    "peak_boardings": ("peak_boardings", _json_number),
    "soh_pct": ("soh_pct", _json_number),
    "initial_soc_pct": ("initial_soc_pct", _json_number),
    "round_trips": ("round_trips", _json_int),
    "layover_charging": ("layover_charging", _json_bool),
    "random_faults": ("faults_per_day", _json_number),
    "random_fault_kinds": ("fault_kinds", lambda v: tuple(parse_fault_kind(k) for k in _json_strs(v))),
    "faults": ("faults", lambda v: tuple(parse_fault(f) for f in _json_strs(v))),
}


def load_scenario(path: Path) -> dict[str, Any]:
    """Scenario fields from a JSON object file; UsageError names the file and the key."""
    try:
        loaded: object = json.loads(path.read_text())
    except OSError as err:
        raise UsageError(f"--scenario {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise UsageError(f"--scenario {path} is not JSON: {err}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"--scenario {path} must hold a JSON object")
    unknown = sorted(set(loaded) - set(_SCENARIO_KEYS))
    if unknown:
        raise UsageError(
            f"--scenario {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_SCENARIO_KEYS)}"
        )
    fields: dict[str, Any] = {}  # each value of the type of its Scenario field (its reader checks)
    for key, value in loaded.items():
        field, read = _SCENARIO_KEYS[key]
        try:
            fields[field] = read(value)
        except UsageError as err:
            raise UsageError(f"--scenario {path}: {key}: {err}") from None
    return fields


def fault_schedule(faults: list[Fault], seed: int) -> FaultSchedule:
    """The faults in onset order, each logged once."""
    faults = sorted(faults, key=lambda f: f.onset_s)
    for f in faults:
        log.info("fault %s at %.0f s for %.0f s, severity %.2f", f.label, f.onset_s, f.duration_s, f.severity)
    return FaultSchedule(tuple(faults), seed)
