"""How fast `FrameLog` reads each recorded-log format, against what a competent engineer writes for it.

Run: python bench/log_formats.py [--minutes M]. Prints; asserts nothing. Needs the `mf4` extra.
Input: M minutes (default 60: an hour, as a fleet engineer pulls off a bus) of a simulated bus recorded by
`voltgate-sim record` as a candump log, the same frames written as SavvyCAN's native CSV (as its
`saveNativeCSVFile` writes it), as an MF4 by python-can's MF4Writer (asammdf) and as a Vector ASC by
python-can's ASCWriter. Each format is read to `Frame`s in this process, best of three, beside the obvious
reader of that format:

* candump -L: python-can's `LogReader` (CanutilsLogReader) and `frame_from_message` per message;
* SavvyCAN CSV: `csv.DictReader` with the header's names, one `Frame` per row (no skipping of bad rows);
* MF4 and ASC: python-can's `LogReader` directly (FrameLog adds the line feed that resumes after a bad
  ASC line, and the checks of a truncated file).

Figures: frames/s of each, and ours ÷ baseline.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import can

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.logfiles import FrameLog  # noqa: E402
from agent.records import Frame, frame_from_message  # noqa: E402


def record(minutes: int, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", f"{minutes}m", "--out", str(out)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def write_savvycan(frames: Iterable[Frame], out: Path) -> None:
    with out.open("w") as text:
        text.write("Time Stamp,ID,Extended,Dir,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8\n")
        for frame in frames:
            flag = "true" if frame.is_extended else "false"
            data = "".join(f"{byte:02X}," for byte in frame.data.ljust(8, b"\x00"))
            text.write(
                f"{round(frame.ts * 1e6)},{frame.arbitration_id:08X},{flag},Rx,0,{len(frame.data)},{data}\n"
            )


def write_python_can(frames: Iterable[Frame], out: Path) -> None:
    with can.Logger(out) as logger:
        for frame in frames:
            logger.on_message_received(
                can.Message(
                    timestamp=frame.ts,
                    arbitration_id=frame.arbitration_id,
                    is_extended_id=frame.is_extended,
                    data=frame.data,
                )
            )


def ours(path: Path) -> int:
    with FrameLog(path, "bench") as frames:
        return sum(1 for _ in frames)


def python_can(path: Path) -> int:
    with can.LogReader(path, relative_timestamp=False) as reader:
        return sum(1 for _ in (frame_from_message("bench", message) for message in reader))


def dict_reader(path: Path) -> int:
    count = 0
    with path.open(newline="") as text:
        for row in csv.DictReader(text):
            length = int(row["LEN"])
            Frame(
                "bench",
                int(row["Time Stamp"]) / 1e6,
                int(row["ID"], 16),
                row["Extended"] == "true",
                bytes(int(row[f"D{i}"], 16) for i in range(1, length + 1)),
            )
            count += 1
    return count


def best_of_three(read: Callable[[Path], int], path: Path) -> tuple[int, float]:
    times = []
    count = 0
    for _ in range(3):
        start = time.perf_counter()
        count = read(path)
        times.append(time.perf_counter() - start)
    return count, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes of bus")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        candump = work / "bus.log"
        record(args.minutes, candump)
        with FrameLog(candump, "bench") as log_frames:
            frames = list(log_frames)
        write_savvycan(frames, work / "bus.csv")
        write_python_can(frames, work / "bus.mf4")
        write_python_can(frames, work / "bus.asc")
        print(f"{args.minutes} simulated minutes: {len(frames)} frames")
        print(f"{'format':<14}{'ours frames/s':>15}{'baseline frames/s':>19}{'ours/baseline':>15}  baseline")
        cases = [
            ("candump -L", candump, python_can, "python-can LogReader"),
            ("SavvyCAN CSV", work / "bus.csv", dict_reader, "csv.DictReader"),
            ("MF4", work / "bus.mf4", python_can, "python-can MF4Reader"),
            ("Vector ASC", work / "bus.asc", python_can, "python-can ASCReader"),
        ]
        for name, path, baseline, baseline_name in cases:
            count, seconds = best_of_three(ours, path)
            base_count, base_seconds = best_of_three(baseline, path)
            assert count == base_count == len(frames), (name, count, base_count)
            print(
                f"{name:<14}{count / seconds:>15,.0f}{base_count / base_seconds:>19,.0f}"
                f"{base_seconds / seconds:>14.2f}×  {baseline_name}"
            )


if __name__ == "__main__":
    main()
