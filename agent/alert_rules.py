"""The agent's alert rules: what each one reads, which readings belong together, and its persistence.

Every rule builds its evidence from readings that describe one moment (`agent.alert_engine.Evidence`):

* Signals of one moment must come from one frame, or from frames within a coherence window of each
  other, judged by their source timestamps. The agent keeps a sample only when it moved past its deadband
  (`protocols/catalog.toml`), so the newest maximum and minimum cell voltages are often seconds apart,
  and the two samples of one frame arrive one after the other: a maximum taken just after a load step beside
  a minimum taken under load is a spread no cell ever had.
* A slow context signal (SOC, pack current as a gate, pack voltage as a scale) is read "as of" the
  moment: its newest reading at or before it, and only if that is younger than the signal's staleness limit
  (`STALE_AFTER_S`, beyond the catalog's heartbeat), never a value taken after the moment or one from a
  signal that has gone quiet.

Persistence (evidence spanning `raise_after_s` before raising, `clear_after_s` before dropping) and
hysteresis (the levels' `clear_at`), chosen per rule (raise / clear):

* low_soc (SOC): 10 s / 10 s. Two SOC readings at least 10 s apart; the BMS's SOC is already a filtered
  estimate and falls by tenths of a point a minute.
* soc_reserve (predicted drop, SOC as of the prediction), large_drop and fault_risk (one prediction each):
  60 s / 60 s, i.e. two consecutive predictions; one model run is one noisy draw.
* derate and bms_fault:* (the BMS's flags): none. The BMS decides and debounces them (the simulated
  one: 10 s for imbalance).
* over_temperature (hottest cell): 5 s / 5 s, two readings; a pack heats over minutes.
* cell_imbalance (maximum and minimum cell voltage of one frame, current and SOC as of it): 30 s / 30 s.
  A real imbalance grows over hours; a spread that lasts less than half a minute is not one.
* insulation_low (insulation resistance, pack voltage as of it): none. The insulation monitoring device
  (IEC 61557-8) measures over seconds itself, and the resistance moves over minutes to hours.

A reading that stops coming can neither raise nor clear a signal rule (it holds), and a prediction older
than `prediction_max_age_s` clears its rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from agent.alert_engine import Evidence, Level, Measure, Readings, Rule
from agent.settings import AlertSettings
from protocols.predictions import P_FAULT, P_LARGE_DROP, SOC_DROP_PP
from protocols.signals import (
    CELL_TEMP_MAX,
    CELL_V_MAX,
    CELL_V_MIN,
    DERATED,
    FAULT_FLAGS,
    INSULATION,
    PACK_CURRENT,
    PACK_VOLTAGE,
    SOC,
)

# Prediction outputs the rules read: the names agent.inference gives them (protocols.predictions).
SOC_DROP_OUTPUT: Final = SOC_DROP_PP
LARGE_DROP_OUTPUT: Final = P_LARGE_DROP
FAULT_RISK_OUTPUT: Final = P_FAULT

MIN_PACK_VOLTAGE_V: Final = 50.0  # below this the Ω/V ratio means nothing (pack sensor missing or reset)
CELL_PAIR_WINDOW_S: Final = 0.25  # max and min cell voltage this close in source time are one moment
# (under half the 500 ms cycle of BMS_CellVoltage: in protocols/bus.dbc, the same frame)

STALE_AFTER_S: Final[Mapping[str, float]] = {
    # a context reading older than this, before the moment it is read for, is stale: 1.5 x the heartbeat
    # (`max_interval_s`) of the shipped catalog, which resends an unchanged value that often
    PACK_CURRENT: 45.0,
    PACK_VOLTAGE: 45.0,
    SOC: 90.0,
}

PREDICTION_PERSIST_S: Final = 60.0  # the inference interval: two consecutive predictions


def _latest(name: str) -> Measure:
    def measure(r: Readings) -> Evidence | None:
        got = r.latest(name)
        return None if got is None else Evidence(got[1], got[0])

    return measure


def _prediction(output: str) -> Measure:
    def measure(r: Readings) -> Evidence | None:
        got = r.prediction(output)
        return None if got is None else Evidence(got[1], got[0])

    return measure


def _predicted_soc(r: Readings) -> Evidence | None:
    """SOC in 60 minutes: the SOC the prediction started from minus the drop it predicts."""
    drop = r.prediction(SOC_DROP_OUTPUT)
    if drop is None:
        return None
    ts, drop_pp = drop
    soc = r.as_of(SOC, ts, STALE_AFTER_S[SOC])
    return None if soc is None else Evidence(soc - drop_pp, ts)


def _insulation_ohm_per_v(r: Readings) -> Evidence | None:
    """Ω per volt of the pack voltage measured when the insulation reading was taken."""
    got = r.latest(INSULATION)
    if got is None:
        return None
    ts, kohm = got
    volts = r.as_of(PACK_VOLTAGE, ts, STALE_AFTER_S[PACK_VOLTAGE])
    if volts is None or volts < MIN_PACK_VOLTAGE_V:
        return None
    return Evidence(kohm * 1000.0 / volts, ts)


def _cell_spread_mv(settings: AlertSettings) -> Measure:
    def measure(r: Readings) -> Evidence | None:
        vmax, vmin = r.latest(CELL_V_MAX), r.latest(CELL_V_MIN)
        if vmax is None or vmin is None or abs(vmax[0] - vmin[0]) > CELL_PAIR_WINDOW_S:
            return None  # not one moment: wait for a pair
        ts = max(vmax[0], vmin[0])
        amps = r.as_of(PACK_CURRENT, ts, STALE_AFTER_S[PACK_CURRENT])
        soc = r.as_of(SOC, ts, STALE_AFTER_S[SOC])
        if amps is None or soc is None:
            return None
        if abs(amps) > settings.cell_imbalance_max_current_a:
            return None  # under load the spread is mostly internal resistance, not imbalance
        if not settings.cell_imbalance_soc_min_pct <= soc <= settings.cell_imbalance_soc_max_pct:
            return None  # at the knees of the LFP curve a few mAh of mismatch read as 100 mV
        return Evidence((vmax[1] - vmin[1]) * 1000.0, ts)

    return measure


def _two_levels(warning: float, critical: float, hysteresis: float, *, above: bool) -> tuple[Level, Level]:
    sign = -1.0 if above else 1.0
    return (
        Level("warning", warning, warning + sign * hysteresis),
        Level("critical", critical, critical + sign * hysteresis),
    )


def fault_risk_levels(probability: float, hysteresis: float) -> tuple[Level, ...]:
    return (Level("warning", probability, max(0.0, probability - hysteresis)),)


def build_rules(settings: AlertSettings) -> list[Rule]:
    """Every rule of the agent, thresholds from `settings` (see `AlertSettings` for their sources)."""
    s = settings
    ratio_w, ratio_c = s.insulation_warning_ohm_per_v, s.insulation_critical_ohm_per_v
    fault_p = s.fault_risk_probability
    rules = [
        Rule(
            "low_soc",
            frozenset({SOC}),
            _latest(SOC),
            _two_levels(s.soc_low_warning_pct, s.soc_low_critical_pct, s.soc_hysteresis_pp, above=False),
            above=False,
            unit="%",
            text="battery state of charge low",
            raise_after_s=10.0,
            clear_after_s=10.0,
        ),
        Rule(
            "soc_reserve",
            frozenset({SOC, SOC_DROP_OUTPUT}),
            _predicted_soc,
            (Level("warning", s.soc_reserve_pct, s.soc_reserve_pct + s.soc_hysteresis_pp),),
            above=False,
            unit="%",
            text="state of charge in 60 minutes predicted below reserve",
            clear_when_unknown=True,
            raise_after_s=PREDICTION_PERSIST_S,
            clear_after_s=PREDICTION_PERSIST_S,
        ),
        Rule(
            "large_drop",
            frozenset({LARGE_DROP_OUTPUT}),
            _prediction(LARGE_DROP_OUTPUT),
            (
                Level(
                    "info",
                    s.large_drop_probability,
                    max(0.0, s.large_drop_probability - s.probability_hysteresis),
                ),
            ),
            above=True,
            unit="",
            text="probability of a large state-of-charge drop within 60 minutes",
            clear_when_unknown=True,
            raise_after_s=PREDICTION_PERSIST_S,
            clear_after_s=PREDICTION_PERSIST_S,
        ),
        Rule(
            "fault_risk",
            frozenset({FAULT_RISK_OUTPUT}),
            _prediction(FAULT_RISK_OUTPUT),
            fault_risk_levels(fault_p, s.probability_hysteresis) if fault_p is not None else (),
            above=True,
            unit="",
            text="probability of a battery fault or derate within 30 minutes",
            clear_when_unknown=True,
            raise_after_s=PREDICTION_PERSIST_S,
            clear_after_s=PREDICTION_PERSIST_S,
        ),
        Rule(
            "derate",
            frozenset({DERATED}),
            _latest(DERATED),
            (Level("warning", 0.5, 0.5),),
            above=True,
            unit="",
            text="battery power derated",
        ),
        Rule(
            "over_temperature",
            frozenset({CELL_TEMP_MAX}),
            _latest(CELL_TEMP_MAX),
            _two_levels(s.cell_temp_warning_c, s.cell_temp_critical_c, s.cell_temp_hysteresis_k, above=True),
            above=True,
            unit="degC",
            text="battery cell temperature high",
            raise_after_s=5.0,
            clear_after_s=5.0,
        ),
        Rule(
            "cell_imbalance",
            frozenset({CELL_V_MAX, CELL_V_MIN, PACK_CURRENT, SOC}),
            _cell_spread_mv(s),
            _two_levels(
                s.cell_imbalance_warning_mv,
                s.cell_imbalance_critical_mv,
                s.cell_imbalance_hysteresis_mv,
                above=True,
            ),
            above=True,
            unit="mV",
            text="battery cell voltage imbalance",
            raise_after_s=30.0,
            clear_after_s=30.0,
        ),
        Rule(
            "insulation_low",
            frozenset({INSULATION, PACK_VOLTAGE}),
            _insulation_ohm_per_v,
            (
                Level("warning", ratio_w, ratio_w * (1.0 + s.insulation_hysteresis)),
                Level("critical", ratio_c, ratio_c * (1.0 + s.insulation_hysteresis)),
            ),
            above=False,
            unit="Ohm/V",
            text="high-voltage insulation resistance low",
        ),
    ]
    for flag in FAULT_FLAGS:
        kind = flag.rsplit(".", 1)[-1]
        rules.append(
            Rule(
                f"bms_fault:{kind}",
                frozenset({flag}),
                _latest(flag),
                (Level("critical", 0.5, 0.5),),
                above=True,
                unit="",
                text=f"battery management system fault {kind}",
            )
        )
    return rules
