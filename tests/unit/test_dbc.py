"""Real DBCs with known defects load with one warning per defect; what cannot be repaired is one error
naming the file and line.

Data: tests/data/opendbc/ (github.com/commaai/opendbc @ 7343a66, MIT) and tests/data/kona-ev/dbc/
(github.com/projectgus/kona-ev-dbc @ 0b569b9, MIT). The expected defects are found here by scanning each
file's text, independently of the loader: `BO_` ids above 11 bits without bit 31, and `VAL_` entries whose
(id, signal) no `BO_`/`SG_` block declares. Overlapping signals are named from cantools' strict check.
"""

from __future__ import annotations

import re
from pathlib import Path

import cantools
import pytest

from protocols.catalog import DEFAULT_DBC
from protocols.dbc import read_dbc
from protocols.errors import DbcError

DATA = Path(__file__).parents[1] / "data"
DBCS = sorted((DATA / "opendbc").glob("*.dbc")) + sorted((DATA / "kona-ev" / "dbc").glob("*.dbc"))
# message → the overlap cantools' strict check reports first (the only overlap defect per message)
OVERLAPS = {
    "hyundai_canfd.dbc": {"SCC_CONTROL": "The signals SCC_ObjSta and ZEROS_10 are overlapping"},
    "vw_meb_common.dbc": {"ESC_50": "The signals Motion_State and Standstill are overlapping"},
}


def _expected_lines(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    """(line → message name of a long id lacking bit 31, line → signal of an unused VAL_), 1-based."""
    signals: dict[int, set[str]] = {}
    long_ids: dict[int, str] = {}
    unused: dict[int, str] = {}
    current: int | None = None
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if m := re.match(r"^BO_ (\d+) (\w+)\s*:", line):
            current = int(m.group(1))
            signals[current] = set()
            if 0x7FF < current < 0x80000000:
                long_ids[number] = m.group(2)
        elif (m := re.match(r"^\s+SG_ (\w+)", line)) and current is not None:
            signals[current].add(m.group(1))
    for number, line in enumerate(lines, start=1):
        if (m := re.match(r"^VAL_ (\d+) (\w+) ", line)) and m.group(2) not in signals.get(
            int(m.group(1)), ()
        ):
            unused[number] = m.group(2)
    return long_ids, unused


@pytest.mark.parametrize("path", DBCS, ids=[p.name for p in DBCS])
def test_real_dbc_loads_with_one_warning_per_defect(path: Path) -> None:
    long_ids, unused = _expected_lines(path)
    overlaps = OVERLAPS.get(path.name, {})
    text = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    bo_line = {m.group(1): n for n, line in enumerate(text, 1) if (m := re.match(r"^BO_ \d+ (\w+)", line))}

    loaded = read_dbc(path)

    assert len(loaded.warnings) == len(long_ids) + len(unused) + len(overlaps), loaded.warnings
    for warning in loaded.warnings:
        assert "\n" not in warning
        m = re.match(rf"^{re.escape(str(path))}:(\d+): ", warning)
        assert m, warning
        line = int(m.group(1))
        if "lacks the extended flag" in warning:
            assert f"message {long_ids.pop(line)} has id" in warning
        elif warning.split(": ", 1)[1].startswith("VAL_ gives a value table"):
            assert f"for signal {unused.pop(line)}," in warning
        else:
            message = next(name for name, at in bo_line.items() if at == line)
            assert warning.split(": ", 1)[1].startswith(overlaps[message]), warning
    assert not long_ids and not unused  # each defect reported once
    for message_name in bo_line:
        loaded.database.get_message_by_name(message_name)  # no message lost to a repair


def test_repaired_ids_are_extended() -> None:
    # GIVEN vw_meb_common.dbc, whose VZE_04 is declared "BO_ 316495015" (0x12DD54A7, no extended flag)
    message = read_dbc(DATA / "opendbc" / "vw_meb_common.dbc").database.get_message_by_name("VZE_04")
    # THEN it is read as the 29-bit id, and its VAL_ tables (which name the same DBC id) still apply
    assert message.is_extended_frame and message.frame_id == 0x12DD54A7
    assert message.get_signal_by_name("VZE_Anzeigemodus").choices is not None


def test_the_defective_dbcs_are_refused_by_cantools_itself() -> None:
    # The defects are real: cantools refuses both files, strict or not.
    for name in ("tesla_can.dbc", "vw_meb_common.dbc"):
        with pytest.raises(cantools.database.UnsupportedDatabaseFormatError):
            cantools.database.load_file(DATA / "opendbc" / name, strict=False)


def test_shipped_dbc_has_no_defect() -> None:
    assert read_dbc(DEFAULT_DBC).warnings == ()


def test_syntax_error_is_one_error_with_file_and_line(tmp_path: Path) -> None:
    # GIVEN the real Kona P-CAN DBC with one SG_ line cut (its scale's closing parenthesis lost)
    lines = (DATA / "kona-ev" / "dbc" / "pcan.dbc").read_text(encoding="cp1252").splitlines()
    number = next(n for n, line in enumerate(lines) if line.strip().startswith("SG_ "))
    lines[number] = lines[number].replace(") [", " [", 1)
    broken = tmp_path / "pcan.dbc"
    broken.write_text("\n".join(lines), encoding="cp1252")
    with pytest.raises(DbcError) as caught:
        read_dbc(broken)
    message = str(caught.value)
    assert message.startswith(f"{broken}:{number + 1}: not a valid DBC: Invalid syntax")
    assert "\n" not in message


def test_missing_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(DbcError, match=re.escape(f"{tmp_path / 'none.dbc'}: cannot read the CAN database")):
        read_dbc(tmp_path / "none.dbc")
