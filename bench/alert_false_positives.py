"""Driver alerts that cry wolf: false alerts per rule per 100 healthy bus-hours; how soon real faults alert.

    python bench/alert_false_positives.py [--buses 4] [--hours 14] [--jobs 2] [--no-faults]

Each simulated bus (`simulator.bus.BusSimulator`, its CAN frames from `simulator.emit_can.CanEmitter` at
the DBC's cycle times, its NMEA sentences at 1 Hz) goes through the agent's own code, one process per bus,
in source time, as `voltgate-agent run` wires it: `agent.decode.Decoder.process` (decode and the catalog's
sampling policy), `protocols.nmea.NmeaReader` and `agent.sources.gps.FixSampler` for the GPS, every kept
sample to the `InferenceStage` (the shipped ONNX models, a prediction every 60 s of source time) and to the
`AlertStage` (`observe`), and every prediction to the alert stage. Left out: the clock gate (every stamp
here is plausible), the buffer and the uplink (they do not touch alerts).

Healthy buses: `--buses` buses (seeds 1.., each with its own driver, load and weather) for `--hours` each
from 05:00 Nairobi time: a service block, the return to the depot and the charge. A warning or critical
alert is *false* unless the simulator's ground truth (the bus state, once a second) shows its condition in
the two minutes before it was raised (for cell_imbalance: the true spread at or above the level's
threshold with the pack near rest on the flat of the curve; for a BMS-flag rule: the flag; for a forecast:
what came to pass). The baseline beside it, from the same runs: the simulated BMS's own alarm flags.

Faults (`simulator.faults`): a bus with a growing cell imbalance and one with degrading insulation, each
injected an hour in: when the BMS's flag and each agent alert first came after onset, and any alert
raised before onset.

Prints figures; asserts nothing. The simulator's frame encoding dominates the time; `--jobs` processes.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from agent.alerts import AlertStage
from agent.decode import Decoder
from agent.inference import InferenceStage
from agent.records import Alert, Prediction, Sample, frame_from_message
from agent.settings import AlertSettings, InferenceSettings
from agent.sources.gps import FixSampler
from protocols.catalog import load_catalog
from protocols.nmea import NmeaReader
from simulator.bus import BusSimulator
from simulator.emit_can import CanEmitter
from simulator.emit_nmea import NmeaEmitter
from simulator.faults import Fault, FaultKind
from simulator.scenario import Scenario
from simulator.state import BusState

TRUTH_LOOKBACK_S = 120.0  # an alert is justified by its condition in the truth this long before it
IMBALANCE_REST_A = AlertSettings().cell_imbalance_max_current_a
FLAG_NAMES = ("over_temperature", "under_voltage", "over_voltage", "cell_imbalance", "insulation_low",
              "over_current", "derate")  # fmt: skip
FLAG_OF_RULE = {  # rule -> the BMS flag that is its truth
    "derate": "derate",
    "bms_fault:OverTemperature": "over_temperature",
    "bms_fault:UnderVoltage": "under_voltage",
    "bms_fault:OverVoltage": "over_voltage",
    "bms_fault:CellImbalance": "cell_imbalance",
    "bms_fault:InsulationLow": "insulation_low",
    "bms_fault:OverCurrent": "over_current",
}


@dataclass(frozen=True)
class BusRun:
    label: str
    scenario: Scenario
    fault: Fault | None = None


@dataclass
class Truth:
    """The bus as it was, once a second of simulation time."""

    ts: list[float] = field(default_factory=list)
    soc_pct: list[float] = field(default_factory=list)
    current_a: list[float] = field(default_factory=list)
    spread_mv: list[float] = field(default_factory=list)
    cell_t_max_c: list[float] = field(default_factory=list)
    ohm_per_v: list[float] = field(default_factory=list)
    flags: list[frozenset[str]] = field(default_factory=list)

    def add(self, s: BusState) -> None:
        self.ts.append(s.ts)
        self.soc_pct.append(s.soc_pct)
        self.current_a.append(s.pack_current_a)
        self.spread_mv.append((s.cell_v_max - s.cell_v_min) * 1000.0)
        self.cell_t_max_c.append(s.cell_t_max_c)
        self.ohm_per_v.append(
            s.insulation_kohm * 1000.0 / s.pack_voltage_v if s.pack_voltage_v > 50 else math.inf
        )
        self.flags.append(frozenset(name for name in FLAG_NAMES if getattr(s.flags, name)))

    def window(self, t0: float, t1: float) -> range:
        first = self.ts[0]
        lo = max(0, int(t0 - first))
        hi = min(len(self.ts), int(t1 - first) + 1)
        return range(lo, max(lo, hi))


@dataclass
class RunResult:
    run: BusRun
    hours: float
    alerts: list[Alert]
    truth: Truth
    frames: int
    samples: int
    predictions: int
    wall_s: float


def _states(run: BusRun) -> Iterator[BusState]:
    sim = BusSimulator(run.scenario.config())
    yield from sim.run(run.scenario.duration_s, CanEmitter().min_cycle_s)


def simulate(run: BusRun) -> RunResult:
    """One bus through the agent's decode, sampling, inference and alert stages (in source time)."""
    started = time.perf_counter()
    catalog = load_catalog()
    emitter, nmea = CanEmitter(), NmeaEmitter()
    decoder, reader, fixes = Decoder(catalog, bus="sim"), NmeaReader(), FixSampler(catalog)
    alerts_stage = AlertStage(AlertSettings(led_info=None, led_warning=None, led_critical=None))
    inference = InferenceStage(InferenceSettings())
    for model in inference.check_models():
        alerts_stage.model_loaded(model.name, dict(model.thresholds))
    alerts: list[Alert] = []
    truth = Truth()
    frames = samples = predictions = 0

    def feed(kept: Sequence[Sample]) -> None:
        nonlocal samples, predictions
        for sample in kept:
            samples += 1
            alerts.extend(alerts_stage.observe(sample))
            tick = inference.add(sample)
            if tick is not None:
                made: list[Prediction] = inference.predict_at(tick)
                predictions += len(made)
                for prediction in made:
                    alerts.extend(alerts_stage.observe(prediction))

    next_truth = -math.inf
    for state in _states(run):
        if state.t_s >= next_truth:
            truth.add(state)
            next_truth = math.floor(state.t_s) + 1.0
        for message in emitter.frames(state):
            frames += 1
            feed(decoder.process(frame_from_message("sim", message)))
        text = "".join(nmea.sentences(state))
        if text:
            for fix in reader.feed(text.encode("ascii")):
                feed(fixes.samples(fix))
    return RunResult(
        run, run.scenario.duration_s / 3600.0, alerts, truth, frames, samples, predictions,
        time.perf_counter() - started,
    )  # fmt: skip


