"""A recorded log (.log candump, .asc, .blf, .csv, .trc, ... — whatever python-can's `LogReader`
reads; see `agent.logfiles`) played as a CAN source: at recorded speed, or as fast as the consumer takes it.

Frames keep their recorded timestamps. The file is read and parsed in a worker thread, a chunk at
a time. Unlike a live bus, a replay waits for a full outbox instead of dropping: nothing recorded
is lost to a slow consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from itertools import islice

from agent.logfiles import FrameLog
from agent.records import Frame
from agent.settings import ReplaySettings
from agent.sources import SourceError, SourceStats
from protocols.catalog import Catalog

log = logging.getLogger(__name__)

CHUNK_FRAMES = 1024


class ReplayError(SourceError):
    """The log cannot be opened or read."""


class ReplaySource:
    def __init__(
        self, settings: ReplaySettings, catalog: Catalog, *, chunk_frames: int = CHUNK_FRAMES
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.stats = SourceStats()
        self.finished = False  # the whole log was played
        self._chunk_frames = chunk_frames
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, outbox: asyncio.Queue[Frame]) -> None:
        """Play the log into `outbox`; return at its end or on `stop()`. Raises `ReplayError`."""
        path = self.settings.path
        try:
            log_frames = await asyncio.to_thread(FrameLog, path, self.settings.name)
        except (OSError, ValueError, NotImplementedError) as err:
            raise ReplayError(f"{path}: cannot open the log: {err}") from err
        frames: Iterator[Frame] = iter(log_frames)
        recorded = self.settings.speed == "recorded"
        loop = asyncio.get_running_loop()
        first_ts: float | None = None
        start = 0.0
        try:
            while not self._stopping.is_set():
                chunk = await asyncio.to_thread(self._read_chunk, frames)
                if not chunk:
                    self.finished = True
                    log.info(
                        "replay %s: end of %s after %d frames", self.settings.name, path, self.stats.frames
                    )
                    return
                for frame in chunk:
                    if recorded:
                        if first_ts is None:
                            first_ts, start = frame.ts, loop.time()
                        delay = start + (frame.ts - first_ts) - loop.time()
                        if delay > 0 and await self._stopped_within(delay):
                            return
                    await outbox.put(frame)
                    self.stats.frames += 1
                await asyncio.sleep(0)  # let the loop breathe between chunks, even with room to spare
        finally:
            await asyncio.to_thread(log_frames.close)

    def _read_chunk(self, frames: Iterator[Frame]) -> list[Frame]:
        try:
            return list(islice(frames, self._chunk_frames))
        except (OSError, ValueError, IndexError, KeyError) as err:  # a malformed line in the log
            raise ReplayError(
                f"{self.settings.path}: unreadable after {self.stats.frames} frames: {err}"
            ) from err

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True
