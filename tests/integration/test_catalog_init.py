"""A new vehicle needs no code: every real DBC goes through `catalog init` and `decode`, and the values
are cantools' own decode of the same frames.

Data: tests/data/opendbc/ (github.com/commaai/opendbc @ 7343a66, MIT), tests/data/kona-ev/ (DBCs
github.com/projectgus/kona-ev-dbc @ 0b569b9, MIT; logs github.com/projectgus/hyundai-kona-ev-can-logs
@ 83a5cac, CC0-1.0).

GIVEN a DBC and a log (the Kona P-CAN DBC: its real ASC captures; every other DBC: frames of every
message built with cantools' `encode` from seeded values inside each signal's range, every multiplexer
branch in turn, written as a candump log by python-can)
WHEN `voltgate-agent catalog init --dbc DBC --out FILE` writes a starter catalog, and `voltgate-agent
decode --dbc DBC --no-policy LOG` decodes without a catalog
THEN init prints one warning line per known DBC defect (as `protocols.dbc` reports them), the file loads
with `load_catalog`, maps every signal once, and decoding with it gives the same CSV as decoding without
a catalog, whose rows are cantools' `Message.decode` of the same frames — every signal of every frame,
less the values outside the DBC's declared range, which the agent counts as out of range instead.
cantools cannot load `tesla_can.dbc` and `vw_meb_common.dbc` at all; for those, this test applies the
same two repairs in its own words (drop every `VAL_` line, give bit 31 to every `BO_` id above 11 bits)
before cantools loads them. cantools cannot unpack a message whose signals overlap; its signals are
decoded by cantools one by one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import can
import cantools
import pytest
from cantools.database.can import Database, Message, Signal

from agent.__main__ import main as agent_cli
from agent.catalog_init import starter_catalog
from agent.decode import decode_log_to_csv
from protocols.catalog import load_catalog
from protocols.dbc import read_dbc

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parents[1] / "data"
DBCS = sorted((DATA / "opendbc").glob("*.dbc")) + sorted((DATA / "kona-ev" / "dbc").glob("*.dbc"))
KONA_DBC = DATA / "kona-ev" / "dbc" / "pcan.dbc"
KONA_LOGS = sorted((DATA / "kona-ev" / "logs").glob("*.asc"))
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)

Row = tuple[float, float, str, str]  # ts, value, message, dbc signal


def _process(*args: str) -> subprocess.CompletedProcess[str]:
    """`voltgate-agent ARGS` as a user runs it: its own process."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`voltgate-agent ARGS` through its entry point, in this process (a new interpreter per call cost
    ~1 s each, three per DBC); the root logger the command configures is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            agent_cli([*args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return subprocess.CompletedProcess(["voltgate-agent", *args], code, out.getvalue(), err.getvalue())


def _cantools_database(path: Path) -> Database:
    """cantools' own reading of the DBC, with the test's own repair where cantools refuses it."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        return cantools.database.load_string(text, database_format="dbc", strict=False)  # type: ignore[return-value]
    except cantools.database.UnsupportedDatabaseFormatError:
        pass
    text = "\n".join(line for line in text.splitlines() if not line.startswith("VAL_ "))
    for dbc_id in {int(m) for m in re.findall(r"^BO_ (\d+) ", text, flags=re.MULTILINE)}:
        if 0x7FF < dbc_id < 0x80000000:
            text = re.sub(rf"\b{dbc_id}\b", str(dbc_id | 0x80000000), text)
    return cantools.database.load_string(text, database_format="dbc", strict=False)  # type: ignore[return-value]


def _value_in_range(signal: Signal, rng: random.Random) -> float:
    low, high = signal.minimum, signal.maximum
    declared = low is not None and high is not None and not (low == 0 and high == 0)
    if signal.is_float:
        return (
            rng.uniform(low, high)
            if declared and low is not None and high is not None
            else rng.uniform(-1e3, 1e3)
        )
    raw_low, raw_high = (
        (-(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1)
        if signal.is_signed
        else (0, (1 << signal.length) - 1)
    )
    scale, offset = float(signal.scale), float(signal.offset)
    if declared and low is not None and high is not None and scale > 0:
        raw_low = max(raw_low, math.ceil((low - offset) / scale))
        raw_high = min(raw_high, math.floor((high - offset) / scale))
    raw = rng.randint(raw_low, raw_high) if raw_low <= raw_high else raw_low
    return raw * scale + offset


def _frames(message: Message, rng: random.Random) -> list[bytes]:
    """One payload per multiplexer branch (one for a plain message), each signal inside its range."""
    payloads = []
    branches: list[dict[str, float]] = [{}]

    def walk(tree: list[object], values: dict[str, float]) -> list[dict[str, float]]:
        results = [values]
        for node in tree:
            if isinstance(node, dict):
                expanded = []
                for mux_name, children in node.items():
                    mux = message.get_signal_by_name(mux_name)
                    for mux_value, child_tree in sorted(children.items()):
                        for partial in results:
                            branch = {**partial, mux_name: mux_value * float(mux.scale) + float(mux.offset)}
                            expanded += walk(child_tree, branch)
                results = expanded
            else:
                name = str(node)
                for partial in results:
                    partial[name] = _value_in_range(message.get_signal_by_name(name), rng)
        return results

    branches = walk(list(message.signal_tree), {})
    for values in branches[:16]:
        data = message.encode(values, scaling=True, padding=False, strict=False)
        if message.is_fd:  # pad to a CAN FD length
            data = data + bytes(next(n for n in FD_LENGTHS if n >= len(data)) - len(data))
        payloads.append(bytes(data))
    return payloads


def _write_log(database: Database, path: Path) -> None:
    rng = random.Random(20260101)
    ts = 1_700_000_000.0
    with can.Logger(str(path)) as writer:
        for message in sorted(database.messages, key=lambda m: m.frame_id):
            for data in _frames(message, rng):
                for _ in range(2):  # twice, so the sampling policy has something to drop
                    ts += 0.01
                    writer.on_message_received(
                        can.Message(
                            timestamp=ts,
                            arbitration_id=message.frame_id,
                            is_extended_id=message.is_extended_frame,
                            is_fd=message.is_fd,
                            data=data,
                            channel="can0",
                        )
                    )


def _in_range(signal: Signal, value: float) -> bool:
    low, high = signal.minimum, signal.maximum
    if low is None or high is None or (low == 0 and high == 0):
        return math.isfinite(value)
    slack = abs(float(signal.scale)) / 2 if signal.scale else 1e-9
    return low - slack <= value <= high + slack


def _signal_by_signal(message: Message, data: bytes) -> dict[str, float]:
    """cantools cannot unpack a message whose signals overlap (`vw_meb_common.dbc`'s ESC_50): decode each
    signal with cantools as the only signal of a message of the same id and length."""
    values: dict[str, float] = {}
    for signal in message.signals:
        alone = Message(message.frame_id, message.name, message.length, [signal], strict=False)
        values[signal.name] = float(alone.decode(data, decode_choices=False, scaling=True)[signal.name])  # type: ignore[arg-type]
    return values


def _cantools_rows(database: Database, log_path: Path) -> list[Row]:
    by_id = {(m.frame_id, m.is_extended_frame): m for m in database.messages}
    rows: list[Row] = []
    for frame in can.LogReader(log_path, relative_timestamp=False):
        message = by_id.get((frame.arbitration_id, frame.is_extended_id))
        if (
            message is None
            or frame.is_error_frame
            or frame.is_remote_frame
            or len(frame.data) < message.length
        ):
            continue
        try:
            values = message.decode(bytes(frame.data), decode_choices=False, scaling=True)
        except cantools.database.DecodeError:
            if message.is_multiplexed():
                continue  # a multiplexer value the DBC does not define: the agent counts it too
            values = _signal_by_signal(message, bytes(frame.data))
        for signal in message.signals:  # sorted by start bit, as the starter catalog maps them
            if signal.name in values:
                value = float(values[signal.name])  # type: ignore[arg-type]
                if _in_range(signal, value):
                    rows.append((float(frame.timestamp), value, message.name, signal.name))
    return sorted(rows)


def _csv_rows(text: str) -> list[Row]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ts", "signal", "value", "message", "dbc_signal"]
    return sorted((float(ts), float(value), message, signal) for ts, _, value, message, signal in rows[1:])


def _cases() -> list[tuple[Path, Path | None]]:
    cases: list[tuple[Path, Path | None]] = [(dbc, None) for dbc in DBCS if dbc != KONA_DBC]
    return cases + [(KONA_DBC, log) for log in KONA_LOGS]


@pytest.mark.parametrize(
    ("dbc", "log"), _cases(), ids=[f"{d.stem}-{(lg.stem[:24] if lg else 'encoded')}" for d, lg in _cases()]
)
def test_catalog_init_and_decode_match_cantools(dbc: Path, log: Path | None, tmp_path: Path) -> None:
    database = _cantools_database(dbc)
    if log is None:
        log = tmp_path / f"{dbc.stem}.log"
        _write_log(database, log)
    warnings = read_dbc(dbc).warnings

    # WHEN catalog init writes the starter catalog
    out = tmp_path / "catalog.toml"
    init = _cli("catalog", "init", "--dbc", str(dbc), "--out", str(out))
    assert init.returncode == 0, init.stderr
    warned = [line for line in init.stderr.splitlines() if line.startswith("voltgate-agent: warning: ")]
    assert warned == [f"voltgate-agent: warning: {w}" for w in warnings]

    # THEN it loads, and maps every signal of the DBC once
    catalog = load_catalog(out)
    assert catalog.dbc_warnings == warnings
    mapped = {(spec.message, spec.dbc_signal) for spec in catalog}
    assert len(mapped) == len(catalog) == sum(len(m.signals) for m in catalog.database.messages)

    # WHEN decode runs without a catalog, and with the written one
    bare = _cli("decode", "--dbc", str(dbc), "--no-policy", str(log))
    assert bare.returncode == 0, bare.stderr
    with_file = _cli("decode", "--dbc", str(dbc), "--catalog", str(out), "--no-policy", str(log))
    assert with_file.returncode == 0, with_file.stderr

    # THEN both print the same CSV, and its values are cantools' decode of the same frames
    assert bare.stdout == with_file.stdout
    assert [line for line in bare.stderr.splitlines() if "warning: " in line] == warned
    expected = _cantools_rows(database, log)
    assert len(expected) > 0
    assert _csv_rows(bare.stdout) == expected


@pytest.mark.parametrize("dbc", [DATA / "opendbc" / "gm_global_a_high_voltage_management.dbc", KONA_DBC])
def test_written_catalog_keeps_what_the_starter_keeps_with_its_policy(dbc: Path, tmp_path: Path) -> None:
    # GIVEN the written starter catalog and the in-memory one decode uses without --catalog
    log = KONA_LOGS[0] if dbc == KONA_DBC else tmp_path / "frames.log"
    if not log.exists():
        _write_log(_cantools_database(dbc), log)
    out = tmp_path / "catalog.toml"
    assert _cli("catalog", "init", "--dbc", str(dbc), "--out", str(out)).returncode == 0
    # WHEN both decode with their sampling policy
    written, in_memory = io.StringIO(), io.StringIO()
    written_stats = decode_log_to_csv(log, load_catalog(out), written)
    memory_stats = decode_log_to_csv(log, starter_catalog(dbc), in_memory)
    # THEN they keep the same samples under the same names, and the policy dropped some
    assert written.getvalue() == in_memory.getvalue()
    assert written_stats.samples_suppressed == memory_stats.samples_suppressed > 0


def test_init_refuses_to_overwrite_and_explains_a_missing_dbc(tmp_path: Path) -> None:
    out = tmp_path / "catalog.toml"
    out.write_text("# mine\n")
    refused = _cli("catalog", "init", "--dbc", str(KONA_DBC), "--out", str(out))
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr
    assert out.read_text() == "# mine\n"
    missing = _cli("catalog", "init", "--dbc", str(tmp_path / "none.dbc"))
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"voltgate-agent: {tmp_path / 'none.dbc'}: cannot read the CAN database: No such file or directory"
    )


def test_check_config_accepts_a_defective_dbc_with_its_warnings(tmp_path: Path) -> None:
    # GIVEN a bus whose catalog was written by catalog init for tesla_can.dbc (one unused VAL_ entry)
    dbc = DATA / "opendbc" / "tesla_can.dbc"
    catalog = tmp_path / "catalog.toml"
    assert _cli("catalog", "init", "--dbc", str(dbc), "--out", str(catalog)).returncode == 0
    config = tmp_path / "agent.toml"
    config.write_text(
        f'vehicle_id = "bus-1"\n[buffer]\npath = "{tmp_path / "buffer.sqlite3"}"\n'
        '[uplink]\nbroker_url = "mqtt://127.0.0.1:1883"\nfleet_id = "f"\n'
        f'[[can]]\nname = "chassis"\ninterface = "virtual"\nchannel = "vc"\ncatalog = "{catalog}"\n'
    )
    # WHEN check-config reads it THEN it passes, and says the defect once
    result = _process("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    (warning,) = read_dbc(dbc).warnings
    assert result.stderr.splitlines() == [f"bus 'chassis': {warning}"]
