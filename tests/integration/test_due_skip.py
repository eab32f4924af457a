"""The decoder's skip of repeated frames whose values the sampling policy would refuse (agent.decode) keeps
exactly the samples of a decoder that decodes every frame: on a recorded simulator hour (the bench's
workload), on that hour played twice in a row (time goes back: every signal restarts), and on real Kona EV
logs (whose catalog keeps every value, so nothing is skipped there)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from agent.decode import Decoder, DecodeStats
from agent.logfiles import FrameLog
from agent.records import Frame, Sample
from protocols.catalog import Catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]
KONA = REPO / "tests" / "data" / "kona-ev"


def _samples(catalog: Catalog, frames: Iterable[Frame], *, skip: bool) -> tuple[list[Sample], DecodeStats]:
    decoder = Decoder(catalog, bus="test", skip_not_due=skip)
    kept = [sample for frame in frames for sample in decoder.process(frame)]
    return kept, decoder.stats


@pytest.fixture(scope="module")
def recorded_hour(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    out = tmp_path_factory.mktemp("hour") / "bus.log"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", "1h", "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    with FrameLog(out, "test") as frames:
        return list(frames)


@pytest.mark.slow
def test_a_recorded_hour_keeps_the_same_samples_with_the_skip(recorded_hour: list[Frame]) -> None:
    catalog = load_catalog()
    with_skip, stats = _samples(catalog, recorded_hour, skip=True)
    without, full_stats = _samples(catalog, recorded_hour, skip=False)
    assert with_skip == without
    assert len(with_skip) > 10_000
    assert stats.frames_not_due > len(recorded_hour) / 3  # the skip is doing something
    assert full_stats.frames_not_due == 0
    assert stats.values_decoded < full_stats.values_decoded * 0.6


@pytest.mark.slow
def test_the_hour_played_twice_restarts_the_same_way(recorded_hour: list[Frame]) -> None:
    catalog = load_catalog()
    twice = recorded_hour + recorded_hour  # the second pass starts an hour back in time
    with_skip, _ = _samples(catalog, twice, skip=True)
    without, _ = _samples(catalog, twice, skip=False)
    assert with_skip == without
    assert len(with_skip) > 2 * 10_000


def test_real_kona_logs_keep_the_same_samples_with_the_skip() -> None:
    catalog = load_catalog(REPO / "tests" / "data" / "kona-pcan.toml")
    frames: list[Frame] = []
    for path in sorted((KONA / "logs").glob("*.asc")):
        with FrameLog(path, "kona") as log:
            frames += list(log)
    with_skip, _ = _samples(catalog, frames, skip=True)
    without, _ = _samples(catalog, frames, skip=False)
    assert with_skip == without and with_skip  # this catalog keeps every value: nothing is skipped
