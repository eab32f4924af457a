"""Every common CAN log format decodes to the same rows, and every unreadable log gets one sentence.

Data: a real capture of a Hyundai Kona EV pack (tests/data/kona-ev/logs/main-relay-on.asc, CC0-1.0; DBC
tests/data/kona-ev/dbc/pcan.dbc, MIT; see tests/data/kona-ev/README.md), its frames written as a
`candump -L` log, then from that log's frames as:

* an MF4 written by asammdf itself in the bus-logging layout CSS Electronics' CANedge records (one
  `CAN_DataFrame` channel group from a CAN bus source, start time in the header, times relative to it),
  read back through python-can's MF4Reader; and one written by python-can's own MF4Writer;
* a SavvyCAN/GVRET CSV in the exact form SavvyCAN's `saveNativeCSVFile` writes (framefileio.cpp), and in
  the older form without the `Dir` column;
* a Vector BLF and ASC written by python-can.

GIVEN each WHEN `voltgate-agent decode --no-policy` runs as a subprocess THEN its CSV equals the candump
log's, byte for byte. Malformed lines cost only themselves; and each unreadable log (MF4 without asammdf,
unknown extension, a CSV of another dialect, truncated and corrupt files, a text file of another format)
exits 2 with one `voltgate-agent:` line on stderr and no traceback.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import can
import numpy as np
import pytest

from agent.logfiles import FrameLog
from agent.records import Frame

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
DBC_PATH = DATA / "kona-ev" / "dbc" / "pcan.dbc"
CATALOG_PATH = DATA / "kona-pcan.toml"
ASC_PATH = DATA / "kona-ev" / "logs" / "main-relay-on.asc"


def decode_cli(log: Path, *, python_prelude: str | None = None) -> subprocess.CompletedProcess[str]:
    """`voltgate-agent decode --no-policy LOG` as a subprocess of this checkout."""
    args = ["decode", "--dbc", str(DBC_PATH), "--catalog", str(CATALOG_PATH), "--no-policy", str(log)]
    if python_prelude is None:
        command = [sys.executable, "-m", "agent", *args]
    else:
        script = f"{python_prelude}\nimport sys\nfrom agent.__main__ import main\nmain(sys.argv[1:])"
        command = [sys.executable, "-c", script, *args]
    return subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


# --------------------------------------------------------------------------- writers


def write_candump(frames: list[can.Message], path: Path, *, start: float) -> None:
    """`candump -L` lines: `(seconds.micros) can0 ID#DATA`, 3 hex digits for a standard id, 8 extended;
    times `start` + the capture's own."""
    with path.open("w") as out:
        for message in frames:
            width = 8 if message.is_extended_id else 3
            frame_text = f"{message.arbitration_id:0{width}X}#{message.data.hex().upper()}"
            out.write(f"({start + message.timestamp:.6f}) can0 {frame_text}\n")


def write_savvycan(frames: list[Frame], path: Path, *, with_dir: bool = True) -> None:
    """As SavvyCAN's saveNativeCSVFile: integer microseconds, the id as 8 upper-case hex digits,
    true/false, Rx/Tx, bus, length, eight data columns (00 past the length), a comma after each."""
    header = "Time Stamp,ID,Extended,Dir,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8"
    with path.open("w", newline="") as out:
        out.write((header if with_dir else header.replace("Dir,", "")) + "\n")
        for frame in frames:
            fields = [
                str(round(frame.ts * 1_000_000)),
                f"{frame.arbitration_id:08X}",
                "true" if frame.is_extended else "false",
                *(["Rx"] if with_dir else []),
                "0",
                str(len(frame.data)),
            ]
            padded = frame.data.ljust(8, b"\x00")
            out.write(",".join(fields) + "," + "".join(f"{byte:02X}," for byte in padded) + "\n")