# --- judging the alerts against the truth ----------------------------------------------------------------


def _threshold(rule: str, severity: str) -> float:
    s = AlertSettings()
    return {
        ("low_soc", "warning"): s.soc_low_warning_pct,
        ("low_soc", "critical"): s.soc_low_critical_pct,
        ("over_temperature", "warning"): s.cell_temp_warning_c,
        ("over_temperature", "critical"): s.cell_temp_critical_c,
        ("cell_imbalance", "warning"): s.cell_imbalance_warning_mv,
        ("cell_imbalance", "critical"): s.cell_imbalance_critical_mv,
        ("insulation_low", "warning"): s.insulation_warning_ohm_per_v,
        ("insulation_low", "critical"): s.insulation_critical_ohm_per_v,
    }.get((rule, severity), math.nan)


def justified(alert: Alert, truth: Truth) -> bool:
    """Did the ground truth show the alert's condition in the look-back window before it was raised?"""
    s = AlertSettings()
    rule, limit = alert.rule, _threshold(alert.rule, alert.severity)
    seconds = truth.window(alert.ts - TRUTH_LOOKBACK_S, alert.ts)
    if rule in FLAG_OF_RULE:
        return any(FLAG_OF_RULE[rule] in truth.flags[i] for i in seconds)
    if rule == "low_soc":
        return any(truth.soc_pct[i] <= limit for i in seconds)
    if rule == "over_temperature":
        return any(truth.cell_t_max_c[i] >= limit for i in seconds)
    if rule == "insulation_low":
        return any(truth.ohm_per_v[i] <= limit for i in seconds)
    if rule == "cell_imbalance":
        return any(
            truth.spread_mv[i] >= limit
            and abs(truth.current_a[i]) <= IMBALANCE_REST_A
            and s.cell_imbalance_soc_min_pct <= truth.soc_pct[i] <= s.cell_imbalance_soc_max_pct
            for i in seconds
        )
    if rule == "soc_reserve":  # a forecast: SOC an hour later at or below the reserve (plus hysteresis)
        later = truth.window(alert.ts + 3600.0 - TRUTH_LOOKBACK_S, alert.ts + 3600.0 + TRUTH_LOOKBACK_S)
        return any(truth.soc_pct[i] <= s.soc_reserve_pct + s.soc_hysteresis_pp for i in later)
    if rule == "fault_risk":  # a forecast: a BMS fault or derate within 30 minutes
        return any(truth.flags[i] for i in truth.window(alert.ts, alert.ts + 1800.0))
    return True  # info rules are not judged


def _raised(result: RunResult) -> list[Alert]:
    return [a for a in result.alerts if a.active and a.severity in ("warning", "critical")]


