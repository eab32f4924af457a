"""Loading a DBC the way real ones are written: known defects become one warning each, not a refusal.

cantools (strict or not) refuses a whole database for a defect that touches one entry. Real DBCs carry
such defects, e.g. opendbc's `tesla_can.dbc` (a `VAL_` table for a signal its message lacks) and
`vw_meb_common.dbc` (a 29-bit id whose `BO_` line lacks the extended flag, and signals sharing bits).
`read_dbc` loads with `strict=False` and repairs what cantools still refuses, one defect at a time,
each repair reported as a warning naming the file and line:

* an unused `VAL_` or `SIG_VALTYPE_` entry (a signal the message does not have): the entry is ignored;
* a `BO_` id longer than 11 bits without the extended flag: the message is read as extended (bit 31
  of a `BO_` id is the DBC's extended flag, so the id and every statement that refers to it get it);
* signals that overlap or do not fit their message (what `strict=True` checks): the message is kept
  as written, one warning per message with cantools' own reason. cantools cannot unpack such a message
  as a whole; the agent's decoder reads each integer signal from its own bits (`agent.decode`).

Anything else (a syntax error, a zero-length signal, ...) is a `DbcError` naming the file and, where
it can be found, the line. cantools is imported by the first load, not with this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from protocols.errors import DbcError

if TYPE_CHECKING:
    from cantools.database.can import Database

_MAX_REPAIRS = 1000  # a guard against a repair that does not change the text

_UNUSED_ENTRIES = re.compile(r"unused (VAL_|SIG_VALTYPE_) entries in DBC:(.*)", re.DOTALL)
_MESSAGE = re.compile(r"^\s*BO_\s+(\d+)\s+(\w+)\s*:")
# Statements that name a message by its DBC id (the number just before the captured position).
_ID_REFERENCES = (
    r"BO_",
    r"VAL_",
    r"SIG_VALTYPE_",
    r"SG_MUL_VAL_",
    r"BO_TX_BU_",
    r"SIG_GROUP_",
    r"CM_\s+(?:BO_|SG_)",
    r'BA_\s+"[^"]*"\s+(?:BO_|SG_)',
    r'BA_REL_\s+"[^"]*"\s+BU_SG_REL_\s+\w+\s+SG_',
)


@dataclass(frozen=True, slots=True)
class LoadedDbc:
    database: Database
    warnings: tuple[str, ...]  # one line per defect: "FILE:LINE: what; what the loader did"


def load_dbc(path: Path) -> Database:
    """The database of `read_dbc`, for callers that report no warnings."""
    return read_dbc(path).database


def read_dbc(path: Path, raw: bytes | None = None) -> LoadedDbc:
    """Load a DBC; every known defect is repaired and reported (see the module's docstring), any
    other problem raises one `DbcError` naming the file and, where it can be found, the line. `raw`: the
    file's bytes when the caller has read them already."""
    import cantools

    if raw is None:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise DbcError(f"{path}: cannot read the CAN database: {err.strerror or err}") from err
    warnings: list[str] = []
    try:  # UTF-8 where it is valid (comments in modern DBCs), else the traditional Windows-1252
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
        if "\ufffd" in text:
            line = text[: text.index("\ufffd")].count("\n") + 1
            warnings.append(f"{path}:{line}: bytes that are neither UTF-8 nor Windows-1252; read as U+FFFD")
    lines = text.splitlines()
    warnings.extend(_mark_long_ids_extended(path, lines))
    for _ in range(_MAX_REPAIRS):
        try:
            db = cast(
                "Database",
                cantools.database.load_string("\n".join(lines), database_format="dbc", strict=False),
            )
            break
        except (cantools.database.errors.Error, ValueError, KeyError, IndexError) as err:
            reason = _cantools_reason(err)
            repaired = _repair(path, lines, reason)
            if repaired is None:
                number = _locate_dbc_problem(lines, reason)
                where = f"{path}:{number}" if number else str(path)
                raise DbcError(f"{where}: not a valid DBC: {reason}") from err
            warnings.extend(repaired)
    else:  # pragma: no cover - every repair removes the defect it names
        raise DbcError(f"{path}: not a valid DBC: more than {_MAX_REPAIRS} defects")
    warnings.extend(_layout_warnings(path, lines, db))
    return LoadedDbc(db, tuple(warnings))


def _repair(path: Path, lines: list[str], reason: str) -> list[str] | None:
    """Repair `lines` in place for the defect `reason` names; its warnings, or None when unknown."""
    if m := _UNUSED_ENTRIES.search(reason):
        keyword = m.group(1)
        warnings = []
        for frame_id, signal in re.findall(rf"\b{keyword} (\d+) (\w+)", m.group(2)):
            probe = re.compile(rf"^\s*{keyword}\s+{frame_id}\s+{re.escape(signal)}\b")
            number = next((n for n, line in enumerate(lines) if probe.match(line)), None)
            if number is None:
                return None
            lines[number] = ""  # keeps the numbering of the lines after it
            what = "a value table" if keyword == "VAL_" else "a value type"
            warnings.append(
                f"{path}:{number + 1}: {keyword} gives {what} for signal {signal}, which "
                f"{_message_name(lines, frame_id)}; ignored"
            )
        return warnings
    return None


def _mark_long_ids_extended(path: Path, lines: list[str]) -> list[str]:
    """Give bit 31 (the extended flag) to every `BO_` id longer than 11 bits that lacks it, and to the
    statements that refer to it; one warning per message."""
    warnings = []
    for number, line in enumerate(lines):
        m = _MESSAGE.match(line)
        if m is None or not 0x7FF < int(m.group(1)) < 0x80000000:
            continue
        frame_id = int(m.group(1))
        for keyword in _ID_REFERENCES:
            pattern = re.compile(rf"^(\s*{keyword}\s+){frame_id}\b")
            for other, text in enumerate(lines):
                if pattern.match(text):
                    lines[other] = pattern.sub(rf"\g<1>{frame_id | 0x80000000}", text, count=1)
        warnings.append(
            f"{path}:{number + 1}: message {m.group(2)} has id 0x{frame_id:X}, longer than 11 bits, but "
            f"its BO_ id lacks the extended flag (bit 31); read as an extended (29-bit) id"
        )
    return warnings


def _message_name(lines: list[str], frame_id: str) -> str:
    for line in lines:
        if (m := _MESSAGE.match(line)) and m.group(1) == frame_id:
            return f"message {m.group(2)} ({frame_id}) does not have"
    return f"no message has: the DBC defines no message {frame_id}"


def _layout_warnings(path: Path, lines: list[str], db: Database) -> list[str]:
    """One warning per message whose signals overlap or overflow it (cantools' strict check)."""
    import cantools

    warnings = []
    for message in db.messages:
        try:
            message.refresh(strict=True)
        except cantools.database.errors.Error as err:
            message.refresh(strict=False)
            probe = re.compile(rf"^\s*BO_\s+\d+\s+{re.escape(message.name)}\s*:")
            number = next((n + 1 for n, line in enumerate(lines) if probe.match(line)), None)
            where = f"{path}:{number}" if number else str(path)
            reason = str(err).rstrip(".")
            warnings.append(f"{where}: {reason}; kept as written (each signal read from its own bits)")
    return warnings


def _cantools_reason(err: Exception) -> str:
    # cantools wraps the DBC parser's error; prefer it, without the format prefix and quotes.
    inner = getattr(err, "e_dbc", None) or err
    reason = str(inner).strip()
    if reason.startswith('DBC: "') and reason.endswith('"'):
        reason = reason[6:-1]
    return " ".join(reason.split())


def _locate_dbc_problem(lines: list[str], reason: str) -> int | None:
    """Best effort: the 1-based line a cantools error refers to."""
    if m := re.search(r"\bline (\d+)\b", reason):
        return int(m.group(1))
    probes: list[re.Pattern[str]] = []
    if m := re.search(r"\b(VAL_|BA_|CM_|SG_MUL_VAL_) (\d+) (\w+)", reason):
        probes.append(re.compile(rf"^\s*{m.group(1)}\s+{m.group(2)}\s+{m.group(3)}\b"))
    if m := re.search(r"in message (\w+)", reason):
        probes.append(re.compile(rf"^\s*BO_\s+\d+\s+{m.group(1)}\s*:"))
    if m := re.search(r"signals? (\w+)", reason):
        probes.append(re.compile(rf"^\s*SG_\s+{m.group(1)}\b"))
    for probe in probes:
        for number, line in enumerate(lines, start=1):
            if probe.search(line):
                return number
    return None