def write_mf4_as_canedge(frames: list[Frame], path: Path) -> None:
    """An MDF 4.11 bus log written by asammdf: one CAN_DataFrame channel group (a structure of BusChannel,
    ID, IDE, DLC, DataLength, DataBytes, Dir) from a CAN bus source, times relative to the header's start
    time. The start is a whole second, so relative times (and python-can's sum back) are exact floats."""
    from asammdf import MDF, Signal
    from asammdf.blocks.v4_blocks import SourceInformation
    from asammdf.blocks.v4_constants import BUS_TYPE_CAN, SOURCE_BUS

    record = np.dtype(
        [
            ("CAN_DataFrame.BusChannel", "<u1"),
            ("CAN_DataFrame.ID", "<u4"),
            ("CAN_DataFrame.IDE", "<u1"),
            ("CAN_DataFrame.DLC", "<u1"),
            ("CAN_DataFrame.DataLength", "<u1"),
            ("CAN_DataFrame.DataBytes", "(64,)u1"),
            ("CAN_DataFrame.Dir", "<u1"),
        ]
    )
    samples = np.zeros(len(frames), dtype=record)
    samples["CAN_DataFrame.BusChannel"] = 1
    samples["CAN_DataFrame.ID"] = [f.arbitration_id | (0x80000000 if f.is_extended else 0) for f in frames]
    samples["CAN_DataFrame.IDE"] = [f.is_extended for f in frames]
    samples["CAN_DataFrame.DLC"] = [len(f.data) for f in frames]
    samples["CAN_DataFrame.DataLength"] = [len(f.data) for f in frames]
    for i, frame in enumerate(frames):
        samples["CAN_DataFrame.DataBytes"][i, : len(frame.data)] = list(frame.data)
    start = int(frames[0].ts)
    mdf = MDF(version="4.11")
    mdf.header.start_time = dt.datetime.fromtimestamp(start, tz=dt.UTC)
    mdf.append(
        Signal(
            name="CAN_DataFrame",
            samples=samples,
            timestamps=np.array([f.ts for f in frames]) - start,
            source=SourceInformation(source_type=SOURCE_BUS, bus_type=BUS_TYPE_CAN),
        )
    )
    mdf.save(path, overwrite=True)
    mdf.close()


def write_with_python_can(frames: list[Frame], path: Path) -> None:
    """.blf, .asc or .mf4 through python-can's own writer for the extension."""
    with can.Logger(path) as logger:
        for frame in frames:
            logger.on_message_received(
                can.Message(
                    timestamp=frame.ts,
                    arbitration_id=frame.arbitration_id,
                    is_extended_id=frame.is_extended,
                    data=frame.data,
                    channel=0,
                )
            )


@dataclass(frozen=True)
class Logs:
    directory: Path
    frames: list[Frame]
    candump: Path
    expected_csv: str  # what decode prints for the candump log


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    directory = tmp_path_factory.mktemp("formats")
    candump = directory / "kona.log"
    # The capture's times count from its start; its header dates it "Thu, 09 Nov 2023 20:21:36 GMT" (a form
    # python-can does not parse), so the candump log counts from there, as a gateway's would.
    capture_start = dt.datetime(2023, 11, 9, 20, 21, 36, tzinfo=dt.UTC).timestamp()
    write_candump(list(can.LogReader(ASC_PATH, relative_timestamp=False)), candump, start=capture_start)
    with FrameLog(candump, "kona") as log_frames:
        frames = list(log_frames)
    result = decode_cli(candump)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") > 500, "the capture decodes to many rows"
    return Logs(directory, frames, candump, result.stdout)


def _made(logs: Logs, name: str) -> Path:
    path = logs.directory / name
    if path.exists():
        return path
    writers = {
        "kona.mf4": write_mf4_as_canedge,
        "kona.csv": write_savvycan,
        "kona-v1.csv": lambda frames, p: write_savvycan(frames, p, with_dir=False),
        "kona-pycan.mf4": write_with_python_can,
        "kona.blf": write_with_python_can,
        "kona.asc": write_with_python_can,
        "kona-pycan.csv": write_with_python_can,
        "kona.trc": write_with_python_can,
    }
    writers[name](logs.frames, path)
    return path


# --------------------------------------------------------------------------- same rows from every format


@pytest.mark.parametrize("name", ["kona.mf4", "kona.csv", "kona-v1.csv", "kona.blf", "kona-pycan.csv"])
def test_each_format_yields_the_candump_frames(logs: Logs, name: str) -> None:
    path = _made(logs, name)
    with FrameLog(path, "kona") as log_frames:
        assert list(log_frames) == logs.frames  # timestamps, ids, flags and data, exactly


