"""A replay reads the frames of ids its decoder ignores no further than their id (agent.logformats.candump,
`Decoder.ignores`): on a recorded bus with other controllers' frames mixed in, the samples, the decode
counters and the malformed-line count are those of reading every frame whole."""

from __future__ import annotations

from pathlib import Path

from agent.decode import Decoder, DecodeStats
from agent.logfiles import FrameLog
from agent.records import UNKNOWN_ID_FRAME, Frame, Sample
from protocols.catalog import load_catalog
from tests.integration.recorded_logs import record_log

OTHER_STANDARD_IDS = (0x610, 0x611, 0x7A0)  # no plan in the default catalog
OTHER_EXTENDED_IDS = (0x18FF1234, 0x0CF00400)  # not in its DBC; J1939 looks at them (the bus has J1939)


def _mixed_log(out: Path) -> int:
    """Ten simulated minutes with other controllers' frames after every line, one malformed line of an
    ignored id, and one error frame; returns the lines written."""
    recorded = record_log(out.with_suffix(".sim.log"), "--duration", "10m")
    lines = []
    for k, line in enumerate(recorded.read_text().splitlines()):
        lines.append(line)
        stamp = line.split()[0]
        other = OTHER_STANDARD_IDS[k % 3]
        lines.append(f"{stamp} can0 {other:03X}#{k % 256:02X}00112233445566")
        if k % 7 == 0:
            lines.append(f"{stamp} can0 {OTHER_EXTENDED_IDS[k % 2]:08X}#0102030405060708")
        if k == 500:
            lines.append(f"(garbage) can0 {OTHER_STANDARD_IDS[0]:03X}#00")  # damaged stamp, ignored id
            lines.append(f"{stamp} can0 20000080#0000000000000000")  # an error frame
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def _decode(path: Path, *, prefilter: bool) -> tuple[list[Sample], DecodeStats, int, int]:
    decoder = Decoder(load_catalog(), bus="test")
    kept: list[Sample] = []
    unknown_placeholders = 0
    with FrameLog(path, "test", decoder.ignores if prefilter else None) as log:
        frames: list[Frame] = list(log)
        malformed = log.malformed_lines
    for start in range(0, len(frames), 1024):
        chunk = frames[start : start + 1024]
        unknown_placeholders += sum(frame is UNKNOWN_ID_FRAME for frame in chunk)
        kept += decoder.process_chunk(chunk)[0]
    return kept, decoder.stats, unknown_placeholders, malformed


def test_ignored_ids_keep_the_samples_and_counters_of_reading_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    lines = _mixed_log(path)

    whole, whole_stats, none, malformed_whole = _decode(path, prefilter=False)
    fast, fast_stats, placeholders, malformed_fast = _decode(path, prefilter=True)

    # THEN the same samples and counters, every frame counted once; the damaged line of an ignored id
    # counts as an unknown id, not as a malformed line (the module docstring says so)
    assert fast == whole and len(whole) > 1_000
    assert whole_stats.frames_in == lines - 1 and fast_stats.frames_in == lines
    assert fast_stats.skipped.pop("unknown_id") == whole_stats.skipped.pop("unknown_id") + 1
    fast_stats.frames_in -= 1
    assert fast_stats == whole_stats
    assert (malformed_whole, malformed_fast) == (1, 0)
    # AND the other controllers' standard frames after the first of each id were read no further than
    # their id; their extended ones were all read whole (the bus has J1939)
    assert none == 0
    others = {f"{i:03X}" for i in OTHER_STANDARD_IDS}
    standard = sum(1 for line in path.read_text().splitlines() if line.split()[2].partition("#")[0] in others)
    assert placeholders == standard - len(OTHER_STANDARD_IDS)  # all but the first of each id
