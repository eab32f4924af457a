"""Decode CPU per frame: the agent's `Decoder.process` against a straightforward cantools decoder, on a
simulated bus as recorded and on the same bus with its J1939 frames sent as a real truck sends them.

Run: python bench/decode_frames.py [--minutes M] [--repeat R]
Prints figures; asserts nothing. Single process, CPU time (`time.process_time`), best of `--repeat`.

Workloads (both from `voltgate-sim record --seed 1`, the realistic mix of the 12 m bus):
* as recorded: every frame carries its DBC identifier.
* re-addressed: each J1939 frame (CCVS1, VDHR, AMB) gets another priority and one of four source addresses,
  in rotation, as a truck whose body controller, instrument cluster and engine all broadcast these PGNs.

Decoders (both keep the same samples: the same catalog and sampling policy):
* ours: `agent.decode.Decoder.process` (exact-id plans, J1939 PGN plans, bit-field decoding).
* baseline: what one writes with cantools directly: per frame, J1939 ids matched by
  `cantools.j1939.pgn_from_frame_id` in a PGN → message dict, others by id, then `Message.decode_simple`,
  then the catalog's signals through `SignalSampler`.

Run it from another checkout (PYTHONPATH=that checkout) to measure that checkout's `Decoder` on the same
frames: the baseline column is the common yardstick.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import can
from cantools.j1939 import pgn_from_frame_id

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # after PYTHONPATH: another checkout's `agent` wins

from agent.decode import Decoder  # noqa: E402
from agent.records import Frame, Sample, frame_from_message  # noqa: E402
from protocols.catalog import DEFAULT_CATALOG, Catalog, SignalSampler, load_catalog  # noqa: E402

SOURCES = (
    0x00,
    0x17,
    0x21,
    0x31,
)  # engine #1, instrument cluster, body controller, cab controller (J1939-81 preferred addresses)
PRIORITIES = (3, 6, 7)


def record(minutes: int, out: Path) -> list[Frame]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "record",
            "--duration",
            f"{minutes}m",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with can.LogReader(str(out)) as reader:
        return [frame_from_message("bench", message) for message in reader]


def readdressed(frames: Sequence[Frame]) -> list[Frame]:
    out: list[Frame] = []
    turn = 0
    for frame in frames:
        if frame.is_extended:
            turn += 1
            priority, source = PRIORITIES[turn % len(PRIORITIES)], SOURCES[turn % len(SOURCES)]
            new_id = (frame.arbitration_id & 0x03FFFF00) | (priority << 26) | source
            # `Frame` is a named tuple; older checkouts (run through PYTHONPATH) have it as a dataclass
            frame = (
                frame._replace(arbitration_id=new_id)
                if hasattr(frame, "_replace")
                else replace(frame, arbitration_id=new_id)
            )
        out.append(frame)
    return out


Process = Callable[[Frame], list[Sample]]


def ours(catalog: Catalog) -> tuple[Process, Callable[[], int]]:
    decoder = Decoder(catalog, bus="bench")
    return decoder.process, lambda: decoder.stats.values_decoded


def baseline(catalog: Catalog) -> tuple[Process, Callable[[], int]]:
    by_id, by_pgn = {}, {}
    for frame_id, spec in catalog.frames().items():  # cantools' message and the catalog's signals of it
        if spec.message.protocol == "j1939":
            by_pgn[pgn_from_frame_id(frame_id)] = (spec.cantools_message(), spec.signals)
        else:
            by_id[frame_id] = (spec.cantools_message(), spec.signals)
    samplers = {spec.name: SignalSampler(spec.policy) for spec in catalog if spec.source == "can"}
    values = [0]

    def process(frame: Frame) -> list[Sample]:
        found = (
            by_pgn.get(pgn_from_frame_id(frame.arbitration_id))
            if frame.is_extended
            else by_id.get(frame.arbitration_id)
        )
        if found is None or len(frame.data) < found[0].length:
            return []
        message, wanted = found
        try:
            raw = message.decode_simple(frame.data, decode_choices=False)
        except Exception:
            return []
        samples = []
        for dbc_signal, signal in wanted:
            value = raw.get(dbc_signal)
            values[0] += value is not None
            if value is not None and samplers[signal.name].offer(frame.ts, float(value)):  # type: ignore[arg-type]
                samples.append(Sample(frame.ts, signal.name, float(value), signal.priority))  # type: ignore[arg-type]
        return samples

    return process, lambda: values[0]


def cpu_per_frame(
    make: Callable[[], tuple[Process, Callable[[], int]]], frames: Sequence[Frame], repeat: int
) -> tuple[float, int, int]:
    """Best CPU µs per frame over `repeat` runs, and the values decoded and samples kept (of the last run)."""
    best, samples, values = float("inf"), 0, 0
    for _ in range(repeat):
        process, decoded = make()  # fresh sampling state each run
        start = time.process_time()
        samples = sum(len(process(frame)) for frame in frames)
        best = min(best, time.process_time() - start)
        values = decoded()
    return best / len(frames) * 1e6, values, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10, help="simulated minutes of bus")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is kept")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the decoder logs each skip kind once per run
    catalog = load_catalog(DEFAULT_CATALOG)
    with tempfile.TemporaryDirectory() as tmp:
        frames = record(args.minutes, Path(tmp) / "bus.log")
    print(f"decoder under test: {sys.modules['agent.decode'].__file__}")
    print(f"{len(frames):,} frames ({args.minutes} simulated minutes)")
    print(
        f"{'workload':<13} {'ours µs/frame':>13} {'baseline µs/frame':>17} {'ratio':>6}"
        f" {'ours values/samples':>20} {'baseline values/samples':>24}"
    )
    for name, workload in (("as recorded", frames), ("re-addressed", readdressed(frames))):
        us, values, samples = cpu_per_frame(lambda: ours(catalog), workload, args.repeat)
        base_us, base_values, base_samples = cpu_per_frame(lambda: baseline(catalog), workload, args.repeat)
        print(
            f"{name:<13} {us:>13.2f} {base_us:>17.2f} {base_us / us:>5.1f}x"
            f" {f'{values:,}/{samples:,}':>20} {f'{base_values:,}/{base_samples:,}':>24}"
        )


if __name__ == "__main__":
    main()
