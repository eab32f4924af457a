"""A recorded log (.log candump, .asc, .blf, .csv, .trc, ... — whatever python-can's `LogReader`
reads; see `agent.logfiles`) played as a CAN source: at recorded speed, or as fast as the consumer takes it.

Frames keep their recorded timestamps. The file is read and parsed a chunk at a time: at recorded speed
in a worker thread; as fast as possible (`speed = "max"`) on the event loop itself, between the
decoder's turns, because a parsing thread only contends for the GIL with the decoder it feeds (on the
bench hour the thread cost ~20 % more CPU in all; a chunk of 1,024 lines holds the loop for ~1-2 ms, which
the bounded queues of any live bus absorb). Unlike a live bus, a replay waits for a full outbox instead of
dropping: nothing recorded is lost to a slow consumer.

Resuming where it was (exactly once across kill -9)
---------------------------------------------------
A replay's *position* is the number of frames of the log (in file order) whose samples are all durable.
It is stored as the buffer mark `replay:<name>` in the same SQLite transaction as those samples, so after
a crash the mark and the samples agree, whatever instant the process died. On start the source skips the
first `position` frames, and nothing is stored twice or skipped.

The difficulty is that samples reach the committer two queues away from the source (frames → decoder →
samples → committer), and a frame's samples may straddle two commits (the decoder waits mid-frame on a
full sample queue), while a frame the sampling policy suppresses yields no sample at all. The bookkeeping
is by counting, on the event loop, where every step is synchronous between awaits:

* the sample queue is a `TallyQueue`: it counts every item ever put and ever taken;
* the replay's frame queue is a `ReplayFrameQueue` of chunks (lists of frames, one queue item per chunk,
  not per frame): the decoder calls `task_done()` after it has put all of a chunk's samples, and at that
  moment the queue notes (position after that chunk, samples put so far); a chunk with no sample notes the
  same count as the one before it, so its position advances too;
* the committer, after draining the sample queue, asks `position_within(samples taken so far)`: the
  largest noted position whose samples were all among the items taken. The queues are FIFO, so those
  samples are in this batch or an earlier commit; a frame half-way through the decoder is not counted.

A decoder cancelled mid-chunk (a shutdown that ran out of time) calls `halt(frames, samples_beyond)` before
`task_done()`: the queue notes the position after the chunk's frames whose samples were all put, then stops
advancing the position for the rest of the run, so the next run re-reads the frame cut short rather than
skipping samples that were never stored.

The sampling policy keeps per-signal state (last kept value and time). So that a resumed run keeps
exactly the samples an uninterrupted run would, the skipped frames are not just skipped: they are handed
to `warm_up` (the app feeds them to the decoder's policy and discards the result) before playing
resumes. Re-reading a prefix is fast (no pacing) and harmless (nothing from it reaches the buffer).
The mark counts frames, so it belongs to one log file: replaying a different file under the same name
needs a fresh buffer (a mark beyond the end of the log is logged and the replay plays nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Protocol, TypeVar

from agent.logfiles import FrameLog
from agent.records import UNKNOWN_ID_FRAME, Frame
from agent.settings import ReplaySettings
from agent.sources import SourceError, SourceStats
from protocols.catalog import Catalog

log = logging.getLogger(__name__)

CHUNK_FRAMES = 1024
T = TypeVar("T")


def position_mark(name: str) -> str:
    """The buffer mark holding the position of replay `name`."""
    return f"replay:{name}"


class ReplayError(SourceError):
    """The log cannot be opened or read."""


class TallyQueue(asyncio.Queue[T]):
    """An asyncio queue that counts every item put and taken (`put` and `get` go through the
    `_nowait` methods)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.put_total = 0
        self.taken_total = 0

    def put_nowait(self, item: T) -> None:
        super().put_nowait(item)
        self.put_total += 1

    def get_nowait(self) -> T:
        item = super().get_nowait()
        self.taken_total += 1
        return item


class _Tally(Protocol):
    @property
    def put_total(self) -> int: ...


class ReplayFrameQueue(asyncio.Queue[list[Frame]]):
    """The queue of frame chunks between a replay and its decoder; knows up to which log position the
    samples the decoder produced are in `samples` (see the module docstring). Its bound counts chunks."""

    def __init__(self, maxsize: int, samples: _Tally, *, start_position: int = 0) -> None:
        super().__init__(maxsize)
        self._samples = samples
        self._position = start_position  # frames of the log fully through the decoder
        self._noted: deque[tuple[int, int]] = deque()  # (position, samples put by then), increasing
        self._lengths: deque[int] = deque()  # frames of each chunk put and not done yet, in order
        self._frames_queued = 0
        self._halted = False

    @property
    def frames_queued(self) -> int:
        """Frames in the chunks waiting in the queue (`qsize()` counts chunks)."""
        return self._frames_queued

    def _put(self, item: list[Frame]) -> None:
        super()._put(item)
        self._lengths.append(len(item))
        self._frames_queued += len(item)

    def _get(self) -> list[Frame]:
        item = super()._get()
        self._frames_queued -= len(item)
        return item

    def halt(self, frames: int = 0, samples_beyond: int = 0) -> None:
        """The consumer was cut short in the middle of a chunk (cancelled), after its first `frames` frames
        had all their samples put and `samples_beyond` samples of the next ones: the position goes up to
        those frames and stays there for the rest of the run."""
        if self._halted:
            return
        if frames:
            self._note(self._position + frames, self._samples.put_total - samples_beyond)
        self._halted = True
        log.warning("replay position frozen at %d: a frame was cut short at shutdown", self._position)

    def task_done(self) -> None:
        super().task_done()
        frames = self._lengths.popleft()
        if not self._halted:
            self._note(self._position + frames, self._samples.put_total)

    def _note(self, position: int, samples_put: int) -> None:
        self._position = position
        if self._noted and self._noted[-1][1] == samples_put:
            self._noted[-1] = (position, samples_put)  # no sample since: the later position needs no more
        else:
            self._noted.append((position, samples_put))

    def position_within(self, samples_taken: int) -> int | None:
        """The largest position whose samples are all among the first `samples_taken` items taken from
        the sample queue, if it advanced since the last call."""
        position = None
        noted = self._noted
        while noted and noted[0][1] <= samples_taken:
            position = noted.popleft()[0]
        return position


