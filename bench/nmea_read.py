"""CPU per NMEA sentence: `protocols.nmea.NmeaReader` against a plain line parser, same bytes, same run.

    python bench/nmea_read.py [--repeat 5] [--chunk 4096] [--rounds 5]

Workload: gpsd's regression captures in tests/data/nmea (twelve real receivers, with their binary
frames, corrupted lines and cut-off sentences) concatenated and repeated `--repeat` times, fed in
`--chunk`-byte reads as the GPS source reads its port (`agent.sources.gps.MAX_READ_BYTES`). Every
checksummed line counts as one sentence for both parsers.

Baseline: what a competent engineer writes without special effort: split the stream on LF, decode,
check the `*hh` checksum, split the fields, and for RMC and GGA convert time, latitude and longitude
to numbers. It does no epoch grouping, no validation of the other fields and no error accounting,
so it is a floor, not a competitor. Printed: CPU seconds (process time, best of `--rounds`) per
sentence for both and their ratio. Run it on two commits to compare versions: the ratio is what
travels between runs and machines, not the absolute times.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from protocols.nmea import NmeaReader

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "nmea"


def workload(repeat: int) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(DATA.glob("*.log"))) * repeat


def _minutes_to_deg(value: str, hemisphere: str) -> float:
    point = value.index(".")
    angle = int(value[: point - 2]) + float(value[point - 2 :]) / 60.0
    return -angle if hemisphere in ("S", "W") else angle


def baseline_parse(data: bytes, chunk: int) -> int:
    """Split on LF, checksum, fields; RMC/GGA time and position as numbers. Returns positions parsed."""
    positions = 0
    pending = b""
    for start in range(0, len(data), chunk):
        lines = (pending + data[start : start + chunk]).split(b"\n")
        pending = lines.pop()
        for raw in lines:
            line = raw.decode("ascii", "replace").strip()
            dollar = line.find("$")
            star = line.rfind("*")
            if dollar < 0 or star < dollar:
                continue
            body = line[dollar + 1 : star]
            checksum = 0
            for char in body:
                checksum ^= ord(char)
            try:
                if checksum != int(line[star + 1 : star + 3], 16):
                    continue
                fields = body.split(",")
                kind = fields[0][2:]
                if kind == "RMC" and fields[3]:
                    _ = float(fields[1] or 0), _minutes_to_deg(fields[3], fields[4])
                    _ = _minutes_to_deg(fields[5], fields[6])
                    positions += 1
                elif kind == "GGA" and fields[2]:
                    _ = float(fields[1] or 0), _minutes_to_deg(fields[2], fields[3])
                    _ = _minutes_to_deg(fields[4], fields[5])
                    positions += 1
            except (ValueError, IndexError):
                continue
    return positions


def reader_parse(data: bytes, chunk: int) -> int:
    reader = NmeaReader()
    fixes = 0
    for start in range(0, len(data), chunk):
        fixes += len(reader.feed(data[start : start + chunk]))
    return fixes + len(reader.flush())


def count_sentences(data: bytes) -> int:
    """Lines that carry a `$...*hh` sentence: the unit both parsers are charged per."""
    return sum(1 for line in data.split(b"\n") if b"$" in line and b"*" in line)


def best_cpu_s(run: Callable[[], int], rounds: int) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(rounds):
        start = time.process_time()
        result = run()
        best = min(best, time.process_time() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="copies of the captures (default 5)")
    parser.add_argument("--chunk", type=int, default=4096, help="bytes per read (default 4096)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, best kept (default 5)")
    args = parser.parse_args()

    data = workload(args.repeat)
    sentences = count_sentences(data)
    base_s, positions = best_cpu_s(lambda: baseline_parse(data, args.chunk), args.rounds)
    ours_s, fixes = best_cpu_s(lambda: reader_parse(data, args.chunk), args.rounds)
    print(f"workload: {len(data)} bytes, {sentences} sentences, chunk {args.chunk} bytes")
    base_us, ours_us = base_s / sentences * 1e6, ours_s / sentences * 1e6
    print(f"baseline (split, checksum, RMC/GGA position): {base_us:7.2f} us/sentence, {positions} positions")
    print(f"NmeaReader (validated fixes, counted skips):   {ours_us:7.2f} us/sentence, {fixes} fixes")
    print(f"ratio NmeaReader / baseline: {ours_s / base_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
