"""Driver and fleet alerts from J1939 DM1: each active diagnostic trouble code of each ECU is one alert.

    Decoder (DM1 of sender SA) ─on_dm1─► DtcAlerts.observe ─► Alert on every change ─► `derived`, driver log

A DTC (SPN + FMI) that appears in an ECU's DM1 raises `dm1:sa{SA}:spn{SPN}:fmi{FMI}`
(`protocols.j1939.dm1_rule`); one that is gone from that ECU's next DM1 clears it. The severity comes from
the lamps that DM1 reports (SAE J1939-73 §5.7.1: the lamps are the ECU's, not a DTC's): red stop lamp on →
critical, amber warning lamp on → warning, anything else → info. A lamp change while a DTC stays active
re-raises it at the new severity, as a threshold alert escalates. The alert's value is the DTC's
occurrence count. Pure: no I/O, source time only.
"""

from __future__ import annotations

from agent.records import Alert, Severity
from protocols.j1939 import Dm1, Dtc, dm1_rule

_LAMP_ON = 1


def dm1_severity(dm1: Dm1) -> Severity:
    if dm1.red_stop_lamp == _LAMP_ON:
        return "critical"
    if dm1.amber_warning_lamp == _LAMP_ON:
        return "warning"
    return "info"


def _message(source: int, dtc: Dtc, severity: Severity, active: bool) -> str:
    lamp = {"critical": "red stop lamp on", "warning": "amber warning lamp on", "info": "no warning lamp"}
    state = lamp[severity] if active else "no longer active"
    return (
        f"ECU 0x{source:02X} diagnostic trouble code SPN {dtc.spn} FMI {dtc.fmi}"
        f" (occurrences {dtc.occurrences}): {state}"
    )


class DtcAlerts:
    """Feed each DM1 with `observe`; get the alerts that changed."""

    def __init__(self) -> None:
        self._active: dict[int, dict[tuple[int, int], tuple[Severity, Dtc]]] = {}  # SA → (SPN, FMI) → …

    def active(self) -> dict[str, Severity]:
        """Rule → severity of every raised DTC alert."""
        return {
            dm1_rule(source, dtc): severity
            for source, dtcs in self._active.items()
            for severity, dtc in dtcs.values()
        }

    def observe(self, ts: float, source: int, dm1: Dm1) -> list[Alert]:
        severity = dm1_severity(dm1)
        before = self._active.get(source, {})
        now = {(dtc.spn, dtc.fmi): dtc for dtc in dm1.dtcs}
        changes: list[Alert] = []
        for key, dtc in now.items():
            previous = before.get(key)
            if previous is None or previous[0] != severity:
                message = _message(source, dtc, severity, True)
                changes.append(
                    Alert(ts, dm1_rule(source, dtc), severity, True, float(dtc.occurrences), message)
                )
        for key, (was, dtc) in before.items():
            if key not in now:
                message = _message(source, dtc, was, False)
                changes.append(Alert(ts, dm1_rule(source, dtc), was, False, float(dtc.occurrences), message))
        if now:
            self._active[source] = {key: (severity, dtc) for key, dtc in now.items()}
        else:
            self._active.pop(source, None)
        return changes