def report_healthy(results: Sequence[RunResult]) -> None:
    hours = sum(r.hours for r in results)
    per100 = 100.0 / hours
    rules: dict[str, list[int]] = {}  # rule -> [warnings, criticals, false warnings, false criticals]
    for result in results:
        for alert in _raised(result):
            counts = rules.setdefault(alert.rule, [0, 0, 0, 0])
            critical = alert.severity == "critical"
            counts[critical] += 1
            if not justified(alert, result.truth):
                counts[2 + critical] += 1
    bms_raised = sum(
        1
        for r in results
        for before, now in zip(r.truth.flags, r.truth.flags[1:], strict=False)
        for flag in now - before
    )
    info = sum(1 for r in results for a in r.alerts if a.active and a.severity == "info")
    print(f"healthy: {len(results)} buses, {hours:.0f} bus-hours ({', '.join(r.run.label for r in results)})")
    print(f"{'rule':<26} {'warnings':>9} {'criticals':>10} {'false w':>8} {'false c':>8} "
          f"{'false w+c /100 bus-h':>21}")  # fmt: skip
    for rule in sorted(rules):
        w, c, fw, fc = rules[rule]
        print(f"{rule:<26} {w:>9} {c:>10} {fw:>8} {fc:>8} {(fw + fc) * per100:>21.1f}")
    total_false = sum(v[2] + v[3] for v in rules.values())
    print(f"{'all rules':<26} {sum(v[0] for v in rules.values()):>9} {sum(v[1] for v in rules.values()):>10} "
          f"{sum(v[2] for v in rules.values()):>8} {sum(v[3] for v in rules.values()):>8} "
          f"{total_false * per100:>21.1f}")  # fmt: skip
    baseline = "baseline: BMS flags raised"
    print(f"{baseline:<26} {bms_raised:>9} {'':>10} {'':>8} {'':>8} {bms_raised * per100:>21.1f}")
    print(f"(info alerts, not judged: {info}; {sum(r.frames for r in results):,} CAN frames, "
          f"{sum(r.samples for r in results):,} samples kept, {sum(r.predictions for r in results):,} "
          f"predictions)")  # fmt: skip


def report_fault(result: RunResult) -> None:
    fault = result.run.fault
    assert fault is not None
    onset = result.truth.ts[0] + fault.onset_s
    print(
        f"\n{result.run.label}: {fault.kind.value} at {fault.onset_s / 3600:g} h, severity {fault.severity:g}"
    )
    first_flag: dict[str, float] = {}
    for ts, flags in zip(result.truth.ts, result.truth.flags, strict=True):
        for flag in flags:
            first_flag.setdefault(flag, ts)
    for flag, ts in sorted(first_flag.items(), key=lambda kv: kv[1]):
        print(f"  baseline: BMS flag {flag:<22} {(ts - onset) / 60:>7.1f} min after onset")
    first: dict[tuple[str, str], float] = {}
    for alert in result.alerts:
        if alert.active:
            first.setdefault((alert.rule, alert.severity), alert.ts)
    for (rule, severity), ts in sorted(first.items(), key=lambda kv: kv[1]):
        when = f"{(ts - onset) / 60:>7.1f} min after onset" if ts >= onset else "BEFORE ONSET"
        print(f"  agent:    {rule:<26} {severity:<8} {when}")
    early = [a for a in _raised(result) if a.ts < onset]
    print(f"  warnings/criticals raised before onset: {len(early)}")


def _fault_run(label: str, seed: int, hours: float, fault: Fault) -> BusRun:
    return BusRun(label, Scenario(seed=seed, duration_s=hours * 3600.0, faults=(fault,)), fault)


def build_runs(buses: int, hours: float, faults: bool) -> list[BusRun]:
    drivers, weather = (0.3, 0.5, 0.7, 0.9), (17.0, 19.0, 23.0, 27.0)
    runs = [
        BusRun(
            f"bus {seed}",
            Scenario(
                seed=seed,
                duration_s=hours * 3600.0,
                aggressiveness=drivers[seed % len(drivers)],
                ambient_mean_c=weather[seed % len(weather)],
            ),
        )
        for seed in range(1, buses + 1)
    ]
    if faults:
        runs += [
            _fault_run("imbalance", 101, 5.0, Fault(FaultKind.CELL_IMBALANCE_GROWTH, 3600.0, severity=5.0)),
            _fault_run("insulation", 102, 3.0, Fault(FaultKind.INSULATION_DEGRADATION, 3600.0, severity=2.0)),
        ]
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--buses", type=int, default=4, help="healthy buses (default 4)")
    parser.add_argument(
        "--hours", type=float, default=14.0, help="simulated hours per healthy bus (default 14)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: CPUs)")
    parser.add_argument("--no-faults", action="store_true", help="healthy buses only")
    args = parser.parse_args()
    runs = build_runs(args.buses, args.hours, not args.no_faults)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(simulate, runs))
    healthy = [r for r in results if r.run.fault is None]
    report_healthy(healthy)
    for result in results:
        if result.run.fault is not None:
            report_fault(result)
    cpu = sum(r.wall_s for r in results)
    wall = time.perf_counter() - started
    print(f"\n{sum(r.hours for r in results):.0f} simulated bus-hours in {wall:.0f} s wall "
          f"({cpu:.0f} s in the workers, {args.jobs} processes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