@pytest.mark.parametrize("name", ["kona.mf4", "kona.csv", "kona-v1.csv", "kona.blf", "kona-pycan.csv"])
def test_decode_cli_prints_the_candump_rows(logs: Logs, name: str) -> None:
    path = _made(logs, name)
    result = decode_cli(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == logs.expected_csv
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "within_s"),
    [("kona-pycan.mf4", 1e-6), ("kona.trc", 1e-3)],
    ids=["python-can MF4Writer", "PEAK TRC"],
)
def test_formats_with_their_own_time_base_decode_the_same_values(
    logs: Logs, name: str, within_s: float
) -> None:
    # python-can's MF4Writer starts the file at "now" (times come back within float rounding); a TRC
    # counts milliseconds from its start
    result = decode_cli(_made(logs, name))
    assert result.returncode == 0, result.stderr
    got = [row.split(",") for row in result.stdout.splitlines()]
    want = [row.split(",") for row in logs.expected_csv.splitlines()]
    assert got[0] == want[0] and len(got) == len(want)
    for got_row, want_row in zip(got[1:], want[1:], strict=True):
        assert got_row[1:] == want_row[1:]
        assert float(got_row[0]) == pytest.approx(float(want_row[0]), abs=within_s)


# --------------------------------------------------------------------------- malformed lines


def _insert_lines(source: Path, target: Path, bad: dict[int, str]) -> None:
    """A copy of `source` with the `bad` lines inserted before the given 0-based line numbers."""
    lines = source.read_text().splitlines(keepends=True)
    for index in sorted(bad, reverse=True):
        lines.insert(index, bad[index] + "\n")
    target.write_text("".join(lines))


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        (
            "kona.log",
            {
                5: "(0.2) can0 594#ZZ",  # not hex
                40: "garbage that is no frame at all",
                300: "(0.9) can0 594#123",  # odd number of hex digits
            },
        ),
        (
            "kona.csv",
            {
                5: "110999,000005ZZ,false,Rx,0,8,34,21,34,21,A0,61,04,20,",  # id not hex
                40: "111000,00000594,maybe,Rx,0,8,34,21,34,21,A0,61,04,20,",  # flag neither true nor false
                300: "111001,00000594,false,Rx,0,8,34,21,",  # LEN 8, three data columns
            },
        ),
        (
            "kona.asc",
            {
                7: "   0.2000 1  594             Rx   d 8 ZZ 21 34 21 A0 61 04 20",  # python-can: ValueError
                40: "   0.3000 1  594             Rx   d 8 34 21 34 21 A0 61 04 2G",
                300: "   0.4000 1  594             Rx   d x 34 21",  # DLC not a number
            },
        ),
        (
            "kona.trc",
            {
                25: "     99         1.000 DT  0     05ZZ Rx -  8    34 21 34 21 A0 61 04 20",  # id not hex
                60: "    100         1.100 DT",  # python-can warns and goes on: counted here instead
                300: "garbage",
            },
        ),
    ],
    ids=["candump", "savvycan", "asc", "trc"],
)
def test_malformed_lines_cost_only_themselves(logs: Logs, name: str, bad: dict[int, str]) -> None:
    clean = _made(logs, name) if name != "kona.log" else logs.candump
    damaged_dir = logs.directory / f"damaged-{name.replace('.', '-')}"
    damaged_dir.mkdir(exist_ok=True)
    damaged = damaged_dir / "kona" / name
    damaged.parent.mkdir(exist_ok=True)
    _insert_lines(clean, damaged.with_name("kona" + clean.suffix), bad)
    damaged = damaged.with_name("kona" + clean.suffix)

    result = decode_cli(damaged)

    # THEN every good frame is decoded as from the clean file, and the bad lines are reported once
    assert result.returncode == 0, result.stderr
    assert result.stdout == decode_cli(clean).stdout
    assert result.stdout.count("\n") > 500
    first = [line for line in result.stderr.splitlines() if "skipping malformed" in line]
    total = [line for line in result.stderr.splitlines() if "skipped 3 malformed" in line]
    assert len(first) == 1 and len(total) == 1, result.stderr
    assert f"line {min(bad) + 1} " in first[0], first[0]  # the first bad line, numbered as in the file
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- unreadable logs


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one sentence a refused log gets; the exit code is 2 and there is no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("voltgate-agent: ")]
    assert len(ours) == 1, result.stderr
    return ours[0]


