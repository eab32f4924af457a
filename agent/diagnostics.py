"""Driver and fleet alerts from J1939 DM1: each active diagnostic trouble code of each ECU is one alert.

    Decoder (DM1 of sender SA) ─on_dm1─► clock gate ─Dm1Report─► AlertStage: DtcAlerts.observe / expire
        ─► Alert on every change ─► `derived`, driver log, LEDs (with every other alert)

A DTC (SPN + FMI) that appears in an ECU's DM1 raises `dm1:sa{SA}:spn{SPN}:fmi{FMI}`
(`protocols.j1939.dm1_rule`); one that is gone from that ECU's next DM1 clears it (a DM1 without an active
DTC, its single DTC all zeros or the all-ones filler, clears them all). The severity comes from the lamps
that DM1 reports (SAE J1939-73 §5.7.1: the lamps are the ECU's, not a DTC's): red stop lamp on → critical,
amber warning lamp on → warning, anything else → info. A lamp change while a DTC stays active re-raises it
at the new severity, as a threshold alert escalates. The alert's value is the DTC's occurrence count.

**Expiry.** DM1 is broadcast once a second, and on change (SAE J1939-73 §5.7.1, `DM1_PERIOD_S`), also
when no DTC is active. An ECU whose DM1 has not come for `DM1_TIMEOUT_S` (three missed broadcasts and
half a period of jitter; our choice, the standard sets none for a listener) is gone (powered down, off the
bus, its connector loose): its DTCs are cleared rather than kept active forever. Time is source time: this
bus's newest DM1, or the alert stage's "now" over every source when that runs ahead (an ECU that is the
bus's only DM1 sender still expires while the other signals go on) — unless it runs ahead by more than
`agent.clock.MAX_JUMP_S`, which is another time base (a second replayed log), not silence. An ECU's last
DM1 stamped more than that ahead of now dates from before a clock step back: its timeout starts over.

Pure: no I/O, source time only. `DtcAlerts` tracks one bus (source addresses are per bus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from agent.clock import MAX_JUMP_S
from agent.records import Alert, Severity
from protocols.j1939 import Dm1, Dtc, dm1_rule

_LAMP_ON = 1

DM1_PERIOD_S: Final = 1.0  # SAE J1939-73 §5.7.1: DM1 is broadcast once a second (and on change)
DM1_TIMEOUT_S: Final = 3 * DM1_PERIOD_S + 0.5  # three broadcasts missed in a row, plus jitter


@dataclass(frozen=True, slots=True)
class Dm1Report:
    """One DM1 of one ECU on one bus, from the decoder (through the clock gate) to the alert stage."""

    ts: float  # the frame that completed it (source time)
    bus: str
    source: int  # the ECU's source address
    dm1: Dm1


def dm1_severity(dm1: Dm1) -> Severity:
    if dm1.red_stop_lamp == _LAMP_ON:
        return "critical"
    if dm1.amber_warning_lamp == _LAMP_ON:
        return "warning"
    return "info"


_LAMP_TEXT: Final[dict[Severity, str]] = {
    "critical": "red stop lamp on",
    "warning": "amber warning lamp on",
    "info": "no warning lamp",
}


def _message(source: int, dtc: Dtc, state: str) -> str:
    return (
        f"ECU 0x{source:02X} diagnostic trouble code SPN {dtc.spn} FMI {dtc.fmi}"
        f" (occurrences {dtc.occurrences}): {state}"
    )


class DtcAlerts:
    """One bus's DTC alerts: feed each DM1 with `observe`, the stream's time with `expire`; both return
    the alerts that changed."""

    def __init__(self, timeout_s: float = DM1_TIMEOUT_S, *, max_jump_s: float = MAX_JUMP_S) -> None:
        self.timeout_s = timeout_s
        self.max_jump_s = max_jump_s
        self._active: dict[int, dict[tuple[int, int], tuple[Severity, Dtc]]] = {}  # SA → (SPN, FMI) → …
        self._seen: dict[int, float] = {}  # SA with active DTCs → time of its latest DM1
        self._now = -math.inf  # this bus's latest DM1 (they come in bus order)
        self.expired = 0  # ECUs whose DTCs were cleared because their DM1 stopped

    def active(self) -> dict[str, Severity]:
        """Rule → severity of every raised DTC alert."""
        return {
            dm1_rule(source, dtc): severity
            for source, dtcs in self._active.items()
            for severity, dtc in dtcs.values()
        }

    def observe(self, ts: float, source: int, dm1: Dm1) -> list[Alert]:
        self._now = ts
        severity = dm1_severity(dm1)
        before = self._active.get(source, {})
        now = {(dtc.spn, dtc.fmi): dtc for dtc in dm1.dtcs}
        changes: list[Alert] = []
        for key, dtc in now.items():
            previous = before.get(key)
            if previous is None or previous[0] != severity:
                message = _message(source, dtc, _LAMP_TEXT[severity])
                changes.append(
                    Alert(ts, dm1_rule(source, dtc), severity, True, float(dtc.occurrences), message)
                )
        for key, (was, dtc) in before.items():
            if key not in now:
                message = _message(source, dtc, "no longer active")
                changes.append(Alert(ts, dm1_rule(source, dtc), was, False, float(dtc.occurrences), message))
        if now:
            self._active[source] = {key: (severity, dtc) for key, dtc in now.items()}
            self._seen[source] = ts
        else:
            self._active.pop(source, None)
            self._seen.pop(source, None)
        return changes

    def expire(self, stream_now: float) -> list[Alert]:
        """Clear the DTCs of every ECU whose DM1 has not come for `timeout_s` (see the module docstring)."""
        if not self._seen:
            return []
        now = self._now
        if now < stream_now <= now + self.max_jump_s:
            now = stream_now
        changes: list[Alert] = []
        for source, seen in list(self._seen.items()):
            if seen - now > self.max_jump_s:  # from before a clock step back: count from here
                self._seen[source] = now
            elif now - seen > self.timeout_s:
                del self._seen[source]
                self.expired += 1
                state = f"no DM1 from this ECU for {now - seen:.1f} s, no longer reported"
                for severity, dtc in self._active.pop(source).values():
                    message = _message(source, dtc, state)
                    rule = dm1_rule(source, dtc)
                    changes.append(Alert(now, rule, severity, False, float(dtc.occurrences), message))
        return changes