class ReplaySource:
    def __init__(
        self,
        settings: ReplaySettings,
        catalog: Catalog,
        *,
        chunk_frames: int = CHUNK_FRAMES,
        start_position: int = 0,
        warm_up: Callable[[Sequence[Frame]], object] | None = None,
        ignores: Callable[[str], bool] | None = None,
    ) -> None:
        """`start_position`: frames of the log already stored (the buffer mark); they are read and handed
        to `warm_up` instead of the outbox. `ignores`: the decoder's `Decoder.ignores`, for `FrameLog`
        (a chunk then holds `UNKNOWN_ID_FRAME` for the frames of ids it ignores)."""
        self.settings = settings
        self.catalog = catalog
        self.stats = SourceStats()
        self.finished = False  # the whole log was played
        self.start_position = start_position
        self._warm_up = warm_up
        self._ignores = ignores
        self._chunk_frames = chunk_frames
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, outbox: asyncio.Queue[list[Frame]]) -> None:
        """Play the log into `outbox`, in chunks (lists of frames in log order; at recorded speed, the
        frames whose time has come); return at its end or on `stop()`. Raises `ReplayError`."""
        path = self.settings.path
        try:
            log_frames = await asyncio.to_thread(FrameLog, path, self.settings.name, self._ignores)
        except (OSError, ValueError, NotImplementedError) as err:
            raise ReplayError(f"{path}: cannot open the log: {err}") from err
        frames: Iterator[Frame] = iter(log_frames)
        recorded = self.settings.speed == "recorded"
        loop = asyncio.get_running_loop()
        first_ts: float | None = None
        start = 0.0
        try:
            if self.start_position and not await self._skip_stored(frames):
                return
            while not self._stopping.is_set():
                if recorded:
                    chunk = await asyncio.to_thread(self._read_chunk, frames)
                else:  # as fast as it goes: the loop has nothing better to do than read the next chunk
                    chunk = self._read_chunk(frames)
                if not chunk:
                    self.finished = True
                    log.info(
                        "replay %s: end of %s after %d frames", self.settings.name, path, self.stats.frames
                    )
                    return
                if not recorded:
                    await _put(outbox, chunk)
                    self.stats.frames += len(chunk)
                    await asyncio.sleep(0)  # let the loop breathe between chunks, even with room to spare
                    continue
                due: list[Frame] = []  # the frames whose time has come, handed on together
                for frame in chunk:
                    if frame is UNKNOWN_ID_FRAME:  # no time of its own: goes with the frames before it
                        due.append(frame)
                        continue
                    if first_ts is None:
                        first_ts, start = frame.ts, loop.time()
                    delay = start + (frame.ts - first_ts) - loop.time()
                    if delay > 0:
                        if due:
                            await _put(outbox, due)
                            self.stats.frames += len(due)
                            due = []
                        if await self._stopped_within(delay):
                            return
                    due.append(frame)
                if due:
                    await _put(outbox, due)
                    self.stats.frames += len(due)
                await asyncio.sleep(0)  # let the loop breathe between chunks, even with room to spare
        finally:
            await asyncio.to_thread(log_frames.close)

    async def _skip_stored(self, frames: Iterator[Frame]) -> bool:
        """Read past the frames already stored, warming up the decoder's policy; False when the log
        ends (or the source is stopped) first."""
        left = self.start_position
        while left > 0:
            if self._stopping.is_set():
                return False
            chunk = await asyncio.to_thread(self._read_chunk, frames, min(left, self._chunk_frames))
            if not chunk:
                log.warning(
                    "replay %s: resume position %d is beyond the end of %s (%d frames); nothing to play",
                    self.settings.name,
                    self.start_position,
                    self.settings.path,
                    self.start_position - left,
                )
                self.finished = True
                return False
            if self._warm_up is not None:
                self._warm_up(chunk)
            left -= len(chunk)
            await asyncio.sleep(0)
        log.info("replay %s: resuming after frame %d", self.settings.name, self.start_position)
        return True

    def _read_chunk(self, frames: Iterator[Frame], count: int | None = None) -> list[Frame]:
        try:
            return list(islice(frames, count or self._chunk_frames))
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


async def _put(outbox: asyncio.Queue[T], item: T) -> None:
    if outbox.full():
        await outbox.put(item)
    else:
        outbox.put_nowait(item)
