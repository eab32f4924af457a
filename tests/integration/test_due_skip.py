"""The decoder's skip of frames whose values the sampling policy would refuse (agent.decode: by id and
timestamp, by repeated payload bits) keeps exactly the samples of a decoder that decodes every frame, frame
by frame (`process`) and in a replay's chunks (`process_chunk`): on a recorded simulator hour (the bench's
workload), on that hour played twice in a row (time goes back: every signal restarts), on a denser bus (a
driving hour with faults interleaved with the first hour: twice the frames, values jumping between two
buses), on the hour's J1939 frames sent by four senders at three priorities (one plan per sender, sharing
their signals), and on real Kona EV logs (whose catalog keeps every value, so nothing is skipped there)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from agent.decode import Decoder, DecodeStats
from agent.logfiles import FrameLog
from agent.records import Frame, Sample
from protocols.catalog import Catalog, load_catalog
from tests.integration.recorded_logs import recorded_frames

REPO = Path(__file__).resolve().parents[2]
KONA = REPO / "tests" / "data" / "kona-ev"


def _samples(catalog: Catalog, frames: Iterable[Frame], *, skip: bool) -> tuple[list[Sample], DecodeStats]:
    decoder = Decoder(catalog, bus="test", skip_not_due=skip)
    kept = [sample for frame in frames for sample in decoder.process(frame)]
    return kept, decoder.stats


def _chunked(catalog: Catalog, frames: list[Frame], size: int = 1024) -> tuple[list[Sample], DecodeStats]:
    decoder = Decoder(catalog, bus="test")
    kept: list[Sample] = []
    for start in range(0, len(frames), size):
        samples, ends = decoder.process_chunk(frames[start : start + size])
        assert [n for _, n in ends] == sorted({n for _, n in ends}) and (
            not ends or ends[-1][1] == len(samples)
        )
        kept += samples
    return kept, decoder.stats


@pytest.fixture(scope="module")
def recorded_hour(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    return recorded_frames(tmp_path_factory.mktemp("hour") / "bus.log", "--duration", "1h")


@pytest.mark.slow
def test_a_recorded_hour_keeps_the_same_samples_with_the_skip(recorded_hour: list[Frame]) -> None:
    catalog = load_catalog()
    with_skip, stats = _samples(catalog, recorded_hour, skip=True)
    without, full_stats = _samples(catalog, recorded_hour, skip=False)
    chunked, chunk_stats = _chunked(catalog, recorded_hour)
    assert with_skip == without == chunked
    assert chunk_stats.frames_not_due == stats.frames_not_due
    assert len(with_skip) > 10_000
    assert stats.frames_not_due > len(recorded_hour) / 2  # the skip is doing something
    assert full_stats.frames_not_due == 0
    assert stats.values_decoded < full_stats.values_decoded * 0.6


@pytest.mark.slow
def test_the_hour_played_twice_restarts_the_same_way(recorded_hour: list[Frame]) -> None:
    catalog = load_catalog()
    twice = recorded_hour + recorded_hour  # the second pass starts an hour back in time
    with_skip, _ = _samples(catalog, twice, skip=True)
    without, _ = _samples(catalog, twice, skip=False)
    chunked, _ = _chunked(catalog, twice)
    assert with_skip == without == chunked
    assert len(with_skip) > 2 * 10_000


@pytest.mark.slow
def test_a_denser_bus_keeps_the_same_samples_with_the_skip(
    recorded_hour: list[Frame], tmp_path: Path
) -> None:
    # GIVEN a driving hour with faults, its frames 50 ms after the first hour's, on one bus
    driving = recorded_frames(
        tmp_path / "driving.log", "--duration", "1h", "--seed", "7", "--departure", "05:00",
        "--random-faults", "48",
    )  # fmt: skip
    dense = sorted(
        recorded_hour + [frame._replace(ts=frame.ts + 0.05) for frame in driving], key=lambda f: f.ts
    )
    catalog = load_catalog()
    with_skip, stats = _samples(catalog, dense, skip=True)
    without, _ = _samples(catalog, dense, skip=False)
    chunked, _ = _chunked(catalog, dense, size=997)
    assert with_skip == without == chunked
    assert len(with_skip) > 20_000 and stats.frames_not_due > len(dense) / 3


SOURCES = (0x00, 0x17, 0x21, 0x31)  # J1939-81 preferred addresses: engine, cluster, body, cab controller


@pytest.mark.slow
def test_j1939_frames_of_several_senders_keep_the_same_samples_with_the_skip(
    recorded_hour: list[Frame],
) -> None:
    # GIVEN the hour's J1939 frames sent by four senders, at three priorities, in rotation
    readdressed = []
    for turn, frame in enumerate(recorded_hour):
        if frame.is_extended:
            pgn_bits = frame.arbitration_id & 0x03FFFF00
            frame_id = ((3, 6, 7)[turn % 3] << 26) | pgn_bits | SOURCES[turn % len(SOURCES)]
            frame = frame._replace(arbitration_id=frame_id)
        readdressed.append(frame)
    catalog = load_catalog()
    with_skip, stats = _samples(catalog, readdressed, skip=True)
    without, _ = _samples(catalog, readdressed, skip=False)
    chunked, _ = _chunked(catalog, readdressed)
    assert with_skip == without == chunked
    assert stats.frames_not_due > len(readdressed) / 3 and stats.skipped["unknown_id"] == 0


def test_real_kona_logs_keep_the_same_samples_with_the_skip() -> None:
    catalog = load_catalog(REPO / "tests" / "data" / "kona-pcan.toml")
    frames: list[Frame] = []
    for path in sorted((KONA / "logs").glob("*.asc")):
        with FrameLog(path, "kona") as log:
            frames += list(log)
    with_skip, _ = _samples(catalog, frames, skip=True)
    without, _ = _samples(catalog, frames, skip=False)
    chunked, _ = _chunked(catalog, frames)
    assert with_skip == without == chunked and with_skip  # this catalog keeps every value
