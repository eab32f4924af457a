"""voltgate-sim: a simulated battery-electric bus on a CAN bus, a GPS serial line, or in log files.

    voltgate-sim record --duration 1h --seed 7 --out bus.log [--nmea gps.nmea] [--truth truth.csv]
                        [--start 2024-03-04T02:25:00Z] [--fault can_frame_loss@10m/5m=0.2 ...]
        as fast as the CPU allows; the CAN log format follows the extension (.log candump -L, .asc,
        .blf); prints the speed-up.
    voltgate-sim run (--can-interface virtual --can-channel bus0 | --slcan-pty) [--nmea-pty |
                     --nmea-port /dev/ttyUSB0] [--realtime | --speed X | --fast] [--duration 2h]
        streams live; prints `slcan-pty PATH` / `nmea-pty PATH` on stdout for the host to open, and a
        status line every --status-every simulated seconds on stderr. Ctrl-C / SIGTERM end it cleanly.
    voltgate-sim truth --out truth.csv[.gz] [--scenario day.json] [--duration 11h30m] [--seed 7]
                       [--start ...] [--ambient-mean-c 19 --ambient-amplitude-c 6] [--aggressiveness 0.5]
                       [--peak-boardings 2.2] [--soh-pct 100] [--initial-soc-pct 100] [--round-trips 4]
                       [--layover-charging] [--random-faults PER_DAY [--random-fault-kind KIND ...]]
                       [--fault SPEC ...]
        the ground truth of one bus-day (simulator.truth: every state at 1 Hz plus the lookahead labels),
        gzip when the name ends in .gz. The scenario comes from options, or from a JSON object whose keys
        are the long option names with `_` for `-` (`faults` and `random_fault_kinds` are lists; `start`
        is ISO 8601; `duration` is seconds or a duration); an option given beside --scenario wins.
        A kind repeated in --random-fault-kind is drawn that much more often.

Times and durations: `90`, `90s`, `15m`, `1h`, `1h30m`, `0.5h`. Faults: `KIND[:TARGET]@ONSET[/DURATION]
[=SEVERITY]`, KIND one of simulator.faults.FaultKind (sensor faults need a TARGET, a BusState field).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulator.bus import BusConfig, BusSimulator
from simulator.emit_can import CanEmitter
from simulator.emit_nmea import NmeaEmitter
from simulator.emit_sinks import (
    LOG_SUFFIXES,
    BusSink,
    CanSink,
    LogSink,
    NmeaFileSink,
    NmeaPtySink,
    NmeaSerialSink,
    NmeaSink,
    Outputs,
    Pacer,
    RunStats,
    SlcanSink,
    stream,
)
from simulator.faults import FaultKind, FaultSchedule
from simulator.scenario import (
    Scenario,
    UsageError,
    fault_schedule,
    load_scenario,
    parse_duration,
    parse_fault,
    parse_fault_kind,
    parse_local_time,
    parse_start,
)
from simulator.state import BusState
from simulator.truth import write_truth_csv

log = logging.getLogger("simulator")


def _option_fault_kind(text: str) -> FaultKind:
    try:
        return parse_fault_kind(text)
    except UsageError as err:
        raise UsageError(f"--random-fault-kind {err}") from None


def parse_scenario(args: argparse.Namespace) -> Scenario:
    """The scenario from --scenario, then every scenario option given on the command line over it."""
    fields = load_scenario(args.scenario) if args.scenario is not None else {}
    given: dict[str, Any] = {
        "seed": args.seed,
        "start_utc": parse_start(args.start) if args.start is not None else None,
        "duration_s": parse_duration(args.duration) if args.duration is not None else None,
        "ambient_mean_c": args.ambient_mean_c,
        "ambient_amplitude_c": args.ambient_amplitude_c,
        "aggressiveness": args.aggressiveness,
        "peak_boardings": args.peak_boardings,
        "soh_pct": args.soh_pct,
        "initial_soc_pct": args.initial_soc_pct,
        "round_trips": args.round_trips,
        "layover_charging": args.layover_charging,
        "faults_per_day": args.random_faults,
        "fault_kinds": (
            tuple(_option_fault_kind(k) for k in args.random_fault_kinds) if args.random_fault_kinds else None
        ),
        "faults": tuple(parse_fault(f) for f in args.faults) if args.faults else None,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    return dataclasses.replace(Scenario(), **fields)


# -- the parser -------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the bus, its day and its faults")
    p.add_argument("--start", help="simulation start, ISO 8601 UTC (default: 05:00 Nairobi time)")
    p.add_argument(
        "--departure",
        metavar="HH:MM",
        help="local time the bus leaves the depot for its block (default 05:30; Nairobi time, UTC+3)",
    )
    p.add_argument("--fault", action="append", default=[], metavar="SPEC", help="inject a fault (repeat)")
    p.add_argument(
        "--random-faults",
        type=float,
        default=0.0,
        metavar="PER_DAY",
        help="also faults at random, from --seed",
    )
    p.add_argument("--dt", type=float, help="physics step in seconds (default: the shortest CAN cycle)")
    p.add_argument("--talker", default="GN", help="NMEA talker id, GN or GP (default GN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voltgate-sim", description="A simulated battery-electric bus.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("record", help="record a run to files, as fast as the CPU allows")
    rec.add_argument("--duration", default="1h", help="simulated time (default 1h)")
    rec.add_argument("--out", required=True, type=Path, help="CAN log: .log (candump -L), .asc or .blf")
    rec.add_argument("--nmea", type=Path, help="NMEA sentences at 1 Hz to this file")
    rec.add_argument("--truth", type=Path, help="ground truth CSV at 1 Hz to this file")
    _common(rec)

    run = sub.add_parser("run", help="stream a live bus onto CAN and serial lines")
    run.add_argument("--can-interface", help="python-can interface: virtual, socketcan, ...")
    run.add_argument("--can-channel", help="its channel: a virtual bus name, can0, vcan0, ...")
    run.add_argument("--slcan-pty", action="store_true", help="act as an SLCAN adapter on a new pty")
    run.add_argument("--out", type=Path, help="also record the CAN frames to this log")
    run.add_argument("--nmea-pty", action="store_true", help="act as a GPS receiver on a new pty")
    run.add_argument("--nmea-port", help="write NMEA to this serial port (a pyserial URL)")
    run.add_argument("--nmea-baud", type=int, default=9600, help="baud rate of --nmea-port (default 9600)")
    pace = run.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="one simulated second per second (default)")
    pace.add_argument("--speed", type=float, help="simulated seconds per wall second")
    pace.add_argument("--fast", action="store_true", help="as fast as the CPU allows")
    run.add_argument("--duration", help="simulated time (default: until stopped)")
    run.add_argument("--status-every", type=float, default=60.0, metavar="S", help="simulated s per status")
    _common(run)

    d = Scenario()
    tru = sub.add_parser("truth", help="write the ground truth of one bus-day, as fast as the CPU allows")
    tru.add_argument("--out", required=True, type=Path, help="truth CSV at 1 Hz (gzip when it ends in .gz)")
    tru.add_argument("--scenario", type=Path, metavar="FILE.json", help="the scenario as a JSON object")
    tru.add_argument("--seed", type=int, help=f"seed of the bus, its day and its faults (default {d.seed})")
    tru.add_argument("--start", help="simulation start, ISO 8601 UTC (default: 05:00 Nairobi time)")
    tru.add_argument("--duration", help="simulated time (default 1h)")
    tru.add_argument(
        "--ambient-mean-c", type=float, metavar="C", help=f"day's mean (default {d.ambient_mean_c:g})"
    )
    tru.add_argument(
        "--ambient-amplitude-c",
        type=float,
        metavar="C",
        help=f"± over the day (default {d.ambient_amplitude_c:g})",
    )
    tru.add_argument(
        "--aggressiveness",
        type=float,
        metavar="A",
        help=f"driver, 0 calm to 1 (default {d.aggressiveness:g})",
    )
    tru.add_argument(
        "--peak-boardings", type=float, metavar="N", help=f"per stop at peak (default {d.peak_boardings:g})"
    )
    tru.add_argument(
        "--soh-pct", type=float, metavar="PCT", help=f"pack state of health (default {d.soh_pct:g})"
    )
    tru.add_argument(
        "--initial-soc-pct",
        type=float,
        metavar="PCT",
        help=f"SOC at the start (default {d.initial_soc_pct:g})",
    )
    tru.add_argument(
        "--round-trips", type=int, metavar="N", help=f"per daily block (default {d.round_trips})"
    )
    tru.add_argument(
        "--layover-charging",
        action=argparse.BooleanOptionalAction,
        help="charge at the depot-end terminus during layovers (default: no)",
    )
    tru.add_argument("--random-faults", type=float, metavar="PER_DAY", help="faults at random, from --seed")
    tru.add_argument(
        "--random-fault-kind",
        action="append",
        dest="random_fault_kinds",
        metavar="KIND",
        help="a kind --random-faults draws from (repeat; default: all)",
    )
    tru.add_argument(
        "--fault", action="append", dest="faults", metavar="SPEC", help="inject a fault (repeat)"
    )
    tru.add_argument(
        "--dt", type=float, default=1.0, metavar="S", help="physics step in seconds, at most 1 (default 1)"
    )
    return parser


def _config(args: argparse.Namespace, horizon_s: float | None) -> BusConfig:
    faults = [parse_fault(f) for f in args.fault]
    if args.random_faults:
        if not args.random_faults > 0 or horizon_s is None:
            raise UsageError("--random-faults needs a rate above zero and a --duration")
        faults += FaultSchedule.random(args.seed, horizon_s, args.random_faults).faults
    kwargs: dict[str, object] = {"seed": args.seed, "faults": fault_schedule(faults, args.seed)}
    if args.start:
        kwargs["start_utc"] = parse_start(args.start)
    if args.departure:
        kwargs["departure_local_h"] = parse_local_time(args.departure)
    return BusConfig(**kwargs)  # type: ignore[arg-type]


def _check_output(path: Path | None, flag: str) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: the directory {path.parent} does not exist")


def _dt(args: argparse.Namespace, emitter: CanEmitter) -> float:
    dt = emitter.min_cycle_s if args.dt is None else args.dt
    if not 0.0 < dt <= 10.0:
        raise UsageError(f"--dt {args.dt} must be above 0 and at most 10 seconds")
    if dt > emitter.min_cycle_s + 1e-9:
        log.warning("--dt %g s is longer than the fastest CAN cycle: those messages go once per step", dt)
    return dt


def _talker(args: argparse.Namespace) -> str:
    if args.talker not in ("GN", "GP"):
        raise UsageError(f"--talker {args.talker!r} must be GN or GP")
    return str(args.talker)


# -- commands ---------------------------------------------------------------------------------------


def record(args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration)
    if duration <= 0:
        raise UsageError("--duration must be above zero")
    if args.out.suffix.lower() not in LOG_SUFFIXES:
        raise UsageError(f"--out {args.out} must end in one of {', '.join(LOG_SUFFIXES)}")
    for path, flag in ((args.out, "--out"), (args.nmea, "--nmea"), (args.truth, "--truth")):
        _check_output(path, flag)
    config = _config(args, duration)
    talker = _talker(args)
    emitter = CanEmitter(seed=args.seed)
    dt = _dt(args, emitter)

    outputs = Outputs(can_emitter=emitter, nmea_emitter=NmeaEmitter(talker))
    outputs.can_sinks.append(LogSink(args.out))
    if args.nmea is not None:
        outputs.nmea_sinks.append(NmeaFileSink(args.nmea))
    stats = RunStats()
    sim = BusSimulator(config)
    wall0 = time.perf_counter()
    try:
        flow = stream(sim.run(duration, dt), outputs, Pacer(None), stats, start_t_s=sim.t_s)
        truth_rows = write_truth_csv(flow, args.truth) if args.truth is not None else _drain(flow)
    finally:
        outputs.close()
    wall = time.perf_counter() - wall0
    speedup = stats.sim_s / wall if wall > 0 else math.inf
    print(
        f"recorded {stats.sim_s:,.0f} s of bus in {wall:.2f} s: x{speedup:,.0f} real time; "
        f"{stats.frames:,} CAN frames ({stats.frames / wall:,.0f} frames/s) -> {args.out}"
    )
    if args.nmea is not None:
        print(f"{stats.nmea_epochs:,} NMEA epochs -> {args.nmea}")
    if args.truth is not None:
        print(f"{truth_rows:,} truth rows -> {args.truth}")
    st = emitter.stats
    if st.dropped or st.corrupted:
        print(f"wire faults: {st.dropped:,} frames dropped, {st.corrupted:,} corrupted")
    return 0


def _drain(flow: Iterator[BusState]) -> int:
    n = 0
    for _ in flow:
        n += 1
    return n


def _forever(sim: BusSimulator, dt: float) -> Iterator[BusState]:
    while True:
        yield sim.step(dt)


def _status(state: BusState, stats: RunStats) -> None:
    clock = datetime.fromtimestamp(state.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elapsed = int(stats.sim_s)
    h, rem = divmod(elapsed, 3600)
    gps = f"{state.lat_deg:.5f},{state.lon_deg:.5f}" if state.gps_valid else "no fix"
    log.info(
        "+%d:%02d:%02d %s  %5.1f km/h  SOC %5.1f %%  %s  %d frames  x%.1f",
        h,
        rem // 60,
        rem % 60,
        clock,
        state.speed_kmh,
        state.soc_pct,
        gps,
        stats.frames,
        stats.sim_s / stats.wall_s if stats.wall_s > 0 else 0.0,
    )


def truth(args: argparse.Namespace) -> int:
    _check_output(args.out, "--out")
    if not 0.0 < args.dt <= 1.0:
        raise UsageError(f"--dt {args.dt:g} must be above 0 and at most 1 second (the truth is at 1 Hz)")
    scenario = parse_scenario(args)
    scenario.check()
    sim = BusSimulator(scenario.config())
    wall0 = time.perf_counter()
    rows = write_truth_csv(sim.run(scenario.duration_s, args.dt), args.out)
    wall = time.perf_counter() - wall0
    print(f"{rows:,} truth rows ({scenario.duration_s:,.0f} s of bus in {wall:.2f} s) -> {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if (args.can_interface is None) != (args.can_channel is None):
        raise UsageError("--can-interface and --can-channel go together")
    if args.nmea_pty and args.nmea_port:
        raise UsageError("choose one of --nmea-pty and --nmea-port")
    if not (args.can_interface or args.slcan_pty or args.nmea_pty or args.nmea_port or args.out):
        raise UsageError("give at least one output: --can-interface/--can-channel, --slcan-pty, --nmea-pty")
    if args.speed is not None and not args.speed > 0:
        raise UsageError(f"--speed {args.speed} must be above zero")
    if args.out is not None and args.out.suffix.lower() not in LOG_SUFFIXES:
        raise UsageError(f"--out {args.out} must end in one of {', '.join(LOG_SUFFIXES)}")
    _check_output(args.out, "--out")
    duration = parse_duration(args.duration) if args.duration else None
    config = _config(args, duration)
    talker = _talker(args)
    emitter = CanEmitter(seed=args.seed)
    dt = _dt(args, emitter)
    speed = None if args.fast else (args.speed or 1.0)

    can_sinks: list[CanSink] = []
    nmea_sinks: list[NmeaSink] = []
    outputs = Outputs(emitter, can_sinks, NmeaEmitter(talker), nmea_sinks)
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C
    try:
        if args.can_interface:
            try:
                can_sinks.append(BusSink.open(args.can_interface, args.can_channel))
            except Exception as err:  # python-can raises many kinds for a bus it cannot open
                log.error("cannot open CAN %s channel %s: %s", args.can_interface, args.can_channel, err)
                return 1
        if args.slcan_pty:
            slcan = SlcanSink()
            can_sinks.append(slcan)
            print(f"slcan-pty {slcan.path}", flush=True)
        if args.out is not None:
            can_sinks.append(LogSink(args.out))
        if args.nmea_pty:
            pty = NmeaPtySink()
            nmea_sinks.append(pty)
            print(f"nmea-pty {pty.path}", flush=True)
        if args.nmea_port:
            try:
                nmea_sinks.append(NmeaSerialSink(args.nmea_port, args.nmea_baud))
            except OSError as err:
                log.error("cannot open NMEA port %s: %s", args.nmea_port, err)
                return 1
        sim = BusSimulator(config)
        states = sim.run(duration, dt) if duration is not None else _forever(sim, dt)
        stats = RunStats()
        pace = "as fast as possible" if speed is None else f"x{speed:g} real time"
        log.info("running the bus (seed %d, step %.3g s, %s)", args.seed, dt, pace)
        flow = stream(states, outputs, Pacer(speed), stats, sim.t_s, args.status_every, _status)
        try:
            _drain(flow)
        except KeyboardInterrupt:
            log.info("stopped")
        log.info(
            "ran %.0f simulated s, %d CAN frames, %d NMEA epochs",
            stats.sim_s,
            stats.frames,
            stats.nmea_epochs,
        )
    finally:
        outputs.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return {"record": record, "run": run, "truth": truth}[args.command](args)
    except UsageError as err:
        parser.exit(2, f"voltgate-sim {args.command}: error: {err}\n")
    except OSError as err:
        parser.exit(1, f"voltgate-sim {args.command}: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
