"""Real captures of a Hyundai Kona EV pack decode through the agent exactly as cantools decodes them.

Data: tests/data/kona-ev/ (DBC github.com/projectgus/kona-ev-dbc @ 0b569b9, MIT; logs
github.com/projectgus/hyundai-kona-ev-can-logs @ 83a5cac, CC0-1.0). Catalog: tests/data/kona-pcan.toml
maps every signal of the messages in the logs with the sampling policy off.

GIVEN each ASC log WHEN `decode_log_to_csv(..., apply_policy=False)` runs THEN its rows are cantools'
`Message.decode` of the same frames, signal for signal, with the same timestamps — except values
outside the DBC's [minimum, maximum], which the agent counts as "out_of_range" instead (this pack's
`BMS_542.uwe542_78_UCCS` reads above its declared 500 V in every frame).

The same holds through the command line fleet engineers use: `voltgate-agent decode --dbc … --catalog …
--no-policy LOG` as a subprocess, its CSV compared row for row (message and DBC signal columns included)
with cantools loading the DBC file itself and the catalog's mapping read straight from its TOML.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import can
import cantools
import pytest

from agent.decode import decode_log_to_csv
from protocols.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parents[1] / "data"
CATALOG_PATH = DATA / "kona-pcan.toml"
DBC_PATH = DATA / "kona-ev" / "dbc" / "pcan.dbc"
CATALOG = load_catalog(CATALOG_PATH)
LOGS = sorted((DATA / "kona-ev" / "logs").glob("*.asc"))


def test_every_log_is_covered() -> None:
    assert len(LOGS) == 8


@pytest.mark.parametrize("log_path", LOGS, ids=[p.stem[:40] for p in LOGS])
def test_decode_matches_cantools(log_path: Path) -> None:
    frames = CATALOG.frames()
    expected: list[tuple[float, str, float]] = []
    out_of_range = 0
    frame_count = 0
    decoded_frames = 0
    for message in can.LogReader(log_path, relative_timestamp=False):
        frame_count += 1
        spec = frames.get(message.arbitration_id)
        if spec is None or message.is_error_frame or message.is_remote_frame:
            continue
        dbc_message = spec.cantools_message()
        values = dbc_message.decode(bytes(message.data), decode_choices=False, scaling=True)
        kept = 0
        for dbc_name, signal_spec in spec.signals:
            value = float(values[dbc_name])
            signal = dbc_message.get_signal_by_name(dbc_name)
            if (
                signal.minimum is not None
                and signal.maximum is not None
                and not (signal.minimum <= value <= signal.maximum)
            ):
                out_of_range += 1
                continue
            expected.append((float(message.timestamp), signal_spec.name, value))
            kept += 1
        decoded_frames += kept > 0

    out = io.StringIO()
    stats = decode_log_to_csv(log_path, CATALOG, out, apply_policy=False)

    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["ts", "signal", "value", "message", "dbc_signal"]
    got = [(float(ts), name, float(value)) for ts, name, value, _, _ in rows[1:]]
    assert len(got) == len(expected)
    assert got == expected  # exact: floats are written in their shortest round-trip form
    assert stats.frames_in == frame_count
    assert stats.frames_decoded == decoded_frames
    assert stats.skipped["out_of_range"] == out_of_range
    assert stats.samples_kept == len(expected) and stats.samples_suppressed == 0
    assert decoded_frames > 0.5 * frame_count, "most frames of these logs are P-CAN BMS frames"


def _cantools_rows(log_path: Path) -> list[tuple[float, str, float, str, str]]:
    """What the CLI should print for `log_path`, from cantools alone: the DBC file loaded by cantools, the
    catalog's (message, signal) → name mapping read from the TOML, every in-range value of every frame."""
    database = cantools.database.load_file(DBC_PATH)
    entries = tomllib.loads(CATALOG_PATH.read_text())["can"]
    names: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        names.setdefault(entry["message"], []).append((entry["signal"], entry["name"]))
    rows: list[tuple[float, str, float, str, str]] = []
    for message in can.LogReader(log_path, relative_timestamp=False):
        if message.is_error_frame or message.is_remote_frame:
            continue
        try:
            dbc_message = database.get_message_by_frame_id(message.arbitration_id)
        except KeyError:
            continue
        if dbc_message.name not in names:
            continue
        values = dbc_message.decode(bytes(message.data), decode_choices=False, scaling=True)
        for dbc_signal, name in names[dbc_message.name]:
            signal = dbc_message.get_signal_by_name(dbc_signal)
            value = float(values[dbc_signal])
            low, high = signal.minimum, signal.maximum
            if low is not None and high is not None and not low <= value <= high:
                continue  # the agent counts it as "out_of_range" instead
            rows.append((float(message.timestamp), name, value, dbc_message.name, dbc_signal))
    return rows


@pytest.mark.parametrize("log_path", LOGS, ids=[p.stem[:40] for p in LOGS])
def test_decode_cli_matches_cantools(log_path: Path) -> None:
    # GIVEN a real capture WHEN the `decode` command decodes it with the sampling policy off
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "decode",
            "--dbc",
            str(DBC_PATH),
            "--catalog",
            str(CATALOG_PATH),
            "--no-policy",
            str(log_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # THEN its CSV is cantools' decode of the same frames, row for row
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["ts", "signal", "value", "message", "dbc_signal"]
    got = [
        (float(ts), name, float(value), message, dbc_signal)
        for ts, name, value, message, dbc_signal in rows[1:]
    ]
    expected = _cantools_rows(log_path)
    assert len(expected) > 0
    assert got == expected