def test_mf4_without_asammdf_names_the_extra(logs: Logs) -> None:
    # GIVEN the gateway's install, which has no asammdf (the test venv has it: make its import fail, as
    # Python does for a package that is not installed)
    result = decode_cli(_made(logs, "kona.mf4"), python_prelude="import sys; sys.modules['asammdf'] = None")
    message = _refused(result)
    assert "MF4 needs the optional extra: pip install 'voltgate[mf4]'" in message


def test_unknown_extension_lists_what_is_read(logs: Logs) -> None:
    odd = logs.directory / "kona.xyz"
    shutil.copy(logs.candump, odd)
    message = _refused(decode_cli(odd))
    assert "unknown log format '.xyz'" in message and ".mf4" in message and "can.logconvert" in message


def test_csv_of_another_dialect_says_which_it_reads() -> None:
    # a real CSV that is no CAN log: a Renault Twizy trip at 1 Hz (tests/data/twizy, CC-BY-4.0)
    message = _refused(decode_cli(DATA / "twizy" / "T1_03_29_2021.csv"))
    assert "CSV of an unknown dialect" in message
    assert "Time Stamp,ID,Extended,Dir,Bus,LEN" in message and "timestamp,arbitration_id" in message


def test_text_log_of_another_format_is_refused() -> None:
    # a real NMEA capture under .log (tests/data/nmea, BSD-2-Clause): none of its lines is candump
    message = _refused(decode_cli(DATA / "nmea" / "holux-gm-210.log"))
    assert "is not a candump -L log: none of its" in message and "line 1" in message


@pytest.mark.parametrize("cut", [0.5, 0.01], ids=["half", "head"])
def test_truncated_mf4_is_refused(logs: Logs, cut: float) -> None:
    whole = _made(logs, "kona.mf4").read_bytes()
    truncated = logs.directory / f"cut-{cut}" / "kona.mf4"
    truncated.parent.mkdir(exist_ok=True)
    truncated.write_bytes(whole[: int(len(whole) * cut)])
    message = _refused(decode_cli(truncated))
    assert "is not a readable MF4 log, truncated or corrupt" in message


def test_file_that_is_no_mf4_is_refused(logs: Logs) -> None:
    fake = logs.directory / "dbc-renamed.mf4"
    shutil.copy(DBC_PATH, fake)
    message = _refused(decode_cli(fake))
    assert "is not a readable MF4 log" in message and "not a valid ASAM MDF file" in message


def test_truncated_blf_keeps_the_frames_before_the_cut(logs: Logs) -> None:
    whole = _made(logs, "kona.blf").read_bytes()
    truncated = logs.directory / "cut-blf" / "kona.blf"
    truncated.parent.mkdir(exist_ok=True)
    truncated.write_bytes(whole[: len(whole) // 2])
    result = decode_cli(truncated)
    message = _refused(result)
    assert "is a truncated Vector BLF log" in message and "frames before the cut were read" in message
    rows = result.stdout.splitlines()
    assert 1 < len(rows) < logs.expected_csv.count("\n")
    assert logs.expected_csv.startswith("\n".join(rows) + "\n"), "the rows before the cut are the clean ones"


def test_compressed_canedge_file_says_how_to_unpack_it(logs: Logs) -> None:
    packed = logs.directory / "00000001.MFC"
    shutil.copy(_made(logs, "kona.mf4"), packed)
    message = _refused(decode_cli(packed))
    assert "compressed CANedge log" in message and ".MF4" in message


def test_empty_log_is_refused(logs: Logs) -> None:
    empty = logs.directory / "empty.log"
    empty.write_text("")
    message = _refused(decode_cli(empty))
    assert "holds no CAN frames" in message


def test_gateway_install_leaves_asammdf_to_the_mf4_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    gateway = " ".join(project["dependencies"] + project["optional-dependencies"]["edge"])
    assert "asammdf" not in gateway
    assert any(dep.startswith("asammdf") for dep in project["optional-dependencies"]["mf4"])
    assert "mf4" in (REPO / ".ci" / "run").read_text().split("pip install -q -e '.[")[1].split("]")[0]
